"""Launchers of the attention kernels over lowc's KV cache, and their registration as the CUDA kernel
of `lowc::attention_kv`.

    attention_kv_triton(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, sliding_window, fmt,
                        *, decode=None, prefill=None, cache=None) -> Tensor [B, T, H, D]

T == 1 runs `decode_kernel` (GQA-packed, split over the sequence), T > 1 `prefill_kernel` (causal,
flash-style), both from codegen/templates/attention_kv.py, on CUDA tensors or on CPU tensors under
TRITON_INTERPRET=1. The kernels read the cache exactly as lowc.ops.kv_ops stores it. The sequence
split of the decode kernel is a launch-time choice made from the cache's capacity (max_tokens) and
the GPU's multiprocessor count, never from the per-row lengths, so a decode step stays one
fixed-shape launch that a CUDA graph can replay while the lengths change on the device.

KernelSpec fields (lowc.codegen.spec is shared with qlinear): fmt = the KV format, w_bits = its bits
(16 = model dtype), x_dtype = out_dtype = q's dtype (also the dot dtype).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch

from lowc.codegen.spec import KernelSpec, dtype_name
from lowc.errors import KernelError
from lowc.ops.kv_ops import KV_PARTS, cache_groups
from lowc.runtime.attention_gluon import gluon_limits, launch_gluon_decode
from lowc.runtime.kernel_cache import KernelCache, default_cache
from lowc.runtime.pdl import pdl_args

KV_BITS = {"kv16": 16, "kv8": 8, "kv4": 4}
MIN_SPLIT_TOKENS = 256  # a split shorter than this costs more in merging than it hides in latency
PROGRAMS_PER_SM = 4  # decode grid aimed at this many resident programs per multiprocessor
# Decode pipeline depth per format, measured on the H200 (docs/kernels-attention.md): kv8's 3-stage
# tiles (69 KB of shared memory) left 3 programs per multiprocessor; 2 stages was 4-28% faster.
DEFAULT_STAGES = {"kv4": 3, "kv8": 2, "kv16": 3}


@dataclass(frozen=True)
class DecodeConfig:
    """Launch choices of the decode kernel (num_splits None: chosen from capacity and the GPU).

    block_h: the fewest query rows a program's MMA tile holds (the GQA group is padded up to it); the
    MMA instruction itself has 16 rows, but Triton pads a smaller tile inside the instruction, so 8
    rows for Llama's group of 4 halves the padded softmax and accumulator registers of 16.
    maxnreg: register cap per thread (GPU only). Uncapped, ptxas took 200 registers for the default
    tile, which left 2 programs (8 warps) per multiprocessor; 128 fits 4 without spilling at block_h 8.
    stage_k / stage_v: 15% fewer instructions per tile (stage_v) but no faster on the H200 (the extra
    shared-memory round trip and barriers; kv8's larger shared memory costs a program per multiprocessor).
    """

    BLOCK_N: int = 128
    num_splits: int | None = None
    num_warps: int = 4
    num_stages: int | None = None  # None: DEFAULT_STAGES of the format
    unpack_asm: bool = True  # kv4: unpack nibbles with inline PTX (GPU only; see the template)
    block_h: int = 8
    maxnreg: int | None = 128
    stage_k: bool = False  # dequantized K tile through shared memory in the 16-bit MMA layout (template: staged())
    stage_v: bool = False  # same for V (no byte-wise V gathers); measured no faster, see docs/kernels-attention.md
    # kv4/kv8: q rounded to INT8 (one scale per row) so q . k runs on the INT8 MMA. Opt-in: 6-8% faster
    # for kv4 and 12-15% for kv8 on the H200, but 2.6x the kernel's error against the reference at Llama
    # shapes (bf16 kv4: 1.1e-2 against 4.1e-3) and one launch shape (BLOCK_N 64, one warp) computes
    # wrongly; docs/kernels-attention.md, fourth round.
    q_int8: bool = False
    # kv4 with bf16/fp16 queries: the register-fragment Gluon kernel (codegen/gluon_attention_kv4.py), one
    # warp per program over gluon_block_n-token tiles; elsewhere, or with gluon=False, the Triton kernel
    # runs (runtime/attention_gluon.gluon_limits says why). The default tile and grid were the fastest of
    # bench/attention_gluon.py's sweep, or within 2% of it, at 12 of 12 points on the H100 and 11 of 12 on
    # the H200 (docs/kernels-attention.md, fifth round).
    gluon: bool = True
    gluon_block_n: int = 64
    gluon_programs_per_sm: int = 8


@dataclass(frozen=True)
class PrefillConfig:
    BLOCK_M: int = 64
    BLOCK_N: int = 64
    num_warps: int = 4
    num_stages: int = 2
    unpack_asm: bool = True


def spec_for_attention(fmt: str, q_dtype) -> KernelSpec:
    """The spec of the attention kernels reading a `fmt` cache with queries of `q_dtype`."""
    if fmt not in KV_BITS:
        raise KernelError(f"unknown KV cache format {fmt!r}; valid: {', '.join(KV_BITS)}")
    name = dtype_name(q_dtype)
    return KernelSpec("attention_kv", fmt, fmt, KV_BITS[fmt], 16, 0, 0, name, name,
                      "cache_slot_head_token_dim", "attention_kv")


def kernel_limits(fmt: str, head_dim: int, heads: int, kv_heads: int, key_groups: int = 1) -> str | None:
    """Why the kernels cannot run this shape (None when they can)."""
    d_load = head_dim // 2 if fmt == "kv4" else head_dim
    if head_dim & (head_dim - 1) or d_load < 16:
        return f"head_dim {head_dim} must be a power of two with {'head_dim/2' if fmt == 'kv4' else 'head_dim'} >= 16"
    if key_groups not in (1, 2) or (key_groups == 2 and d_load < 32):
        return (f"kv4 keys in {key_groups} scale/zero groups: the kernels take 1 or 2 groups, and 2 need "
                f"head_dim >= 64 (got {head_dim})")
    if heads % kv_heads:
        return f"query heads ({heads}) must be a multiple of KV heads ({kv_heads})"
    return None


@functools.lru_cache(maxsize=None)
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def default_splits(pairs: int, max_tokens: int, device: torch.device, block_n: int,
                   programs_per_sm: int = PROGRAMS_PER_SM) -> int:
    """Splits of the sequence per (row, KV head): enough programs to fill the GPU, a power of two,
    no split shorter than MIN_SPLIT_TOKENS of the cache's capacity."""
    if device.type != "cuda":
        return 1
    want = programs_per_sm * _sm_count(device.index or 0)
    splits = 1
    while pairs * splits * 2 <= want and max_tokens // (splits * 2) >= max(MIN_SPLIT_TOKENS, block_n):
        splits *= 2
    return splits


def _register_cap(maxnreg: int | None, interpreted: bool) -> dict:
    """The `maxnreg` launch option where it means something (a compiled GPU kernel)."""
    return {} if maxnreg is None or interpreted else {"maxnreg": int(maxnreg)}


def int8_query_limits(fmt: str, head_dim: int, key_groups: int, cfg: DecodeConfig) -> str | None:
    """Why DecodeConfig.q_int8 cannot run this shape (None when it can)."""
    if fmt == "kv16":
        return "q_int8 needs a kv8 or kv4 cache (kv16 keys are not integers)"
    contraction = head_dim // 2 // key_groups if fmt == "kv4" else head_dim
    if contraction < 32:
        return (f"q_int8 needs an INT8 dot of >= 32 key bytes; a {fmt} head of {head_dim} in {key_groups} key "
                f"group(s) gives {contraction}")
    if cfg.num_warps == 1 and cfg.BLOCK_N == 64:
        return "q_int8 with one warp and BLOCK_N 64 computes wrongly on the H200 (Triton 3.6); use 32 or 128"
    return None


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def attention_kv_triton(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale: float, sliding_window: int,
                        fmt: str, *, decode: DecodeConfig | None = None, prefill: PrefillConfig | None = None,
                        cache: KernelCache | None = None) -> torch.Tensor:
    """Causal GQA attention of q [B, H, T, D] over each row's cache slot; returns [B, T, H, D]."""
    if fmt not in KV_PARTS or len(k_cache) != len(KV_PARTS[fmt]) or len(v_cache) != len(k_cache):
        raise KernelError(f"a {fmt!r} cache has parts {KV_PARTS.get(fmt)}; got {len(k_cache)} K and {len(v_cache)} V tensors")
    b, h, t, d = q.shape
    hkv, max_tokens = k_cache[0].shape[1], k_cache[0].shape[2]
    k_groups = cache_groups(k_cache, fmt)
    why = kernel_limits(fmt, d, h, hkv, k_groups)
    if why:
        raise KernelError(f"attention_kv kernel: {why}; the plain-torch reference handles this shape")
    if q.stride(-1) != 1:
        q = q.contiguous()
    spec = spec_for_attention(fmt, q.dtype)
    cache = cache or default_cache()
    out = torch.empty((b, t, h, d), dtype=q.dtype, device=q.device)
    if b == 0 or t == 0:
        return out
    parts = [p.contiguous() for p in k_cache] + [k_cache[0]] * (3 - len(k_cache))
    parts += [p.contiguous() for p in v_cache] + [v_cache[0]] * (3 - len(v_cache))
    d_load = d // 2 if fmt == "kv4" else d
    precision = "ieee" if q.dtype == torch.float32 else None
    group = h // hkv
    interpreted = q.device.type == "cpu"  # CPU tensors only run under TRITON_INTERPRET=1
    if t == 1 and decode is not None and decode.q_int8:
        why = int8_query_limits(fmt, d, k_groups, decode)
        if why:
            raise KernelError(f"attention_kv decode: {why}; or leave DecodeConfig.q_int8 off")
    loaded = cache.get(spec)
    try:
        if t == 1:
            cfg = decode or DecodeConfig()
            pairs = b * hkv
            use_gluon = cfg.gluon and gluon_limits(fmt, q, d, group, max_tokens, cfg.gluon_block_n, cfg) is None
            if use_gluon:
                splits = cfg.num_splits or default_splits(pairs, max_tokens, q.device, cfg.gluon_block_n,
                                                          cfg.gluon_programs_per_sm)
                block_h = max(8, _pow2(group))  # the MMA's N side
            else:
                splits = cfg.num_splits or default_splits(pairs, max_tokens, q.device, cfg.BLOCK_N)
                block_h = max(cfg.block_h, _pow2(group))
            if splits > 1:
                ws_acc = cache.scratch("attention_partial_acc", q.device, torch.float32, pairs * splits * block_h * d)
                ws_ml = cache.scratch("attention_partial_ml", q.device, torch.float32, pairs * splits * block_h * 2)
                tickets = cache.scratch("attention_tickets", q.device, torch.int32, pairs)
            else:
                ws_acc = ws_ml = tickets = out  # never touched with one split
            if use_gluon:
                launch_gluon_decode(q, parts, slot_ids, cache_lens, new_lens, out, ws_acc, ws_ml, tickets, scale,
                                    hkv, max_tokens, sliding_window, splits, group, k_groups, cfg.gluon_block_n,
                                    block_h)
                return out
            loaded.module.decode_kernel[(pairs, splits)](
                q, q.stride(0), q.stride(1), *parts, slot_ids, cache_lens, new_lens, out, ws_acc, ws_ml, tickets,
                float(scale), hkv, max_tokens, int(sliding_window), splits,
                GROUP=group, HEAD_DIM=d, D_LOAD=d_load, BLOCK_H=block_h, BLOCK_N=cfg.BLOCK_N,
                SPLIT=splits > 1, PRECISION=precision, UNPACK_ASM=cfg.unpack_asm, INTERPRETED=interpreted,
                STAGE_K=cfg.stage_k and fmt != "kv16", STAGE_V=cfg.stage_v and fmt != "kv16", K_GROUPS=k_groups,
                Q_INT8=cfg.q_int8,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages or DEFAULT_STAGES[fmt],
                **_register_cap(cfg.maxnreg, interpreted), **pdl_args(q.device),
            )
        else:
            cfg = prefill or PrefillConfig()
            loaded.module.prefill_kernel[(-(-t // cfg.BLOCK_M), b * h)](
                q, q.stride(0), q.stride(1), q.stride(2), *parts, slot_ids, cache_lens, new_lens, out,
                float(scale), t, h, hkv, max_tokens, int(sliding_window),
                GROUP=group, HEAD_DIM=d, D_LOAD=d_load, BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N,
                PRECISION=precision, UNPACK_ASM=cfg.unpack_asm, INTERPRETED=interpreted, K_GROUPS=k_groups,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
    except Exception as e:
        raise KernelError(f"Triton kernel {spec.name} (T={t}) failed: {type(e).__name__}: {e}; "
                          f"kernel file: {loaded.path}") from e
    return out


# -- registration as lowc::attention_kv's CUDA kernel ------------------------------------------------------


def attention_kv_cuda(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, layer_idx, sliding_window, fmt):
    """lowc::attention_kv on CUDA: the Triton kernels, or the reference (with a warning) where they cannot run."""
    from lowc.ops.kv_ops import _check_attention_inputs, attention_kv_reference
    from lowc.runtime.gemm import ReferenceFallbackWarning, gpu_support

    _check_attention_inputs(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt)
    supported, description = gpu_support(q.device.index or 0)
    why = None if supported else f"{description} is older than compute capability 8.0"
    why = why or kernel_limits(fmt, q.shape[-1], q.shape[1], k_cache[0].shape[1], cache_groups(k_cache, fmt))
    if why:
        warnings.warn(f"lowc::attention_kv runs the plain-torch reference: {why}", ReferenceFallbackWarning,
                      stacklevel=2)
        return attention_kv_reference(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, sliding_window, fmt)
    return attention_kv_triton(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, sliding_window, fmt)


def register_cuda_kernels() -> bool:
    """Make the Triton kernels lowc::attention_kv's CUDA implementation; True if a GPU is present."""
    import lowc.ops  # noqa: F401  (defines lowc::attention_kv)

    if not torch.cuda.is_available():
        return False
    torch.library.register_kernel("lowc::attention_kv", "cuda", attention_kv_cuda)
    return True

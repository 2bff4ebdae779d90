"""Launching the register-fragment KV4 decode attention kernel (codegen/gluon_attention_kv4.py).

`DecodeConfig.gluon` asks for it; it runs where it can: a kv4 cache, bf16 or fp16 queries, a CUDA
device the generated kernels support with a Triton that has Gluon, head_dim 64 / 128 / 256, a GQA
group of at most 8 query heads, and a cache capacity that is a multiple of the kernel's token tile
(its loads are whole aligned tiles). Elsewhere `attention_kv_triton` runs the Triton decode kernel
(`gluon_limits` names the reason). One warp per program, so the grid aims at more programs per
multiprocessor than the Triton kernel's (DecodeConfig.gluon_programs_per_sm).
"""

from __future__ import annotations

import functools

import torch

GLUON_HEAD_DIMS = (64, 128, 256)
GLUON_BLOCK_NS = (16, 32, 64, 128)
MAX_GROUP = 8  # query heads per KV head: the MMA's N side (N = 16 builds but has not run on a GPU)
PDL_LEVEL = 2  # the PDL mode from which the kernel is launched with PDL (runtime/pdl.py)


def gluon_limits(fmt: str, q: torch.Tensor, head_dim: int, group: int, max_tokens: int, block_n: int,
                 cfg) -> str | None:
    """Why the Gluon decode kernel cannot run this launch (None when it can)."""
    from lowc.runtime.gemm import gpu_support
    from lowc.runtime.gemm_mma_reg import has_gluon

    if fmt != "kv4":
        return f"it reads kv4 caches (got {fmt})"
    if q.device.type != "cuda" or not gpu_support(q.device.index or 0)[0]:
        return "it needs a CUDA GPU of compute capability >= 8.0"
    if not has_gluon():
        return "this Triton has no Gluon"
    if q.dtype not in (torch.bfloat16, torch.float16):
        return f"queries must be bf16 or fp16 (got {q.dtype})"
    if head_dim not in GLUON_HEAD_DIMS:
        return f"head_dim must be one of {GLUON_HEAD_DIMS} (got {head_dim})"
    if group > MAX_GROUP:
        return f"at most {MAX_GROUP} query heads per KV head (got {group})"
    if block_n not in GLUON_BLOCK_NS:
        return f"gluon_block_n must be one of {GLUON_BLOCK_NS} (got {block_n})"
    if max_tokens % block_n:
        return f"the cache capacity ({max_tokens} tokens) must be a multiple of gluon_block_n ({block_n})"
    if cfg.q_int8 or cfg.stage_k or cfg.stage_v:
        return "q_int8 / stage_k / stage_v are options of the Triton kernel"
    return None


@functools.lru_cache(maxsize=None)
def _layouts(block_n: int, head_dim: int, key_groups: int):
    from lowc.codegen.gluon_attention_kv4 import layouts

    return layouts(block_n, head_dim, key_groups)


def launch_gluon_decode(q, parts, slot_ids, cache_lens, new_lens, out, ws_acc, ws_ml, tickets, scale: float,
                        hkv: int, max_tokens: int, window: int, splits: int, group: int, key_groups: int,
                        block_n: int, nh: int) -> None:
    """out [B, 1, H, D] = decode attention of q [B, H, 1, D] over the kv4 cache `parts` (K data, scale,
    zero, V data, scale, zero); ws_acc / ws_ml / tickets: the split workspace of attention_kv_triton."""
    from lowc.codegen import gluon_attention_kv4 as kernel_module
    from lowc.errors import KernelError
    from lowc.runtime.pdl import pdl_args

    b, _, _, d = q.shape
    k_l, v_l, ks_l, vs_l = _layouts(block_n, d, key_groups)
    try:
        kernel_module.decode_kv4_kernel[(b * hkv, splits)](
            q, q.stride(0), q.stride(1), *parts, slot_ids, cache_lens, new_lens, out, ws_acc, ws_ml, tickets,
            float(scale), hkv, max_tokens, int(window), splits,
            GROUP=group, HEAD_DIM=d, NH=nh, BLOCK_N=block_n, K_GROUPS=key_groups, SPLIT=splits > 1,
            BF16=q.dtype == torch.bfloat16, k_l=k_l, v_l=v_l, ks_l=ks_l, vs_l=vs_l, num_warps=1,
            **pdl_args(q.device, PDL_LEVEL),
        )
    except Exception as e:  # compile errors, out-of-resources, launch failures: name what failed
        raise KernelError(f"Gluon kernel decode_kv4_kernel failed (BLOCK_N {block_n}, head_dim {d}, {key_groups} "
                          f"key group(s), {splits} splits; {type(e).__name__}: {e}); kernel file: "
                          f"{kernel_module.__file__}") from e

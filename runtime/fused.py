"""Launchers of the fused glue kernels, and their registration as the glue ops' CUDA kernels.

    act_quant_triton(prologue, x, fmt, r=None, weight=None, eps=0.0) -> tuple of tensors
        prologue "none" -> (q, scale)                     lowc::quantize_act
                 "rms_norm" -> (q, scale) | (y,)           lowc::rms_norm_quant | lowc::rms_norm
                 "add_rms_norm" -> (q, scale, sum) | (y, sum)   lowc::add_rms_norm_quant | add_rms_norm
                 "silu_mul" -> (q, scale)                  lowc::silu_mul_quant
        (fmt=None: no quantization, the float result y in the promoted dtype)
    rope_store_triton(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate=False,
                      key_bias=None) -> q_rot | None
        lowc::rope_qkv_store; with q=v=None lowc::rope_kv_store; with cos=sin=None too, lowc::kv_store

Both run the generated kernels of `codegen/templates/fused_act_quant.py` and `fused_rope_store.py`
(rendered through lowc.codegen, cached by lowc.runtime.kernel_cache) on CUDA tensors, or on CPU
tensors under TRITON_INTERPRET=1 (how CI tests them). `register_cuda_kernels()` makes them the CUDA
implementation of those ops; the runtime calls it once, never at `import lowc`.

KernelSpec fields for these templates (lowc.codegen.spec is the qlinear engineer's; the fields are
reused with these meanings): act_quant: fmt = the activation format (or "none"), a_bits 8/4,
group_size = the INT4 activation group (0 for INT8 per token), n_outliers = the INT8 tail;
rope_store: fmt = the KV format, w_bits = its bits (16 = model dtype), x_dtype = K's dtype,
out_dtype = the RoPE result dtype.
"""

from __future__ import annotations

import torch

from lowc.codegen.spec import KernelSpec, dtype_name
from lowc.errors import KernelError, QuantizationError
from lowc.ops.kv_ops import KV_PARTS, cache_groups
from lowc.quant.spec import parse_format
from lowc.runtime.kernel_cache import KernelCache, default_cache
from lowc.runtime.pdl import pdl_args

PROLOGUES = ("none", "rms_norm", "add_rms_norm", "silu_mul")
KV_BITS = {"kv16": 16, "kv8": 8, "kv4": 4}


def spec_for_act_quant(fmt: str | None, x_dtype, y_dtype=None) -> KernelSpec:
    """The spec of the row-glue kernel quantizing for activation format `fmt` (None: no quantization,
    the float result is stored in `y_dtype`)."""
    if fmt is None:
        return KernelSpec("act_quant", "none", "none", 16, 16, 0, 0, dtype_name(x_dtype),
                          dtype_name(y_dtype or x_dtype), "row_major", "fused_act_quant")
    f = parse_format(fmt)
    if f.act_bits == 16:
        raise KernelError(f"format {fmt} keeps activations in floating point: there is nothing to quantize")
    group = f.group if f.act_bits == 4 else 0
    return KernelSpec("act_quant", f.name, f.family, f.weight_bits, f.act_bits, group, f.outliers,
                      dtype_name(x_dtype), "int8", "row_major", "fused_act_quant")


def spec_for_rope_store(fmt: str, x_dtype, rope_dtype) -> KernelSpec:
    """The spec of the RoPE + KV-store kernel for cache format `fmt` ('kv16' / 'kv8' / 'kv4')."""
    if fmt not in KV_BITS:
        raise KernelError(f"unknown KV cache format {fmt!r}; valid: {', '.join(KV_BITS)}")
    return KernelSpec("rope_store", fmt, fmt, KV_BITS[fmt], 16, 0, 0, dtype_name(x_dtype),
                      dtype_name(rope_dtype), "cache_slot_head_token_dim", "fused_rope_store")


def _pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t as [rows, K] with a unit last stride (a view when possible)."""
    t2 = t.reshape(-1, t.shape[-1])
    return t2 if t2.stride(-1) == 1 else t2.contiguous()


def act_quant_triton(prologue: str, x: torch.Tensor, fmt: str | None, r: torch.Tensor | None = None,
                     weight: torch.Tensor | None = None, eps: float = 0.0, *,
                     cache: KernelCache | None = None) -> tuple[torch.Tensor, ...]:
    """Run the fused row kernel (see module docstring for what each prologue returns)."""
    if prologue not in PROLOGUES:
        raise KernelError(f"unknown prologue {prologue!r}; valid: {PROLOGUES}")
    needs_r = prologue in ("add_rms_norm", "silu_mul")
    if needs_r and (r is None or r.shape != x.shape or r.dtype != x.dtype):
        raise QuantizationError(f"{prologue}: the second input must match x ({x.dtype}{list(x.shape)})")
    norm = prologue in ("rms_norm", "add_rms_norm")
    if norm and (weight is None or weight.shape != x.shape[-1:]):
        raise QuantizationError(f"{prologue}: the norm weight must be [{x.shape[-1]}]")
    y_dtype = torch.promote_types(x.dtype, weight.dtype) if norm else x.dtype
    spec = spec_for_act_quant(fmt, x.dtype, y_dtype)
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = _rows(x)
    m = x2.shape[0]
    r2 = _rows(r) if needs_r else x2
    dev = x.device
    quant = fmt is not None
    outs: list[torch.Tensor] = []
    y = torch.empty((m, k) if not quant else (1,), dtype=y_dtype, device=dev)
    q = torch.empty((m, k) if quant else (1,), dtype=torch.int8, device=dev)
    n_scales = parse_format(fmt).act_scale_groups(k) if quant else 1
    scale = torch.empty((m, n_scales), dtype=torch.float32, device=dev)
    total = torch.empty((m, k), dtype=x.dtype, device=dev) if prologue == "add_rms_norm" else y
    if m and k:
        block = max(_pow2(k), spec.group_size)
        w = weight.contiguous() if norm else x2
        loaded = (cache or default_cache()).get(spec)
        try:
            loaded.module.act_quant_kernel[(m,)](
                x2, r2, w, total, y, q, scale, k, x2.stride(0), r2.stride(0), float(eps),
                PROLOGUE=prologue, QUANT=quant, BLOCK_K=block, num_warps=min(16, max(4, block // 1024)),
                enable_fp_fusion=False,  # no multiply-add contraction: each op rounds as eager torch does
                **pdl_args(x2.device),
            )
        except Exception as e:
            raise KernelError(f"Triton kernel {spec.name} ({prologue}) failed: {type(e).__name__}: {e}; "
                              f"kernel file: {loaded.path}") from e
    if quant:
        outs += [q.reshape(*lead, k), scale.reshape(*lead, n_scales)]
    else:
        outs.append(y.reshape(*lead, k))
    if prologue == "add_rms_norm":
        outs.append(total.reshape(*lead, k))
    return tuple(outs)


def _strides4(t: torch.Tensor | None) -> tuple[int, int, int]:
    """(batch, head, token) strides of a [B, H, T, D] tensor whose last dim is contiguous."""
    return (0, 0, 0) if t is None else (t.stride(0), t.stride(1), t.stride(2))


def _unit_last(t: torch.Tensor | None) -> torch.Tensor | None:
    return t if t is None or t.stride(-1) == 1 else t.contiguous()


def rope_store_triton(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate=False,
                      key_bias=None, *, cache: KernelCache | None = None):
    """RoPE on q and k (then the key rotation on both if `rotate`, then the key centre `key_bias`
    [Hkv, D] subtracted from k), k and v into the cache (see module docstring); returns the rotated q
    or None."""
    if fmt not in KV_PARTS:
        raise KernelError(f"unknown KV cache format {fmt!r}; valid: {', '.join(KV_PARTS)}")
    if key_bias is not None and cos is None:
        raise KernelError("rope_store_triton: key_bias is applied after RoPE; lowc::kv_store has no centring "
                          "(the kv_cache pass subtracts the centre in the graph there)")
    q, k, v, cos, sin = (_unit_last(t) for t in (q, k, v, cos, sin))
    b, hkv, t, d = k.shape
    if d & (d - 1) or d < 2 or (rotate and d > 256):
        raise KernelError(f"the RoPE/KV-store kernel needs a power-of-two head_dim (at most 256 with the key "
                          f"rotation), got {d}")
    rope = cos is not None
    rope_dtype = torch.promote_types(k.dtype, cos.dtype) if rope else k.dtype
    spec = spec_for_rope_store(fmt, k.dtype, rope_dtype)
    hq = q.shape[1] if q is not None else 0
    q_out = torch.empty((b, hq, t, d) if q is not None else (1,), dtype=rope_dtype, device=k.device)
    parts_k = list(k_cache) + [k_cache[0]] * (3 - len(k_cache))  # absent parts: never touched
    parts_v = (list(v_cache) + [v_cache[0]] * (3 - len(v_cache))) if v is not None else parts_k
    cs = (cos.stride(0), cos.stride(2), sin.stride(0), sin.stride(2)) if rope else (0, 0, 0, 0)
    block_t = min(_pow2(t), 16)
    heads = hq + hkv + (hkv if v is not None else 0)
    if b and t:
        loaded = (cache or default_cache()).get(spec)
        try:
            loaded.module.rope_store_kernel[(b * -(-t // block_t), heads)](
                q if q is not None else k, k, v if v is not None else k,
                *_strides4(q), *_strides4(k), *_strides4(v),
                cos if rope else k, sin if rope else k, *cs, q_out,
                *parts_k, *parts_v, slot_ids, cache_lens, new_lens,
                _unit_last(key_bias) if key_bias is not None else k,
                t, hq, hkv, k_cache[0].shape[2],
                ROPE_K=rope, HAS_V=v is not None, ROTATE=bool(rotate), CENTER_K=key_bias is not None,
                RSQRT_D=d ** -0.5, HEAD_DIM=d, BLOCK_T=block_t, K_GROUPS=cache_groups(k_cache, fmt),
                enable_fp_fusion=False,  # x*cos + rot*sin must not become an FMA: bit-exact RoPE
                **pdl_args(q_out.device if q is not None else k.device),
            )
        except Exception as e:
            raise KernelError(f"Triton kernel {spec.name} failed: {type(e).__name__}: {e}; "
                              f"kernel file: {loaded.path}") from e
    return q_out if q is not None else None


# -- registration as the glue ops' CUDA kernels -----------------------------------------------------------


def _fallback(op: str, x: torch.Tensor, why_not: str | None = None) -> bool:
    """True (after a warning) when `op` must run its reference on x's GPU."""
    import warnings

    from lowc.runtime.gemm import ReferenceFallbackWarning, gpu_support

    supported, description = gpu_support(x.device.index or 0)
    why = why_not or (None if supported else f"{description} is older than compute capability 8.0")
    if why:
        warnings.warn(f"{op} runs the plain-torch reference: {why}", ReferenceFallbackWarning, stacklevel=3)
    return why is not None


def _quantizes(fmt: str) -> bool:
    return parse_format(fmt).act_bits != 16


def _cuda_kernels() -> dict:
    """op name -> CUDA implementation (each checks what the reference would, then launches)."""
    from lowc.ops import fused_ops as f
    from lowc.ops import kv_ops
    from lowc.ops.norm import rms_norm_reference
    from lowc.quant.activations import quantize_activation

    def quantize_act(x, fmt):
        if not _quantizes(fmt) or _fallback("lowc::quantize_act", x):
            return quantize_activation(x, fmt)  # float formats: the reference raises the right error
        return act_quant_triton("none", x, fmt)

    def rms_norm(x, weight, eps):
        if _fallback("lowc::rms_norm", x):
            return rms_norm_reference(x, weight, eps)
        return act_quant_triton("rms_norm", x, None, weight=weight, eps=eps)[0]

    def rms_norm_quant(x, weight, eps, fmt):
        if _fallback("lowc::rms_norm_quant", x):
            return f.rms_norm_quant_reference(x, weight, eps, fmt)
        return act_quant_triton("rms_norm", x, fmt, weight=weight, eps=eps)

    def add_rms_norm_quant(x, residual, weight, eps, fmt):
        f._check_same(x, residual, "lowc::add_rms_norm_quant", "x and residual")
        if _fallback("lowc::add_rms_norm_quant", x):
            return f.add_rms_norm_quant_reference(x, residual, weight, eps, fmt)
        return act_quant_triton("add_rms_norm", x, fmt, r=residual, weight=weight, eps=eps)

    def add_rms_norm(x, residual, weight, eps):
        f._check_same(x, residual, "lowc::add_rms_norm", "x and residual")
        if _fallback("lowc::add_rms_norm", x):
            return f.add_rms_norm_reference(x, residual, weight, eps)
        return act_quant_triton("add_rms_norm", x, None, r=residual, weight=weight, eps=eps)

    def silu_mul_quant(gate, up, fmt):
        f._check_same(gate, up, "lowc::silu_mul_quant", "gate and up")
        if _fallback("lowc::silu_mul_quant", gate):
            return f.silu_mul_quant_reference(gate, up, fmt)
        return act_quant_triton("silu_mul", gate, fmt, r=up)

    def pow2_dim(x):
        d = x.shape[-1]
        return None if d >= 2 and not d & (d - 1) else f"head_dim {d} is not a power of two"

    def rope_qkv_store(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate=False,
                       key_bias=None):
        f._check_rope_qkv(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate, key_bias)
        if _fallback("lowc::rope_qkv_store", k, pow2_dim(k)):
            return f.rope_qkv_store_reference(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens,
                                              fmt, rotate, key_bias)
        return rope_store_triton(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate,
                                 key_bias)

    def rope_kv_store(x, cos, sin, cache, slot_ids, cache_lens, new_lens, fmt, rotate=False, key_bias=None):
        kv_ops.check_key_bias(x, key_bias, "lowc::rope_kv_store")
        kv_ops._check_cache(x, cache, fmt, "lowc::rope_kv_store")
        kv_ops._check_context(x.shape[0], slot_ids, cache_lens, new_lens, "lowc::rope_kv_store")
        if _fallback("lowc::rope_kv_store", x, pow2_dim(x)):
            return kv_ops.rope_kv_store_reference(x, cos, sin, cache, slot_ids, cache_lens, new_lens, fmt, rotate,
                                                  key_bias)
        rope_store_triton(None, x, None, cos, sin, cache, None, slot_ids, cache_lens, new_lens, fmt, rotate, key_bias)

    def kv_store(x, cache, slot_ids, cache_lens, new_lens, fmt):
        kv_ops._check_cache(x, cache, fmt, "lowc::kv_store")
        kv_ops._check_context(x.shape[0], slot_ids, cache_lens, new_lens, "lowc::kv_store")
        if _fallback("lowc::kv_store", x, pow2_dim(x)):
            return kv_ops.kv_store_reference(x, cache, slot_ids, cache_lens, new_lens, fmt)
        rope_store_triton(None, x, None, None, None, cache, None, slot_ids, cache_lens, new_lens, fmt)

    return {
        "lowc::quantize_act": quantize_act, "lowc::rms_norm": rms_norm, "lowc::rms_norm_quant": rms_norm_quant,
        "lowc::add_rms_norm_quant": add_rms_norm_quant, "lowc::add_rms_norm": add_rms_norm,
        "lowc::silu_mul_quant": silu_mul_quant, "lowc::rope_qkv_store": rope_qkv_store,
        "lowc::rope_kv_store": rope_kv_store, "lowc::kv_store": kv_store,
    }


def register_cuda_kernels() -> bool:
    """Make the fused Triton kernels the CUDA implementation of the glue ops (quantize_act, rms_norm,
    the fused ops of lowc.ops.fused_ops, kv_store, rope_kv_store); True if a GPU is present."""
    import lowc.ops  # noqa: F401  (defines the core ops)
    import lowc.ops.fused_ops  # noqa: F401  (defines the fused ops)

    if not torch.cuda.is_available():
        return False
    for name, fn in _cuda_kernels().items():
        torch.library.register_kernel(name, "cuda", fn)
    return True

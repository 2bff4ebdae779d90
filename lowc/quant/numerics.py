"""Small numerical building blocks shared by every format: input checks, scale rounding, padding,
exact integer matmul, SQNR.

Rounding everywhere is `torch.round` (round half to even) on float32 values, and float32 division
`x / scale` (IEEE, correctly rounded): a kernel that must reproduce a quantizer bit for bit uses the
same two operations (in Triton: `div_rn` and `rint`, not the approximate `/`).
"""

from __future__ import annotations

import torch

from lowc.errors import QuantizationError

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Smallest positive fp16 value (a subnormal). fp16 scales are clamped below at it, so a scale is never
# 0 and an all-zero row or group (scale FP16_TINY) quantizes to exact zeros.
FP16_TINY = 2.0**-24
FP16_MAX = 65504.0


def check_float_input(t: torch.Tensor, what: str, ndim: int | None = None) -> None:
    """Raise QuantizationError unless t is a finite floating-point tensor (of rank ndim if given)."""
    if not isinstance(t, torch.Tensor):
        raise QuantizationError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise QuantizationError(f"{what} has dtype {t.dtype}; expected a floating dtype (fp16, bf16, fp32, fp64)")
    if ndim is not None and t.dim() != ndim:
        raise QuantizationError(f"{what} has shape {tuple(t.shape)}; expected a {ndim}-d tensor")
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise QuantizationError(
            f"{what} contains NaN or Inf; quantization needs finite values (check the model weights "
            "or the calibration/input data upstream)"
        )


def to_fp16_scale(scale: torch.Tensor, what: str) -> torch.Tensor:
    """Round positive float32 scales UP to the nearest fp16 value, clamped below at FP16_TINY.

    Rounding up (not to nearest) means the stored scale's grid always covers the range it was
    computed from, so nothing is clipped and the error stays within half a step even for tiny,
    subnormal-fp16 scales. A kernel reproduces it as: s16 = fp16_rn(s); if float(s16) < s, step s16
    to the next fp16 up (its int16 bit pattern + 1). Overflow of fp16 is an error.
    """
    if bool((scale > FP16_MAX).any()):
        raise QuantizationError(
            f"{what}: a scale exceeds the fp16 maximum {FP16_MAX} (values too large for this format); "
            "rescale the tensor (e.g. fold a smoothing factor differently) or use a wider format"
        )
    scale = scale.to(torch.float32).clamp_min(FP16_TINY)
    nearest = scale.to(torch.float16)
    next_up = (nearest.view(torch.int16) + 1).view(torch.float16)
    return torch.where(nearest.to(torch.float32) < scale, next_up, nearest)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pad_last_dim(t: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last dim of t up to `size` (no copy if it already has that size)."""
    extra = size - t.shape[-1]
    if extra == 0:
        return t
    return torch.nn.functional.pad(t, (0, extra))


def padded_k(k: int, group: int, pad: bool, what: str) -> int:
    """K rounded up to a multiple of the group; with pad=False a non-dividing group is an error."""
    if k % group == 0:
        return k
    if not pad:
        raise QuantizationError(
            f"{what}: K={k} is not a multiple of the group size {group} and padding is disabled; "
            f"pass pad=True (K is then padded to {ceil_div(k, group) * group} with exact zeros) "
            "or pick a group size that divides K"
        )
    return ceil_div(k, group) * group


def exact_int_matmul(a: torch.Tensor, b: torch.Tensor, bound: int = 128) -> torch.Tensor:
    """a [M, K] @ b [N, K]^T for integer-valued tensors with |a|, |b| <= bound: exact int32 [M, N].

    float32 GEMMs over K-chunks small enough that every partial sum stays below 2**24 are exact
    whatever BLAS's summation order (1024 columns for int8 operands); the chunk results are summed
    in int32. On CPU this is far faster than an integer matmul, and equals an int64 matmul exactly
    (the tests check that). On CUDA it stays exact under TF32 or bf16 matmul precision too: operands
    up to 256 in magnitude are exact in those inputs and the accumulation is float32.
    `bound` is the caller's promise, from the operands' dtype or format.
    """
    k = a.shape[-1]
    if k * bound * bound >= 2**31:
        raise QuantizationError(
            f"integer accumulation over K={k} with |values| <= {bound} may overflow int32; split K into groups"
        )
    chunk = max(1, 2**24 // (bound * bound))
    a32, b32 = a.to(torch.float32), b.to(torch.float32)
    if k <= chunk:
        return (a32 @ b32.T).to(torch.int32)
    acc = torch.zeros(a.shape[0], b.shape[0], dtype=torch.int32, device=a.device)
    for start in range(0, k, chunk):  # a handful of wide chunks, not a loop over elements
        acc += (a32[:, start : start + chunk] @ b32[:, start : start + chunk].T).to(torch.int32)
    return acc


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 20*log10(|x| / |x - y|) in dB (inf if identical)."""
    x = reference.double()
    noise = (x - approx.double()).norm()
    if noise == 0:
        return float("inf")
    return float(20.0 * torch.log10(x.norm() / noise))

"""KV-cache formats: one scale (and zero) per token per head, over head_dim, for x [..., H, D].

- `kv4` (QoQ KV4): asymmetric UINT4 over [min(x, 0), max(x, 0)] of each head vector,
  s = fp16_up(span / 15), z = fp16(-min / s) (a fractional zero point in [0, 15], rounded to the
  fp16 it is stored in), q = clamp(round(x / s + z), 0, 15), x' = (q - z) * s. Stored: packed uint8
  [..., H, D/2] (two values per byte along head_dim, low nibble = even d), scale fp16 [..., H],
  zero fp16 [..., H]. The zero is not rounded to an integer (as the weight grids' zeros are) because
  nothing multiplies it on an integer path: the attention kernels take it out of the dot products
  in float32. Rounding it would move both ends of the range by up to half a step; the fractional
  zero puts the vector's minimum and maximum on the grid (SmolLM2, 16-bit weights, KV4 cache with
  rotated and centred keys, 8,192 WikiText-2 tokens: perplexity 30.146 with an integer zero, 29.995
  with the fractional one). Keys may take `groups` > 1 scale/zero pairs per head vector (contiguous
  groups along D; scale and zero [..., H, G]): a scheme's `kv_key_groups`.
- `kv8`: symmetric INT8, s = fp16_up(absmax / 127), q = clamp(round(x / s), -127, 127), x' = q * s.
  Stored: q int8 [..., H, D], scale fp16 [..., H].
Math in float32 whatever the input dtype; the rounding rules (fp16 scales rounded up) are those of
`lowc.quant.grids`, so the error is at most half a step. Quantization happens when K/V are written to the cache and the
attention kernel dequantizes; a kernel reproducing these must round exactly the same way.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lowc.errors import QuantizationError
from lowc.quant.grids import quantize_symmetric
from lowc.quant.numerics import check_float_input, to_fp16_scale
from lowc.quant.packing import pack_int4, unpack_uint4


class KV4(NamedTuple):
    """Packed UINT4 K or V: packed uint8 [..., H, D/2], scale fp16 [..., H], zero fp16 [..., H]."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor


class KV8(NamedTuple):
    """INT8 K or V: q int8 [..., H, D], scale fp16 [..., H]."""

    q: torch.Tensor
    scale: torch.Tensor


def _check_kv(x: torch.Tensor) -> None:
    check_float_input(x, "K/V tensor")
    if x.dim() < 2:
        raise QuantizationError(f"K/V tensor has shape {tuple(x.shape)}; expected [..., heads, head_dim]")


def quantize_kv4(x: torch.Tensor, groups: int = 1) -> KV4:
    """x [..., H, D] float -> KV4; D must be even (two values per byte). With `groups` > 1 each head
    vector is cut into that many contiguous groups along D, each with its own scale and zero: scale
    and zero become [..., H, groups] (D / groups must be even)."""
    _check_kv(x)
    d = x.shape[-1]
    if groups < 1 or d % (2 * groups):
        raise QuantizationError(
            f"KV4 with {groups} group(s) per head vector needs head_dim divisible by {2 * groups} (two values "
            f"per byte in every group); got head_dim {d}. Use groups=1 or a head_dim that divides."
        )
    x = x.to(torch.float32)
    if groups > 1:
        x = x.reshape(*x.shape[:-1], groups, d // groups)
    vmin = x.amin(dim=-1, keepdim=True).clamp(max=0)
    vmax = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = to_fp16_scale((vmax - vmin) / 15, "KV4 scale")
    s = scale.to(torch.float32)
    zero = (-vmin / s).to(torch.float16)  # <= 15: the scale was rounded up
    q = torch.clamp(torch.round(x / s + zero.to(torch.float32)), 0, 15)
    if groups > 1:
        q = q.reshape(*q.shape[:-2], d)
    return KV4(pack_int4(q.to(torch.uint8)), scale.squeeze(-1), zero.squeeze(-1))


def kv4_groups(kv: KV4) -> int:
    """Scale/zero groups per head vector: 1 when scale is [..., H], else its last dim."""
    return 1 if kv.scale.dim() < kv.packed.dim() else kv.scale.shape[-1]


def dequantize_kv4(kv: KV4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """KV4 -> x' [..., H, D] in dtype (computed in float32)."""
    q = unpack_uint4(kv.packed).to(torch.float32)
    g = kv4_groups(kv)
    if g > 1:
        q = q.reshape(*q.shape[:-1], g, q.shape[-1] // g)
        x = (q - kv.zero.to(torch.float32)[..., None]) * kv.scale.to(torch.float32)[..., None]
        return x.reshape(*x.shape[:-2], -1).to(dtype)
    x = (q - kv.zero.to(torch.float32)[..., None]) * kv.scale.to(torch.float32)[..., None]
    return x.to(dtype)


def quantize_kv8(x: torch.Tensor) -> KV8:
    """x [..., H, D] float -> KV8."""
    _check_kv(x)
    q, scale = quantize_symmetric(x.to(torch.float32), 127, "KV8 scale")
    return KV8(q.to(torch.int8), scale.squeeze(-1))


def dequantize_kv8(kv: KV8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """KV8 -> x' [..., H, D] in dtype (computed in float32)."""
    return (kv.q.to(torch.float32) * kv.scale.to(torch.float32)[..., None]).to(dtype)


def quantize_kv(x: torch.Tensor, fmt: str) -> KV4 | KV8:
    """Quantize by KV format name: "kv4" or "kv8"."""
    if fmt == "kv4":
        return quantize_kv4(x)
    if fmt == "kv8":
        return quantize_kv8(x)
    raise QuantizationError(f"unknown KV format {fmt!r}; valid: 'kv4', 'kv8'")


def dequantize_kv(kv: KV4 | KV8, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of quantize_kv for either format."""
    return dequantize_kv4(kv, dtype) if isinstance(kv, KV4) else dequantize_kv8(kv, dtype)

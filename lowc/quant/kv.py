"""KV-cache formats: one scale (and zero) per token per head, over head_dim, for x [..., H, D].

- `kv4` (QoQ KV4): asymmetric UINT4 over [min(x, 0), max(x, 0)] of each head vector,
  s = fp16_up(span / 15), z = clamp(round(-min / s), 0, 15) (an integer, stored exactly in fp16),
  q = clamp(round(x / s) + z, 0, 15), x' = (q - z) * s. Stored: packed uint8 [..., H, D/2] (two
  values per byte along head_dim, low nibble = even d), scale fp16 [..., H], zero fp16 [..., H].
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
from lowc.quant.grids import quantize_symmetric, quantize_uint4_asymmetric
from lowc.quant.numerics import check_float_input
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


def quantize_kv4(x: torch.Tensor) -> KV4:
    """x [..., H, D] float -> KV4; D must be even (two values per byte)."""
    _check_kv(x)
    if x.shape[-1] % 2:
        raise QuantizationError(f"KV4 packs two values per byte, so head_dim must be even (got {x.shape[-1]})")
    q, scale, zero = quantize_uint4_asymmetric(x.to(torch.float32), "KV4 scale")
    return KV4(pack_int4(q.to(torch.uint8)), scale.squeeze(-1), zero.squeeze(-1).to(torch.float16))


def dequantize_kv4(kv: KV4, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """KV4 -> x' [..., H, D] in dtype (computed in float32)."""
    q = unpack_uint4(kv.packed).to(torch.float32)
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

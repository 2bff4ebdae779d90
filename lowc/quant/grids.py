"""The two rounding rules that weight and KV formats share, over the last dim of a float32 tensor.

- Symmetric with an fp16 scale: s = fp16_up(absmax / qmax), q = clamp(round(x / s), -qmax, qmax).
- Asymmetric UINT4 with an integer zero: the range [min(x, 0), max(x, 0)] always contains 0,
  s = fp16_up(span / 15), z = clamp(round(-min / s), 0, 15), q = clamp(round(x / s) + z, 0, 15), and
  x' = (q - z) * s. Keeping 0 in the range makes zero padding harmless (it never changes a group's
  statistics, and a padded 0 encodes as q = z, exactly 0) and keeps z inside 0..15 (the clamp only
  guards float32 rounding of -min / s).

fp16_up(v) is the smallest fp16 >= v (`to_fp16_scale`): scales are rounded UP from float32 and the
quantizer divides by the stored scale, so what is stored is what was used and nothing is ever
clipped: |x - x'| <= s / 2 (up to float32 rounding of x / s). A scale is never below 2**-24, so
all-zero rows quantize to exact zeros.
"""

from __future__ import annotations

import torch

from lowc.quant.numerics import to_fp16_scale


def quantize_symmetric(x: torch.Tensor, qmax: int, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float32 integer-valued, scale fp16 [..., 1]) for float32 x."""
    scale = to_fp16_scale(x.abs().amax(dim=-1, keepdim=True) / qmax, what)
    q = torch.clamp(torch.round(x / scale.to(torch.float32)), -qmax, qmax)
    return q, scale


def quantize_uint4_asymmetric(x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q float32 0..15, scale fp16 [..., 1], zero float32 integer-valued 0..15 [..., 1]) for float32 x."""
    vmin = x.amin(dim=-1, keepdim=True).clamp(max=0)
    vmax = x.amax(dim=-1, keepdim=True).clamp(min=0)
    scale = to_fp16_scale((vmax - vmin) / 15, what)
    s = scale.to(torch.float32)
    zero = torch.clamp(torch.round(-vmin / s), 0, 15)
    q = torch.clamp(torch.round(x / s) + zero, 0, 15)
    return q, scale, zero

"""The integer grid of a packed weight, element by element, and new codes on that same grid.

Every lowc weight format is, once its scales are fixed, an affine integer grid per element:
    W'[n, k] = (q[n, k] - zero[n, k]) * step[n, k],   q integer in [qmin[n, k], qmax[n, k]]
- w8a8:        step = scale[n], zero = 0, q in [-127, 127]
- w4a8_pc:     step = scale[n], zero = z[n], q in [0, 15]
- w4a16_g{G}:  step = scale[n, g], zero = z[n, g], q in [0, 15]
- w4a8_g{G}:   step = s0[n] * s1[n, g], zero = z[n, g]; q in [0, 15] further limited so that the
               level-1 integer (q - z) * s1 stays within int8 (the format's own guarantee)
- w4a4_g{G}_o{O}: step = scale[n, g], zero = 0, q in [-7, 7]; the last O columns step =
               outlier_scale[n], q in [-127, 127]
GPTQ keeps the scales a packed weight was made with (the clip pass's, or round-to-nearest's) and
chooses new codes; `with_codes` packs those codes with the same scales. The two functions read
and build the formats' public fields only, and the tests check, for every format, that
`with_codes(p, codes(p))` gives back p's tensors bit for bit and that `grid.dequantize(codes)`
equals `p.dequantize()`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.errors import PassError
from lowc.quant import W4A4Outlier, W4A8Channel, W4A8Grouped, W4A16Grouped, W8A8
from lowc.quant.numerics import pad_last_dim
from lowc.quant.packing import pack_int4, unpack_int4, unpack_uint4


@dataclass(frozen=True)
class ElementGrid:
    """Per-element affine grid; all fields float32 [N, K] (integer-valued except step)."""

    step: torch.Tensor
    zero: torch.Tensor
    qmin: torch.Tensor
    qmax: torch.Tensor

    def quantize(self, w: torch.Tensor, cols: slice | int = slice(None)) -> torch.Tensor:
        """Nearest codes for float w on columns `cols` of the grid (clamped to the valid range)."""
        q = torch.round(w / self.step[:, cols]) + self.zero[:, cols]
        return torch.minimum(torch.maximum(q, self.qmin[:, cols]), self.qmax[:, cols])

    def dequantize(self, q: torch.Tensor, cols: slice | int = slice(None)) -> torch.Tensor:
        return (q - self.zero[:, cols]) * self.step[:, cols]

    def permute(self, perm: torch.Tensor) -> "ElementGrid":
        return ElementGrid(self.step[:, perm], self.zero[:, perm], self.qmin[:, perm], self.qmax[:, perm])


def _per_group(t: torch.Tensor, group: int, k: int) -> torch.Tensor:
    return t.to(torch.float32).repeat_interleave(group, dim=1)[:, :k]


def _full(like: torch.Tensor, value: float) -> torch.Tensor:
    return torch.full_like(like, value, dtype=torch.float32)


def element_grid(p) -> ElementGrid:
    """The ElementGrid of packed weight `p` (any lowc weight format)."""
    k = p.in_features
    if isinstance(p, W8A8):
        step = p.scale.float()[:, None].expand(-1, k).contiguous()
        return ElementGrid(step, _full(step, 0), _full(step, -127), _full(step, 127))
    if isinstance(p, W4A8Channel):
        step = p.scale.float()[:, None].expand(-1, k).contiguous()
        zero = p.zero.float()[:, None].expand(-1, k).contiguous()
        return ElementGrid(step, zero, _full(step, 0), _full(step, 15))
    if isinstance(p, W4A16Grouped):
        g = p.spec.group
        step, zero = _per_group(p.scale, g, k), _per_group(p.zero, g, k)
        return ElementGrid(step, zero, _full(step, 0), _full(step, 15))
    if isinstance(p, W4A8Grouped):
        g = p.spec.group
        s1 = _per_group(p.s1, g, k)
        zero = _per_group(p.zs1, g, k) / s1
        step = s1 * p.s0.float()[:, None]
        reach = torch.floor(127 / s1)  # |(q - z) * s1| <= 127: the level-1 integer stays in int8
        return ElementGrid(step, zero, torch.clamp(zero - reach, min=0), torch.clamp(zero + reach, max=15))
    if isinstance(p, W4A4Outlier):
        g, o = p.spec.group, p.spec.outliers
        normal = k - o
        step = torch.cat((_per_group(p.scale, g, normal), p.outlier_scale.float()[:, None].expand(-1, o)), dim=1)
        qmax = torch.cat((_full(step[:, :normal], 7), _full(step[:, normal:], 127)), dim=1)
        return ElementGrid(step.contiguous(), _full(step, 0), -qmax, qmax)
    raise PassError(f"no element grid for packed weight type {type(p).__name__}")


def codes(p) -> torch.Tensor:
    """The integer codes q [N, K] of packed weight `p`, as float32."""
    k = p.in_features
    if isinstance(p, W8A8):
        return p.qweight.float()
    if isinstance(p, W4A8Grouped):
        return p.codes()[:, :k].float()
    if isinstance(p, (W4A8Channel, W4A16Grouped)):
        return unpack_uint4(p.qweight)[:, :k].float()
    if isinstance(p, W4A4Outlier):
        normal = k - p.spec.outliers
        return torch.cat((unpack_int4(p.qweight)[:, :normal].float(), p.outlier_weight.float()), dim=1)
    raise PassError(f"no codes for packed weight type {type(p).__name__}")


def _pack_uint4(q: torch.Tensor, pad_code: torch.Tensor, width: int, pack=pack_int4) -> torch.Tensor:
    """Pack codes [N, K] padded to `width` columns with `pad_code` [N, width] (exact zeros)."""
    full = torch.cat((q, pad_code[:, q.shape[1]:width]), dim=1) if width > q.shape[1] else q
    return pack(full.to(torch.uint8))


def with_codes(p, q: torch.Tensor):
    """A packed weight with p's scales and zeros and the codes q [N, K] (integer-valued)."""
    grid = element_grid(p)
    q = q.to(torch.float32)
    if q.shape != grid.step.shape or bool(((q < grid.qmin) | (q > grid.qmax) | (q != torch.round(q))).any()):
        raise PassError(f"{p.spec.name}: codes outside the grid's integer range (shape {tuple(q.shape)})")
    k = p.in_features
    if isinstance(p, W8A8):
        return W8A8(p.spec, k, q.to(torch.int8), p.scale)
    if isinstance(p, W4A8Channel):
        width = p.qweight.shape[1] * 2
        pad = p.zero.float()[:, None].expand(-1, width)
        return W4A8Channel(p.spec, k, _pack_uint4(q, pad, width), p.scale, p.zero)
    if isinstance(p, W4A16Grouped):
        width = p.qweight.shape[1] * 2
        return W4A16Grouped(p.spec, k, _pack_uint4(q, _per_group(p.zero, p.spec.group, width), width), p.scale, p.zero)
    if isinstance(p, W4A8Grouped):
        width = p.qweight.shape[1] * 2
        pad = _per_group(p.zs1, p.spec.group, width) / _per_group(p.s1, p.spec.group, width)
        return W4A8Grouped(p.spec, k, _pack_uint4(q, pad, width, W4A8Grouped.pack_codes), p.s1, p.zs1, p.s0)
    if isinstance(p, W4A4Outlier):
        normal = k - p.spec.outliers
        width = p.qweight.shape[1] * 2
        q4 = pad_last_dim(q[:, :normal], width).to(torch.int8)
        return W4A4Outlier(p.spec, k, pack_int4(q4), p.scale, q[:, normal:].to(torch.int8), p.outlier_scale)
    raise PassError(f"cannot rebuild packed weight type {type(p).__name__}")

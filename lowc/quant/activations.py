"""Dynamic activation quantization (per token, symmetric) and its inverse; the reference behind
`lowc::quantize_act`.

All math is float32 whatever the input dtype. For x [..., K]:
- INT8 per token (w4a8_*, w8a8): s = absmax(x[..., :]) / 127, q = clamp(round(x / s), -127, 127);
  scale float32 [..., 1].
- INT4 per token per group + INT8 tail (w4a4_g{G}_o{O}): the first K-O channels in groups of G
  (the last group may be partial: its absmax uses only its real channels), s = absmax / 7,
  q = clamp(round(x / s), -7, 7); the last O channels (the outliers the reorder pass moved there) get
  one INT8 scale per token as above. q int8 [..., K] holds the INT4 values unpacked; scale float32
  [..., ceil((K-O)/G) + (1 if O else 0)], the outlier scale last.
- INT{M} per token (bit-plane formats w{N}a{M}_..., lowc.quant.bitplane; M in 4..8): as INT8 with
  qmax = 2**(M-1) - 1 (31 for M=6), q held in int8.
A row (or group) that is all zeros gets scale 1.0, so it quantizes to zeros and never divides by 0.
"""

from __future__ import annotations

import torch

from lowc.errors import QuantizationError
from lowc.quant.numerics import ceil_div, check_float_input, pad_last_dim
from lowc.quant.spec import ACT_INT4_GROUP_INT8_TAIL, ACT_INT8_TOKEN, ACT_INT_TOKEN, FormatSpec, as_spec

INT8_MAX = 127
INT4_MAX = 7


def _symmetric(x: torch.Tensor, qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize float32 x over its last dim with one scale: (q int8, scale float32 [..., 1])."""
    absmax = x.abs().amax(dim=-1, keepdim=True)
    scale = absmax / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.clamp(torch.round(x / scale), -qmax, qmax).to(torch.int8)
    return q, scale


def quantize_int8_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (q int8 [..., K], scale float32 [..., 1])."""
    check_float_input(x, "activation")
    return _symmetric(x.to(torch.float32), INT8_MAX)


def quantize_int4_groups_int8_tail(x: torch.Tensor, group: int, outliers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., K] float -> (q int8 [..., K], scale float32 [..., ceil((K-O)/G) (+1 if O)])."""
    check_float_input(x, "activation")
    k = x.shape[-1]
    if k < outliers:
        raise QuantizationError(
            f"activation has K={k} features but the format keeps {outliers} outlier channels; "
            "use a format with fewer outliers (w4a4_g{G}_o{O} with O <= K)"
        )
    x = x.to(torch.float32)
    normal = k - outliers
    n_groups = ceil_div(normal, group)
    # Zero padding leaves each partial group's absmax unchanged: statistics use only real channels.
    grouped = pad_last_dim(x[..., :normal], n_groups * group).unflatten(-1, (n_groups, group))
    q4, s4 = _symmetric(grouped, INT4_MAX)
    q_parts = [q4.flatten(-2)[..., :normal]]
    s_parts = [s4.squeeze(-1)]
    if outliers:
        q8, s8 = _symmetric(x[..., normal:], INT8_MAX)
        q_parts.append(q8)
        s_parts.append(s8)
    return torch.cat(q_parts, dim=-1), torch.cat(s_parts, dim=-1)


def quantize_activation(x: torch.Tensor, fmt: str | FormatSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The activation quantizer that format `fmt` asks for (reference of lowc::quantize_act)."""
    spec = as_spec(fmt)
    if spec.act_kind == ACT_INT8_TOKEN:
        return quantize_int8_per_token(x)
    if spec.act_kind == ACT_INT4_GROUP_INT8_TAIL:
        return quantize_int4_groups_int8_tail(x, spec.group, spec.outliers)
    if spec.act_kind == ACT_INT_TOKEN:  # bit-plane formats (lowc.quant.bitplane): INT{M} per token
        check_float_input(x, "activation")
        return _symmetric(x.to(torch.float32), 2 ** (spec.act_bits - 1) - 1)
    spec.act_scale_groups(x.shape[-1])  # raises the "activations stay float" error
    raise AssertionError("unreachable")


def check_quantized_activation(q: torch.Tensor, scale: torch.Tensor, spec: FormatSpec) -> None:
    """Raise QuantizationError unless (q, scale) has the dtypes and shapes quantize_act produces."""
    if q.dtype != torch.int8:
        raise QuantizationError(
            f"{spec.name}: quantized activation must be int8, got {q.dtype}; run quantize_act first"
        )
    if scale is None or scale.dtype != torch.float32:
        got = None if scale is None else scale.dtype
        raise QuantizationError(f"{spec.name}: activation scale must be a float32 tensor, got {got}")
    expected = (*q.shape[:-1], spec.act_scale_groups(q.shape[-1]))
    if tuple(scale.shape) != expected:
        raise QuantizationError(
            f"{spec.name}: activation scale has shape {tuple(scale.shape)}, expected {expected} for q "
            f"of shape {tuple(q.shape)}; was it quantized for another format?"
        )


def dequantize_activation(q: torch.Tensor, scale: torch.Tensor, fmt: str | FormatSpec) -> torch.Tensor:
    """Inverse of quantize_activation: float32 [..., K]."""
    spec = as_spec(fmt)
    check_quantized_activation(q, scale, spec)
    if spec.act_kind in (ACT_INT8_TOKEN, ACT_INT_TOKEN):
        return q.to(torch.float32) * scale
    k = q.shape[-1]
    normal = k - spec.outliers
    per_channel = scale[..., : ceil_div(normal, spec.group)].repeat_interleave(spec.group, dim=-1)[..., :normal]
    if spec.outliers:
        per_channel = torch.cat((per_channel, scale[..., -1:].expand(*q.shape[:-1], spec.outliers)), dim=-1)
    return q.to(torch.float32) * per_channel

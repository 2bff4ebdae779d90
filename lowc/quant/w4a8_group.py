"""`w4a8_g{G}`: QoQ progressive group quantization (QServe's W4A8 g128 weights).

Level 0, per output channel n, symmetric INT8 with the protective range 119:
    s0[n] = fp16_up(absmax(W[n, :]) / 119),   w8 = clamp(round(W / s0), -119, 119)
Level 1, per group of G along K, asymmetric UINT4 on the integers w8 with an integer scale s1 and
an integer zero z in 0..15 (the group's range [min(w8, 0), max(w8, 0)] always contains 0):
    q = clamp(round(w8 / s1) + z, 0, 15),   w8' = q * s1 - z * s1    (integer, fits int8)
s1 is picked per group from two candidates, c = max(1, ceil(span / 15)) and max(1, c - 1), with
z = clamp(round(-min / s1), 0, 15): c alone covers the range without clipping, but rounding span/15
up to an integer can waste most of a step, so the smaller candidate wins when its squared error on
the group is strictly lower (+0.5 dB SQNR on Gaussian weights). DeepCompressor instead rounds
span/15 to nearest; the two-candidate search is never worse than either rounding choice it contains.
Why 119 keeps w8' in int8: |w8' - w8| <= s1/2 for every value that is not clipped (a clipped value
moves towards the inside of the range), s1 <= ceil(238 / 15) = 16, so |w8'| <= 119 + 8 = 127.

Tensors (the order of `tensors()`, for W [N, K], Kp = K rounded up to a multiple of G):
    qweight uint8 [N, Kp/2]  q in nibble-split order: per 8 codes (one 32-bit word) byte b holds
                             code b in its low and code 4 + b in its high nibble (lowc.quant.packing)
    s1      uint8 [N, Kp/G]  level-1 integer scale, 1..16
    zs1     uint8 [N, Kp/G]  z * s1, 0..240, so the kernel does one multiply-subtract per value
    s0      fp16  [N]        level-0 scale
Padded columns hold q = z, i.e. w8' = 0 exactly. GEMM (reference `linear`): acc[m, n] =
sum_k x_q[m, k] * w8'[n, k] exact in int32, then y = acc * s_x[m] * s0[n] (+ bias) in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.errors import QuantizationError
from lowc.quant.activations import check_quantized_activation
from lowc.quant.base import PackedWeight, check_in_features, finish_linear
from lowc.quant.numerics import check_float_input, exact_int_matmul, pad_last_dim, padded_k, to_fp16_scale
from lowc.quant.packing import pack_uint4_split, unpack_uint4_split
from lowc.quant.spec import FormatSpec

PROTECTIVE_RANGE = 119


def _level1_error(w8: torch.Tensor, vmin: torch.Tensor, s1: torch.Tensor):
    """(q, z, squared error per group) of one s1 candidate; in-place ops keep big weights fast."""
    z = torch.clamp(torch.round(-vmin / s1), 0, 15)
    q = torch.div(w8, s1).round_().add_(z).clamp_(0, 15)
    err = (q - z).mul_(s1).sub_(w8).square_().sum(dim=-1, keepdim=True)
    return q, z, err


def quantize_level1(w8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Level 1 on integer-valued float32 groups w8 [..., G]: (q, s1, z), s1 and z [..., 1]."""
    vmin = w8.amin(dim=-1, keepdim=True).clamp(max=0)
    vmax = w8.amax(dim=-1, keepdim=True).clamp(min=0)
    s1_hi = torch.clamp(torch.ceil((vmax - vmin) / 15), min=1)
    s1_lo = torch.clamp(s1_hi - 1, min=1)
    q_hi, z_hi, err_hi = _level1_error(w8, vmin, s1_hi)
    q_lo, z_lo, err_lo = _level1_error(w8, vmin, s1_lo)
    use_lo = err_lo < err_hi
    return torch.where(use_lo, q_lo, q_hi), torch.where(use_lo, s1_lo, s1_hi), torch.where(use_lo, z_lo, z_hi)


@dataclass(frozen=True, eq=False, repr=False)
class W4A8Grouped(PackedWeight):
    """QoQ progressive W4A8 weight, per-group level 1 (see module docstring for the layout)."""

    FAMILY = "w4a8_g"
    TENSOR_FIELDS = ("qweight", "s1", "zs1", "s0")

    spec: FormatSpec
    in_features: int
    qweight: torch.Tensor
    s1: torch.Tensor
    zs1: torch.Tensor
    s0: torch.Tensor

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt: str | FormatSpec = "w4a8_g128", *, pad: bool = True) -> "W4A8Grouped":
        spec = cls._check_spec(fmt)
        check_float_input(w, "weight", ndim=2)
        n, k = w.shape
        w = w.to(torch.float32)
        s0 = to_fp16_scale(w.abs().amax(dim=1) / PROTECTIVE_RANGE, f"{spec.name} level-0 scale")
        w8 = torch.div(w, s0.to(torch.float32)[:, None]).round_().clamp_(-PROTECTIVE_RANGE, PROTECTIVE_RANGE)
        kp = padded_k(k, spec.group, pad, spec.name)
        groups = pad_last_dim(w8, kp).unflatten(-1, (kp // spec.group, spec.group))
        q, s1, z = quantize_level1(groups)
        packed = cls(
            spec,
            k,
            pack_uint4_split(q.flatten(-2).to(torch.uint8)),
            s1.squeeze(-1).to(torch.uint8),
            (z * s1).squeeze(-1).to(torch.uint8),
            s0,
        )
        if w.numel() and float(packed._w8_float().abs().max()) > 127:  # the protective-range guarantee
            raise QuantizationError(f"{spec.name}: q * s1 - z * s1 left int8; the protective range is broken")
        return packed

    @classmethod
    def from_tensors(cls, fmt: str | FormatSpec, tensors, in_features: int) -> "W4A8Grouped":
        spec = cls._check_spec(fmt)
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        kp = padded_k(in_features, spec.group, True, spec.name)
        ng = kp // spec.group
        cls._check_tensors(
            spec,
            tensors,
            [(torch.uint8, (n, kp // 2)), (torch.uint8, (n, ng)), (torch.uint8, (n, ng)), (torch.float16, (n,))],
        )
        return cls(spec, in_features, *tensors)

    def _w8_float(self) -> torch.Tensor:
        """w8' = q * s1 - z * s1 as integer-valued float32 [N, Kp] (exact: |values| <= 240)."""
        g = self.spec.group
        q = self.codes().to(torch.float32).unflatten(-1, (-1, g))
        return q.mul_(self.s1.to(torch.float32)[..., None]).sub_(self.zs1.to(torch.float32)[..., None]).flatten(-2)

    def codes(self) -> torch.Tensor:
        """The UINT4 codes q as uint8 [N, Kp] in natural K order (padding included)."""
        return unpack_uint4_split(self.qweight)

    @staticmethod
    def pack_codes(q: torch.Tensor) -> torch.Tensor:
        """Codes [N, Kp] (0..15, Kp a multiple of 8) -> the qweight tensor (nibble-split order)."""
        return pack_uint4_split(q.to(torch.uint8))

    def int_weight(self) -> torch.Tensor:
        """w8' as int8 [N, Kp]: the operand of the INT8 GEMM (padding included, decoding to 0)."""
        return self._w8_float().to(torch.int8)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this packing represents (the reference)."""
        w = self._w8_float() * self.s0.to(torch.float32)[:, None]
        return w[:, : self.in_features]

    def linear(self, x: torch.Tensor, x_scale: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """Reference W4A8 GEMM on int8 activations from quantize_act (see module docstring)."""
        check_in_features(self.spec, x, self.in_features)
        check_quantized_activation(x, x_scale, self.spec)
        lead = x.shape[:-1]
        x2 = pad_last_dim(x.reshape(-1, self.in_features), self.qweight.shape[1] * 2)
        acc = exact_int_matmul(x2, self._w8_float(), bound=128)
        y = acc.to(torch.float32) * x_scale.reshape(-1, 1) * self.s0.to(torch.float32)[None, :]
        return finish_linear(y, bias, out_dtype, lead, self.spec)

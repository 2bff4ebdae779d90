"""`w4a8_pc`: QoQ per-channel W4A8 (QServe's per-channel weights): UINT4 per output channel.

Per output channel n, asymmetric over the range [min(W[n], 0), max(W[n], 0)]:
    s[n] = fp16_up(span / 15),  z[n] = clamp(round(-min / s), 0, 15),  q = clamp(round(W / s) + z, 0, 15)
    W' = (q - z) * s
The zero is an integer (stored exactly in fp16) so the whole integer part of the GEMM stays exact:
the kernel feeds q (0..15) to the INT8 dot as is and corrects in the epilogue with the per-token sum
of the quantized activations,
    acc[m, n] = sum_k x_q[m, k] * q[n, k],  xsum[m] = sum_k x_q[m, k]          (int32, exact)
    y[m, n]   = (acc - z[n] * xsum[m]) * s_x[m] * s[n]  (+ bias)                (float32)
QServe keeps fp16 products s*z and s_x*xsum instead; lowc keeps z integer so acc - z*xsum is exact.

Tensors: qweight uint8 [N, Kp/2] (Kp = K rounded up to even; the pad nibble is z, i.e. exact 0),
scale fp16 [N], zero fp16 [N] (integer values 0..15).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.quant.activations import check_quantized_activation
from lowc.quant.base import PackedWeight, check_in_features, finish_linear
from lowc.quant.grids import quantize_uint4_asymmetric
from lowc.quant.numerics import check_float_input, exact_int_matmul
from lowc.quant.packing import pack_int4, unpack_uint4
from lowc.quant.spec import FormatSpec


@dataclass(frozen=True, eq=False, repr=False)
class W4A8Channel(PackedWeight):
    """QoQ per-channel W4A8 weight (see module docstring for the layout)."""

    FAMILY = "w4a8_pc"
    TENSOR_FIELDS = ("qweight", "scale", "zero")

    spec: FormatSpec
    in_features: int
    qweight: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt: str | FormatSpec = "w4a8_pc", *, pad: bool = True) -> "W4A8Channel":
        """`pad` is accepted for a uniform signature; an odd K is always padded by one zero nibble."""
        spec = cls._check_spec(fmt)
        check_float_input(w, "weight", ndim=2)
        k = w.shape[1]
        q, scale, zero = quantize_uint4_asymmetric(w.to(torch.float32), f"{spec.name} scale")
        q = torch.cat((q, zero.expand(-1, k % 2)), dim=1)  # the pad nibble decodes to exact 0
        return cls(spec, k, pack_int4(q.to(torch.uint8)), scale.squeeze(1), zero.squeeze(1).to(torch.float16))

    @classmethod
    def from_tensors(cls, fmt: str | FormatSpec, tensors, in_features: int) -> "W4A8Channel":
        spec = cls._check_spec(fmt)
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        kp = in_features + in_features % 2
        cls._check_tensors(
            spec, tensors, [(torch.uint8, (n, kp // 2)), (torch.float16, (n,)), (torch.float16, (n,))]
        )
        return cls(spec, in_features, *tensors)

    def codes(self) -> torch.Tensor:
        """q as int16 [N, K] (values 0..15), pad removed."""
        return unpack_uint4(self.qweight)[:, : self.in_features].to(torch.int16)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this packing represents (the reference)."""
        z = self.zero.to(torch.float32)[:, None]
        return (self.codes().to(torch.float32) - z) * self.scale.to(torch.float32)[:, None]

    def linear(self, x: torch.Tensor, x_scale: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """Reference W4A8 per-channel GEMM on int8 activations from quantize_act."""
        check_in_features(self.spec, x, self.in_features)
        check_quantized_activation(x, x_scale, self.spec)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        acc = exact_int_matmul(x2, self.codes())
        xsum = x2.to(torch.int32).sum(dim=1, keepdim=True)
        corrected = acc - self.zero.to(torch.int32)[None, :] * xsum
        y = corrected.to(torch.float32) * x_scale.reshape(-1, 1) * self.scale.to(torch.float32)[None, :]
        return finish_linear(y, bias, out_dtype, lead, self.spec)

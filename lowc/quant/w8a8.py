"""`w8a8`: SmoothQuant-style INT8 weights per output channel, INT8 activations per token.

    s[n] = fp16_up(absmax(W[n, :]) / 127),  q = clamp(round(W / s), -127, 127),  W' = q * s
GEMM: acc = x_q @ q^T exact in int32, y = acc * s_x[m] * s[n] (+ bias) in float32.
Tensors: qweight int8 [N, K] (no padding), scale fp16 [N].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.quant.activations import check_quantized_activation
from lowc.quant.base import PackedWeight, check_in_features, finish_linear
from lowc.quant.grids import quantize_symmetric
from lowc.quant.numerics import check_float_input, exact_int_matmul
from lowc.quant.spec import FormatSpec


@dataclass(frozen=True, eq=False, repr=False)
class W8A8(PackedWeight):
    """Per-channel INT8 weight (see module docstring for the layout)."""

    FAMILY = "w8a8"
    TENSOR_FIELDS = ("qweight", "scale")

    spec: FormatSpec
    in_features: int
    qweight: torch.Tensor
    scale: torch.Tensor

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt: str | FormatSpec = "w8a8", *, pad: bool = True) -> "W8A8":
        """`pad` is accepted for a uniform signature; INT8 needs no padding."""
        spec = cls._check_spec(fmt)
        check_float_input(w, "weight", ndim=2)
        q, scale = quantize_symmetric(w.to(torch.float32), 127, f"{spec.name} scale")
        return cls(spec, w.shape[1], q.to(torch.int8), scale.squeeze(1))

    @classmethod
    def from_tensors(cls, fmt: str | FormatSpec, tensors, in_features: int) -> "W8A8":
        spec = cls._check_spec(fmt)
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        cls._check_tensors(spec, tensors, [(torch.int8, (n, in_features)), (torch.float16, (n,))])
        return cls(spec, in_features, *tensors)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this packing represents (the reference)."""
        return self.qweight.to(torch.float32) * self.scale.to(torch.float32)[:, None]

    def linear(self, x: torch.Tensor, x_scale: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """Reference W8A8 GEMM on int8 activations from quantize_act."""
        check_in_features(self.spec, x, self.in_features)
        check_quantized_activation(x, x_scale, self.spec)
        lead = x.shape[:-1]
        acc = exact_int_matmul(x.reshape(-1, self.in_features), self.qweight)
        y = acc.to(torch.float32) * x_scale.reshape(-1, 1) * self.scale.to(torch.float32)[None, :]
        return finish_linear(y, bias, out_dtype, lead, self.spec)

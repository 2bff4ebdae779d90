"""`w4a16_g{G}`: weight-only UINT4 per group of G along K; activations stay bf16/fp16/fp32.

Per (output channel n, group g), asymmetric over [min(W, 0), max(W, 0)] of the group's real columns:
    s = fp16_up(span / 15),  z = clamp(round(-min / s), 0, 15),  q = clamp(round(W / s) + z, 0, 15)
    W' = (q - z) * s      (z is an integer held exactly in fp16; (q - z) * s is exact in float32)
A kernel may equally compute q * s - z * s with an fp16/fp32 FMA; the reference is (q - z) * s.
GEMM: y = x @ W'^T accumulated in float32 (+ bias), cast to out_dtype (not bit-exact across GEMMs).

Tensors (Kp = K rounded up to a multiple of G): qweight uint8 [N, Kp/2] (low nibble = even k),
scale fp16 [N, Kp/G], zero fp16 [N, Kp/G]. Padded columns encode q = z, exact 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.errors import QuantizationError
from lowc.quant.base import PackedWeight, check_in_features, finish_linear
from lowc.quant.grids import quantize_uint4_asymmetric
from lowc.quant.numerics import check_float_input, pad_last_dim, padded_k
from lowc.quant.packing import pack_int4, unpack_uint4
from lowc.quant.spec import FormatSpec


@dataclass(frozen=True, eq=False, repr=False)
class W4A16Grouped(PackedWeight):
    """Weight-only UINT4 group-quantized weight (see module docstring for the layout)."""

    FAMILY = "w4a16_g"
    TENSOR_FIELDS = ("qweight", "scale", "zero")

    spec: FormatSpec
    in_features: int
    qweight: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt: str | FormatSpec = "w4a16_g128", *, pad: bool = True) -> "W4A16Grouped":
        spec = cls._check_spec(fmt)
        check_float_input(w, "weight", ndim=2)
        k = w.shape[1]
        kp = padded_k(k, spec.group, pad, spec.name)
        groups = pad_last_dim(w.to(torch.float32), kp).unflatten(-1, (kp // spec.group, spec.group))
        q, scale, zero = quantize_uint4_asymmetric(groups, f"{spec.name} scale")
        return cls(
            spec, k, pack_int4(q.flatten(-2).to(torch.uint8)), scale.squeeze(-1), zero.squeeze(-1).to(torch.float16)
        )

    @classmethod
    def from_tensors(cls, fmt: str | FormatSpec, tensors, in_features: int) -> "W4A16Grouped":
        spec = cls._check_spec(fmt)
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        kp = padded_k(in_features, spec.group, True, spec.name)
        ng = kp // spec.group
        cls._check_tensors(
            spec, tensors, [(torch.uint8, (n, kp // 2)), (torch.float16, (n, ng)), (torch.float16, (n, ng))]
        )
        return cls(spec, in_features, *tensors)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this packing represents (the reference)."""
        g = self.spec.group
        q = unpack_uint4(self.qweight).to(torch.float32).unflatten(-1, (-1, g))
        w = (q - self.zero.to(torch.float32)[..., None]) * self.scale.to(torch.float32)[..., None]
        return w.flatten(-2)[:, : self.in_features]

    def linear(self, x: torch.Tensor, x_scale, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """Reference weight-only GEMM: float x [..., K] against the dequantized weight, float32 accumulate."""
        if x_scale is not None:
            raise QuantizationError(
                f"{self.spec.name} takes the float activation with x_scale=None; do not quantize_act it"
            )
        check_float_input(x, f"{self.spec.name} activation")
        check_in_features(self.spec, x, self.in_features)
        lead = x.shape[:-1]
        y = x.reshape(-1, self.in_features).to(torch.float32) @ self.dequantize().T
        return finish_linear(y, bias, out_dtype, lead, self.spec)

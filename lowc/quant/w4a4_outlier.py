"""`w4a4_g{G}_o{O}`: Atom's mixed precision. The outlier-reorder pass has moved the O input channels
with the largest activations to the END of K; those stay INT8, the other K-O channels are INT4.

Weights (float32 math, K_n = K - O normal channels, K_np = K_n rounded up to a multiple of G):
    normal:  per (n, group of G) symmetric INT4, s4 = fp16_up(absmax / 7), q4 = clamp(round(W / s4), -7, 7)
    outlier: per output channel symmetric INT8, s8 = fp16_up(absmax / 127), q8 = clamp(round(W / s8), ±127)
Activations (quantize_act): INT4 per token per group over the same groups, INT8 per token on the tail.
GEMM, integer parts exact, float epilogue in float32:
    acc_g[m, n] = sum_{k in group g} x4[m, k] * q4[n, k]            (int32; |acc_g| <= 64 * G)
    acc_o[m, n] = sum_{k in tail} x8[m, k] * q8[n, k]                (int32)
    y[m, n] = sum_g acc_g * s_x[m, g] * s4[n, g]  +  acc_o * s_x[m, -1] * s8[n]  (+ bias)
Tensors: qweight uint8 [N, K_np/2] (signed two's-complement nibbles, low nibble = even k; padded
columns are 0), scale fp16 [N, K_np/G], outlier_weight int8 [N, O], outlier_scale fp16 [N]
(all ones when O = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.errors import QuantizationError
from lowc.quant.activations import check_quantized_activation
from lowc.quant.base import PackedWeight, check_in_features, finish_linear
from lowc.quant.grids import quantize_symmetric
from lowc.quant.numerics import check_float_input, exact_int_matmul, pad_last_dim, padded_k
from lowc.quant.packing import pack_int4, unpack_int4
from lowc.quant.spec import FormatSpec


def _normal_k(spec: FormatSpec, k: int) -> int:
    if k < spec.outliers:
        raise QuantizationError(
            f"{spec.name}: K={k} is smaller than the {spec.outliers} outlier channels; pick fewer outliers"
        )
    return k - spec.outliers


@dataclass(frozen=True, eq=False, repr=False)
class W4A4Outlier(PackedWeight):
    """Atom W4A4 weight with an INT8 outlier tail (see module docstring for the layout)."""

    FAMILY = "w4a4"
    TENSOR_FIELDS = ("qweight", "scale", "outlier_weight", "outlier_scale")

    spec: FormatSpec
    in_features: int
    qweight: torch.Tensor
    scale: torch.Tensor
    outlier_weight: torch.Tensor
    outlier_scale: torch.Tensor

    @classmethod
    def from_float(
        cls, w: torch.Tensor, fmt: str | FormatSpec = "w4a4_g128_o128", *, pad: bool = True
    ) -> "W4A4Outlier":
        spec = cls._check_spec(fmt)
        check_float_input(w, "weight", ndim=2)
        n, k = w.shape
        normal = _normal_k(spec, k)
        knp = padded_k(normal, spec.group, pad, f"{spec.name} (the K-O normal channels)")
        w = w.to(torch.float32)
        groups = pad_last_dim(w[:, :normal], knp).unflatten(-1, (knp // spec.group, spec.group))
        q4, s4 = quantize_symmetric(groups, 7, f"{spec.name} INT4 scale")
        if spec.outliers:
            q8, s8 = quantize_symmetric(w[:, normal:], 127, f"{spec.name} outlier scale")
        else:
            q8, s8 = w.new_zeros(n, 0), torch.ones(n, 1, dtype=torch.float16, device=w.device)
        return cls(
            spec, k, pack_int4(q4.flatten(-2).to(torch.int8)), s4.squeeze(-1), q8.to(torch.int8), s8.squeeze(1)
        )

    @classmethod
    def from_tensors(cls, fmt: str | FormatSpec, tensors, in_features: int) -> "W4A4Outlier":
        spec = cls._check_spec(fmt)
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        knp = padded_k(_normal_k(spec, in_features), spec.group, True, spec.name)
        cls._check_tensors(
            spec,
            tensors,
            [
                (torch.uint8, (n, knp // 2)),
                (torch.float16, (n, knp // spec.group)),
                (torch.int8, (n, spec.outliers)),
                (torch.float16, (n,)),
            ],
        )
        return cls(spec, in_features, *tensors)

    def codes(self) -> torch.Tensor:
        """The INT4 codes q4 as int8 [N, K_np] (padding included)."""
        return unpack_int4(self.qweight)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this packing represents (the reference)."""
        g = self.spec.group
        normal = self.in_features - self.spec.outliers
        w4 = self.codes().to(torch.float32).unflatten(-1, (-1, g)) * self.scale.to(torch.float32)[..., None]
        w8 = self.outlier_weight.to(torch.float32) * self.outlier_scale.to(torch.float32)[:, None]
        return torch.cat((w4.flatten(-2)[:, :normal], w8), dim=1)

    def int_accumulators(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact integer parts for int8 x [M, K]: (acc_g int32 [M, N, K_np/G], acc_o int32 [M, N])."""
        g = self.spec.group
        normal = self.in_features - self.spec.outliers
        x4 = x[:, :normal]
        if x4.numel() and (int(x4.min()) < -8 or int(x4.max()) > 7):
            raise QuantizationError(
                f"{self.spec.name}: the first K-O activation channels must be INT4 (-8..7); use quantize_act"
            )
        w4 = self.codes().to(torch.float32).unflatten(-1, (-1, g))
        x4 = pad_last_dim(x4.to(torch.float32), w4.shape[1] * g).unflatten(-1, (-1, g))
        # float32 batched GEMM per group is exact: every partial sum is an integer below 64 * G < 2**24.
        acc_g = torch.einsum("mgk,ngk->mng", x4, w4).to(torch.int32)
        acc_o = exact_int_matmul(x[:, normal:], self.outlier_weight)
        return acc_g, acc_o

    def linear(self, x: torch.Tensor, x_scale: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """Reference W4A4 + INT8-outlier GEMM on activations from quantize_act."""
        check_in_features(self.spec, x, self.in_features)
        check_quantized_activation(x, x_scale, self.spec)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        sx = x_scale.reshape(x2.shape[0], -1)
        acc_g, acc_o = self.int_accumulators(x2)
        n_groups = acc_g.shape[-1]
        scaled = acc_g.to(torch.float32) * sx[:, None, :n_groups] * self.scale.to(torch.float32)[None, :, :]
        y = scaled.sum(dim=-1)
        if self.spec.outliers:
            y = y + acc_o.to(torch.float32) * sx[:, -1:] * self.outlier_scale.to(torch.float32)[None, :]
        return finish_linear(y, bias, out_dtype, lead, self.spec)

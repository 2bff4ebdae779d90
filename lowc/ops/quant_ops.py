"""The quantized-linear custom ops `lowc::quantize_act` and `lowc::qlinear`, with fake kernels.

    lowc::quantize_act(Tensor x, str fmt) -> (Tensor q, Tensor scale)
    lowc::qlinear(Tensor x, Tensor? x_scale, Tensor[] weight, Tensor? bias, str fmt,
                  ScalarType out_dtype) -> Tensor

The implementations here are the plain-torch references from `lowc.quant` (the numerical truth).
They are registered as the op's default kernel (dispatch key CompositeExplicitAutograd), so they run
on any device, CUDA included, until a device kernel exists. A device-specific registration such as
`torch.library.register_kernel("lowc::qlinear", "cuda", fn)` goes to the CUDA dispatch key, which
the dispatcher prefers over CompositeExplicitAutograd, so the runtime's Triton kernels take over
on GPU without touching this file. The fake kernels compute output shapes and dtypes and check
dtypes/shapes of the packed weight, so torch.export and FX tracing catch a mis-lowered graph early.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from lowc.errors import QuantizationError
from lowc.quant.activations import quantize_activation
from lowc.quant.registry import weight_from_tensors
from lowc.quant.spec import ACT_FLOAT, parse_format


@torch.library.custom_op("lowc::quantize_act", mutates_args=())
def quantize_act(x: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    """Dynamic per-token activation quantization for format `fmt` (see lowc.quant.activations)."""
    return quantize_activation(x, fmt)


@quantize_act.register_fake
def _quantize_act_fake(x: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    spec = parse_format(fmt)
    if not x.is_floating_point():
        raise QuantizationError(f"lowc::quantize_act: x has dtype {x.dtype}; expected a floating dtype")
    q = x.new_empty(x.shape, dtype=torch.int8)
    scale = x.new_empty((*x.shape[:-1], spec.act_scale_groups(x.shape[-1])), dtype=torch.float32)
    return q, scale


def _check_activation_kind(x: Tensor, x_scale: Optional[Tensor], fmt: str) -> None:
    spec = parse_format(fmt)
    if spec.act_kind == ACT_FLOAT:
        if x_scale is not None or not x.is_floating_point():
            raise QuantizationError(f"lowc::qlinear {fmt}: expects a float x and x_scale=None")
    elif x.dtype != torch.int8 or x_scale is None:
        raise QuantizationError(
            f"lowc::qlinear {fmt}: expects the int8 x and float32 x_scale from lowc::quantize_act, "
            f"got x {x.dtype} and x_scale {None if x_scale is None else x_scale.dtype}"
        )


@torch.library.custom_op("lowc::qlinear", mutates_args=())
def qlinear(
    x: Tensor,
    x_scale: Optional[Tensor],
    weight: list[Tensor],
    bias: Optional[Tensor],
    fmt: str,
    out_dtype: torch.dtype,
) -> Tensor:
    """y = x @ W^T (+ bias) for a packed weight; the explicit integer reference of each format."""
    _check_activation_kind(x, x_scale, fmt)
    packed = weight_from_tensors(fmt, weight, x.shape[-1])
    return packed.linear(x, x_scale, bias, out_dtype)


@qlinear.register_fake
def _qlinear_fake(x, x_scale, weight, bias, fmt, out_dtype):
    _check_activation_kind(x, x_scale, fmt)
    packed = weight_from_tensors(fmt, weight, x.shape[-1])  # checks dtypes and shapes only
    return x.new_empty((*x.shape[:-1], packed.out_features), dtype=out_dtype)

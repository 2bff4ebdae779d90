"""Format name -> packed weight type, and the two entry points the rest of lowc uses.

    w = quantize_weight(linear.weight, "w4a8_g128")          # a W4A8Grouped
    w = weight_from_tensors("w4a8_g128", w.tensors(), K)     # the same, rebuilt from qlinear's args
"""

from __future__ import annotations

from typing import Sequence

import torch

from lowc.quant.base import PackedWeight
from lowc.quant.spec import FormatSpec, as_spec
from lowc.quant.w4a4_outlier import W4A4Outlier
from lowc.quant.w4a8_channel import W4A8Channel
from lowc.quant.w4a8_group import W4A8Grouped
from lowc.quant.w4a16_group import W4A16Grouped
from lowc.quant.w8a8 import W8A8

WEIGHT_FORMATS: dict[str, type[PackedWeight]] = {
    cls.FAMILY: cls for cls in (W4A8Grouped, W4A8Channel, W8A8, W4A16Grouped, W4A4Outlier)
}


def format_type(fmt: str | FormatSpec) -> type[PackedWeight]:
    """The packed weight type of a format name (QuantizationError for unknown names)."""
    return WEIGHT_FORMATS[as_spec(fmt).family]


def quantize_weight(w: torch.Tensor, fmt: str | FormatSpec, *, pad: bool = True) -> PackedWeight:
    """Pack a float nn.Linear weight [N, K] in format `fmt`."""
    return format_type(fmt).from_float(w, fmt, pad=pad)


def weight_from_tensors(fmt: str | FormatSpec, tensors: Sequence[torch.Tensor], in_features: int) -> PackedWeight:
    """Rebuild a packed weight from its `tensors()` list (checks dtypes and shapes)."""
    return format_type(fmt).from_tensors(fmt, list(tensors), in_features)

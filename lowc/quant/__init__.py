"""lowc's packed quantization formats: the numerical truth that kernels reproduce and passes call.

Imports torch only. Weight formats (one frozen dataclass each, chosen by name through the registry),
dynamic activation quantization, KV-cache formats, and the packing and rounding helpers they share.
docs/formats.md documents every layout.
"""

from lowc.quant.activations import dequantize_activation, quantize_activation
from lowc.quant.base import PackedWeight
from lowc.quant.kv import KV4, KV8, dequantize_kv, quantize_kv
from lowc.quant.numerics import sqnr_db
from lowc.quant.packing import pack_int4, pack_uint4_split, unpack_int4, unpack_uint4, unpack_uint4_split
from lowc.quant.registry import WEIGHT_FORMATS, format_type, quantize_weight, weight_from_tensors
from lowc.quant.spec import FormatSpec, parse_format
from lowc.quant.w4a4_outlier import W4A4Outlier
from lowc.quant.w4a8_channel import W4A8Channel
from lowc.quant.w4a8_group import W4A8Grouped
from lowc.quant.w4a16_group import W4A16Grouped
from lowc.quant.w8a8 import W8A8

__all__ = [
    "FormatSpec", "KV4", "KV8", "PackedWeight", "W4A4Outlier", "W4A8Channel", "W4A8Grouped",
    "W4A16Grouped", "W8A8", "WEIGHT_FORMATS", "dequantize_activation", "dequantize_kv", "format_type",
    "pack_int4", "pack_uint4_split", "parse_format", "quantize_activation", "quantize_kv", "quantize_weight", "sqnr_db",
    "unpack_int4", "unpack_uint4", "unpack_uint4_split", "weight_from_tensors",
]

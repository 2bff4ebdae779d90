"""`KernelSpec`: everything that changes a generated kernel's source, as one frozen value.

A spec names the op, the packed weight format it reads, the bit-widths, the group size, the
outlier count, the activation and output dtypes, the weight layout and the template. Rendering a
spec (`lowc.codegen.render`) turns these into compile-time constants of a Triton module, so two
layers with the same spec share one kernel file and one compiled binary; the shapes (M, N, K) and
the tile configuration stay launch-time arguments.

`spec_for_qlinear(fmt, x_dtype, out_dtype)` is the one place that maps a `lowc::qlinear` node to
its spec (the IR dump and the runtime both call it).
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass

import torch

from lowc.errors import KernelError, QuantizationError
from lowc.quant.spec import parse_format

# One template per packed-format family; all read the canonical layouts of lowc.quant unchanged.
TEMPLATES = {
    "w4a8_g": "qlinear_w4a8_group",
    "w4a8_pc": "qlinear_w4a8_channel",
    "w8a8": "qlinear_w8a8",
    "w4a16_g": "qlinear_w4a16_group",
    "w4a4": "qlinear_w4a4_outlier",
}

# Weight layout the kernels read: exactly lowc.quant's canonical packing (docs/kernels.md).
LAYOUTS = {
    "w4a8_g": "u4x2_k_lo_even",
    "w4a8_pc": "u4x2_k_lo_even",
    "w8a8": "i8_nk",
    "w4a16_g": "u4x2_k_lo_even",
    "w4a4": "i4x2_k_lo_even+i8_tail",
}

# Families whose whole inner product is one INT32 accumulator: they can return it raw
# (out_dtype=int32), which is how the tests check integer exactness.
INTEGER_ACCUMULATOR_FAMILIES = ("w4a8_g", "w4a8_pc", "w8a8")

FLOAT_DTYPES = ("bfloat16", "float16", "float32")


def dtype_name(dtype: torch.dtype | str) -> str:
    """'bfloat16' for torch.bfloat16 or 'bfloat16'/'torch.bfloat16'."""
    name = str(dtype).removeprefix("torch.")
    if not hasattr(torch, name) or not isinstance(getattr(torch, name), torch.dtype):
        raise KernelError(f"{dtype!r} is not a torch dtype name; use e.g. torch.bfloat16 or 'bfloat16'")
    return name


@dataclass(frozen=True)
class KernelSpec:
    """The specialization of one generated kernel (see module docstring)."""

    op: str
    fmt: str
    family: str
    w_bits: int
    a_bits: int  # 16: activations stay floating point
    group_size: int  # along K; 0 = one scale per output channel
    n_outliers: int  # INT8 input channels at the end of K (Atom), 0 = none
    x_dtype: str
    out_dtype: str  # 'int32' = return the raw INT32 accumulator (no epilogue)
    layout: str
    template: str

    @property
    def name(self) -> str:
        """A readable, file-name-safe identifier, e.g. qlinear_w4a8_g128_xint8_obfloat16."""
        return f"{self.op}_{self.fmt}_x{self.x_dtype}_o{self.out_dtype}"

    @property
    def raw_accumulator(self) -> bool:
        return self.out_dtype == "int32"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self) -> str:
        """Canonical JSON of every field: equal specs give equal keys, in any process."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def constants(self) -> dict[str, str]:
        """The compile-time constants rendered into the kernel module: name -> Python expression."""
        dot = self.x_dtype if self.a_bits == 16 else "int8"
        return {
            "W_BITS": str(self.w_bits),
            "A_BITS": str(self.a_bits),
            "GROUP_SIZE": str(self.group_size),
            "N_OUTLIERS": str(self.n_outliers),
            "RAW_ACCUMULATOR": str(self.raw_accumulator),
            "DOT_DTYPE": f"tl.{dot}",
        }


def spec_for_qlinear(fmt: str, x_dtype: torch.dtype | str, out_dtype: torch.dtype | str) -> KernelSpec:
    """The KernelSpec of a `lowc::qlinear(x, x_scale, weight, bias, fmt, out_dtype)` node.

    x_dtype is the dtype of the op's `x` input: int8 for formats that quantize activations,
    bfloat16/float16/float32 for weight-only formats (w4a16_g*).
    """
    return _spec_for_qlinear(fmt, dtype_name(x_dtype), dtype_name(out_dtype))


@functools.lru_cache(maxsize=None)
def _spec_for_qlinear(fmt: str, x_dtype: str, out_dtype: str) -> KernelSpec:
    try:
        f = parse_format(fmt)
    except QuantizationError as e:
        raise KernelError(f"no kernel for format {fmt!r}: {e}") from e
    x_name, out_name = dtype_name(x_dtype), dtype_name(out_dtype)
    if f.act_bits == 16:
        if x_name not in FLOAT_DTYPES:
            raise KernelError(f"{fmt} is weight-only: x must be one of {FLOAT_DTYPES}, got {x_name}")
    elif x_name != "int8":
        raise KernelError(f"{fmt} quantizes activations: x must be the int8 output of quantize_act, got {x_name}")
    if out_name == "int32":
        if f.family not in INTEGER_ACCUMULATOR_FAMILIES:
            raise KernelError(
                f"{fmt} has no single INT32 accumulator (per-group float scaling inside the K loop); "
                f"out_dtype=int32 exists only for {INTEGER_ACCUMULATOR_FAMILIES}"
            )
    elif out_name not in FLOAT_DTYPES:
        raise KernelError(f"out_dtype must be one of {FLOAT_DTYPES} (or int32 for the raw accumulator), got {out_name}")
    return KernelSpec(
        op="qlinear",
        fmt=f.name,
        family=f.family,
        w_bits=f.weight_bits,
        a_bits=f.act_bits,
        group_size=f.group or 0,
        n_outliers=f.outliers,
        x_dtype=x_name,
        out_dtype=out_name,
        layout=LAYOUTS[f.family],
        template=TEMPLATES[f.family],
    )

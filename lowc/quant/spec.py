"""Format names and what they mean: `parse_format("w4a8_g128") -> FormatSpec`.

A format name says how a linear layer's weight is packed and how its activations are quantized.
The names (and nothing else) travel through the FX graph as the `fmt` string argument of the
`lowc::quantize_act` / `lowc::qlinear` ops, so parsing is cached and strict: an unknown or malformed
name is a `QuantizationError` that lists the valid forms.

Families (G = group size along K, a power of two >= 2; O = number of INT8 outlier input channels):
  w4a8_g{G}      QoQ progressive: INT8 per output channel (range 119), then UINT4 per group with an
                 integer scale and zero; INT8 per-token activations.        (QServe, g128)
  w4a8_pc        QoQ per channel: UINT4 per output channel, fp16 scale, integer zero; INT8 acts.
  w8a8           INT8 per output channel; INT8 per-token activations.          (SmoothQuant)
  w4a16_g{G}     UINT4 per group, fp16 scale and zero; activations stay floating point.
  w4a4_g{G}_o{O} Atom: last O input channels INT8, the rest INT4 per group; activations alike.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from typing import Callable

from lowc.errors import QuantizationError

# Activation kinds a format can ask of `quantize_act`.
ACT_INT8_TOKEN = "int8_per_token"
ACT_INT4_GROUP_INT8_TAIL = "int4_per_group_int8_outliers"
ACT_FLOAT = "float"

_VALID_FORMS = "w4a8_g{G}, w4a8_pc, w8a8, w4a16_g{G}, w4a4_g{G}_o{O} (e.g. w4a8_g128, w4a4_g128_o128)"

_PATTERNS = (
    (re.compile(r"w4a8_g(\d+)"), "w4a8_g"),
    (re.compile(r"w4a8_pc"), "w4a8_pc"),
    (re.compile(r"w8a8"), "w8a8"),
    (re.compile(r"w4a16_g(\d+)"), "w4a16_g"),
    (re.compile(r"w4a4_g(\d+)_o(\d+)"), "w4a4"),
)


@dataclass(frozen=True)
class FormatSpec:
    """The parsed meaning of one format name (hashable, cheap, the same object for the same name)."""

    name: str
    family: str
    weight_bits: int
    act_bits: int  # 16 means "not quantized"
    group: int | None  # None: per output channel (no grouping along K)
    outliers: int = 0

    @property
    def act_kind(self) -> str:
        if self.act_bits == 16:
            return ACT_FLOAT
        if self.act_bits == 4:
            return ACT_INT4_GROUP_INT8_TAIL
        return ACT_INT8_TOKEN

    def act_scale_groups(self, k: int) -> int:
        """Number of activation scales per token for an input of k features (see quantize_act)."""
        if self.act_kind == ACT_INT8_TOKEN:
            return 1
        if self.act_kind == ACT_INT4_GROUP_INT8_TAIL:
            normal = k - self.outliers
            return -(-normal // self.group) + (1 if self.outliers > 0 else 0)
        raise QuantizationError(
            f"format {self.name!r} keeps activations in floating point, so they have no scales; "
            "pass the float input to lowc::qlinear with x_scale=None instead of calling quantize_act"
        )


def _check_group(name: str, group: int) -> int:
    if group < 2 or group & (group - 1):
        raise QuantizationError(
            f"format {name!r}: group size {group} is not a power of two >= 2; Triton kernels tile K "
            "by the group, so use e.g. 32, 64 or 128"
        )
    return group


def _check_split_group(name: str, group: int) -> int:
    if group < 8:
        raise QuantizationError(
            f"format {name!r}: group size {group} is below 8; w4a8_g stores its codes in 32-bit words of "
            "eight (nibble-split order) and a group must fill whole words, so use e.g. 32, 64 or 128"
        )
    return group


@functools.lru_cache(maxsize=None)
def parse_format(name: str) -> FormatSpec:
    """Parse a format name; raises QuantizationError naming the valid forms if it is not one."""
    if not isinstance(name, str):
        raise QuantizationError(f"format name must be a str, got {type(name).__name__}; valid: {_VALID_FORMS}")
    for pattern, family in _PATTERNS:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        if family == "w4a8_g":
            return FormatSpec(name, family, 4, 8, _check_split_group(name, _check_group(name, int(match[1]))))
        if family == "w4a8_pc":
            return FormatSpec(name, family, 4, 8, None)
        if family == "w8a8":
            return FormatSpec(name, family, 8, 8, None)
        if family == "w4a16_g":
            return FormatSpec(name, family, 4, 16, _check_group(name, int(match[1])))
        return FormatSpec(name, family, 4, 4, _check_group(name, int(match[1])), int(match[2]))
    extension = _parse_extension(name)
    if extension is not None:
        return extension
    forms = ", ".join([_VALID_FORMS, *(forms for _, _, forms in _EXTENSIONS)])
    raise QuantizationError(f"unknown format name {name!r}; valid forms: {forms}")


def as_spec(fmt: str | FormatSpec) -> FormatSpec:
    """Accept either a name or an already parsed spec."""
    return fmt if isinstance(fmt, FormatSpec) else parse_format(fmt)


# -- Format families defined in other modules (added for lowc.quant.bitplane) -------------------------
# A module outside this file may add a family: it calls register_format_family at import, and is
# listed in EXTENSION_MODULES so that parse_format imports it on its first unknown name. Its names
# then parse even when nothing imported that module yet (e.g. a saved graph run in a fresh process).
# Its FormatSpec may be a subclass (extra fields, its own act_kind); ACT_INT_TOKEN is the activation
# kind of the bit-plane formats: symmetric INT{act_bits} per token, values held in int8, one scale.
ACT_INT_TOKEN = "int_per_token"
EXTENSION_MODULES = ("lowc.quant.bitplane",)
_EXTENSIONS: list[tuple[re.Pattern, Callable[[str, re.Match], FormatSpec], str]] = []


def register_format_family(pattern: str, build: Callable[[str, re.Match], FormatSpec], forms: str) -> None:
    """Add a family: names that fully match `pattern` parse as `build(name, match)`; `forms` is the
    human-readable form listed in errors (e.g. "w{N}a{M}_g{G}_bp")."""
    _EXTENSIONS.append((re.compile(pattern), build, forms))


def _parse_extension(name: str) -> FormatSpec | None:
    for module in EXTENSION_MODULES:
        importlib.import_module(module)
    for pattern, build, _ in _EXTENSIONS:
        match = pattern.fullmatch(name)
        if match is not None:
            return build(name, match)
    return None

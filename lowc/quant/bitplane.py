"""Bit-plane formats: any weight bit-width N in 2..8 with activations of M in 4..8 bits (ABQ-LLM).

Names (the `fmt` string of lowc::qlinear / lowc::quantize_act):
    w{N}a{M}_g{G}[_bb]_int   w{N}a{M}_pc[_bb]_int   direct integer form (what quantization emits)
    w{N}a{M}_g{G}[_bb]_bp    w{N}a{M}_pc[_bb]_bp    bit-plane form (what the `bitplane` pass emits)
G is a power of two >= 32 (a group is a whole number of 32-bit plane words; pc = one group spanning
K). `_bb` is ABQ-LLM's bit balance for N = 2 (their W2*): five levels instead of four.

Weights, per output row n and group g along K, asymmetric on L levels (L = 2**N, or 5 with `_bb`):
    s = fp16_up((max - min) / (L - 1)),  z = clamp(round(-min / s), 0, L - 1),
    q = clamp(round(w / s) + z, 0, L - 1),  w' = s * (q - z)
min/max are over the group's real columns with 0 included (as lowc.quant.grids: a constant group
stays exact, z stays in range), optionally shrunk by a clip ratio (the clip search). fp16_up rounds
the scale up (`to_fp16_scale`), so nothing is clipped that the range covered.
Storage is signed: with P = ceil(log2 L) planes (N, or 3 for `_bb`: 5 levels need 3 bits),
    v = q - 2**(P-1) in [-2**(P-1), 2**(P-1) - 1],  zs = z - 2**(P-1),  w' = s * (v - zs)
so v fits int8 for every P <= 8 (an INT8 MMA can consume it directly), and its planes are the two's
complement bits, the sign plane weighted negatively:
    v = sum_{j < P-1} 2**j * b_j  -  2**(P-1) * b_{P-1}          (plane weights 1, 2, ..., -2**(P-1))
Plane packing: planes uint32 [P, N, Kp/32]; word w of row n of plane j holds k = 32w .. 32w+31 in
"lane order rotated by j": with c = k % 32 = 4i + r (i = 0..7, r = 0..3),
    bit (8r + i + j) mod 32 of the word = b_j[n, k]        (`plane_bit_positions`)
Unrotated (j = 0), byte lane r of `(word >> i) & 0x01010101` is column 4i + r, so the eight registers
i of a word hold the 32 columns as natural int8 words of x (register i = columns 4i..4i+3). Rotating
plane j by j puts its bit at bit j of those lanes already: one mask-and-or per plane and register and
one rotation per register give four byte lanes of P-bit codes (the kernels' recombination). Kp = K
padded to the group (pc: to 32); padded columns hold v = zs (w' = 0 exactly) and the activation is
zero there.

Activations: symmetric INT{M} per token (lowc.quant.activations, kind ACT_INT_TOKEN), qmax =
2**(M-1) - 1, values in int8; their planes follow the same two's complement rule with M planes.

GEMM, both forms (the reference `linear`; the kernels reproduce the integers exactly):
    acc[m, g, n] = sum_{k in g} x[m, k] * v[n, k]  -  zs[n, g] * sum_{k in g} x[m, k]     int32
    y[m, n]      = (sum_g acc[m, g, n] * s[n, g]) * s_x[m]     float32, g ascending (+ bias)
and the bit-plane identity that the binary kernel computes (`binary_accumulators`):
    sum_k x[m, k] v[n, k] = sum_i sum_j a_i * w_j * popcount(X_i[m] & W_j[n])
over activation planes X_i (weights a_i) and weight planes W_j (weights w_j).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from lowc.errors import QuantizationError
from lowc.quant import registry
from lowc.quant.base import PackedWeight, check_in_features, finish_linear
from lowc.quant.numerics import check_float_input, ceil_div, pad_last_dim, to_fp16_scale
from lowc.quant.spec import ACT_INT_TOKEN, FormatSpec, as_spec, register_format_family

W_BITS = tuple(range(2, 9))
A_BITS = tuple(range(4, 9))
MIN_GROUP = 32  # one plane word
FAMILY_INT = "bitplane_int"
FAMILY_PLANES = "bitplane"
FORMS = {"int": FAMILY_INT, "bp": FAMILY_PLANES}
NAME_FORMS = "w{N}a{M}_g{G}[_bb]_int, w{N}a{M}_pc[_bb]_int, w{N}a{M}_g{G}[_bb]_bp, w{N}a{M}_pc[_bb]_bp"
_NAME = r"w(?P<w>\d+)a(?P<a>\d+)_(?:g(?P<g>\d+)|pc)(?P<bb>_bb)?_(?P<form>int|bp)"
BIT_ORDER = ("plane-major uint32 [P, N, Kp/32]; word k // 32, column c = k % 32 = 4i + r (i < 8, r < 4) "
             "at bit (8r + i + j) mod 32 of plane j (lane order, rotated left by j)")


@dataclass(frozen=True)
class BitplaneSpec(FormatSpec):
    """A parsed bit-plane format name. `group` is None for per channel (pc)."""

    form: str = "int"  # "int": codes one per int8; "bp": packed bit planes
    bit_balance: bool = False

    @property
    def levels(self) -> int:
        return 5 if self.bit_balance else 2**self.weight_bits

    @property
    def planes(self) -> int:
        """Number of weight bit planes P (3 for the five-level bit-balanced grid)."""
        return math.ceil(math.log2(self.levels))

    @property
    def plane_weights(self) -> tuple[int, ...]:
        return plane_weights(self.planes)

    @property
    def act_plane_weights(self) -> tuple[int, ...]:
        return plane_weights(self.act_bits)

    @property
    def act_qmax(self) -> int:
        return 2 ** (self.act_bits - 1) - 1

    @property
    def act_kind(self) -> str:
        return ACT_INT_TOKEN

    def act_scale_groups(self, k: int) -> int:
        return 1

    def group_len(self, k: int) -> int:
        """Columns per group for an input of k features (pc: all of K, padded to a plane word)."""
        return self.group or ceil_div(k, MIN_GROUP) * MIN_GROUP

    def padded_k(self, k: int) -> int:
        g = self.group_len(k)
        return ceil_div(k, g) * g

    def with_form(self, form: str) -> "BitplaneSpec":
        """The same format in the other storage form ('int' or 'bp')."""
        return as_spec(format_name(self.weight_bits, self.act_bits, self.group or 0, self.bit_balance, form))

    def describe(self) -> dict:
        """What a reader of the IR needs to interpret the packed tensors (stored in node.meta)."""
        return {
            "weight_bits": self.weight_bits, "act_bits": self.act_bits, "levels": self.levels,
            "planes": self.planes, "plane_weights": list(self.plane_weights),
            "act_plane_weights": list(self.act_plane_weights), "group": self.group or "per channel",
            "bit_balance": self.bit_balance, "bit_order": BIT_ORDER,
            "weight": "w' = scale[n, g] * (v - zero[n, g]), v = sum_j plane_weights[j] * plane_j",
        }


def plane_weights(p: int) -> tuple[int, ...]:
    """Two's complement plane weights: 1, 2, ..., 2**(p-2), -2**(p-1)."""
    return tuple(2**j for j in range(p - 1)) + (-(2 ** (p - 1)),)


def format_name(w_bits: int, a_bits: int, group: int, bit_balance: bool = False, form: str = "int") -> str:
    """The format name for these parameters (group 0 = per channel); validates them."""
    g = "pc" if not group else f"g{group}"
    name = f"w{w_bits}a{a_bits}_{g}{'_bb' if bit_balance else ''}_{form}"
    _build(name, re.fullmatch(_NAME, name))  # raises the named errors
    return name


def _build(name: str, m: re.Match | None) -> BitplaneSpec:
    if m is None:
        raise QuantizationError(f"{name!r} is not a bit-plane format name; forms: {NAME_FORMS}")
    w, a, bb, form = int(m["w"]), int(m["a"]), bool(m["bb"]), m["form"]
    if w not in W_BITS:
        raise QuantizationError(f"{name}: weight bits {w} unsupported; bit-plane formats take {W_BITS[0]}..{W_BITS[-1]}")
    if a not in A_BITS:
        raise QuantizationError(
            f"{name}: activation bits {a} unsupported; the activation quantizer (INT{{M}} per token) "
            f"supports M in {A_BITS[0]}..{A_BITS[-1]} (16 = unquantized has no bit-plane kernel: use w4a16)"
        )
    if bb and w != 2:
        raise QuantizationError(f"{name}: bit balance (_bb, ABQ-LLM's W2*) exists only for 2-bit weights")
    group = int(m["g"]) if m["g"] is not None else None
    if group is not None and (group < MIN_GROUP or group & (group - 1)):
        raise QuantizationError(
            f"{name}: group size {group} unsupported; bit-plane groups are powers of two >= {MIN_GROUP} "
            "(whole 32-bit plane words, one kernel K tile each): 32, 64, 128, 256, ... or pc (per channel)"
        )
    return BitplaneSpec(name, FORMS[form], w, a, group, 0, form, bb)


register_format_family(_NAME, _build, NAME_FORMS)


# -- plane packing ---------------------------------------------------------------------------------------


def plane_bit_positions(j: int, device=None) -> torch.Tensor:
    """int64 [32]: the bit of a plane-j word that holds column c (c = 4i + r -> (8r + i + j) mod 32)."""
    c = torch.arange(32, dtype=torch.int64, device=device)
    return (8 * (c % 4) + c // 4 + j) % 32


def pack_planes(values: torch.Tensor, p: int, rotate: bool = True) -> torch.Tensor:
    """Signed p-bit integers [..., K] (K a multiple of 32) -> planes uint32 [p, ..., K/32] in the
    stored bit order (module docstring); rotate=False leaves every plane in lane order (j = 0), the
    order the binary kernel packs activation planes in."""
    if values.shape[-1] % 32:
        raise QuantizationError(f"pack_planes needs K a multiple of 32, got {values.shape[-1]}; pad K first")
    v = values.to(torch.int64)
    lo, hi = -(2 ** (p - 1)), 2 ** (p - 1) - 1
    if v.numel() and (int(v.min()) < lo or int(v.max()) > hi):
        raise QuantizationError(f"pack_planes: values outside the signed {p}-bit range {lo}..{hi}")
    words = []
    for j in range(p):
        bits = ((v >> j) & 1).unflatten(-1, (-1, 32))
        words.append((bits << plane_bit_positions(j if rotate else 0, v.device)).sum(-1))
    w = torch.stack(words)  # 0 .. 2**32 - 1 in int64: through the int32 with the same bits
    return torch.where(w >= 2**31, w - 2**32, w).to(torch.int32).view(torch.uint32)


def unpack_planes(planes: torch.Tensor, dtype: torch.dtype = torch.int16, rotated: bool = True) -> torch.Tensor:
    """Inverse of pack_planes: uint32 [p, ..., W] -> [..., 32 W] (plane weights applied) in `dtype`."""
    if planes.dtype != torch.uint32:
        raise QuantizationError(f"bit planes must be uint32, got {planes.dtype}")
    words = planes.view(torch.int32)  # the same bits; `>> s & 1` reads bit s whatever the sign
    out = None
    for j, weight in enumerate(plane_weights(planes.shape[0])):
        shifts = plane_bit_positions(j if rotated else 0, planes.device).to(torch.int32)
        bits = ((words[j][..., None] >> shifts) & 1).flatten(-2).to(dtype)
        out = bits * weight if out is None else out.add_(bits, alpha=weight)
    return out


def rotate_right(words: torch.Tensor, s: int) -> torch.Tensor:
    """32-bit words held in int64 (0 .. 2**32 - 1), rotated right by s bits."""
    s %= 32
    return ((words >> s) | (words << (32 - s))) & 0xFFFFFFFF if s else words


def activation_planes(x: torch.Tensor, a_bits: int, kp: int) -> torch.Tensor:
    """int8 activations [M, K] within INT{a_bits} -> planes uint32 [a_bits, M, kp/32] (zero padded), every
    plane in lane order (unrotated): the binary kernel turns weight plane j back by j before the AND."""
    return pack_planes(pad_last_dim(x, kp), a_bits, rotate=False)


def popcount32(words: torch.Tensor) -> torch.Tensor:
    """Bits set in each 32-bit word held in an int64 tensor (SWAR, as the interpreted kernel does)."""
    c = words - ((words >> 1) & 0x55555555)
    c = (c & 0x33333333) + ((c >> 2) & 0x33333333)
    c = (c + (c >> 4)) & 0x0F0F0F0F
    return ((c * 0x01010101) >> 24) & 0xFF


# -- grid choice and the exact integer GEMM --------------------------------------------------------------


def choose_grid(w: torch.Tensor, fmt, clip: torch.Tensor | float | None = None):
    """(scale fp16 [N, NG], z float32 integer-valued 0..L-1 [N, NG]) for a float weight [N, K];
    `clip` (a ratio in (0, 1], scalar or [N, NG]) shrinks each group's range before the scale."""
    spec = _bitplane_spec(fmt)
    check_float_input(w, "weight", ndim=2)
    w = w.to(torch.float32)
    gl, kp = spec.group_len(w.shape[1]), spec.padded_k(w.shape[1])
    extra = (0, kp - w.shape[1])
    vmin = torch.nn.functional.pad(w, extra, value=math.inf).unflatten(-1, (-1, gl)).amin(-1).clamp(max=0)
    vmax = torch.nn.functional.pad(w, extra, value=-math.inf).unflatten(-1, (-1, gl)).amax(-1).clamp(min=0)
    if clip is not None:
        vmin, vmax = vmin * clip, vmax * clip
    scale = to_fp16_scale((vmax - vmin) / (spec.levels - 1), f"{spec.name} scale")
    z = torch.clamp(torch.round(-vmin / scale.to(torch.float32)), 0, spec.levels - 1)
    return scale, z


def quantize_codes(w: torch.Tensor, fmt, scale: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Unsigned codes q in 0..L-1, float32 [N, Kp], of float w [N, K] on the grid (scale, z) [N, NG];
    padded columns get q = z (exactly zero)."""
    spec = _bitplane_spec(fmt)
    k = w.shape[1]
    gl, kp = spec.group_len(k), spec.padded_k(k)
    s = scale.to(torch.float32).repeat_interleave(gl, dim=1)
    zk = z.to(torch.float32).repeat_interleave(gl, dim=1)
    q = torch.clamp(torch.round(pad_last_dim(w.to(torch.float32), kp) / s) + zk, 0, spec.levels - 1)
    q[:, k:] = zk[:, k:]
    return q


def fake_quantize(w: torch.Tensor, fmt, clip=None) -> torch.Tensor:
    """Round-to-nearest weight w' (float32 [N, K]) of format `fmt` (for clip search and tests)."""
    return BitplaneIntWeight.from_float(w, _bitplane_spec(fmt).with_form("int"), clip=clip).dequantize()


def group_dots(x: torch.Tensor, v: torch.Tensor, zs: torch.Tensor, gl: int) -> torch.Tensor:
    """Exact acc[g, m, n] = sum_{k in g} x[m, k] * (v[n, k] - zs[n, g]) for integer-valued x [M, Kp],
    v [N, Kp], zs [N, NG], as a float tensor [NG, M, N]: float32 when every partial sum is below
    2**24 (|x| <= 128, |v - zs| <= 255, so groups up to 256 columns), else float64; either is exact.
    One batched GEMM with the zero folded into the weight is far faster on CPU than integer math."""
    m, kp = x.shape
    ng = kp // gl
    ftype = torch.float32 if 128.0 * 255.0 * gl < 2.0**24 else torch.float64
    vz = v.to(ftype).reshape(-1, ng, gl) - zs.to(ftype)[:, :, None]  # [N, NG, G]
    return torch.bmm(x.to(ftype).reshape(m, ng, gl).transpose(0, 1), vz.permute(1, 2, 0))


def scale_accumulators(dots: torch.Tensor, scale: torch.Tensor, x_scale: torch.Tensor) -> torch.Tensor:
    """y[m, n] = (sum_g acc[g, m, n] * s[n, g]) * s_x[m] in float32, groups added in ascending order,
    from `group_dots` [NG, M, N] (consumed: scaled in place when already float32). Each product is
    rounded before its addition, the order the kernels use (and 0 + a == a, so starting the sum from
    group 0 equals starting from zero)."""
    d = dots.to(torch.float32)
    d.mul_(scale.to(torch.float32).T[:, None, :])
    y = d[0]
    for g in range(1, d.shape[0]):
        y.add_(d[g])
    return y.mul_(x_scale.reshape(-1, 1).to(torch.float32))


def _bitplane_spec(fmt) -> BitplaneSpec:
    spec = as_spec(fmt)
    if not isinstance(spec, BitplaneSpec):
        raise QuantizationError(f"{spec.name} is not a bit-plane format; forms: {NAME_FORMS}")
    return spec


class _BitplaneWeight(PackedWeight):
    """What both forms share: the reference GEMM on top of `codes()` (v) and the zero."""

    scale: torch.Tensor
    zero: torch.Tensor

    def codes(self) -> torch.Tensor:
        raise NotImplementedError

    @property
    def out_features(self) -> int:
        return self.scale.shape[0]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] this packing represents (the reference)."""
        gl = self.spec.group_len(self.in_features)
        v = self.codes().to(torch.float32)
        zs = self.zero.to(torch.float32).repeat_interleave(gl, dim=1)
        w = (v - zs) * self.scale.to(torch.float32).repeat_interleave(gl, dim=1)
        return w[:, : self.in_features]

    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        check_in_features(self.spec, x, self.in_features)
        if x.dtype != torch.int8:
            raise QuantizationError(f"{self.spec.name}: activations must be int8 from lowc::quantize_act, got {x.dtype}")
        qmax = self.spec.act_qmax
        if x.numel() and (int(x.min()) < -qmax - 1 or int(x.max()) > qmax):
            raise QuantizationError(
                f"{self.spec.name}: activation values leave INT{self.spec.act_bits} ({-qmax - 1}..{qmax}); "
                "were they quantized for another format?"
            )
        return pad_last_dim(x.reshape(-1, self.in_features), self.codes().shape[1])

    def _dots(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self._check_x(x)
        return group_dots(x2, self.codes(), self.zero, self.spec.group_len(self.in_features))

    def accumulators(self, x: torch.Tensor) -> torch.Tensor:
        """The direct integer GEMM: int32 [M, NG, N] per-group accumulators for int8 x [..., K]."""
        return self._dots(x).transpose(0, 1).to(torch.int32)

    def linear(self, x: torch.Tensor, x_scale: torch.Tensor, bias, out_dtype: torch.dtype) -> torch.Tensor:
        """Reference GEMM on INT{M} activations from quantize_act (see module docstring)."""
        from lowc.quant.activations import check_quantized_activation

        check_quantized_activation(x, x_scale, self.spec)
        y = scale_accumulators(self._dots(x), self.scale, x_scale)
        return finish_linear(y, bias, out_dtype, x.shape[:-1], self.spec)

    @classmethod
    def _check_common(cls, spec, tensors, n: int, ng: int, first) -> None:
        cls._check_tensors(spec, tensors, [first, (torch.float16, (n, ng)), (torch.int8, (n, ng))])


@dataclass(frozen=True, eq=False, repr=False)
class BitplaneIntWeight(_BitplaneWeight):
    """Direct integer form: qweight int8 [N, Kp] = v, scale fp16 [N, NG], zero int8 [N, NG] = zs."""

    FAMILY = FAMILY_INT
    TENSOR_FIELDS = ("qweight", "scale", "zero")

    spec: FormatSpec
    in_features: int
    qweight: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt="w3a8_g128_int", *, pad: bool = True, clip=None) -> "BitplaneIntWeight":
        spec = cls._check_spec(fmt)
        check_float_input(w, "weight", ndim=2)
        if not pad and spec.padded_k(w.shape[1]) != w.shape[1]:
            raise QuantizationError(
                f"{spec.name}: K={w.shape[1]} is not a multiple of the group size {spec.group_len(w.shape[1])} "
                f"and padding is disabled; pass pad=True (K is padded to {spec.padded_k(w.shape[1])} with exact "
                "zeros) or use a group that divides K (32, 64, 128, ... or pc)"
            )
        scale, z = choose_grid(w, spec, clip)
        return cls.from_grid(w, spec, scale, z)

    @classmethod
    def from_grid(cls, w: torch.Tensor, fmt, scale: torch.Tensor, z: torch.Tensor) -> "BitplaneIntWeight":
        """Quantize float w [N, K] onto a given grid: fp16 scale and unsigned zero z (0..L-1) [N, NG]."""
        spec = cls._check_spec(fmt)
        q = quantize_codes(w, spec, scale, z)
        offset = 2 ** (spec.planes - 1)
        return cls(spec, w.shape[1], (q - offset).to(torch.int8), scale.to(torch.float16),
                   (z.to(torch.float32) - offset).to(torch.int8))

    @classmethod
    def from_tensors(cls, fmt, tensors, in_features: int) -> "BitplaneIntWeight":
        spec = cls._check_spec(fmt)
        n = tensors[0].shape[0] if tensors and tensors[0].dim() else 0
        kp = spec.padded_k(in_features)
        cls._check_common(spec, tensors, n, kp // spec.group_len(in_features), (torch.int8, (n, kp)))
        return cls(spec, in_features, *tensors)

    def codes(self) -> torch.Tensor:
        return self.qweight

    def element_grid(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(step, zero, qmin, qmax), float32 [N, K]: w' = (v - zero) * step with integer v in
        [qmin, qmax], per element; what error-compensating passes (GPTQ) choose codes on."""
        k = self.in_features
        gl = self.spec.group_len(k)
        step = self.scale.to(torch.float32).repeat_interleave(gl, dim=1)[:, :k].contiguous()
        zero = self.zero.to(torch.float32).repeat_interleave(gl, dim=1)[:, :k].contiguous()
        lo = -(2 ** (self.spec.planes - 1))
        return step, zero, torch.full_like(step, lo), torch.full_like(step, lo + self.spec.levels - 1)

    def with_codes(self, v: torch.Tensor) -> "BitplaneIntWeight":
        """The same grid with new signed codes v [N, K] (integer-valued, within element_grid's range)."""
        _, zero, qmin, qmax = self.element_grid()
        v = v.to(torch.float32)
        if v.shape != zero.shape or bool(((v < qmin) | (v > qmax) | (v != torch.round(v))).any()):
            raise QuantizationError(f"{self.spec.name}: codes outside the grid's integer range (shape {tuple(v.shape)})")
        pad = self.qweight[:, self.in_features:]  # padding columns keep v = zs (exact zeros)
        return BitplaneIntWeight(self.spec, self.in_features, torch.cat((v.to(torch.int8), pad), dim=1),
                                 self.scale, self.zero)

    def to_planes(self) -> "BitplaneWeight":
        """The bit-plane form of the same weight (what the bitplane pass stores)."""
        spec = self.spec.with_form("bp")
        return BitplaneWeight(spec, self.in_features, pack_planes(self.qweight, spec.planes), self.scale, self.zero)


@dataclass(frozen=True, eq=False, repr=False)
class BitplaneWeight(_BitplaneWeight):
    """Bit-plane form: planes uint32 [P, N, Kp/32], scale fp16 [N, NG], zero int8 [N, NG]."""

    FAMILY = FAMILY_PLANES
    TENSOR_FIELDS = ("planes", "scale", "zero")

    spec: FormatSpec
    in_features: int
    planes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    @classmethod
    def from_float(cls, w: torch.Tensor, fmt="w3a8_g128_bp", *, pad: bool = True, clip=None) -> "BitplaneWeight":
        spec = cls._check_spec(fmt)
        return BitplaneIntWeight.from_float(w, spec.with_form("int"), pad=pad, clip=clip).to_planes()

    @classmethod
    def from_tensors(cls, fmt, tensors, in_features: int) -> "BitplaneWeight":
        spec = cls._check_spec(fmt)
        n = tensors[1].shape[0] if len(tensors) > 1 and tensors[1].dim() else 0
        kp = spec.padded_k(in_features)
        first = (torch.uint32, (spec.planes, n, kp // 32))
        cls._check_common(spec, tensors, n, kp // spec.group_len(in_features), first)
        return cls(spec, in_features, *tensors)

    def codes(self) -> torch.Tensor:
        return unpack_planes(self.planes)

    def to_int(self) -> BitplaneIntWeight:
        return BitplaneIntWeight(self.spec.with_form("int"), self.in_features, self.codes().to(torch.int8),
                                 self.scale, self.zero)

    def binary_accumulators(self, x: torch.Tensor) -> torch.Tensor:
        """The bit-plane identity: int32 [M, NG, N] from popcounts of activation x weight planes
        (the oracle of the binary kernel; memory M*N*Kp/4 bytes, so small shapes only)."""
        x2 = self._check_x(x)
        m, kp = x2.shape
        gl = self.spec.group_len(self.in_features)
        xp = activation_planes(x2, self.spec.act_bits, kp).to(torch.int64)  # [A, M, W]
        wp = self.planes.to(torch.int64)  # [P, N, W], plane j rotated left by j: turn it back
        wp = torch.stack([rotate_right(wp[j], j) for j in range(wp.shape[0])])
        acc = torch.zeros(m, kp // gl, wp.shape[1], dtype=torch.int64)
        for i, a_i in enumerate(self.spec.act_plane_weights):
            for j, w_j in enumerate(self.spec.plane_weights):
                counts = popcount32(xp[i][:, None, :] & wp[j][None, :, :])  # [M, N, W]
                acc += a_i * w_j * counts.unflatten(-1, (-1, gl // 32)).sum(-1).transpose(1, 2)
        xsum = x2.to(torch.int64).reshape(m, -1, gl).sum(-1)
        return (acc - xsum[:, :, None] * self.zero.to(torch.int64).T[None]).to(torch.int32)


registry.WEIGHT_FORMATS.setdefault(FAMILY_INT, BitplaneIntWeight)
registry.WEIGHT_FORMATS.setdefault(FAMILY_PLANES, BitplaneWeight)

"""Quantization schemes: frozen, versioned configs in one registry.

A scheme says how many bits weights, activations and the KV cache get, which packed formats carry
them, and which ordered pipeline of passes produces them. `lowc.compile(model, scheme="w4a8kv4")`
looks the name up here; the scheme's JSON heads every IR dump and every saved artifact.

Names are either presets (`w16a16`, `w8a8`, `w4a16`, `w4a8kv4`, `w4a4`, ...) or the generic form
`w{N}a{M}[kv{K}][-g{G}]`, e.g. `w4a8kv4-g128`, `w16a16kv8`, `w3a8`. The generic form is parsed into the
same dataclass; whether a combination has a dedicated kernel or needs the bit-plane path is decided
by `Scheme.route`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field

from lowc.errors import SchemeError

SCHEME_VERSION = 1

# The bit-widths the generic form accepts, and the combinations with a dedicated packed format.
WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)
ACT_BITS = (4, 5, 6, 7, 8, 16)
KV_BITS = (4, 8, 16)
DEDICATED = {(16, 16), (8, 8), (4, 16), (4, 8), (4, 4)}

_GENERIC = re.compile(r"^w(?P<w>\d+)a(?P<a>\d+)(?:kv(?P<kv>\d+))?(?:-g(?P<g>\d+))?$")


@dataclass(frozen=True)
class Scheme:
    """One quantization recipe. Every field has a meaning in docs/schemes.md."""

    name: str
    w_bits: int = 16
    a_bits: int = 16
    kv_bits: int = 16
    group_size: int = 128  # along K, for weight (and 4-bit activation) groups; 0 = per channel
    n_outliers: int = 0  # Atom: input channels kept in INT8 after reordering
    smooth_alpha: float | None = None  # SmoothQuant migration strength, None = no smoothing
    smooth_attention_alpha: float | None = None  # QoQ SmoothAttention strength for keys
    kv_rotation: bool = False  # Walsh-Hadamard rotation of keys and queries after RoPE (QuaRot)
    kv_key_center: bool = False  # subtract each key channel's calibration mean before the KV quantizer
    kv_key_groups: int = 1  # KV4: scale/zero pairs per key head vector (contiguous groups along head_dim)
    scale_search: bool = False  # AWQ-style activation-aware channel scaling, strength searched per group
    clip_search: bool = False  # per-group weight clipping search
    gptq: bool = False  # GPTQ-style error compensation
    bit_balance: bool = False  # ABQ-LLM's W2* five-level grid
    calibration_samples: int | None = None  # windows of 512 tokens of lowc's text when none is given (None: 128)
    keep_lm_head: bool = True  # lm_head and embeddings stay in 16 bits
    version: int = SCHEME_VERSION
    passes: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if self.w_bits not in WEIGHT_BITS:
            raise SchemeError(f"{self.name}: weight bits {self.w_bits} unsupported; choose from {WEIGHT_BITS}")
        if self.a_bits not in ACT_BITS:
            raise SchemeError(f"{self.name}: activation bits {self.a_bits} unsupported; choose from {ACT_BITS}")
        if self.kv_bits not in KV_BITS:
            raise SchemeError(f"{self.name}: KV bits {self.kv_bits} unsupported; choose from {KV_BITS}")
        if self.kv_key_groups not in (1, 2, 4) or (self.kv_key_groups > 1 and self.kv_bits != 4):
            raise SchemeError(
                f"{self.name}: kv_key_groups={self.kv_key_groups}: choose 1, 2 or 4, and more than 1 only with a "
                "4-bit KV cache (kv4)"
            )
        if self.calibration_samples is not None and self.calibration_samples < 1:
            raise SchemeError(f"{self.name}: calibration_samples must be positive or None, got {self.calibration_samples}")
        if self.group_size < 0 or (self.group_size and self.group_size % 32):
            raise SchemeError(
                f"{self.name}: group size {self.group_size} must be 0 (per channel) or a multiple of 32"
            )
        if not self.passes:
            object.__setattr__(self, "passes", default_pipeline(self))

    @property
    def route(self) -> str:
        """'dedicated' when a packed format and kernel exist for (w, a), else 'bitplane'."""
        return "dedicated" if (self.w_bits, self.a_bits) in DEDICATED else "bitplane"

    @property
    def is_float(self) -> bool:
        return self.w_bits == 16 and self.a_bits == 16 and self.kv_bits == 16

    def replace(self, **changes) -> "Scheme":
        """A copy with some fields changed; the pipeline is re-derived unless given."""
        if "passes" not in changes:
            changes["passes"] = ()
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["passes"] = list(self.passes)
        d["route"] = self.route
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def __str__(self) -> str:
        return self.name


def default_pipeline(s: Scheme) -> tuple[str, ...]:
    """The ordered pass names for a scheme: one list a reader can see at once."""
    steps = ["annotate"]
    quantized_linears = not (s.w_bits == 16 and s.a_bits == 16)
    if s.smooth_attention_alpha is not None:
        steps.append("smooth_attention")
    if s.n_outliers:
        steps.append("reorder")
    if s.smooth_alpha is not None:
        steps.append("smooth")
    if quantized_linears:
        if s.scale_search:
            steps.append("scale_search")
        if s.clip_search:
            steps.append("clip")
        if s.gptq:
            steps.append("gptq")
        steps.append("quantize")
        if s.route == "bitplane":
            steps.append("bitplane")
    if s.kv_key_center and s.kv_bits < 16:
        steps.append("center_keys")  # plans the centre the quantized cache's store subtracts
    steps.append("kv_cache")  # every scheme: K/V go through the runtime's cache (kv16 = model dtype)
    steps.append("fuse_glue")  # norm/residual/SiLU + activation quantization, RoPE + KV store: one op each
    steps.append("eliminate_dead_code")
    return tuple(steps)


def weight_format(s: Scheme) -> str | None:
    """The packed format (lowc/quant, docs/formats.md) of the scheme's linears, or None when they stay
    floating point (w16a16) or take the bit-plane path (every (w, a) without a dedicated format).

    w8a8 -> "w8a8" (per output channel; a group size does not apply), w4a16-g{G} -> "w4a16_g{G}",
    w4a8-g{G} -> "w4a8_g{G}" and w4a8-g0 -> "w4a8_pc", w4a4-g{G} -> "w4a4_g{G}_o{n_outliers}".
    """
    w, a, g = s.w_bits, s.a_bits, s.group_size
    if (w, a) == (16, 16) or s.route == "bitplane":
        return None
    if (w, a) == (8, 8):
        return "w8a8"
    if g and g & (g - 1):
        raise SchemeError(f"{s.name}: group size {g} is not a power of two; the w{w}a{a} kernels tile K by it")
    if (w, a) == (4, 8):
        return f"w4a8_g{g}" if g else "w4a8_pc"
    if not g:
        raise SchemeError(f"{s.name}: w{w}a{a} has no per-channel format; give a group size, e.g. w{w}a{a}-g128")
    return f"w4a16_g{g}" if (w, a) == (4, 16) else f"w4a4_g{g}_o{s.n_outliers}"


def _preset(name: str, **kw) -> Scheme:
    return Scheme(name=name, **kw)


PRESETS: dict[str, Scheme] = {
    s.name: s
    for s in (
        _preset("w16a16"),
        _preset("w8a8", w_bits=8, a_bits=8, group_size=0, smooth_alpha=0.5),
        _preset("w4a16", w_bits=4, a_bits=16, scale_search=True, clip_search=True, gptq=True),
        _preset(
            # SmoothAttention (smooth_attention_alpha=0.5) is QoQ's key treatment; lowc rotates keys
            # instead: on SmolLM2 (4,096 WikiText-2 tokens, 16-bit weights, KV4) the rotation gives
            # 24.41, SmoothAttention 25.67, both 24.88 (FP32 23.08) — see docs/accuracy.md.
            # Keys take two scale/zero pairs per head vector (kv_key_groups=2): +4 cache bytes per token
            # and head, and the key side of the KV4 error drops (docs/accuracy.md).
            "w4a8kv4", w_bits=4, a_bits=8, kv_bits=4, smooth_alpha=0.5, kv_rotation=True, kv_key_center=True,
            # 256 calibration windows instead of 128: GPTQ/clip/scale-search Hessians (docs/accuracy.md).
            kv_key_groups=2, scale_search=True, clip_search=True, gptq=True, calibration_samples=256,
        ),
        _preset(
            "w4a4", w_bits=4, a_bits=4, kv_bits=4, kv_rotation=True, kv_key_center=True, n_outliers=128,
            smooth_alpha=0.5, scale_search=True, clip_search=True, gptq=True,
        ),
        _preset("w2a8", w_bits=2, a_bits=8, clip_search=True, gptq=True),
        _preset("w3a8", w_bits=3, a_bits=8, clip_search=True, gptq=True),
        _preset("w6a6", w_bits=6, a_bits=6, smooth_alpha=0.5, clip_search=True, gptq=True),
    )
}


def parse_scheme(name: str) -> Scheme:
    """A Scheme from a preset name or the generic `w{N}a{M}[kv{K}][-g{G}]` form."""
    if isinstance(name, Scheme):
        return name
    if not isinstance(name, str):
        raise SchemeError(f"a scheme is a name or a lowc.Scheme, got {type(name).__name__}")
    key = name.strip().lower()
    if key in PRESETS:
        return PRESETS[key]
    m = _GENERIC.match(key)
    if m is None:
        raise SchemeError(
            f"unknown scheme {name!r}. Valid presets: {', '.join(sorted(PRESETS))}; "
            "or the generic form w{N}a{M}[kv{K}][-g{G}], e.g. 'w4a8kv4-g128' or 'w16a16kv8'."
        )
    w, a = int(m["w"]), int(m["a"])
    kv = int(m["kv"]) if m["kv"] else 16
    g = int(m["g"]) if m["g"] is not None else 128
    # A generic name inherits the recipe (smoothing, clipping, GPTQ, outliers) of the preset with the
    # same weight and activation bits, so "w4a8kv4-g64" is the w4a8kv4 recipe at group 64. A 4-bit KV
    # cache always comes with the key rotation, and with the key centring wherever the recipe
    # calibrates anyway (the centre is a calibration mean; w16a16kv4 stays calibration-free). Turn
    # either off with .replace(kv_rotation=False) / .replace(kv_key_center=False) to compare.
    for preset in PRESETS.values():
        if (preset.w_bits, preset.a_bits) == (w, a):
            smooth_attn = preset.smooth_attention_alpha if kv != 16 else None
            return preset.replace(name=key, kv_bits=kv, group_size=g, smooth_attention_alpha=smooth_attn,
                                  kv_rotation=kv == 4, kv_key_center=kv == 4 and calibrates(preset),
                                  kv_key_groups=preset.kv_key_groups if kv == 4 else 1)
    return Scheme(name=key, w_bits=w, a_bits=a, kv_bits=kv, group_size=g, kv_rotation=kv == 4)


def calibrates(s: Scheme) -> bool:
    """Whether the scheme's passes read calibration statistics (so a key centre comes for free)."""
    return (s.smooth_alpha is not None or s.smooth_attention_alpha is not None or bool(s.n_outliers)
            or s.scale_search or s.clip_search or s.gptq or s.kv_key_center)


def list_schemes() -> list[str]:
    return sorted(PRESETS)

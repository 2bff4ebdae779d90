"""bitplane: ABQ-LLM's bit-plane decomposition for (weight, activation) bits without a dedicated kernel.

Contract. Runs after `quantize`, for schemes whose `route` is "bitplane" (w2a8, w3a8, w6a6, w5a8,
w3a4, ...: weights 2..8 bits, activations 4..8 bits). It accepts the linears in either state:
- `lowc::qlinear` in the direct integer form `w{N}a{M}_{g{G}|pc}[_bb]_int` (lowc.quant.bitplane):
  what `quantize` emits once `lowc.schemes.weight_format` names that form for the bit-plane route;
- float `aten.linear` that `quantize` left to this pass (while `weight_format` gives None for the
  route): lowered here the way quantize lowers its own formats (`quantize.lower_linear`, one shared
  `lowc::quantize_act` per activation, the lm_head kept when the scheme keeps it), on the grid of
  the scheme's clip search and GPTQ when it asks for them and calibration gathered H = X^T X / n
  (their own functions: `clip.clip_search`, `gptq.gptq_codes`), else round-to-nearest; a weight an
  earlier pass planned (`quantize.plan_weight`) in this integer form is used as is.
Then every integer-form qlinear is rewritten to its bit-plane form:
    %y = lowc::qlinear(%q, %s, [%planes, %scale, %zero], %bias, "w{N}a{M}_..._bp", dtype)
planes uint32 [P, N, Kp/32] (a new buffer `<site>_planes`; P = N, or 3 for bit balance), scale and
zero unchanged; the feeding quantize_act takes the `_bp` name; `node.meta["lowc_format"]` is the
`_bp` name and `node.meta["lowc_bitplane"]` records the plane count, the recombination weights
(2**j, the sign plane -2**(P-1)), the activation plane weights, the bit order and the scale/zero
meaning; the planes buffer's `meta["val"]` gives its shape, so the IR dump shows the planes.

Invariants: the plane form computes exactly the integers of the integer form (the rewrite is exact;
the pass is registered approximate because it may quantize float linears). Schemes whose bits the
bit-plane kernels cannot take (activations of 16 bits, weights of 16) raise PassError naming what
is supported. `bit_balance` (ABQ-LLM's W2*) selects the five-level 2-bit grid.
Options (shared with clip/gptq): `clip_min`, `clip_steps`, `gptq_damp`, `gptq_block`, `gptq_act_order`.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from lowc.errors import PassError, QuantizationError
from lowc.ir import META_FORMAT, META_SITE
from lowc.passes.base import APPROXIMATE, PassContext, PassResult, register_pass
from lowc.passes.dataflow import head_linear, is_linear, weight_of
from lowc.passes.quantize import META_PLANNED, lower_linear, planned_weight
from lowc.passes.stats import META_STATS
from lowc.passes.weights import attr_tensor, new_attr
from lowc.quant.bitplane import A_BITS, FAMILY_INT, W_BITS, BitplaneIntWeight, BitplaneSpec, format_name
from lowc.quant.spec import parse_format
from lowc.schemes import Scheme

QLINEAR = torch.ops.lowc.qlinear.default
QUANTIZE_ACT = torch.ops.lowc.quantize_act.default
META_BITPLANE = "lowc_bitplane"


def scheme_format(scheme: Scheme, form: str = "int") -> str:
    """The bit-plane format name of a scheme's linears ('int' or 'bp' form); PassError if it has none."""
    w, a = scheme.w_bits, scheme.a_bits
    if w not in W_BITS or a not in A_BITS:
        raise PassError(
            f"{scheme.name}: the bit-plane path takes weights of {W_BITS[0]}..{W_BITS[-1]} bits and activations "
            f"of {A_BITS[0]}..{A_BITS[-1]} bits (INT{{M}} per token), got w{w}a{a}; weight-only low bits have "
            "a dedicated format only at 4 bits (w4a16)"
        )
    try:
        return format_name(w, a, scheme.group_size, scheme.bit_balance, form)
    except QuantizationError as e:
        raise PassError(f"{scheme.name}: {e}") from e


def _spec_of(node: fx.Node) -> BitplaneSpec | None:
    if node.op != "call_function" or node.target is not QLINEAR:
        return None
    try:
        spec = parse_format(node.args[4])
    except QuantizationError:
        return None
    return spec if isinstance(spec, BitplaneSpec) else None


# -- float linears quantize left to this pass --------------------------------------------------------


def _quantize_act(gm: fx.GraphModule, x: fx.Node, fmt: str) -> tuple[fx.Node, fx.Node]:
    with gm.graph.inserting_after(x):
        qa = gm.graph.call_function(QUANTIZE_ACT, (x, fmt))
    with gm.graph.inserting_after(qa):
        scale = gm.graph.call_function(operator.getitem, (qa, 1))
    with gm.graph.inserting_after(qa):
        q = gm.graph.call_function(operator.getitem, (qa, 0))
    return q, scale


def _hessian(lin: fx.Node) -> torch.Tensor | None:
    stats = lin.meta.get(META_STATS)
    return None if stats is None or getattr(stats, "hessian_sum", None) is None else stats.hessian


def _pack(lin: fx.Node, w: torch.Tensor, fmt: str, ctx: PassContext) -> tuple[BitplaneIntWeight, str]:
    """The integer-form weight of one linear and how it was made ('rtn', 'clip', 'clip+gptq', ...)."""
    h = _hessian(lin)
    opts = ctx.options
    how = []
    if ctx.scheme.clip_search and h is not None:
        from lowc.passes.clip import clip_ratios, clip_search

        ratios = clip_ratios(float(opts.get("clip_min", 0.5)), int(opts.get("clip_steps", 11)))
        packed, _ = clip_search(w, h, fmt, ratios)
        how.append("clip")
    else:
        packed = BitplaneIntWeight.from_float(w, fmt)
    if ctx.scheme.gptq and h is not None:
        from lowc.passes.gptq import gptq_codes
        from lowc.passes.weight_grid import ElementGrid

        grid = ElementGrid(*packed.element_grid())
        codes = gptq_codes(w, h, grid, damp=float(opts.get("gptq_damp", 0.01)), block=int(opts.get("gptq_block", 128)),
                           act_order=bool(opts.get("gptq_act_order", True)))
        packed = packed.with_codes(codes)
        how.append("gptq")
    return packed, "+".join(how) or "rtn"


def lower_float_linears(gm: fx.GraphModule, ctx: PassContext, fmt: str) -> dict[str, int]:
    """aten.linear -> lowc::qlinear in integer form `fmt`; returns how many weights were made how."""
    head = head_linear(gm) if ctx.scheme.keep_lm_head else None
    acts: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    made: dict[str, int] = {}
    for lin in [n for n in gm.graph.nodes if is_linear(n) and n is not head]:
        w = weight_of(gm, lin)
        packed = planned_weight(gm, lin)
        if isinstance(packed, BitplaneIntWeight) and packed.spec.name == fmt:
            how = "planned"
        else:
            packed, how = _pack(lin, w, fmt, ctx)
        made[how] = made.get(how, 0) + 1
        x = lin.args[0]
        if x not in acts:
            acts[x] = _quantize_act(gm, x, fmt)
        lin.meta.pop(META_PLANNED, None)
        lower_linear(gm, lin, packed, fmt, acts[x])
    return made


# -- integer form -> bit planes ------------------------------------------------------------------------


def _in_features(node: fx.Node) -> int:
    site = node.meta.get(META_SITE, {})
    if "in_features" in site:
        return int(site["in_features"])
    x = node.args[0]
    if x.target is operator.getitem and x.args[0].target is QUANTIZE_ACT:
        x = x.args[0].args[0]  # the float activation quantize_act reads has the same width
    val = x.meta.get("val")
    if isinstance(val, torch.Tensor):
        return int(val.shape[-1])
    raise PassError(f"%{node.name}: cannot tell the linear's in_features (no lowc_site meta, no input shape)")


def to_planes(gm: fx.GraphModule, node: fx.Node, spec: BitplaneSpec) -> BitplaneSpec:
    """Rewrite one integer-form qlinear to its bit-plane form; returns the new format."""
    x, x_scale, weight, bias, _, out_dtype = node.args
    int_weight = BitplaneIntWeight.from_tensors(spec, [attr_tensor(gm, a) for a in weight], _in_features(node))
    planes = int_weight.to_planes()
    site = node.meta.get(META_SITE, {}).get("name", node.name)
    planes_attr = new_attr(gm, f"{site}.planes", planes.planes, before=node)
    planes_attr.meta["val"] = torch.empty(planes.planes.shape, dtype=planes.planes.dtype, device="meta")
    node.args = (x, x_scale, [planes_attr, *weight[1:]], bias, planes.spec.name, out_dtype)
    node.meta[META_FORMAT] = planes.spec.name
    node.meta[META_BITPLANE] = planes.spec.describe()
    if not weight[0].users:
        gm.graph.erase_node(weight[0])  # eliminate_dead_code drops the buffer
    quant = x.args[0] if x.op == "call_function" and x.target is operator.getitem else None
    if quant is not None and quant.target is QUANTIZE_ACT and quant.args[1] == spec.name:
        quant.args = (quant.args[0], planes.spec.name)
    return planes.spec


@register_pass("bitplane", numerics=APPROXIMATE, requires=("quantize",))
def bitplane(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Bit-plane form (ABQ-LLM) of every linear whose bits have no dedicated kernel."""
    info: dict = {}
    if ctx.scheme.route == "bitplane" and any(is_linear(n) for n in gm.graph.nodes):
        fmt = scheme_format(ctx.scheme, "int")
        made = lower_float_linears(gm, ctx, fmt)
        if made:
            info["lowered_here"] = made
    formats: dict[str, int] = {}
    plane_bytes = 0
    for node in list(gm.graph.nodes):
        spec = _spec_of(node)
        if spec is None or spec.family != FAMILY_INT:
            continue
        new = to_planes(gm, node, spec)
        formats[new.name] = formats.get(new.name, 0) + 1
        plane_bytes += attr_tensor(gm, node.args[2][0]).numel() * 4
    if formats:
        some = parse_format(next(iter(formats)))
        info.update({"formats": formats, "planes": some.planes, "plane_weights": list(some.plane_weights),
                     "act_plane_weights": list(some.act_plane_weights), "plane_bytes": plane_bytes,
                     "bit_order": some.describe()["bit_order"]})
    gm.graph.lint()
    gm.recompile()
    return PassResult(gm, modified=bool(formats), info=info)

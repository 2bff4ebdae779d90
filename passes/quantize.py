"""quantize: progressive-quantization insertion (QoQ), from float linears to lowc::qlinear.

Contract. Every `aten.linear` with a weight (except the lm_head while the scheme keeps it in 16
bits; the embedding is a gather and is never touched) becomes
    %q, %scale = lowc::quantize_act(%x, fmt)          # once per activation, shared by its readers
    %y = lowc::qlinear(%q, %scale, [packed tensors], %bias, fmt, out_dtype)
with the packed weight tensors registered as buffers of the graph (`<site>.qweight`, ...). For
weight-only formats (w4a16) there is no quantize_act: qlinear reads the float activation and
x_scale is None. Linears that read the same activation (q/k/v, gate/up) share ONE quantize_act,
so the activation is quantized once per token, as QServe's fused kernels do. `node.meta
["lowc_format"]` names the format; `lowc_site` is carried over. The format comes from the scheme
(`lowc.schemes.weight_format`): w8a8, w4a16_g{G}, w4a8_g{G} / w4a8_pc, w4a4_g{G}_o{N}; a K that is
not a multiple of G is padded with exact zeros by the packers (documented in docs/formats.md);
w4a4 needs at least N input channels. Schemes on the bit-plane route are left to the bitplane pass.

Earlier passes may plan a packed weight (clip's clipped grid, GPTQ's codes) with `plan_weight`; it
is used as is when it was made from the weight the linear still reads, else the weight is packed
again with round-to-nearest and the pass info lists the linear as `replanned`.

Position: after every pass that rewrites float weights (smooth, reorder, clip, gptq), before
bitplane/kv passes and dead-code elimination. Numerics: approximate.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from lowc.ir import META_FORMAT, META_SITE
from lowc.passes.base import APPROXIMATE, PassContext, PassResult, register_pass
from lowc.passes.dataflow import head_linear, is_linear, weight_of
from lowc.passes.weights import new_attr
from lowc.quant import parse_format, quantize_weight
from lowc.quant.spec import ACT_FLOAT
from lowc.schemes import Scheme, weight_format

META_PLANNED = "lowc_planned_weight"  # aten.linear -> (PackedWeight, the float weight it was made from)


def plan_weight(linear: fx.Node, packed, source: torch.Tensor) -> None:
    """Record the packed weight quantize should use for `linear`, made from float weight `source`."""
    linear.meta[META_PLANNED] = (packed, source)


def planned_weight(gm: fx.GraphModule, linear: fx.Node):
    """The planned packed weight if it still matches the linear's weight, else None."""
    plan = linear.meta.get(META_PLANNED)
    if plan is None:
        return None
    packed, source = plan
    return packed if source is weight_of(gm, linear) else None


def quantized_linears(gm: fx.GraphModule, scheme: Scheme) -> list[fx.Node]:
    """The linears a scheme quantizes, in graph order (all but the lm_head when it stays 16-bit)."""
    head = head_linear(gm) if scheme.keep_lm_head else None
    return [n for n in gm.graph.nodes if is_linear(n) and n is not head]


def _site_name(lin: fx.Node) -> str:
    return lin.meta.get(META_SITE, {}).get("name", lin.name)


def _quantize_act(gm: fx.GraphModule, x: fx.Node, fmt: str) -> tuple[fx.Node, fx.Node]:
    with gm.graph.inserting_after(x):
        qa = gm.graph.call_function(torch.ops.lowc.quantize_act.default, (x, fmt))
    with gm.graph.inserting_after(qa):
        scale = gm.graph.call_function(operator.getitem, (qa, 1))
    with gm.graph.inserting_after(qa):
        q = gm.graph.call_function(operator.getitem, (qa, 0))
    return q, scale


def _out_dtype(gm: fx.GraphModule, lin: fx.Node) -> torch.dtype:
    val = lin.meta.get("val")
    return val.dtype if isinstance(val, torch.Tensor) else weight_of(gm, lin).dtype


def lower_linear(gm: fx.GraphModule, lin: fx.Node, packed, fmt: str, act: tuple | None) -> fx.Node:
    """Replace one aten.linear by lowc::qlinear over `packed`; returns the new node."""
    site = _site_name(lin)
    attrs = [new_attr(gm, f"{site}.{field}", t, before=lin) for field, t in zip(packed.TENSOR_FIELDS, packed.tensors())]
    x, x_scale = act if act is not None else (lin.args[0], None)
    bias = lin.args[2] if len(lin.args) > 2 else None
    with gm.graph.inserting_before(lin):
        new = gm.graph.call_function(torch.ops.lowc.qlinear.default,
                                     (x, x_scale, attrs, bias, fmt, _out_dtype(gm, lin)))
    new.meta.update({k: v for k, v in lin.meta.items() if k in ("val", META_SITE, "stack_trace", "nn_module_stack")})
    new.meta[META_FORMAT] = fmt
    old_weight = lin.args[1]
    lin.replace_all_uses_with(new)
    gm.graph.erase_node(lin)
    if not old_weight.users:
        gm.graph.erase_node(old_weight)
    return new


@register_pass("quantize", numerics=APPROXIMATE)
def quantize(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Replace linears by lowc::qlinear with packed weights; one shared quantize_act per input."""
    fmt = weight_format(ctx.scheme)
    if fmt is None:
        return PassResult(gm, modified=False, info={"skipped": f"{ctx.scheme.name} has no dedicated format"})
    spec = parse_format(fmt)
    acts: dict[fx.Node, tuple[fx.Node, fx.Node]] = {}
    planned, replanned, n = 0, [], 0
    for lin in quantized_linears(gm, ctx.scheme):
        packed = planned_weight(gm, lin)
        if packed is None:
            if META_PLANNED in lin.meta:
                replanned.append(_site_name(lin))
            packed = quantize_weight(weight_of(gm, lin), fmt)
        else:
            planned += 1
        act = None
        if spec.act_kind != ACT_FLOAT:
            x = lin.args[0]
            if x not in acts:
                acts[x] = _quantize_act(gm, x, fmt)
            act = acts[x]
        lin.meta.pop(META_PLANNED, None)
        lower_linear(gm, lin, packed, fmt, act)
        n += 1
    return PassResult(gm, modified=bool(n), info={"format": fmt, "linears": n, "quantize_act": len(acts),
                                                  "planned": planned, "replanned": replanned})

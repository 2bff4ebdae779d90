"""annotate: name every linear, norm and attention node after the module it came from.

Rewrites nothing; it stamps `node.meta["lowc_site"] = {"name", "layer", "role", ...}` on
`aten.linear` nodes (from the weight's state-dict name: `model.layers.3.self_attn.q_proj.weight` ->
layer 3, role `q_proj`), `lowc::rms_norm` nodes and `lowc::attention` nodes, so later passes and the
IR dump can speak of "layer 3's q_proj" instead of `%linear_21`. Runs first in every pipeline.
"""

from __future__ import annotations

import re

import torch
import torch.fx as fx

from lowc.ir import META_SITE
from lowc.passes.base import PassContext, PassResult, register_pass
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def site_from_weight(weight_name: str) -> dict:
    module = weight_name.rsplit(".", 1)[0]
    m = _LAYER.search(weight_name)
    return {"name": module, "layer": int(m.group(1)) if m else None, "role": module.rsplit(".", 1)[-1]}


@register_pass("annotate")
def annotate(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Stamp linear, norm and attention nodes with their module name, layer and role."""
    count = 0
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        if n.target is torch.ops.aten.linear.default and n.args[1].op == "get_attr":
            w = n.args[1]
            site = site_from_weight(str(w.target))
            shape = getattr(gm.get_parameter(w.target) if _is_param(gm, w.target) else _attr(gm, w.target), "shape", None)
            if shape is not None:
                site.update(out_features=int(shape[0]), in_features=int(shape[1]))
            n.meta[META_SITE] = site
            count += 1
        elif n.target is torch.ops.lowc.rms_norm.default and n.args[1].op == "get_attr":
            n.meta[META_SITE] = site_from_weight(str(n.args[1].target))
            count += 1
        elif n.target is torch.ops.lowc.attention.default:
            layer = int(n.args[4])
            n.meta[META_SITE] = {"name": f"layers.{layer}.attention", "layer": layer, "role": "attention"}
            count += 1
    return PassResult(gm, modified=False, info={"annotated": count})


def _is_param(gm, target) -> bool:
    try:
        gm.get_parameter(target)
        return True
    except AttributeError:
        return False


def _attr(gm, target):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj

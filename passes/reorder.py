"""reorder: Atom's outlier channel reordering, per linear group, exact in full precision.

Contract. For every group of linears that read one activation X (K channels), channels are sorted
by their calibration mean square, ascending, so the N largest (the outliers, N = the scheme's
`n_outliers`, 128 for w4a4) sit at the end of K, where the w4a4_g{G}_o{N} format keeps them in INT8.
Sorting the whole channel order, not only moving the outliers, also puts channels of similar size
into the same INT4 group of 128. With P the permutation:
    X W^T = X[:, P] (W[:, P])^T
- down_proj: P is folded into the rows of gate_proj and up_proj (x = act(gate) * up is elementwise,
  so permuting both producers permutes x), so no node is added;
- every other group (q/k/v and gate/up after a norm, o_proj after attention, lm_head if quantized):
  one `aten.index_select(x, -1, P)` node is inserted before the group, and the consumers' weight
  columns are permuted. A kernel fuses that gather into the activation quantization (Atom fuses the
  reorder into the operator before the GEMM).

Why per group and not one global permutation of the residual stream: the outliers of the norm
outputs differ from layer to layer (each norm weights the residual differently), the o_proj input
cannot be freely permuted upstream (it would split heads), and a gather fused into the quantizer is
free; a global permutation would force one outlier set on all 30 layers.

Position: after annotate, calibration and smooth_attention, before smooth (which then smooths in the
reordered channel order) and quantize. The calibration statistics of each group are permuted in
place. Option: `ctx.options["reorder_sort"] = False` moves only the
outliers to the end and keeps the others in their original order.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from lowc.errors import SchemeError
from lowc.passes.base import EXACT, PassContext, PassResult, register_pass
from lowc.passes.dataflow import GATHER, LinearGroup, bias_of, linear_groups, weight_of
from lowc.passes.stats import stats_of
from lowc.passes.weights import new_attr, set_arg_tensor


def outlier_order(mean_sq: torch.Tensor, n_outliers: int, sort_all: bool = True) -> torch.Tensor:
    """A permutation [K] whose last n_outliers entries are the channels of largest mean square."""
    k = mean_sq.numel()
    order = torch.sort(mean_sq.double(), stable=True).indices  # ascending: outliers last
    if sort_all or n_outliers == 0:
        return order
    top = order[k - n_outliers:]
    keep = torch.ones(k, dtype=torch.bool, device=top.device)
    keep[top] = False
    return torch.cat((torch.arange(k, device=top.device)[keep], top))


def _permute_rows(gm: fx.GraphModule, lin: fx.Node, perm: torch.Tensor) -> None:
    set_arg_tensor(gm, lin, 1, weight_of(gm, lin)[perm].contiguous())
    b = bias_of(gm, lin)
    if b is not None:
        set_arg_tensor(gm, lin, 2, b[perm].contiguous())


def insert_gather(gm: fx.GraphModule, group: LinearGroup, perm: torch.Tensor) -> fx.Node:
    """x -> index_select(x, -1, perm) feeding the group's linears."""
    x = group.input
    with gm.graph.inserting_after(x):
        g = gm.graph.call_function(GATHER, (x, -1, None))
    site = group.linears[0].meta.get("lowc_site", {}).get("name", group.linears[0].name)
    g.args = (x, -1, new_attr(gm, f"{site}.reorder_index", perm.clone(), before=g))
    if "val" in x.meta:
        g.meta["val"] = x.meta["val"]
    for lin in group.linears:
        lin.replace_input_with(x, g)
    return g


def reorder_group(gm: fx.GraphModule, group: LinearGroup, perm: torch.Tensor) -> str:
    """Apply channel permutation `perm` to the group's input; returns how it was folded."""
    if group.producer is not None and group.producer.kind == "gated":
        _permute_rows(gm, group.producer.node, perm)
        _permute_rows(gm, group.producer.extra["gate"], perm)
        how = "folded into gate/up rows"
    else:
        insert_gather(gm, group, perm)
        how = "gather"
    for lin in group.linears:
        set_arg_tensor(gm, lin, 1, weight_of(gm, lin)[:, perm].contiguous())
    stats_of(group.linears[0]).permute(perm)
    return how


@register_pass("reorder", numerics=EXACT)
def reorder(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Atom outlier reordering: sort each group's input channels by mean square, outliers last."""
    n_out = ctx.scheme.n_outliers  # the w4a4 format's O: both must agree
    sort_all = bool(ctx.options.get("reorder_sort", True))
    how = {}
    for group in linear_groups(gm, include_head=not ctx.scheme.keep_lm_head):
        if n_out > group.in_features:
            raise SchemeError(
                f"{ctx.scheme.name} keeps {n_out} outlier channels but {group.name} has only "
                f"{group.in_features} input channels; use a scheme with fewer outliers"
            )
        perm = outlier_order(stats_of(group.linears[0]).mean_sq, n_out, sort_all)
        how[group.name] = reorder_group(gm, group, perm)
        for lin in group.linears:
            lin.meta["lowc_outliers"] = n_out
    gathers = sum(v == "gather" for v in how.values())
    return PassResult(gm, modified=bool(how),
                      info={"n_outliers": n_out, "groups": len(how), "gathers": gathers, "sort_all": sort_all})

"""eliminate_dead_code: drop nodes nothing uses, and weights no node reads any more.

Runs last in every pipeline, so passes that replace a linear's weight need not clean up the old
`get_attr`. Weights that no node reads are deleted from the GraphModule (the user's model keeps its
own; only the compiled graph's reference goes), so a quantized model does not carry both copies.
"""

from __future__ import annotations

import torch.fx as fx

from lowc.passes.base import PassContext, PassResult, register_pass


@register_pass("eliminate_dead_code")
def eliminate_dead_code(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Remove unused nodes and unreferenced weights."""
    n_before = len(gm.graph.nodes)
    gm.graph.eliminate_dead_code()
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    dropped = 0
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + list(gm.named_buffers(remove_duplicate=False)):
        if name not in used:
            _delete(gm, name)
            dropped += 1
    gm.recompile()
    removed = n_before - len(gm.graph.nodes)
    return PassResult(gm, modified=bool(removed or dropped), info={"nodes_removed": removed, "weights_dropped": dropped})


def _delete(gm: fx.GraphModule, name: str) -> None:
    parent, _, leaf = name.rpartition(".")
    owner = gm.get_submodule(parent) if parent else gm
    if hasattr(owner, leaf):
        delattr(owner, leaf)

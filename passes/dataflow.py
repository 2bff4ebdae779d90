"""The dataflow view that fold-in passes need: which linears share an input, and where that input's
channels can be rescaled or permuted upstream without changing what the graph computes.

A `LinearGroup` is the set of `aten.linear` nodes that read one activation (q/k/v after the input
norm, gate/up after the post-attention norm, o_proj, down_proj, lm_head). Its `Producer` says how a
per-channel factor on that activation folds into the weights upstream:

- `norm`:  x = rms_norm(h, w)            -> channel j scales with w[j]
- `heads`: x = attention(q, k, v) heads  -> channel (h, d) scales with v_proj row (h // group, d);
           query heads that share a KV head must share the factor (GQA)
- `gated`: x = act(gate(y)) * up(y)      -> channel j scales with up_proj row j; permuting both
           gate and up rows permutes x freely
- None:    anything else (no fold; passes leave the group alone)

Between the producer and the linears there may be transparent nodes (`alias`, and the channel
gather `index_select(x, -1, perm)` that the reorder pass inserts); the group then records the
composed permutation, `slot[j]` = the producer channel behind group channel j. Factors are always
computed per producer "slot" (for `heads`: per KV channel) and spread to the group's channels with
`slot`, which is what keeps GQA and permutations exact.

`dataflow_graph(gm)` returns the same facts as a networkx DiGraph (producer -> group -> linear) for
inspection and for the IR dump.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
import torch
import torch.fx as fx

from lowc.passes.weights import arg_tensor, attr_tensor

aten = torch.ops.aten
LINEAR = aten.linear.default
TRANSPARENT = {aten.alias.default, aten.clone.default, aten.contiguous.default}
GATHER = aten.index_select.default
VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.transpose.int,
         aten.permute.default, aten.contiguous.default, aten.clone.default, aten.alias.default}
GATE_ACTS = {aten.silu.default, aten.gelu.default, aten.relu.default, aten.sigmoid.default, aten.tanh.default}


def is_linear(n: fx.Node) -> bool:
    return n.op == "call_function" and n.target is LINEAR and isinstance(n.args[1], fx.Node) \
        and n.args[1].op == "get_attr"


def is_gather(n: fx.Node) -> bool:
    return (n.op == "call_function" and n.target is GATHER and n.args[1] in (-1,)
            and isinstance(n.args[2], fx.Node) and n.args[2].op == "get_attr")


@dataclass
class Producer:
    kind: str  # "norm" | "heads" | "gated"
    node: fx.Node  # the node whose output channels the factor multiplies (norm, v_proj or up_proj)
    slots: int  # number of independent factors (norm width, kv_heads * head_dim, intermediate)
    extra: dict = field(default_factory=dict)  # heads: n_heads, kv_heads, head_dim; gated: gate node


@dataclass
class LinearGroup:
    input: fx.Node  # the activation every member reads
    linears: list[fx.Node]
    producer: Producer | None
    slot: torch.Tensor  # int64 [K]: producer slot of each input channel (composed gathers, GQA)

    @property
    def in_features(self) -> int:
        return int(self.slot.numel())

    @property
    def name(self) -> str:
        site = self.linears[0].meta.get("lowc_site", {})
        return "+".join(n.meta.get("lowc_site", {}).get("role", n.name) for n in self.linears) + (
            f" (layer {site['layer']})" if site.get("layer") is not None else "")


def weight_of(gm: fx.GraphModule, linear: fx.Node) -> torch.Tensor:
    return attr_tensor(gm, linear.args[1])


def bias_of(gm: fx.GraphModule, linear: fx.Node) -> torch.Tensor | None:
    return arg_tensor(gm, linear, 2)


def head_linear(gm: fx.GraphModule) -> fx.Node | None:
    """The linear whose output is the graph's output (lm_head), if any."""
    out = gm.graph.output_node().args[0]
    node = out
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in TRANSPARENT:
        node = node.args[0]
    return node if isinstance(node, fx.Node) and is_linear(node) else None


def _only_user(n: fx.Node) -> fx.Node | None:
    return next(iter(n.users)) if len(n.users) == 1 else None


def _through_views(n: fx.Node) -> fx.Node:
    while n.op == "call_function" and n.target in VIEWS:
        n = n.args[0]
    return n


def _single_chain_to(start: fx.Node, end: fx.Node) -> bool:
    """Every node from start (exclusive) up to end has exactly one user: nothing else sees it."""
    n = start
    while n is not end:
        u = _only_user(n)
        if u is None:
            return False
        n = u
    return True


def _find_producer(gm: fx.GraphModule, src: fx.Node, group_input: fx.Node, width: int) -> Producer | None:
    if src.op != "call_function":
        return None
    if src.target is torch.ops.lowc.rms_norm.default and isinstance(src.args[1], fx.Node) \
            and src.args[1].op == "get_attr" and len(src.args[1].users) == 1:
        if _single_chain_to(src, group_input):
            return Producer("norm", src, width)
        return None
    base = _through_views(src)
    if base is not src and base.op == "call_function" and base.target is torch.ops.lowc.attention.default:
        return _heads_producer(gm, src, base, group_input, width)
    if src.target is aten.mul.Tensor and len(src.args) == 2 and all(isinstance(a, fx.Node) for a in src.args):
        return _gated_producer(gm, src, group_input, width)
    return None


def _heads_producer(gm, src, attn, group_input, width) -> Producer | None:
    q, k, v = attn.args[:3]
    qv, kv = q.meta.get("val"), k.meta.get("val")
    if qv is None or kv is None:
        return None
    n_heads, kv_heads, head_dim = int(qv.shape[1]), int(kv.shape[1]), int(v.meta["val"].shape[-1])
    v_lin = _through_views(v)
    if not is_linear(v_lin) or n_heads * head_dim != width or n_heads % kv_heads:
        return None
    if not (_single_chain_to(v_lin, attn) and _single_chain_to(attn, group_input)):
        return None
    slots = kv_heads * head_dim
    if weight_of(gm, v_lin).shape[0] != slots:
        return None
    return Producer("heads", v_lin, slots, {"n_heads": n_heads, "kv_heads": kv_heads, "head_dim": head_dim,
                                            "attention": attn})


def _gated_producer(gm, mul, group_input, width) -> Producer | None:
    a, b = mul.args
    for up, act in ((b, a), (a, b)):
        if is_linear(up) and act.op == "call_function" and act.target in GATE_ACTS and is_linear(act.args[0]):
            gate = act.args[0]
            if len(up.users) == 1 and len(act.users) == 1 and len(gate.users) == 1 \
                    and weight_of(gm, up).shape[0] == width and _single_chain_to(mul, group_input):
                return Producer("gated", up, width, {"gate": gate, "act": act})
    return None


def _identity_slots(p: Producer | None, width: int, device: torch.device) -> torch.Tensor:
    channels = torch.arange(width, device=device)
    if p is None or p.kind != "heads":
        return channels
    h, hkv, d = p.extra["n_heads"], p.extra["kv_heads"], p.extra["head_dim"]
    return (channels // d // (h // hkv)) * d + channels % d


def linear_groups(gm: fx.GraphModule, include_head: bool = True) -> list[LinearGroup]:
    """Every group of linears that read one activation, in graph order, with its producer."""
    head = head_linear(gm)
    by_input: dict[fx.Node, list[fx.Node]] = {}
    for n in gm.graph.nodes:
        if is_linear(n) and (include_head or n is not head):
            by_input.setdefault(n.args[0], []).append(n)
    groups = []
    for x, linears in by_input.items():
        w0 = weight_of(gm, linears[0])
        width, device = int(w0.shape[1]), w0.device
        perm = torch.arange(width, device=device)
        src = x
        while src.op == "call_function" and (src.target in TRANSPARENT or is_gather(src)):
            if is_gather(src):
                perm = attr_tensor(gm, src.args[2])[perm]
            src = src.args[0]
        # A fold changes the activation for every reader, so it is exact only if the group's
        # linears are the activation's only readers.
        private = all(u in linears for u in x.users)
        producer = _find_producer(gm, src, x, width) if private else None
        slots = _identity_slots(producer, width, device)[perm]
        groups.append(LinearGroup(x, linears, producer, slots))
    return groups


def upstream_linears(node: fx.Node) -> set[fx.Node]:
    """The linears reachable backwards from `node` without passing through another linear."""
    seen, stack, found = set(), [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n is not node and is_linear(n):
            found.add(n)
            continue
        stack.extend(a for a in n.all_input_nodes)
    return found


def dataflow_graph(gm: fx.GraphModule) -> nx.DiGraph:
    """producer -> group -> linear edges as a networkx DiGraph (node names are fx node names)."""
    g = nx.DiGraph()
    for grp in linear_groups(gm):
        gid = f"group:{grp.input.name}"
        g.add_node(gid, kind="group", channels=grp.in_features, name=grp.name)
        if grp.producer is not None:
            g.add_node(grp.producer.node.name, kind=grp.producer.kind)
            g.add_edge(grp.producer.node.name, gid, fold=grp.producer.kind)
        for lin in grp.linears:
            g.add_node(lin.name, kind="linear", site=lin.meta.get("lowc_site", {}).get("name"))
            g.add_edge(gid, lin.name)
    return g


def scale_producer(gm: fx.GraphModule, p: Producer, factor: torch.Tensor) -> None:
    """Multiply the producer's output slot i by factor[i] (exact fold into its weights)."""
    from lowc.passes.weights import set_arg_tensor

    factor = factor.to(torch.float32)
    if p.kind == "norm":
        w = attr_tensor(gm, p.node.args[1])
        set_arg_tensor(gm, p.node, 1, (w.float() * factor).to(w.dtype))
        return
    w = weight_of(gm, p.node)
    set_arg_tensor(gm, p.node, 1, (w.float() * factor[:, None]).to(w.dtype))
    b = bias_of(gm, p.node)
    if b is not None:
        set_arg_tensor(gm, p.node, 2, (b.float() * factor).to(b.dtype))


def scale_columns(gm: fx.GraphModule, linear: fx.Node, factor: torch.Tensor) -> None:
    """Multiply the linear's weight column j by factor[j] (the consumer half of a fold)."""
    from lowc.passes.weights import set_arg_tensor

    w = weight_of(gm, linear)
    set_arg_tensor(gm, linear, 1, (w.float() * factor.to(torch.float32)[None, :]).to(w.dtype))

"""fuse_glue: merge the elementwise glue around the GEMMs and attention into single-launch ops.

Rules, applied in this order (each a `# before -> after` below; ops in lowc.ops.fused_ops):
  1. quantize_act(rms_norm(add(x, r), w, eps))  -> add_rms_norm_quant(x, r, w, eps)  (q, scale, sum)
  2. quantize_act(rms_norm(x, w, eps))          -> rms_norm_quant(x, w, eps)          (q, scale)
  3. rms_norm(add(x, r), w, eps)                -> add_rms_norm(x, r, w, eps)         (out, sum)
  4. quantize_act(mul(silu(g), u))              -> silu_mul_quant(g, u)               (q, scale)
  5. rope_kv_store(k) + kv_store(v) + attention_kv(rope(q))
                                                -> q' = rope_qkv_store(q, k, v) ; attention_kv(q')
The residual sum stays an output of the fused norm (the next residual add reads it). A rule fires
only when every intermediate it swallows has no other reader and the add/mul inputs have one shape
and dtype (no broadcasting, no promotion), so the fused op computes exactly the composition it
replaces: the pass is numerically exact with the reference kernels (declared EXACT; debug mode
checks it) and within the kernels' stated tolerances with the Triton ones.

Position: after `quantize` (rules 1, 2, 4 read its quantize_act nodes) and after `kv_cache` (rule 5
reads its store and attention nodes), before eliminate_dead_code; it is a no-op on graphs without
those nodes. New nodes carry the replaced nodes' `lowc_site` (role suffixed `+fused`) and format,
so the IR dump shows e.g. `lowc.add_rms_norm_quant.default(...)  # pass=fuse_glue`.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

import lowc.ops.fused_ops  # noqa: F401  (registers the fused ops)
from lowc.ir import META_FORMAT, META_SITE
from lowc.passes.base import EXACT, PassContext, PassResult, register_pass
from lowc.passes.kv_cache import _match_rope

aten = torch.ops.aten
lowc = torch.ops.lowc


def _is(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def _only_user_is(node: fx.Node, user: fx.Node) -> bool:
    return len(node.users) == 1 and next(iter(node.users)) is user


def _same_tensor_type(a, b) -> bool:
    """Both inputs are nodes with one shape and dtype (export's fake values), so no broadcasting."""
    va = a.meta.get("val") if isinstance(a, fx.Node) else None
    vb = b.meta.get("val") if isinstance(b, fx.Node) else None
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and va.dtype == vb.dtype and va.shape == vb.shape)


def _plain_add(node) -> bool:
    """aten.add.Tensor(x, r) of two same-typed tensors, alpha 1."""
    return (_is(node, aten.add.Tensor) and len(node.args) == 2 and not node.kwargs
            and _same_tensor_type(*node.args))


def _getitems(node: fx.Node) -> dict[int, fx.Node]:
    """index -> the getitem node reading output `index` of a multi-output node."""
    return {u.args[1]: u for u in node.users if _is(u, operator.getitem)}


def _stamp(new: fx.Node, like: fx.Node, fmt: str | None) -> None:
    site = like.meta.get(META_SITE)
    if site is not None:
        new.meta[META_SITE] = {**site, "role": f"{site.get('role', '?')}+fused"}
    if fmt is not None:
        new.meta[META_FORMAT] = fmt


def _emit(graph: fx.Graph, where: fx.Node, target, args, outputs: int) -> tuple[fx.Node, list[fx.Node]]:
    """Insert `target(*args)` right before `where`, with one getitem per output."""
    with graph.inserting_before(where):
        fused = graph.call_function(target, args)
    items = []
    last = fused
    for i in range(outputs):
        with graph.inserting_after(last):
            last = graph.call_function(operator.getitem, (fused, i))
        items.append(last)
    return fused, items


def _take_over_sum(graph: fx.Graph, add: fx.Node, total: fx.Node) -> None:
    """Readers of the residual add placed after the fused op read its sum output instead; the add
    itself goes unless a reader precedes the fused op (then it stays, computed twice)."""
    order = {n: i for i, n in enumerate(graph.nodes)}
    for user in list(add.users):
        if order[user] > order[total]:
            user.replace_input_with(add, total)
    if not add.users:
        graph.erase_node(add)


def _replace_quant_outputs(graph: fx.Graph, quant: fx.Node, q: fx.Node, scale: fx.Node) -> None:
    """Point the readers of quantize_act's (q, scale) at the fused op's, then drop quantize_act."""
    for index, item in _getitems(quant).items():
        item.replace_all_uses_with(q if index == 0 else scale)
        graph.erase_node(item)
    graph.erase_node(quant)


# 1, 2. quantize_act(rms_norm([add(x, r)], w, eps), fmt) -> [add_]rms_norm_quant(...)
def _fuse_norm_quant(graph: fx.Graph, quant: fx.Node) -> str | None:
    norm, fmt = quant.args
    if not (_is(norm, lowc.rms_norm.default) and _only_user_is(norm, quant)):
        return None
    src, weight, eps = norm.args
    if _plain_add(src):
        fused, (q, scale, total) = _emit(graph, norm, lowc.add_rms_norm_quant.default, (*src.args, weight, eps, fmt), 3)
        total.meta.update({k: v for k, v in src.meta.items() if k == "val"})
        _stamp(fused, norm, fmt)
        _replace_quant_outputs(graph, quant, q, scale)
        graph.erase_node(norm)
        _take_over_sum(graph, src, total)
        return "add_rms_norm_quant"
    fused, (q, scale) = _emit(graph, quant, lowc.rms_norm_quant.default, (src, weight, eps, fmt), 2)
    _stamp(fused, norm, fmt)
    _replace_quant_outputs(graph, quant, q, scale)
    graph.erase_node(norm)
    return "rms_norm_quant"


# 3. rms_norm(add(x, r), w, eps) -> add_rms_norm(x, r, w, eps)   (float activations, final norm)
def _fuse_add_norm(graph: fx.Graph, norm: fx.Node) -> str | None:
    src, weight, eps = norm.args
    if not _plain_add(src):
        return None
    fused, (out, total) = _emit(graph, norm, lowc.add_rms_norm.default, (*src.args, weight, eps), 2)
    out.meta.update({k: v for k, v in norm.meta.items() if k == "val"})
    total.meta.update({k: v for k, v in src.meta.items() if k == "val"})
    _stamp(fused, norm, None)
    norm.replace_all_uses_with(out)
    graph.erase_node(norm)
    _take_over_sum(graph, src, total)
    return "add_rms_norm"


# 4. quantize_act(mul(silu(g), u), fmt) -> silu_mul_quant(g, u, fmt)
def _fuse_silu_mul_quant(graph: fx.Graph, quant: fx.Node) -> str | None:
    mul, fmt = quant.args
    if not (_is(mul, aten.mul.Tensor) and len(mul.args) == 2 and _only_user_is(mul, quant)):
        return None
    a, b = mul.args
    silu, up = (a, b) if _is(a, aten.silu.default) else (b, a)
    if not (_is(silu, aten.silu.default) and _only_user_is(silu, mul) and _same_tensor_type(silu.args[0], up)):
        return None
    fused, (q, scale) = _emit(graph, quant, lowc.silu_mul_quant.default, (silu.args[0], up, fmt), 2)
    _stamp(fused, silu.args[0], fmt)  # the gate projection's site: "...mlp.gate_proj+fused"
    _replace_quant_outputs(graph, quant, q, scale)
    graph.erase_node(mul)
    graph.erase_node(silu)
    return "silu_mul_quant"


# 5. rope_kv_store(k) + kv_store(v) + attention_kv(rope(q)) -> attention_kv(rope_qkv_store(q, k, v))
#    (with the key rotation: rope_kv_store(k, rotate) + kv_store(v) + attention_kv(hadamard(rope(q)));
#    a key centre, rope_kv_store(..., key_bias), moves into the fused op as is)
def _fuse_rope_qkv(graph: fx.Graph, attn: fx.Node) -> str | None:
    q, k_cache, v_cache, slot_ids, cache_lens, new_lens = attn.args[:6]
    fmt = attn.args[-1]
    ctx = (slot_ids, cache_lens, new_lens)
    k_store = _store_of(k_cache, lowc.rope_kv_store.default)
    v_store = _store_of(v_cache, lowc.kv_store.default)
    if k_store is None or v_store is None:
        return None
    rotate = bool(k_store.args[8] if len(k_store.args) > 8 else k_store.kwargs.get("rotate", False))
    key_bias = k_store.args[9] if len(k_store.args) > 9 else k_store.kwargs.get("key_bias")
    q_roped = q
    if rotate:  # the query's rotation must be there too, serving only this attention
        if not _is(q, lowc.hadamard.default) or len(q.users) != 1:
            return None
        q_roped = q.args[0]
    rope = _match_rope(q_roped)
    if rope is None:
        return None
    k, cos, sin = k_store.args[:3]
    q_pre, q_cos, q_sin = rope
    if (q_cos, q_sin) != (cos, sin) or tuple(k_store.args[4:7]) != ctx or tuple(v_store.args[2:5]) != ctx:
        return None
    if k_store.args[7] != fmt or v_store.args[5] != fmt:
        return None
    v = v_store.args[0]
    with graph.inserting_before(attn):
        fused = graph.call_function(lowc.rope_qkv_store.default,
                                    (q_pre, k, v, cos, sin, k_cache, v_cache, *ctx, fmt, rotate,
                                     *([key_bias] if key_bias is not None else [])))
    fused.meta.update({key: val for key, val in q.meta.items() if key == "val"})
    _stamp(fused, k_store, fmt)
    attn.replace_input_with(q, fused)
    graph.erase_node(k_store)
    graph.erase_node(v_store)
    return "rope_qkv_store"


def _store_of(cache: list, target) -> fx.Node | None:
    """The single `target` node writing exactly this list of cache tensors."""
    if not cache or not isinstance(cache[0], fx.Node):
        return None
    stores = [u for u in cache[0].users if _is(u, target) and list(u.args[3 if target is lowc.rope_kv_store.default else 1]) == list(cache)]
    return stores[0] if len(stores) == 1 else None


@register_pass("fuse_glue", numerics=EXACT)
def fuse_glue(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Fuse norm/residual/SiLU/RoPE glue with activation quantization and the KV store."""
    graph = gm.graph
    counts: dict[str, int] = {}

    def run(target, rule) -> None:
        for node in [n for n in graph.nodes if _is(n, target)]:
            fused = rule(graph, node)
            if fused:
                counts[fused] = counts.get(fused, 0) + 1

    run(lowc.quantize_act.default, _fuse_norm_quant)
    run(lowc.rms_norm.default, _fuse_add_norm)
    run(lowc.quantize_act.default, _fuse_silu_mul_quant)
    run(lowc.attention_kv.default, _fuse_rope_qkv)
    graph.eliminate_dead_code()  # the q rotations rope_qkv_store now computes
    return PassResult(gm, modified=bool(counts), info={"fused": counts})

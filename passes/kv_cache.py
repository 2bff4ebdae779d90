"""kv_cache: route every layer's attention through an explicit, possibly quantized, KV cache.

Rewrites, for each `lowc::attention(q, k, v, scale, layer, window)` node:

    k = rope(k_pre, cos, sin)                      lowc::rope_kv_store(k_pre, cos, sin, [k cache], ctx, fmt)
    attention(q, k, v, ...)              ->        lowc::kv_store(v, [v cache], ctx, fmt)
                                                   lowc::attention_kv(q, [k cache], [v cache], ctx, ..., fmt)

where ctx is three new graph inputs (`kv_slot_ids`, `kv_cache_lens`, `kv_new_lens`: the forward
context, see lowc.ops.kv_ops) and each layer's cache parts (data, scale, zero per format) are new
graph inputs too, in `KVCacheSpec.input_names()` order; the spec is left in
`gm.meta["lowc_kv_cache"]` for the runtime. The format comes from the scheme (kv_bits 16/8/4 ->
kv16 = model dtype, kv8, kv4). Where center_keys planned a key centre c for a layer
(`META_KEY_CENTER`), the store writes k - c (`rope_kv_store(..., key_bias=c)`, or `kv_store(k - c)`);
exact in full precision, see passes/center_keys.py. With the scheme's `kv_rotation`, keys are stored rotated
(`rope_kv_store(..., rotate=True)`, or `kv_store(lowc::hadamard(k))` when RoPE is not matched) and
the queries are rotated the same way (`attention_kv(lowc::hadamard(q), ...)`): exact in full
precision, since the normalized Walsh-Hadamard transform is orthogonal. When k is Llama's rotate-half RoPE of a tensor nothing else reads,
the rotation moves into the store (`rope_kv_store`: K goes from projection to quantized cache in one
op); otherwise the store takes the rotated k as is. The dump marks every store and attention node
with `format=kvN`.

Place it after every pass that reads or rewrites `lowc::attention` nodes or recalibrates (it is the
last pass before eliminate_dead_code in every default pipeline). Invariants: each attention_kv node
comes after the two stores of its layer (the stores mutate their cache inputs; FX keeps node order);
with kv16 the logits are unchanged (the numerics are declared approximate because of kv8/kv4). In
debug mode the pass appends transient context and cache tensors to `ctx.sample_inputs`, so the
pipeline's before/after comparisons keep running the graph.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from lowc.errors import PassError
from lowc.ir import META_FORMAT, META_SITE
from lowc.ops.kv_ops import CONTEXT_INPUTS, KVCacheSpec, kv_format
from lowc.passes.base import APPROXIMATE, PassContext, PassResult, register_pass
from lowc.passes.center_keys import META_KEY_CENTER, check_rotation_dim
from lowc.passes.weights import new_attr

META_KV_SPEC = "lowc_kv_cache"  # gm.meta key holding the KVCacheSpec
META_KV_INPUT = "lowc_kv_input"  # placeholder meta: which context/cache tensor it is

aten = torch.ops.aten


@register_pass("kv_cache", numerics=APPROXIMATE)
def kv_cache(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Store K/V into an explicit (quantized) KV cache and attend over it."""
    graph = gm.graph
    attns = [n for n in graph.nodes if n.op == "call_function" and n.target is torch.ops.lowc.attention.default]
    if any(n.op == "placeholder" and n.target == CONTEXT_INPUTS[0] for n in graph.nodes):
        raise PassError("kv_cache ran twice: the graph already has KV cache inputs")
    if not attns:
        return PassResult(gm, modified=False, info={"attention_nodes": 0})
    spec = _spec_for(attns, ctx)
    inputs = _add_inputs(graph, spec)
    context = [inputs[name] for name in CONTEXT_INPUTS]
    per_layer = len(spec.parts)
    rotate = bool(ctx.scheme.kv_rotation)
    if rotate:
        check_rotation_dim(spec.head_dim, "kv_cache")
    fused = centred = 0
    for attn in attns:
        q, k, v, scale, layer, window = attn.args
        centre = attn.meta.get(META_KEY_CENTER)
        base = len(CONTEXT_INPUTS) + 2 * per_layer * layer
        names = spec.input_names()
        k_parts = [inputs[n] for n in names[base: base + per_layer]]
        v_parts = [inputs[n] for n in names[base + per_layer: base + 2 * per_layer]]
        with graph.inserting_before(attn):
            rope = _match_rope(k)
            if rope is not None:
                bias = None if centre is None else new_attr(gm, f"lowc_key_center_{layer}", centre, attn)
                k_store = graph.call_function(torch.ops.lowc.rope_kv_store.default,
                                              (*rope, k_parts, *context, spec.fmt, rotate, *([bias] if bias else [])))
                fused += 1
            else:
                if rotate:
                    k = graph.call_function(torch.ops.lowc.hadamard.default, (k,))
                if centre is not None:
                    bias = new_attr(gm, f"lowc_key_center_{layer}", centre[:, None, :].contiguous(), attn)
                    k = graph.call_function(aten.sub.Tensor, (k, bias))
                k_store = graph.call_function(torch.ops.lowc.kv_store.default, (k, k_parts, *context, spec.fmt))
            if rotate:
                q_val = q.meta.get("val")
                q = graph.call_function(torch.ops.lowc.hadamard.default, (q,))
                if q_val is not None:
                    q.meta["val"] = q_val
                q.meta[META_SITE] = {**attn.meta.get(META_SITE, {}), "role": "q_rotation"}
            v_store = graph.call_function(torch.ops.lowc.kv_store.default, (v, v_parts, *context, spec.fmt))
            new = graph.call_function(torch.ops.lowc.attention_kv.default,
                                      (q, k_parts, v_parts, *context, scale, layer, window, spec.fmt))
        site = attn.meta.get(META_SITE, {"name": f"layers.{layer}.attention", "layer": layer, "role": "attention"})
        for node, role in ((k_store, "k_store"), (v_store, "v_store"), (new, "attention")):
            node.meta[META_FORMAT] = spec.fmt
            node.meta[META_SITE] = {**site, "role": role}
        if "val" in attn.meta:
            new.meta["val"] = attn.meta["val"]
        centred += centre is not None
        attn.replace_all_uses_with(new)
        graph.erase_node(attn)
    graph.eliminate_dead_code()  # the unfused k rotations, now unread
    gm.meta[META_KV_SPEC] = spec
    if ctx.sample_inputs is not None:
        ids = ctx.sample_inputs[0]
        ctx.sample_inputs = (*ctx.sample_inputs[:2], *spec.transient_inputs(ids.shape[0], ids.shape[1], ids.device))
    return PassResult(gm, modified=True, info={
        "format": spec.fmt, "layers": spec.layers, "kv_heads": spec.kv_heads, "head_dim": spec.head_dim,
        "rope_fused": fused, "key_rotation": rotate, "keys_centred": centred, "bytes_per_token": spec.bytes_per_token(),
    })


def _spec_for(attns: list[fx.Node], ctx: PassContext) -> KVCacheSpec:
    """The cache shape from the attention nodes' K (export's fake values), else from the HF config."""
    layers = sorted(int(n.args[4]) for n in attns)
    if layers != list(range(len(attns))):
        raise PassError(f"kv_cache expects one attention node per layer 0..{len(attns) - 1}, got layers {layers}")
    shapes = set()
    for n in attns:
        val = n.args[1].meta.get("val") if isinstance(n.args[1], fx.Node) else None
        if isinstance(val, torch.Tensor):
            shapes.add((int(val.shape[1]), int(val.shape[3]), val.dtype))
    if not shapes:
        shapes.add(_shape_from_config(ctx.model_config))
    if len(shapes) != 1:
        raise PassError(f"kv_cache needs the same KV heads, head_dim and dtype in every layer, got {sorted(map(str, shapes))}")
    kv_heads, head_dim, dtype = shapes.pop()
    return KVCacheSpec(kv_format(ctx.scheme.kv_bits), len(attns), kv_heads, head_dim, dtype,
                       key_groups=key_groups(ctx, head_dim))


MIN_KEY_GROUP = 32  # channels: a smaller key group has too few values for its own range, and no kernel


def key_groups(ctx: PassContext, head_dim: int) -> int:
    """The scheme's kv_key_groups where every group keeps at least MIN_KEY_GROUP channels; otherwise
    one pair per head vector (logged), so w4a8kv4 on a head_dim-32 model keeps the plain kv4 keys."""
    asked = ctx.scheme.kv_key_groups
    if asked > 1 and head_dim < asked * MIN_KEY_GROUP:
        ctx.log.info("kv_cache: head_dim %d is too small for %d key groups of >= %d channels; keys keep one "
                     "scale/zero pair per head vector", head_dim, asked, MIN_KEY_GROUP)
        return 1
    return asked


def _shape_from_config(cfg) -> tuple[int, int, torch.dtype]:
    if cfg is None:
        raise PassError("kv_cache: the attention nodes carry no shapes and no model config was given")
    heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    dtype = getattr(cfg, "dtype", None) or getattr(cfg, "torch_dtype", None) or torch.float32
    return int(getattr(cfg, "num_key_value_heads", None) or heads), head_dim, dtype


def _add_inputs(graph: fx.Graph, spec: KVCacheSpec) -> dict[str, fx.Node]:
    """Placeholders for the context and every cache part, after the existing inputs, in spec order."""
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    nodes = {}
    for name in spec.input_names():
        with graph.inserting_after(last):
            last = graph.placeholder(name)
        last.meta[META_KV_INPUT] = name
        nodes[name] = last
    return nodes


def _match_rope(k) -> tuple[fx.Node, fx.Node, fx.Node] | None:
    """(k_pre, cos, sin) when k = k_pre * cos + cat(-k_pre[..., h:], k_pre[..., :h]) * sin, only for attention.

    This is transformers' `apply_rotary_pos_emb` with `rotate_half`, as export records it.
    """
    if not _is(k, aten.add.Tensor) or len(k.users) != 1 or len(k.args) != 2:
        return None
    direct, rotated = k.args
    if not (_is(direct, aten.mul.Tensor) and _is(rotated, aten.mul.Tensor)):
        return None
    x, cos = direct.args
    cat, sin = rotated.args
    if not _is(cat, aten.cat.default) or len(cat.args[0]) != 2 or (cat.args[1] if len(cat.args) > 1 else 0) not in (-1, 3):
        return None
    neg, low = cat.args[0]
    if not _is(neg, aten.neg.default) or not isinstance(x, fx.Node):
        return None
    high = neg.args[0]
    val = x.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        return None
    half = int(val.shape[-1]) // 2
    if not (_is_slice(low, x, 0, half) and _is_slice(high, x, half, None)):
        return None
    # The rotation's intermediates must serve only this k (they are dropped once the store owns it).
    for node in (direct, rotated, cat, neg, low, high):
        if len(node.users) != 1:
            return None
    return x, cos, sin


def _is(node, target) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is target


def _is_slice(node, src: fx.Node, start: int, end: int | None) -> bool:
    if not _is(node, aten.slice.Tensor) or node.args[0] is not src:
        return False
    dim, lo = node.args[1], node.args[2] if len(node.args) > 2 else 0
    hi = node.args[3] if len(node.args) > 3 else None
    if dim not in (-1, 3) or lo != start:
        return False
    return hi == end if end is not None else (hi is None or hi >= 2**62)

"""fuse_glue: which nodes it fuses (node counts), that logits do not move, the launch count per
decoder layer, and that it leaves alone what it must not fuse."""

import pytest
import torch
import torch.fx as fx

import lowc
import lowc.passes.fuse_glue as fuse_glue_mod
from lowc.ir import format_graph
from lowc.passes import PassContext
from lowc.schemes import parse_scheme
from lowc.tiny_models import tiny_model

ops = torch.ops.lowc
LAYERS = 2
# Nodes that never launch a kernel: views, shape queries, tuple access, export's metadata asserts.
NO_LAUNCH = {"view", "transpose", "unsqueeze", "reshape", "slice", "alias", "getitem", "sym_size",
             "_assert_tensor_metadata"}


def _scheme(name):
    # The w4a8kv4 recipe without the calibration-heavy passes (smoothing, clip, GPTQ): same graph shape.
    return parse_scheme(name).replace(clip_search=False, gptq=False, smooth_alpha=None, smooth_attention_alpha=None)


@pytest.fixture(scope="module")
def compiled():
    model = tiny_model("llama", layers=LAYERS)
    scheme = _scheme("w4a8kv4")
    calib = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))  # for the key centre
    plain = lowc.compile(model, scheme=_without_fusion(scheme), calibration=calib, progress=False)
    fused = lowc.compile(model, scheme=scheme, calibration=calib, progress=False)  # default pipelines run fuse_glue
    return model, plain, fused


def _without_fusion(scheme):
    """The same scheme with fuse_glue taken out of its pipeline (the unfused baseline)."""
    return scheme.replace(passes=tuple(p for p in scheme.passes if p != "fuse_glue"))


def _count(gm, target) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


def launches_per_layer(gm: fx.GraphModule, layer: int) -> list[str]:
    """The kernel-launching nodes of one decoder layer, from its input norm to the next layer's."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    starts = [i for i, n in enumerate(nodes) if "norm" in str(n.target)
              and n.meta.get("lowc_site", {}).get("name", "").endswith(f"layers.{layer}.input_layernorm")]
    ends = [i for i, n in enumerate(nodes) if "norm" in str(n.target)
            and n.meta.get("lowc_site", {}).get("name", "").endswith(f"layers.{layer + 1}.input_layernorm")]
    assert starts and ends, f"layer {layer} not found"
    names = [str(n.target).split(".")[-2] if isinstance(n.target, torch._ops.OpOverload) else getattr(n.target, "__name__", "")
             for n in nodes[starts[0]:ends[0]]]
    return [name for name in names if name not in NO_LAUNCH]


def test_fused_nodes_replace_the_glue(compiled):
    _, plain, fused = compiled
    gm = fused.graph_module
    assert _count(gm, ops.rope_qkv_store.default) == LAYERS
    # w4a8kv4 rotates keys and queries and centres the keys: the fused op does both, no separate
    # rotation is left.
    stores = [n for n in gm.graph.nodes if n.target is ops.rope_qkv_store.default]
    assert all(n.args[-2] is True and n.args[-1].op == "get_attr" for n in stores)
    assert _count(gm, ops.hadamard.default) == 0 and _count(plain.graph_module, ops.hadamard.default) == LAYERS
    assert _count(gm, ops.rope_kv_store.default) == 0 and _count(gm, ops.kv_store.default) == 0
    assert _count(gm, ops.rms_norm_quant.default) == 1  # layer 0's input norm: no residual add before it
    assert _count(gm, ops.add_rms_norm_quant.default) == 2 * LAYERS - 1
    assert _count(gm, ops.silu_mul_quant.default) == LAYERS
    assert _count(gm, ops.add_rms_norm.default) == 1  # the final norm feeds the 16-bit lm_head
    assert _count(gm, ops.quantize_act.default) == LAYERS  # o_proj's input: attention output, left as is
    assert _count(gm, ops.rms_norm.default) == 0 and _count(gm, torch.ops.aten.silu.default) == 0
    assert _count(gm, torch.ops.aten.add.Tensor) == 0  # residual adds and q's RoPE are inside fused ops
    text = format_graph(gm)
    assert "lowc.add_rms_norm_quant.default(" in text and "pass=fuse_glue" in text
    assert _count(plain.graph_module, ops.attention_kv.default) == _count(gm, ops.attention_kv.default)


def test_logits_unchanged_in_prefill_and_decode(compiled):
    _, plain, fused = compiled
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(plain(ids), fused(ids))  # the reference kernels compose exactly
    from lowc.runtime.context import ForwardContext

    outs = []
    for model in (plain, fused):
        kv = model.new_cache(2, 16)
        slots = kv.allocate(2)
        model(ids, context=ForwardContext(kv, slots, [9, 5], 9))  # prefill; row 1 is left-padded
        outs.append(model(ids[:, -1:], context=ForwardContext(kv, slots, [1, 1], 1)))  # one decode step
    assert torch.equal(outs[0], outs[1])


def test_launches_per_decoder_layer(compiled):
    _, plain, fused = compiled
    before, after_ = launches_per_layer(plain.graph_module, 0), launches_per_layer(fused.graph_module, 0)
    assert after_ == [
        "rms_norm_quant", "qlinear", "qlinear", "qlinear", "rope_qkv_store", "attention_kv", "quantize_act",
        "qlinear", "add_rms_norm_quant", "qlinear", "qlinear", "silu_mul_quant", "qlinear",
    ]
    # Unfused: 2 norms + 2 residual adds + 4 quantize_act + 7 qlinear + 5 for q's RoPE (mul, neg, cat,
    # mul, add) + q's key-space rotation (hadamard) + 2 stores + attention + silu + mul = 26.
    # Fused: 13 (10 with merged QKV and gate/up GEMMs).
    assert before.count("hadamard") == 1 and len(before) == 26 and len(after_) == 13


def test_float_scheme_fuses_norms_and_rope_only():
    model = tiny_model("qwen2", layers=LAYERS)
    plain = lowc.compile(model, scheme=_without_fusion(parse_scheme("w16a16")), progress=False)
    fused = lowc.compile(model, scheme="w16a16", progress=False)
    gm = fused.graph_module
    assert _count(gm, ops.add_rms_norm.default) == 2 * LAYERS  # every norm but layer 0's input norm
    assert _count(gm, ops.rope_qkv_store.default) == LAYERS
    assert _count(gm, ops.silu_mul_quant.default) == 0  # nothing quantizes down_proj's input
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(plain(ids), fused(ids))


def test_shared_intermediates_are_not_fused():
    """A norm output or silu read twice is not swallowed; a residual add read before the norm stays."""

    def f(x, r, w):
        s = torch.ops.aten.add.Tensor(x, r)
        early = torch.ops.aten.mul.Tensor(s, 2.0)  # reads the sum before the norm
        n = ops.rms_norm.default(s, w, 1e-5)
        qa = ops.quantize_act.default(n, "w8a8")
        g = torch.ops.aten.silu.default(x)
        h = torch.ops.aten.mul.Tensor(g, r)
        qb = ops.quantize_act.default(h, "w8a8")
        return qa[0], qa[1], n, qb[0], qb[1], g, early

    x, r, w = torch.randn(3, 64), torch.randn(3, 64), torch.rand(64) + 0.5
    gm = fx.symbolic_trace(f)
    for node in gm.graph.nodes:  # export would have recorded these fake values
        if node.op == "placeholder":
            node.meta["val"] = {"x": x, "r": r, "w": w}[node.target]
    expect = gm(x, r, w)
    result = fuse_glue_mod.fuse_glue(gm, PassContext(scheme=parse_scheme("w8a8")))
    gm.recompile()
    # n is read twice, so quantize_act(n) stays; the norm still takes the add in (add_rms_norm), and
    # the add stays too because `early` reads it first. g is read twice: silu * r is not fused.
    assert result.info["fused"] == {"add_rms_norm": 1}
    assert _count(gm, ops.quantize_act.default) == 2 and _count(gm, torch.ops.aten.add.Tensor) == 1
    assert _count(gm, ops.silu_mul_quant.default) == 0
    for a, b in zip(gm(x, r, w), expect):
        assert torch.equal(a, b)

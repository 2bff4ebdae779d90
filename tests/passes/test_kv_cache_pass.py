"""The kv_cache pass: node counts, RoPE fusion and its fallback, exactness at kv16, dumps, pipelines."""

import copy

import pytest
import torch

import lowc
import lowc.ops  # noqa: F401
from lowc.capture import capture
from lowc.errors import PassError
from lowc.ir import META_FORMAT
from lowc.passes import PassContext, PassResult, before
from lowc.passes.kv_cache import kv_cache
from lowc.schemes import PRESETS, parse_scheme
from lowc.tiny_models import tiny_model

ops = torch.ops.lowc


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", layers=2)


@pytest.fixture(scope="module")
def captured(llama):
    return capture(llama)


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


def _rewrite(captured, scheme):
    return kv_cache(copy.deepcopy(captured), PassContext(scheme=parse_scheme(scheme)))


@pytest.mark.parametrize("scheme, fmt, parts", [("w16a16", "kv16", 1), ("w16a16kv8", "kv8", 2), ("w16a16kv4", "kv4", 3)])
def test_rewrite_counts_and_inputs(captured, scheme, fmt, parts):
    res = _rewrite(captured, scheme)
    gm = res.graph_module
    assert res.modified and res.info["format"] == fmt and res.info["rope_fused"] == 2
    assert _count(gm, ops.attention.default) == 0
    assert _count(gm, ops.attention_kv.default) == 2
    assert _count(gm, ops.rope_kv_store.default) == 2 and _count(gm, ops.kv_store.default) == 2
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    assert names == ["input_ids", "position_ids", *gm.meta["lowc_kv_cache"].input_names()]
    assert len(names) == 2 + 3 + 2 * 2 * parts
    stores = [n for n in gm.graph.nodes if n.target in (ops.kv_store.default, ops.rope_kv_store.default)]
    assert all(n.meta[META_FORMAT] == fmt for n in stores)
    # Each attention follows the two stores that write its layer's cache.
    order = list(gm.graph.nodes)
    for attn in (n for n in order if n.target is ops.attention_kv.default):
        layer_stores = [s for s in stores if s.args[3 if s.target is ops.rope_kv_store.default else 1]
                        in (attn.args[1], attn.args[2])]  # the cache argument
        assert len(layer_stores) == 2 and all(order.index(s) < order.index(attn) for s in layer_stores)


def test_kv16_leaves_logits_bit_identical(llama):
    ids = torch.randint(0, 256, (3, 11))
    with torch.no_grad():
        ref = llama(ids).logits
        out = lowc.compile(llama, "w16a16", progress=False)(ids)
    assert torch.equal(out, ref)


@pytest.mark.parametrize("fuse", [False, True])
def test_key_rotation_is_exact_in_full_precision(llama, fuse):
    """kv_rotation on a 16-bit cache: q and k rotated by the orthogonal Walsh-Hadamard transform, so the
    logits stay those of the model (fp32) — unfused (hadamard nodes) and fused into the RoPE store."""
    scheme = parse_scheme("w16a16").replace(name="w16a16-rot", kv_rotation=True)
    if not fuse:
        scheme = scheme.replace(passes=tuple(p for p in scheme.passes if p != "fuse_glue"))
    q = lowc.compile(llama, scheme, progress=False)
    gm = q.graph_module
    rec = next(r for r in q.pass_records if r.name == "kv_cache")
    assert rec.info["key_rotation"] is True
    assert _count(gm, ops.hadamard.default) == (0 if fuse else 2)
    stores = [n for n in gm.graph.nodes if n.target in (ops.rope_kv_store.default, ops.rope_qkv_store.default)]
    assert len(stores) == 2 and all(n.args[-1] is True for n in stores)
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, out = llama(ids).logits, q(ids)
    assert ((out - ref).norm() / ref.norm()) < 1e-5
    plain = lowc.compile(llama, "w16a16", progress=False)
    with torch.no_grad():
        assert not torch.equal(out, plain(ids))  # the rotation ran (rounding differs in the last bits)


def test_key_rotation_needs_a_power_of_two_head_dim():
    m = tiny_model("llama", layers=1, head_dim=24)
    with pytest.raises(PassError, match="power of two"):
        lowc.compile(m, parse_scheme("w16a16kv4"), progress=False)


def test_rope_fusion_falls_back_when_k_is_shared(llama):
    """A pass that gives the rotated k another reader: the store then takes k as is."""

    def tap_k(gm, ctx):
        for n in list(gm.graph.nodes):
            if n.target is ops.attention.default:
                with gm.graph.inserting_before(n):
                    extra = gm.graph.call_function(torch.ops.aten.mul.Tensor, (n.args[1], 1.0))
                    summed = gm.graph.call_function(torch.ops.aten.add.Tensor, (n.args[1], extra))
                    half = gm.graph.call_function(torch.ops.aten.mul.Tensor, (summed, 0.5))
                n.args = (n.args[0], half, *n.args[2:])
        return PassResult(gm, True)

    q = lowc.compile(llama, "w16a16", passes=[before("kv_cache", tap_k)], progress=False)
    rec = next(r for r in q.pass_records if r.name == "kv_cache")
    assert rec.info["rope_fused"] == 0
    assert _count(q.graph_module, ops.kv_store.default) == 4
    ids = torch.randint(0, 256, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(q(ids), llama(ids).logits, atol=1e-5, rtol=1e-5)


def test_running_twice_is_an_error(captured):
    gm = _rewrite(captured, "w16a16").graph_module
    with pytest.raises(PassError, match="twice"):
        kv_cache(gm, PassContext(scheme=parse_scheme("w16a16")))


def test_dump_and_debug_mode(llama, tmp_path):
    """The dump shows the stores with their format; debug mode keeps running the graph after the pass."""
    q = lowc.compile(llama, "w16a16kv4", dump_ir=tmp_path, debug=True, progress=False)
    rec = next(r for r in q.pass_records if r.name == "kv_cache")
    assert rec.check["finite"] and 5 < rec.check["sqnr_db"] < 80
    after = (next(tmp_path.glob("*_kv_cache")) / "after.txt").read_text()
    assert after.count("lowc.rope_kv_store.default(") == 2 and after.count("lowc.attention_kv.default(") == 2
    assert "format=kv4" in after and "lowc.attention.default(" not in after
    final = (tmp_path / "final.txt").read_text()  # fuse_glue then folds q's RoPE into the store as well
    assert final.count("lowc.rope_qkv_store.default(") == 2 and "format=kv4" in final
    diff = next(tmp_path.glob("*_kv_cache")) / "diff.txt"
    assert "+%kv0_k_scale = input 'kv0_k_scale'" in diff.read_text()


def test_qwen2_with_qkv_bias():
    m = tiny_model("qwen2", layers=1)
    q = lowc.compile(m, "w16a16kv8", progress=False)
    assert next(r for r in q.pass_records if r.name == "kv_cache").info["rope_fused"] == 1
    ids = torch.randint(0, 256, (2, 6))
    with torch.no_grad():
        rel = (q(ids) - m(ids).logits).norm() / m(ids).logits.norm()
    assert rel < 0.05


def test_every_preset_runs_kv_cache_last():
    for s in [*PRESETS.values(), parse_scheme("w16a16kv4"), parse_scheme("w4a8kv4-g64")]:
        assert s.passes[-3:] == ("kv_cache", "fuse_glue", "eliminate_dead_code")
    assert parse_scheme("w4a8kv4").kv_bits == 4


def test_key_groups_follow_the_scheme_where_head_dim_allows(captured):
    """w4a8kv4's two key groups: kept at head_dim >= 64, one pair per head vector below (each group
    must keep 32 channels); the spec's key scale/zero take the group axis, the values do not."""
    from lowc.passes.kv_cache import key_groups

    scheme = parse_scheme("w16a16kv4").replace(name="kv4-g2", kv_key_groups=2)
    spec = _rewrite(captured, scheme).graph_module.meta["lowc_kv_cache"]
    assert spec.head_dim < 64 and spec.key_groups == 1  # the tiny model's head_dim
    ctx = PassContext(scheme=scheme)
    assert key_groups(ctx, 64) == 2 and key_groups(ctx, 128) == 2 and key_groups(ctx, 32) == 1
    assert PRESETS["w4a8kv4"].kv_key_groups == 2 and PRESETS["w4a4"].kv_key_groups == 1

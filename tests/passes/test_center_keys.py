"""center_keys + kv_cache: the key centre is planned from calibration means, stored keys are k - c,
attention is unchanged in full precision, and a quantized cache gets closer to the float model."""

import pytest
import torch

import lowc
import lowc.ops  # noqa: F401
from lowc.errors import PassError
from lowc.ops.kv_ops import hadamard_reference
from lowc.passes.center_keys import key_center
from lowc.schemes import parse_scheme
from lowc.tiny_models import tiny_model

ops = torch.ops.lowc
CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(3))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def offset_llama():
    """A tiny Llama whose keys share a large per-channel offset: k_proj gets a bias in the channels
    RoPE hardly turns over a few dozen positions (the low-frequency half of each pair block)."""
    m = tiny_model("qwen2", layers=2)  # Qwen2 has q/k/v biases
    d = m.config.hidden_size // m.config.num_attention_heads
    with torch.no_grad():
        for layer in m.model.layers:
            bias = layer.self_attn.k_proj.bias.view(-1, d)
            bias.zero_()
            bias[:, d // 2 - 2: d // 2] = 6.0
            bias[:, d - 2:] = -5.0
    return m


def _centred(scheme: str, **changes):
    s = parse_scheme(scheme).replace(name=f"{scheme}-centred", kv_key_center=True, **changes)
    if "center_keys" not in s.passes:  # a 16-bit cache skips the pass: put it in by hand for the exactness check
        i = s.passes.index("kv_cache")
        s = s.replace(passes=(*s.passes[:i], "center_keys", *s.passes[i:]))
    return s


def _count(gm, target):
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is target)


def test_the_centre_is_the_rotated_mean():
    mean = torch.randn(2, 16)
    torch.testing.assert_close(key_center(mean, False, torch.float32), mean)
    torch.testing.assert_close(key_center(mean, True, torch.float32), hadamard_reference(mean))
    assert key_center(mean, True, torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("rotate", [False, True])
@pytest.mark.parametrize("fuse", [False, True])
def test_centring_is_exact_in_full_precision(offset_llama, rotate, fuse):
    """A 16-bit fp32 cache holding k - c: the logits stay the model's (softmax drops q.c)."""
    scheme = _centred("w16a16", kv_rotation=rotate)
    if not fuse:
        scheme = scheme.replace(passes=tuple(p for p in scheme.passes if p != "fuse_glue"))
    q = lowc.compile(offset_llama, scheme, calibration=CALIB, progress=False)
    rec = next(r for r in q.pass_records if r.name == "kv_cache")
    assert rec.info["keys_centred"] == 2
    target = ops.rope_qkv_store.default if fuse else ops.rope_kv_store.default
    stores = [n for n in q.graph_module.graph.nodes if n.target is target]
    assert len(stores) == 2 and all(n.args[-1].op == "get_attr" for n in stores)  # key_bias is the last arg
    centre = getattr(q.graph_module, stores[0].args[-1].target)
    assert centre.shape == (offset_llama.config.num_key_value_heads, 16) and centre.abs().max() > 1.0
    with torch.no_grad():
        ref, out = offset_llama(IDS).logits, q(IDS)
    assert ((out - ref).norm() / ref.norm()) < 1e-5


def test_the_kv_store_path_subtracts_the_centre_in_the_graph(offset_llama):
    """When RoPE is not matched (k has another reader), the centre is an aten.sub before kv_store."""
    from lowc.passes import PassResult, before

    def tap_k(gm, ctx):
        for n in list(gm.graph.nodes):
            if n.target is ops.attention.default:
                with gm.graph.inserting_before(n):
                    twice = gm.graph.call_function(torch.ops.aten.add.Tensor, (n.args[1], n.args[1]))
                    half = gm.graph.call_function(torch.ops.aten.mul.Tensor, (twice, 0.5))
                n.args = (n.args[0], half, *n.args[2:])
        return PassResult(gm, True)

    scheme = _centred("w16a16")
    q = lowc.compile(offset_llama, scheme, calibration=CALIB, passes=[before("center_keys", tap_k)], progress=False)
    gm = q.graph_module
    assert _count(gm, ops.rope_kv_store.default) == 0
    subs = [n for n in gm.graph.nodes if n.target is torch.ops.aten.sub.Tensor and n.args[1].op == "get_attr"]
    assert len(subs) == 2
    with torch.no_grad():
        ref, out = offset_llama(IDS).logits, q(IDS)
    assert ((out - ref).norm() / ref.norm()) < 1e-5


@pytest.mark.parametrize("rotate", [False, True])
def test_a_kv4_cache_with_centred_keys_is_closer_to_the_float_model(offset_llama, rotate):
    with torch.no_grad():
        ref = offset_llama(IDS).logits
    errs = {}
    for centre in (False, True):
        s = parse_scheme("w16a16kv4").replace(name=f"kv4-{centre}", kv_rotation=rotate, kv_key_center=centre)
        assert ("center_keys" in s.passes) == centre
        with torch.no_grad():
            out = lowc.compile(offset_llama, s, calibration=CALIB, progress=False)(IDS)
        errs[centre] = float((out - ref).norm() / ref.norm())
    assert errs[True] < 0.7 * errs[False], errs


def test_kv4_presets_centre_their_keys_and_kv16_ignores_the_flag():
    for name in ("w4a8kv4", "w4a4", "w8a8kv4", "w4a16kv4", "w4a8kv4-g64"):
        s = parse_scheme(name)
        assert s.kv_key_center and s.passes.index("center_keys") == s.passes.index("kv_cache") - 1, name
    assert not parse_scheme("w16a16kv8").kv_key_center and not parse_scheme("w4a8kv8").kv_key_center
    assert not parse_scheme("w16a16kv4").kv_key_center  # the only kv4 recipe that does not calibrate
    assert "center_keys" not in parse_scheme("w8a8").replace(kv_key_center=True).passes


def test_centring_needs_key_statistics(offset_llama):
    from lowc.capture import capture
    from lowc.passes import PassContext
    from lowc.passes.center_keys import center_keys

    gm = capture(offset_llama)
    with pytest.raises(PassError, match="no key statistics"):
        center_keys(gm, PassContext(scheme=parse_scheme("w16a16kv4")))


def test_a_wrong_key_bias_is_a_named_error():
    from lowc.errors import CacheError
    from lowc.ops.kv_ops import KVCacheSpec

    spec = KVCacheSpec("kv4", 1, 2, 16, torch.float32)
    k_cache, _ = spec.layer_tensors(spec.allocate(1, 8), 0)
    x = torch.randn(1, 2, 3, 16)
    cos, sin = torch.ones(1, 1, 3, 16), torch.zeros(1, 1, 3, 16)
    ctx = (torch.tensor([0]), torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(CacheError, match=r"key_bias must be a float tensor \[Hkv, D\]"):
        ops.rope_kv_store(x, cos, sin, k_cache, *ctx, "kv4", False, torch.zeros(16))

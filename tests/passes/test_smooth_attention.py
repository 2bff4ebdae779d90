"""smooth_attention: per key channel factors, RoPE pairs shared, GQA aware, exact in fp32."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lowc
from lowc.calibrate import calibrate
from lowc.capture import capture
from lowc.errors import PassError, SchemeError
from lowc.passes import PassContext
from lowc.passes.annotate import annotate
from lowc.passes.smooth_attention import key_factors, rope_pair_max, smooth_attention
from lowc.passes.stats import META_KEY_STATS
from lowc.passes.weights import attr_tensor
from lowc.tiny_models import tiny_model

TOKENS = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def run(model, alpha=0.5, calibrated=True):
    gm = capture(model)
    annotate(gm, None)
    if calibrated:
        calibrate(gm, TOKENS, progress=False)
    result = smooth_attention(gm, PassContext(scheme=lowc.Scheme(name="t", smooth_attention_alpha=alpha)))
    result.graph_module.recompile()
    return result.graph_module


def max_rel_err(model, gm):
    with torch.no_grad():
        ref = model(IDS).logits
        out = gm(IDS, torch.arange(IDS.shape[1]).expand_as(IDS))
    return float((out - ref).abs().max() / ref.abs().max())


def with_key_outlier(model, channel=3):
    """Make one key channel (and its RoPE partner) large, as real models have."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.weight[channel] *= 20
    return model


@settings(max_examples=3, deadline=None)
@given(arch=st.sampled_from(["llama", "qwen2", "mistral"]), kv_heads=st.sampled_from([1, 2, 4]),
       alpha=st.sampled_from([0.3, 0.5, 1.0]))
def test_exact_in_fp32(arch, kv_heads, alpha):
    model = tiny_model(arch, layers=2, hidden=64, heads=4, kv_heads=kv_heads)
    if arch == "qwen2":  # q/k biases get scaled too
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.k_proj.bias.normal_()
                layer.self_attn.q_proj.bias.normal_()
    assert max_rel_err(model, run(with_key_outlier(model), alpha)) <= 1e-4


@pytest.fixture(scope="module")
def smoothed():
    model = with_key_outlier(tiny_model("llama", layers=1, hidden=64, heads=4, kv_heads=2))
    return model, run(model)


def test_factors_shared_by_rope_pairs_and_keys_flattened(smoothed):
    model, gm = smoothed
    attn = next(n for n in gm.graph.nodes if n.target is torch.ops.lowc.attention.default)
    lam = attn.meta["lowc_smooth_attention"]  # [kv_heads, head_dim]
    assert lam.shape == (2, 16) and torch.equal(lam[:, :8], lam[:, 8:])
    after = attn.meta[META_KEY_STATS].absmax
    # alpha = 0.5: max|K| / sqrt(max of the pair); the outlier channel's spread shrinks
    assert after.amax() / after.median() < 0.5 * (after * lam).amax() / (after * lam).median()


def test_gqa_query_heads_take_their_kv_heads_factor(smoothed):
    model, gm = smoothed
    attn = next(n for n in gm.graph.nodes if n.target is torch.ops.lowc.attention.default)
    lam = attn.meta["lowc_smooth_attention"]
    wq_old = model.model.layers[0].self_attn.q_proj.weight.detach()
    q_node = next(n for n in gm.graph.nodes if n.meta.get("lowc_site", {}).get("role") == "q_proj")
    wq_new = attr_tensor(gm, q_node.args[1])
    ratio = (wq_new / wq_old).mean(dim=1).reshape(4, 16)
    torch.testing.assert_close(ratio, lam.repeat_interleave(2, dim=0), rtol=1e-5, atol=1e-6)


def test_keys_measured_after_rope_agree_with_stats(smoothed):
    gm = smoothed[1]
    attn = next(n for n in gm.graph.nodes if n.target is torch.ops.lowc.attention.default)
    updated = attn.meta[META_KEY_STATS].absmax.clone()
    calibrate(gm, TOKENS, progress=False)
    torch.testing.assert_close(updated, attn.meta[META_KEY_STATS].absmax, rtol=1e-4, atol=1e-6)


def test_odd_head_dim_and_missing_stats_are_named_errors():
    with pytest.raises(SchemeError, match="even head_dim"):
        rope_pair_max(torch.ones(2, 15))
    assert torch.equal(key_factors(torch.tensor([[4.0, 0.0, 1.0, 0.0]]), 0.5), torch.tensor([[2.0, 1.0, 2.0, 1.0]]))
    with pytest.raises(PassError, match="calibrate"):
        run(tiny_model("llama", layers=1), calibrated=False)

"""smooth: SmoothQuant fold-in is exact in fp32, balances activation and weight ranges, and keeps
the calibration statistics in step with the rewritten graph."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lowc
from lowc.calibrate import calibrate
from lowc.capture import capture
from lowc.errors import SchemeError
from lowc.passes import PassContext
from lowc.passes.annotate import annotate
from lowc.passes.dataflow import linear_groups, weight_of
from lowc.passes.smooth import smooth, smoothing_factors
from lowc.passes.stats import stats_of
from lowc.tiny_models import tiny_model

TOKENS = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def with_biases(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_()
    return model


def smoothed(model, alpha=0.5, hessian=False, keep_lm_head=True):
    gm = capture(model)
    annotate(gm, None)
    calibrate(gm, TOKENS, progress=False, hessian=hessian)
    ctx = PassContext(scheme=lowc.Scheme(name="t", smooth_alpha=alpha, keep_lm_head=keep_lm_head))
    result = smooth(gm, ctx)
    result.graph_module.recompile()
    return result


def max_rel_err(model, gm):
    with torch.no_grad():
        ref = model(IDS).logits
        out = gm(IDS, torch.arange(IDS.shape[1]).expand_as(IDS))
    return float((out - ref).abs().max() / ref.abs().max())


@pytest.fixture(scope="module")
def gqa_case():
    model = tiny_model("llama", layers=1, hidden=64, heads=4, kv_heads=2)
    return model, smoothed(model, hessian=True)


@settings(max_examples=3, deadline=None)
@given(arch=st.sampled_from(["llama", "qwen2", "mistral"]), kv_heads=st.sampled_from([1, 2, 4]),
       alpha=st.sampled_from([0.0, 0.3, 0.85, 1.0]), tie=st.booleans())
def test_smoothing_is_exact_in_fp32(arch, kv_heads, alpha, tie):
    model = with_biases(tiny_model(arch, layers=2, hidden=64, heads=4, kv_heads=kv_heads, tie=tie))
    result = smoothed(model, alpha, keep_lm_head=False)
    assert max_rel_err(model, result.graph_module) <= 1e-4
    assert result.info["groups"] == 9 and result.info["skipped"] == []


def test_exact_on_gqa_case(gqa_case):
    model, result = gqa_case
    assert max_rel_err(model, result.graph_module) <= 1e-4


def test_alpha_half_balances_activation_and_weight_maxima(gqa_case):
    gm = gqa_case[1].graph_module
    for group in linear_groups(gm, include_head=False):
        if group.producer.kind == "heads":
            continue  # GQA-shared factors balance the max over the shared heads only
        act = stats_of(group.linears[0]).absmax
        w = torch.stack([weight_of(gm, lin).abs().amax(0) for lin in group.linears]).amax(0)
        torch.testing.assert_close(act, w, rtol=1e-4, atol=1e-6)


def test_gqa_heads_share_one_factor(gqa_case):
    gm = gqa_case[1].graph_module
    o_proj = next(n for n in gm.graph.nodes if n.meta.get("lowc_site", {}).get("role") == "o_proj")
    s = o_proj.meta["lowc_smooth"].reshape(4, 16)
    assert torch.equal(s[0], s[1]) and torch.equal(s[2], s[3]) and not torch.equal(s[0], s[2])


def test_statistics_follow_the_rewrite(gqa_case):
    """The analytically updated statistics equal a fresh calibration of the smoothed graph."""
    gm = gqa_case[1].graph_module
    updated = {g.input: (stats_of(g.linears[0]).absmax.clone(), stats_of(g.linears[0]).mean_sq.clone(),
                         stats_of(g.linears[0]).hessian.clone()) for g in linear_groups(gm)}
    calibrate(gm, TOKENS, progress=False, hessian=True)
    for g in linear_groups(gm):
        fresh = stats_of(g.linears[0])
        absmax, mean_sq, h = updated[g.input]
        torch.testing.assert_close(absmax, fresh.absmax, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(mean_sq, fresh.mean_sq, rtol=1e-4, atol=1e-8)
        torch.testing.assert_close(h, fresh.hessian, rtol=1e-3, atol=1e-5)


def test_factors_guard_dead_channels():
    s = smoothing_factors(torch.tensor([4.0, 0.0, 1.0]), torch.tensor([1.0, 2.0, 0.0]), 0.5)
    assert torch.equal(s, torch.tensor([2.0, 1.0, 1.0]))


def test_no_alpha_is_a_no_op_and_bad_alpha_is_named():
    model = tiny_model("llama", layers=1)
    gm = capture(model)
    assert not smooth(gm, PassContext(scheme=lowc.Scheme(name="t"))).modified
    with pytest.raises(SchemeError, match="alpha"):
        smooth(gm, PassContext(scheme=lowc.Scheme(name="t", smooth_alpha=1.5)))

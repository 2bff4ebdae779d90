"""reorder: outlier channels last, folded or gathered per group, exact in fp32."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

import lowc
from lowc.calibrate import calibrate
from lowc.capture import capture
from lowc.errors import SchemeError
from lowc.passes import PassContext
from lowc.passes.annotate import annotate
from lowc.passes.dataflow import GATHER, linear_groups
from lowc.passes.reorder import outlier_order, reorder
from lowc.passes.stats import stats_of
from lowc.tiny_models import tiny_model

TOKENS = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))


def reordered(model, n_outliers=16, keep_lm_head=True, sort=True):
    gm = capture(model)
    annotate(gm, None)
    calibrate(gm, TOKENS, progress=False, hessian=True)
    scheme = lowc.Scheme(name="t", w_bits=4, a_bits=4, n_outliers=n_outliers, keep_lm_head=keep_lm_head)
    result = reorder(gm, PassContext(scheme=scheme, options={"reorder_sort": sort}))
    result.graph_module.recompile()
    return result


def max_rel_err(model, gm):
    with torch.no_grad():
        ref = model(IDS).logits
        out = gm(IDS, torch.arange(IDS.shape[1]).expand_as(IDS))
    return float((out - ref).abs().max() / ref.abs().max())


@settings(max_examples=3, deadline=None)
@given(arch=st.sampled_from(["llama", "qwen2", "mistral"]), kv_heads=st.sampled_from([1, 2, 4]),
       n_outliers=st.sampled_from([0, 8, 64]), sort=st.booleans())
def test_exact_in_fp32(arch, kv_heads, n_outliers, sort):
    model = tiny_model(arch, layers=2, hidden=64, heads=4, kv_heads=kv_heads)
    result = reordered(model, n_outliers, keep_lm_head=False, sort=sort)
    assert max_rel_err(model, result.graph_module) <= 1e-4
    assert result.info["groups"] == 9 and result.info["gathers"] == 7  # down_proj x2 folded


@pytest.fixture(scope="module")
def case():
    model = tiny_model("llama", layers=1, hidden=64, heads=4, kv_heads=2)
    return model, reordered(model).graph_module


def test_outliers_sit_last_and_down_proj_needs_no_gather(case):
    model, gm = case
    assert max_rel_err(model, gm) <= 1e-4
    for g in linear_groups(gm, include_head=False):
        ms = stats_of(g.linears[0]).mean_sq
        assert torch.all(ms[:-1] <= ms[1:])  # sorted ascending: the 16 largest are the last 16
        roles = [n.meta["lowc_site"]["role"] for n in g.linears]
        assert (g.input.target is GATHER) == (roles != ["down_proj"])


def test_statistics_follow_the_permutation(case):
    gm = case[1]
    updated = {g.input: (stats_of(g.linears[0]).mean_sq.clone(), stats_of(g.linears[0]).hessian.clone())
               for g in linear_groups(gm)}
    calibrate(gm, TOKENS, progress=False, hessian=True)
    for g in linear_groups(gm):
        torch.testing.assert_close(updated[g.input][0], stats_of(g.linears[0]).mean_sq, rtol=1e-5, atol=1e-8)
        torch.testing.assert_close(updated[g.input][1], stats_of(g.linears[0]).hessian, rtol=1e-4, atol=1e-6)


def test_outlier_order_moves_only_the_outliers_when_asked():
    ms = torch.tensor([5.0, 1.0, 9.0, 2.0, 7.0])
    assert outlier_order(ms, 2, sort_all=False).tolist() == [0, 1, 3, 4, 2]
    assert outlier_order(ms, 2, sort_all=True).tolist() == [1, 3, 0, 4, 2]


def test_more_outliers_than_channels_is_a_scheme_error():
    with pytest.raises(SchemeError, match="outlier"):
        reordered(tiny_model("llama", layers=1, hidden=64, heads=4, kv_heads=2), n_outliers=100)

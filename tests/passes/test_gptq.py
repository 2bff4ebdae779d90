"""gptq: codes on the format's fixed grid that lower the calibration output error below RTN."""

import pytest
import torch

import lowc
from lowc.calibrate import calibrate
from lowc.capture import capture
from lowc.passes import PassContext
from lowc.passes.annotate import annotate
from lowc.passes.clip import clip
from lowc.passes.gptq import gptq, gptq_codes, output_error
from lowc.passes.quantize import META_PLANNED
from lowc.passes.weight_grid import codes, element_grid
from lowc.quant import quantize_weight
from lowc.tiny_models import tiny_model

FORMATS = ["w8a8", "w4a8_pc", "w4a16_g32", "w4a8_g32", "w4a4_g32_o16"]


def correlated_inputs(n=512, k=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(k, k, generator=g) / k**0.5 + torch.eye(k)
    x = torch.randn(n, k, generator=g) @ mix
    x[:, 5] *= 8  # one outlier channel, as activations have
    return x


@pytest.mark.parametrize("fmt", FORMATS)
def test_gptq_beats_round_to_nearest_on_the_same_grid(fmt):
    x = correlated_inputs()
    h = x.T @ x / x.shape[0]
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(1))
    rtn = quantize_weight(w, fmt)
    grid = element_grid(rtn)
    q = gptq_codes(w, h, grid)
    assert torch.equal(q, q.round()) and bool(((q >= grid.qmin) & (q <= grid.qmax)).all())
    e_rtn, e_gptq = output_error(w, rtn.dequantize(), h), output_error(w, grid.dequantize(q), h)
    assert e_gptq < 0.9 * e_rtn, (e_gptq, e_rtn)


@pytest.mark.parametrize("act_order", [True, False])
def test_diagonal_hessian_reduces_to_round_to_nearest(act_order):
    w = torch.randn(16, 64)
    rtn = quantize_weight(w, "w4a16_g32")
    h = torch.diag(torch.rand(64) + 0.5)
    assert torch.equal(gptq_codes(w, h, element_grid(rtn), act_order=act_order), codes(rtn))


def test_dead_channels_quantize_to_zero():
    x = correlated_inputs(k=32)
    x[:, 7] = 0
    w = torch.randn(8, 32)
    rtn = quantize_weight(w, "w4a8_g32")
    grid = element_grid(rtn)
    q = gptq_codes(w, x.T @ x / 512, grid)
    assert torch.all(grid.dequantize(q)[:, 7] == 0)


@pytest.fixture(scope="module")
def graph():
    model = tiny_model("llama", layers=1, hidden=64, heads=4, kv_heads=2)
    gm = capture(model)
    annotate(gm, None)
    calibrate(gm, torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0)), progress=False,
              hessian=True)
    return gm


def test_pass_keeps_the_clip_grid_and_plans_every_linear(graph):
    ctx = PassContext(scheme=lowc.parse_scheme("w4a8kv4"))
    clip(graph, ctx)
    grids = {n: element_grid(n.meta[META_PLANNED][0]) for n in graph.graph.nodes if META_PLANNED in n.meta}
    result = gptq(graph, ctx)
    assert len(grids) == 7 and result.modified
    for n, grid in grids.items():
        after = element_grid(n.meta[META_PLANNED][0])
        assert torch.equal(after.step, grid.step) and torch.equal(after.zero, grid.zero)
    assert all(0 < v < 1 for k, v in result.info.items() if k.startswith("err_vs_rtn"))

"""quantize: linears become lowc::qlinear with packed buffers, one quantize_act per shared input,
the reference qlinear equals an explicit integer computation, formats follow the scheme."""

import pytest
import torch

import lowc
from lowc.capture import capture
from lowc.errors import SchemeError
from lowc.ir import META_FORMAT
from lowc.passes import PassContext
from lowc.passes.annotate import annotate
from lowc.passes.quantize import plan_weight, quantize
from lowc.passes.weight_grid import codes, element_grid
from lowc.passes.weights import attr_tensor
from lowc.quant import quantize_activation, quantize_weight, weight_from_tensors
from lowc.quant.numerics import sqnr_db
from lowc.schemes import parse_scheme, weight_format
from lowc.tiny_models import tiny_model

IDS = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
POS = torch.arange(24).expand(2, 24)
QLINEAR = torch.ops.lowc.qlinear.default
QACT = torch.ops.lowc.quantize_act.default


def quantized(model, scheme, plan=None):
    gm = capture(model)
    annotate(gm, None)
    if plan:
        plan(gm)
    result = quantize(gm, PassContext(scheme=parse_scheme(scheme) if isinstance(scheme, str) else scheme))
    result.graph_module.recompile()
    return result


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=2, hidden=64, heads=4, kv_heads=2)


@pytest.mark.parametrize("scheme,fmt,acts,min_sqnr", [
    ("w8a8", "w8a8", 8, 25), ("w4a16", "w4a16_g128", 0, 8), ("w4a8kv4", "w4a8_g128", 8, 8),
    (lowc.Scheme(name="w4a4o16", w_bits=4, a_bits=4, n_outliers=16), "w4a4_g128_o16", 8, 3),
])
def test_every_linear_but_the_head_is_lowered(model, scheme, fmt, acts, min_sqnr):
    result = quantized(model, scheme)
    gm = result.graph_module
    q = [n for n in gm.graph.nodes if n.target is QLINEAR]
    assert len(q) == 14 and all(n.meta[META_FORMAT] == fmt for n in q)
    assert not any(n.target is torch.ops.aten.linear.default and n.meta["lowc_site"]["role"] != "lm_head"
                   for n in gm.graph.nodes)
    assert sum(n.target is QACT for n in gm.graph.nodes) == acts  # q/k/v and gate/up share one each
    with torch.no_grad():
        assert sqnr_db(model(IDS).logits, gm(IDS, POS)) > min_sqnr
    assert result.info == {"format": fmt, "linears": 14, "quantize_act": acts, "planned": 0, "replanned": []}


def test_head_is_quantized_when_the_scheme_says_so(model):
    gm = quantized(model, parse_scheme("w8a8").replace(keep_lm_head=False)).graph_module
    assert sum(n.target is QLINEAR for n in gm.graph.nodes) == 15


def test_reference_qlinear_equals_an_explicit_integer_computation():
    torch.manual_seed(0)
    w, x = torch.randn(48, 160), torch.randn(5, 160)
    for fmt in ("w8a8", "w4a8_g32", "w4a8_pc", "w4a4_g32_o16"):
        p = quantize_weight(w, fmt)
        xq, xs = quantize_activation(x, fmt)
        y = QLINEAR(xq, xs, p.tensors(), None, fmt, torch.float32)
        grid, q = element_grid(p), codes(p).long()
        if fmt == "w8a8":
            expect = (xq.long() @ q.T).float() * xs * p.scale.float()
        elif fmt == "w4a8_pc":
            acc = xq.long() @ q.T - xq.long().sum(1, keepdim=True) * p.zero.long()
            expect = acc.float() * xs * p.scale.float()
        elif fmt == "w4a8_g32":
            w8 = ((q - grid.zero.long()) * (grid.step / p.s0.float()[:, None]).round().long())  # (q - z) * s1
            expect = (xq.long() @ w8.T).float() * xs * p.s0.float()
        else:
            normal = 160 - 16
            expect = torch.zeros(5, 48)
            for g0 in range(0, normal, 32):
                end = min(g0 + 32, normal)
                acc = xq[:, g0:end].long() @ q[:, g0:end].T
                expect += acc.float() * xs[:, g0 // 32:g0 // 32 + 1] * p.scale[:, g0 // 32].float()
            expect += (xq[:, normal:].long() @ q[:, normal:].T).float() * xs[:, -1:] * p.outlier_scale.float()
        torch.testing.assert_close(y, expect, rtol=1e-6, atol=1e-5)


def test_a_planned_weight_is_used_and_a_stale_plan_is_replaced(model):
    marker = {}

    def plan(gm):
        lins = [n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default]
        w0 = attr_tensor(gm, lins[0].args[1])
        marker["packed"] = quantize_weight(w0 * 0.5, "w8a8")
        plan_weight(lins[0], marker["packed"], w0)  # fresh: used as is
        plan_weight(lins[1], quantize_weight(w0, "w8a8"), w0.clone())  # made from another tensor: stale

    result = quantized(model, "w8a8", plan)
    assert result.info["planned"] == 1 and len(result.info["replanned"]) == 1
    first = next(n for n in result.graph_module.graph.nodes if n.target is QLINEAR)
    used = [attr_tensor(result.graph_module, a) for a in first.args[2]]
    assert all(torch.equal(a, b) for a, b in zip(used, marker["packed"].tensors()))


def test_k_not_a_multiple_of_the_group_is_padded():
    """hidden 96 with groups of 64: the packers pad K with exact zeros (docs/formats.md)."""
    m = tiny_model("llama", layers=1, hidden=96, heads=4, kv_heads=2)
    gm = quantized(m, "w4a16-g64").graph_module
    node = next(n for n in gm.graph.nodes if n.target is QLINEAR)
    packed = weight_from_tensors("w4a16_g64", [attr_tensor(gm, a) for a in node.args[2]], 96)
    assert packed.qweight.shape[1] * 2 == 128
    with torch.no_grad():
        assert sqnr_db(m(IDS).logits, gm(IDS, POS)) > 8


@pytest.mark.parametrize("name,fmt", [
    ("w8a8", "w8a8"), ("w8a8kv4", "w8a8"), ("w4a16", "w4a16_g128"), ("w4a16-g64", "w4a16_g64"),
    ("w4a8kv4", "w4a8_g128"), ("w4a8-g0", "w4a8_pc"), ("w4a4", "w4a4_g128_o128"), ("w4a4-g64", "w4a4_g64_o128"),
    ("w16a16", None), ("w3a8", None), ("w6a6", None),
])
def test_scheme_to_format(name, fmt):
    assert weight_format(parse_scheme(name)) == fmt


@pytest.mark.parametrize("name,msg", [("w4a16-g0", "per-channel"), ("w4a4-g0", "per-channel"),
                                      ("w4a8-g96", "power of two")])
def test_schemes_without_a_format_are_named(name, msg):
    with pytest.raises(SchemeError, match=msg):
        weight_format(parse_scheme(name))


def test_bitplane_route_is_left_to_the_bitplane_pass(model):
    result = quantized(model, "w3a8")
    assert not result.modified and "no dedicated format" in result.info["skipped"]

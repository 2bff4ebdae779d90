"""The bitplane pass on random tiny models: node counts, formats, the planes in the IR, exactness of
the integer -> plane rewrite, bit balance, per-channel groups, calibration-aware packing, bad schemes."""

import copy

import pytest
import torch

import lowc
import lowc.passes.bitplane as bp
from lowc.capture import capture
from lowc.errors import PassError
from lowc.passes.base import PassContext
from lowc.passes.quantize import plan_weight
from lowc.passes.weights import attr_tensor
from lowc.quant import parse_format
from lowc.quant.bitplane import BitplaneIntWeight
from lowc.schemes import Scheme, parse_scheme
from lowc.tiny_models import tiny_model

QLINEAR = torch.ops.lowc.qlinear.default
QUANT = torch.ops.lowc.quantize_act.default


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=2)


@pytest.fixture(scope="module")
def ids(model):
    return torch.randint(0, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))


def rtn(name: str, **changes) -> Scheme:
    """The preset's bits without its calibration passes (fast, deterministic)."""
    return parse_scheme(name).replace(clip_search=False, gptq=False, smooth_alpha=None, **changes)


def nodes(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


def logits(gm, ids):
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    out = gm(ids, pos)
    return (out[0] if isinstance(out, (tuple, list)) else out).detach()


def as_logits(out):
    return (out if isinstance(out, torch.Tensor) else out.logits).detach()


def test_every_linear_but_the_head_becomes_a_plane_qlinear(model, ids):
    cm = lowc.compile(model, rtn("w3a8"), progress=False)
    gm = cm.graph_module
    q = nodes(gm, QLINEAR)
    assert len(q) == 7 * 2  # q, k, v, o, gate, up, down per layer; lm_head stays 16-bit
    assert {n.args[4] for n in q} == {"w3a8_g128_bp"} and all(n.meta["lowc_format"] == "w3a8_g128_bp" for n in q)
    # Activation quantizers: plain or fused by fuse_glue into the norm / SiLU·mul before them.
    fused = (torch.ops.lowc.rms_norm_quant.default, torch.ops.lowc.add_rms_norm_quant.default,
             torch.ops.lowc.silu_mul_quant.default)
    acts = nodes(gm, QUANT) + [n for f in fused for n in nodes(gm, f)]
    assert len(acts) == 4 * 2 and {n.args[-1] for n in acts} == {"w3a8_g128_bp"}  # qkv, o, gate/up, down share
    for n in q:
        planes, scale, zero = (attr_tensor(gm, a) for a in n.args[2])
        k = n.meta["lowc_site"]["in_features"]
        assert planes.dtype == torch.uint32 and planes.shape == (3, scale.shape[0], -(-k // 128) * 128 // 32)
        assert scale.dtype == torch.float16 and zero.dtype == torch.int8
        assert n.meta[bp.META_BITPLANE]["plane_weights"] == [1, 2, -4]
    assert not any(str(t.dtype) == "torch.int8" and t.dim() == 2 and t.shape[1] % 128 == 0 and t.shape[1] > 8
                   for t in gm.buffers() if t.shape[-1] >= 64)  # no leftover int8 code matrices
    assert torch.isfinite(as_logits(cm(ids))).all()


def test_int_to_plane_rewrite_is_exact(model, ids):
    gm = capture(model)
    scheme = rtn("w6a6")
    ctx = PassContext(scheme=scheme, model_config=model.config)
    made = bp.lower_float_linears(gm, ctx, bp.scheme_format(scheme, "int"))
    assert made == {"rtn": 14}
    gm.recompile()
    assert {n.args[4] for n in nodes(gm, QLINEAR)} == {"w6a6_g128_int"}
    before = logits(gm, ids)
    result = bp.bitplane(gm, ctx)  # the quantize -> bitplane contract: integer form in, planes out
    assert result.modified and result.info["formats"] == {"w6a6_g128_bp": 14} and "lowered_here" not in result.info
    assert {n.args[4] for n in nodes(gm, QLINEAR)} == {"w6a6_g128_bp"}
    assert torch.equal(logits(gm, ids), before)


def test_ir_dump_shows_the_planes(model, tmp_path):
    lowc.compile(model, rtn("w2a8"), progress=False, dump_ir=tmp_path)
    after = next(tmp_path.glob("*_bitplane")) / "after.txt"
    text = after.read_text()
    assert "_planes  :: [2, " in text and "uint32" in text and "'w2a8_g128_bp'" in text


@pytest.mark.parametrize("scheme, fmt, planes", [
    (rtn("w2a8", bit_balance=True), "w2a8_g128_bb_bp", 3),
    (rtn("w3a8", group_size=0), "w3a8_pc_bp", 3),
    (Scheme("w5a4-g32", w_bits=5, a_bits=4, group_size=32), "w5a4_g32_bp", 5),
])
def test_scheme_options_select_the_format(model, ids, scheme, fmt, planes):
    cm = lowc.compile(model, scheme, progress=False)
    q = nodes(cm.graph_module, QLINEAR)
    assert {n.args[4] for n in q} == {fmt}
    assert {attr_tensor(cm.graph_module, n.args[2][0]).shape[0] for n in q} == {planes}
    assert parse_format(fmt).planes == planes
    assert torch.isfinite(as_logits(cm(ids))).all()


def test_calibrated_packing_uses_clip_and_gptq(model, ids):
    scheme = parse_scheme("w3a8").replace(smooth_alpha=None)
    calib = torch.randint(0, model.config.vocab_size, (8, 32), generator=torch.Generator().manual_seed(1))
    cm = lowc.compile(model, scheme, calibration=calib, progress=False)
    record = next(r for r in cm.pass_records if r.name == "bitplane")
    assert record.info["lowered_here"] == {"clip+gptq": 14}
    # The calibration-aware grid fits the calibration activations better than round-to-nearest.
    rtn_model = lowc.compile(model, rtn("w3a8"), progress=False)
    ref = model(calib).logits.detach()
    err = lambda m: float((as_logits(m(calib)) - ref).norm())  # noqa: E731
    assert err(cm) < err(rtn_model)


def test_planned_integer_weights_are_used_as_is(model):
    gm = capture(model)
    scheme = rtn("w3a8")
    lin = next(n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch.ops.aten.linear.default)
    w = attr_tensor(gm, lin.args[1])
    planned = BitplaneIntWeight.from_float(torch.zeros_like(w), "w3a8_g128_int")
    plan_weight(lin, planned, w)
    site = copy.copy(lin.meta.get("lowc_site"))
    info = bp.bitplane(gm, PassContext(scheme=scheme, model_config=model.config)).info
    assert info["lowered_here"] == {"planned": 1, "rtn": 13}
    first = nodes(gm, QLINEAR)[0]
    assert first.meta.get("lowc_site") == site
    assert int(attr_tensor(gm, first.args[2][1]).float().max()) <= 2**-24 * 2  # the planned all-zero grid


@pytest.mark.parametrize("name, fragment", [
    ("w3a16", "weight-only low bits have a dedicated format only at 4 bits"),
    ("w16a6", "weights of 2..8 bits"),
])
def test_schemes_without_a_bitplane_kernel_raise(model, name, fragment):
    scheme = parse_scheme(name)
    assert scheme.route == "bitplane"
    with pytest.raises(PassError, match=fragment):
        bp.scheme_format(scheme)
    with pytest.raises(Exception, match=fragment):
        lowc.compile(model, scheme, progress=False)


def test_group_that_is_not_a_plane_word_multiple_raises():
    with pytest.raises(PassError, match="powers of two >= 32"):
        bp.scheme_format(Scheme("w3a8-g96", w_bits=3, a_bits=8, group_size=96))

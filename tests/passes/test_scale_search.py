"""scale_search: the searched activation-aware scaling is exact in full precision, never worse than
no scaling by its own measure, and lowers the quantized model's error where some channels are salient."""

import pytest
import torch

import lowc
from lowc.errors import PassError
from lowc.passes.scale_search import candidate_scales, scaled_error
from lowc.schemes import parse_scheme
from lowc.tiny_models import tiny_model

CALIB = torch.randint(0, 256, (8, 64), generator=torch.Generator().manual_seed(0))
IDS = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def salient():
    """A tiny Llama with a few salient input channels (large norm weights), as LLMs have."""
    m = tiny_model("llama", layers=2)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.input_layernorm.weight[:4] *= 8
            layer.post_attention_layernorm.weight[-3:] *= 6
    return m


def _scheme(**changes):
    return parse_scheme("w4a16").replace(name="w4a16-g32-test", clip_search=False, gptq=False, group_size=32,
                                         **changes)


def test_candidate_scales_are_normalised_and_leave_dead_channels_alone():
    rms = torch.tensor([0.0, 0.5, 2.0, 8.0])
    assert torch.equal(candidate_scales(rms, 0.0), torch.ones(4))
    s = candidate_scales(rms, 0.5)
    assert s[0] == 1.0
    torch.testing.assert_close(s[1:].max() * s[1:].min(), torch.tensor(1.0))
    torch.testing.assert_close(s[3] / s[2], torch.tensor(2.0))  # (8 / 2) ** 0.5


def test_scaled_error_is_the_hessian_form():
    g = torch.Generator().manual_seed(2)
    w, x = torch.randn(8, 64, generator=g), torch.randn(100, 64, generator=g)
    h = x.T @ x / 100
    s = torch.rand(64, generator=g) + 0.5
    from lowc.quant import quantize_weight

    w_q = quantize_weight(w * s, "w4a16_g32").dequantize().float() / s
    direct = float(((x @ w.T - x @ w_q.T) ** 2).sum() / 100)
    assert abs(scaled_error([w], h, s, "w4a16_g32") - direct) < 1e-3 * direct


def test_exact_in_full_precision(salient):
    """Only the scaling (no quantize): the folded model computes the same logits."""
    scheme = _scheme(scale_search=True)
    scheme = scheme.replace(passes=("annotate", "scale_search", "kv_cache", "eliminate_dead_code"))
    q = lowc.compile(salient, scheme, calibration=CALIB, progress=False)
    info = next(r for r in q.pass_records if r.name == "scale_search").info
    assert info["groups"] == 8 and info["mean_alpha"] > 0 and info["err_vs_unscaled"] <= 1.0
    with torch.no_grad():
        ref, out = salient(IDS).logits, q(IDS)
    assert ((out - ref).norm() / ref.norm()) < 1e-4


def test_lowers_the_quantized_error_on_salient_channels(salient):
    with torch.no_grad():
        ref = salient(IDS).logits
    errs = {}
    for on in (False, True):
        q = lowc.compile(salient, _scheme(scale_search=on), calibration=CALIB, progress=False)
        assert ("scale_search" in q.scheme.passes) == on
        with torch.no_grad():
            errs[on] = float((q(IDS) - ref).norm() / ref.norm())
    assert errs[True] < 0.97 * errs[False], errs


def test_bad_options_and_missing_statistics_are_named_errors(salient):
    with pytest.raises(PassError, match="scale_search_steps"):
        lowc.compile(salient, _scheme(scale_search=True), calibration=CALIB, progress=False,
                     options={"scale_search_steps": 0})
    from lowc.capture import capture
    from lowc.passes import PassContext
    from lowc.passes.annotate import annotate
    from lowc.passes.scale_search import scale_search

    gm = capture(salient)
    ctx = PassContext(scheme=_scheme(scale_search=True))
    annotate(gm, ctx)
    with pytest.raises(PassError, match="calibrat"):
        scale_search(gm, ctx)

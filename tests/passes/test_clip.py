"""clip: per-group clipping ratios chosen on calibration output error, never worse than no clipping."""

import pytest
import torch

import lowc
from lowc.calibrate import calibrate
from lowc.capture import capture
from lowc.errors import PassError
from lowc.passes import PassContext
from lowc.passes.annotate import annotate
from lowc.passes.clip import clamp_groups, clip, clip_ratios, clip_search, group_errors, scale_groups
from lowc.passes.gptq import output_error
from lowc.passes.quantize import META_PLANNED
from lowc.passes.weights import attr_tensor
from lowc.quant import quantize_weight
from lowc.tiny_models import tiny_model


def test_scale_groups_follow_the_format():
    assert scale_groups("w8a8", 100) == [slice(0, 100)]
    assert scale_groups("w4a8_pc", 100) == [slice(0, 100)]
    assert scale_groups("w4a16_g32", 80) == [slice(0, 32), slice(32, 64), slice(64, 80)]
    assert scale_groups("w4a4_g32_o16", 80) == [slice(0, 32), slice(32, 64), slice(64, 80)]  # INT8 tail last
    assert clip_ratios(0.5, 3) == [1.0, 0.75, 0.5]
    with pytest.raises(PassError):
        clip_ratios(0.0, 3)


def test_clamp_groups_shrinks_each_range():
    w = torch.tensor([[-4.0, 2.0, 1.0, 3.0]])
    out = clamp_groups(w, [slice(0, 2), slice(2, 4)], torch.tensor([[0.5, 1.0]]))
    assert out.tolist() == [[-2.0, 1.0, 1.0, 3.0]]


@pytest.mark.parametrize("fmt", ["w4a16_g32", "w4a8_g32", "w4a4_g32_o16", "w8a8"])
def test_search_is_never_worse_than_no_clipping(fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 96, generator=g)
    x[:, 10] *= 0.05  # a quiet input channel ...
    h = x.T @ x / 256
    w = torch.randn(24, 96, generator=g)
    w[3, 10] = 12.0  # ... under a weight outlier: clipping it costs little output error
    packed, r = clip_search(w, h, fmt, clip_ratios(0.5, 11))
    groups = scale_groups(fmt, 96)
    base = group_errors(quantize_weight(w, fmt).dequantize() - w, h, groups)
    chosen = group_errors(packed.dequantize() - w, h, groups)
    if fmt != "w4a8_g32":  # per-group scales are independent: every group improves or stays
        assert bool((chosen <= base * (1 + 1e-5) + 1e-7).all())
    e_clip, e_rtn = output_error(w, packed.dequantize(), h), output_error(w, quantize_weight(w, fmt).dequantize(), h)
    assert e_clip <= e_rtn
    if fmt.startswith("w4"):  # 4-bit: the outlier's group is clipped and the whole weight gains
        assert r[3, 0] < 1.0 and e_clip < e_rtn


def test_pass_plans_clipped_weights_and_leaves_float_weights():
    model = tiny_model("llama", layers=1, hidden=64, heads=4, kv_heads=2)
    gm = capture(model)
    annotate(gm, None)
    calibrate(gm, torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0)), progress=False,
              hessian=True)
    before = {n: attr_tensor(gm, n.args[1]) for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default}
    result = clip(gm, PassContext(scheme=lowc.parse_scheme("w4a16")))
    planned = [n for n in before if META_PLANNED in n.meta]
    assert len(planned) == 7 and 0 < result.info["clipped_fraction"] < 1
    assert all(attr_tensor(gm, n.args[1]) is before[n] for n in before)
    with pytest.raises(PassError, match="hessian"):
        gm2 = capture(model)
        annotate(gm2, None)
        calibrate(gm2, torch.randint(0, 256, (4, 64)), progress=False)
        clip(gm2, PassContext(scheme=lowc.parse_scheme("w4a16")))

"""lowc::quantize_act and lowc::qlinear: match the lowc.quant references, fake kernels, FX,
torch.export, and the dispatch rule that lets a CUDA kernel override the reference."""

import subprocess
import sys
import textwrap

import pytest
import torch

import lowc.ops  # noqa: F401  (registers the ops)
from lowc.errors import QuantizationError
from lowc.quant import quantize_activation, quantize_weight

QUANT_ACT_FORMATS = ["w4a8_g128", "w4a8_pc", "w8a8", "w4a4_g128_o128", "w4a4_g32_o0"]
ALL_FORMATS = QUANT_ACT_FORMATS + ["w4a16_g128"]


def _case(fmt, k=576, n=7, lead=(2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    packed = quantize_weight(torch.randn(n, k, generator=g), fmt)
    x = torch.randn(*lead, k, generator=g)
    bias = torch.randn(n, generator=g)
    return packed, x, bias


def _run(fmt, packed, x, bias, out_dtype=torch.float32):
    if packed.spec.act_bits == 16:
        return torch.ops.lowc.qlinear(x, None, packed.tensors(), bias, fmt, out_dtype)
    q, s = torch.ops.lowc.quantize_act(x, fmt)
    return torch.ops.lowc.qlinear(q, s, packed.tensors(), bias, fmt, out_dtype)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_ops_match_the_references_and_approximate_float(fmt):
    packed, x, bias = _case(fmt)
    y = _run(fmt, packed, x, bias, torch.bfloat16)
    assert y.shape == (2, 3, 7) and y.dtype == torch.bfloat16
    if packed.spec.act_bits == 16:
        ref = packed.linear(x, None, bias, torch.bfloat16)
    else:
        q, s = quantize_activation(x, fmt)
        q_op, s_op = torch.ops.lowc.quantize_act(x, fmt)
        assert torch.equal(q, q_op) and torch.equal(s, s_op)
        ref = packed.linear(q, s, bias, torch.bfloat16)
    assert torch.equal(y, ref)
    exact = x @ packed.dequantize().T + bias  # only weight rounding differs from y
    rel = (y.float() - exact).norm() / exact.norm()
    assert rel < 0.2, f"{fmt}: relative error {rel:.3f}"


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_opcheck(fmt):
    packed, x, bias = _case(fmt, k=300, n=5, lead=(3,))
    if packed.spec.act_bits == 16:
        args = (x, None, packed.tensors(), bias, fmt, torch.float32)
    else:
        q, s = quantize_activation(x, fmt)
        torch.library.opcheck(torch.ops.lowc.quantize_act.default, (x, fmt))
        args = (q, s, packed.tensors(), bias, fmt, torch.float32)
    torch.library.opcheck(torch.ops.lowc.qlinear.default, args)


def test_fake_kernels_give_shapes_and_check_the_weight():
    from torch._subclasses.fake_tensor import FakeTensorMode

    packed, x, bias = _case("w4a4_g128_o128")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fx = mode.from_tensor(x)
        q, s = torch.ops.lowc.quantize_act(fx, "w4a4_g128_o128")
        assert q.shape == x.shape and q.dtype == torch.int8
        assert s.shape == (2, 3, 5) and s.dtype == torch.float32
        weights = [mode.from_tensor(t) for t in packed.tensors()]
        y = torch.ops.lowc.qlinear(q, s, weights, None, "w4a4_g128_o128", torch.float16)
        assert y.shape == (2, 3, 7) and y.dtype == torch.float16
        with pytest.raises(QuantizationError, match="'scale'"):
            torch.ops.lowc.qlinear(q, s, [weights[0], weights[0], *weights[2:]], None, "w4a4_g128_o128", torch.float16)


def test_ops_inside_an_fx_graph_module():
    packed, x, bias = _case("w4a8_g128")
    root = torch.nn.Module()
    graph = torch.fx.Graph()
    inp = graph.placeholder("x")
    qs = graph.call_function(torch.ops.lowc.quantize_act.default, (inp, "w4a8_g128"))
    q = graph.call_function(lambda t, i: t[i], (qs, 0))
    s = graph.call_function(lambda t, i: t[i], (qs, 1))
    weight_nodes = []
    for i, t in enumerate(packed.tensors()):
        root.register_buffer(f"w{i}", t)
        weight_nodes.append(graph.get_attr(f"w{i}"))
    root.register_buffer("bias", bias)
    y = graph.call_function(
        torch.ops.lowc.qlinear.default, (q, s, weight_nodes, graph.get_attr("bias"), "w4a8_g128", torch.float32)
    )
    graph.output(y)
    gm = torch.fx.GraphModule(root, graph)
    assert torch.equal(gm(x), _run("w4a8_g128", packed, x, bias))


class _QuantLinear(torch.nn.Module):
    def __init__(self, packed, bias, fmt):
        super().__init__()
        self.fmt = fmt
        self.n_weights = len(packed.tensors())
        for i, t in enumerate(packed.tensors()):
            self.register_buffer(f"w{i}", t)
        self.register_buffer("bias", bias)

    def forward(self, x):
        weights = [getattr(self, f"w{i}") for i in range(self.n_weights)]
        q, s = torch.ops.lowc.quantize_act(x, self.fmt)
        return torch.ops.lowc.qlinear(q, s, weights, self.bias, self.fmt, torch.float32)


def test_torch_export_with_dynamic_batch_and_sequence():
    packed, x, bias = _case("w4a4_g32_o16", k=100, lead=(2, 5))
    model = _QuantLinear(packed, bias, "w4a4_g32_o16")
    batch, seq = torch.export.Dim("batch", min=1), torch.export.Dim("seq", min=1)
    ep = torch.export.export(model, (x,), dynamic_shapes={"x": {0: batch, 1: seq}}, strict=False)
    targets = {n.target for n in ep.graph.nodes if n.op == "call_function"}
    assert torch.ops.lowc.quantize_act.default in targets and torch.ops.lowc.qlinear.default in targets
    x2 = torch.randn(3, 1, 100)
    assert torch.equal(ep.module()(x2), model(x2))


def test_reference_is_the_default_kernel_so_a_device_kernel_takes_precedence():
    # The reference sits at CompositeExplicitAutograd (all devices); nothing is registered at the
    # CUDA or CPU keys, which a device kernel would occupy and the dispatcher would prefer.
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for op in ("lowc::qlinear", "lowc::quantize_act"):
        assert has(op, "CompositeExplicitAutograd") and not has(op, "CUDA") and not has(op, "CPU")
    # CI has no GPU, so show the same mechanism with a CPU kernel, in a fresh process (a
    # registration cannot be undone): torch.library.register_kernel(op, device, fn) wins.
    script = textwrap.dedent(
        """
        import torch, lowc.ops
        from lowc.quant import quantize_weight
        calls = []
        def override(x, x_scale, weight, bias, fmt, out_dtype):
            calls.append(fmt)
            return torch.zeros(*x.shape[:-1], weight[0].shape[0], dtype=out_dtype)
        torch.library.register_kernel("lowc::qlinear", "cpu", override)
        assert torch._C._dispatch_has_kernel_for_dispatch_key("lowc::qlinear", "CPU")
        packed = quantize_weight(torch.randn(4, 16), "w4a16_g16")
        y = torch.ops.lowc.qlinear(torch.randn(2, 16), None, packed.tensors(), None, "w4a16_g16", torch.float32)
        assert calls == ["w4a16_g16"] and bool((y == 0).all()), (calls, y)
        print("override-ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "override-ok" in out.stdout, out.stderr


def test_bad_inputs_raise_quantization_errors():
    packed, x, bias = _case("w4a8_g128", k=100)
    q, s = torch.ops.lowc.quantize_act(x, "w4a8_g128")
    with pytest.raises(QuantizationError, match="unknown format"):
        torch.ops.lowc.quantize_act(x, "w4a3_g128")
    with pytest.raises(QuantizationError, match="NaN or Inf"):
        torch.ops.lowc.quantize_act(torch.full((2, 100), float("nan")), "w4a8_g128")
    with pytest.raises(QuantizationError, match="int8 x and float32 x_scale"):
        torch.ops.lowc.qlinear(x, None, packed.tensors(), None, "w4a8_g128", torch.float32)
    with pytest.raises(QuantizationError, match="activation scale has shape"):
        torch.ops.lowc.qlinear(q, s[..., :0], packed.tensors(), None, "w4a8_g128", torch.float32)
    q_wide, s_wide = torch.ops.lowc.quantize_act(torch.randn(2, 300), "w4a8_g128")
    with pytest.raises(QuantizationError, match="in_features"):
        torch.ops.lowc.qlinear(q_wide, s_wide, packed.tensors(), None, "w4a8_g128", torch.float32)
    with pytest.raises(QuantizationError, match="bias"):
        torch.ops.lowc.qlinear(q, s, packed.tensors(), torch.ones(3), "w4a8_g128", torch.float32)
    with pytest.raises(QuantizationError, match="expects a float x"):
        torch.ops.lowc.qlinear(q, s, packed.tensors(), None, "w4a16_g128", torch.float32)

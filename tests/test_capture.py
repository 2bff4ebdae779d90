"""Capture equivalence: the captured graph computes the eager model's logits, for any shape."""

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from lowc.capture import capture
from lowc.errors import CaptureError
from lowc.tiny_models import tiny_model

SHAPES = [(1, 1), (3, 1), (2, 5), (1, 17)]


def _ids(b, t, vocab=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


def _check_equal(model, gm, shapes=SHAPES):
    for b, t in shapes:
        ids = _ids(b, t, model.config.vocab_size, seed=b * 100 + t)
        pos = torch.arange(t).expand(b, t)
        with torch.no_grad():
            ref = model(ids).logits
            out = gm(ids, pos)
        assert out.shape == ref.shape
        assert (out - ref).abs().max().item() <= 1e-4, (b, t)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_capture_matches_eager(arch):
    model = tiny_model(arch)
    _check_equal(model, capture(model))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    arch=st.sampled_from(["llama", "qwen2", "mistral"]),
    kv_heads=st.sampled_from([1, 2, 4]),
    group=st.sampled_from([1, 2, 3]),
    head_dim=st.sampled_from([8, 16, 32]),
    layers=st.integers(1, 3),
    tie=st.booleans(),
)
def test_capture_matches_eager_random_dims(arch, kv_heads, group, head_dim, layers, tie):
    heads = kv_heads * group
    model = tiny_model(arch, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                       layers=layers, tie=tie, vocab=97)
    _check_equal(model, capture(model), shapes=[(1, 1), (2, 7)])


def test_one_attention_and_norm_node_per_layer_with_gqa_kept():
    model = tiny_model("llama", layers=3, heads=6, kv_heads=2, hidden=96)
    gm = capture(model)
    attn = [n for n in gm.graph.nodes if n.target is torch.ops.lowc.attention.default]
    norms = [n for n in gm.graph.nodes if n.target is torch.ops.lowc.rms_norm.default]
    assert [int(n.args[4]) for n in attn] == [0, 1, 2]
    assert len(norms) == 2 * 3 + 1
    k_val = attn[0].args[1].meta["val"]
    assert k_val.shape[1] == 2  # k reaches attention with the KV heads, not repeated
    weights = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    assert "model.layers.0.self_attn.q_proj.weight" in weights


def test_user_model_is_not_modified():
    model = tiny_model("qwen2")
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    impl = model.config._attn_implementation
    capture(model)
    assert model.config._attn_implementation == impl
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())
    assert not any("forward" in m.__dict__ for m in model.modules())
    assert model.training is False


def test_non_causal_lm_is_rejected():
    from transformers import LlamaConfig, LlamaModel

    base = LlamaModel(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                  num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(CaptureError, match="not a causal language model"):
        capture(base)
    with pytest.raises(CaptureError, match="expects a transformers causal LM"):
        capture(torch.nn.Linear(4, 4))


def test_export_failure_names_the_module(monkeypatch):
    model = tiny_model("llama", layers=1)

    def broken(self, *a, **k):
        raise RuntimeError("unsupported op in the MLP")

    mlp_cls = type(model.model.layers[0].mlp)
    monkeypatch.setattr(mlp_cls, "forward", broken)
    with pytest.raises(CaptureError) as e:
        capture(model)
    assert "model.layers.0.mlp (LlamaMLP" in str(e.value) and "unsupported op in the MLP" in str(e.value)
    assert model.config._attn_implementation != "lowc"  # restored even on failure


def test_graph_names_no_device():
    """A graph captured on the CPU must run after .cuda(): no device constants may remain in it."""
    gm = capture(tiny_model("llama"))
    for n in gm.graph.nodes:
        assert n.target is not torch.ops.aten._assert_tensor_metadata.default
        for a in list(n.args) + list(n.kwargs.values()):
            assert not isinstance(a, torch.device), (n.name, n.target)

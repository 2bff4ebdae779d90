"""lowc.calibrate: statistics match eager activations, runs are deterministic, bad data is named."""

import pytest
import torch

import lowc
from lowc.calibrate import MIN_TOKENS, calibrate, calibration_tokens, check_tokens
from lowc.capture import capture
from lowc.errors import CalibrationError
from lowc.passes.stats import META_KEY_STATS, META_STATS
from lowc.tiny_models import tiny_model

TOKENS = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=2, hidden=64, heads=4, kv_heads=2)


@pytest.fixture(scope="module")
def calibrated(model):
    gm = capture(model)
    return gm, calibrate(gm, TOKENS, progress=False, hessian=True)


def eager_inputs(model, module):
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        for rows in torch.split(TOKENS, 4):
            model(rows)
    handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("path", ["model.layers.1.self_attn.q_proj", "model.layers.0.self_attn.o_proj",
                                  "model.layers.1.mlp.down_proj", "lm_head"])
def test_statistics_equal_the_eager_activations(model, calibrated, path):
    gm, data = calibrated
    x = eager_inputs(model, model.get_submodule(path))
    s = data.inputs[path]
    assert s.tokens == TOKENS.numel()
    torch.testing.assert_close(s.absmax, x.abs().amax(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s.mean_sq, x.square().mean(0), rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(s.hessian, x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5)


def test_shared_inputs_share_one_statistics_object(calibrated):
    gm, data = calibrated
    assert data.inputs["model.layers.0.self_attn.q_proj"] is data.inputs["model.layers.0.self_attn.v_proj"]
    lin = [n for n in gm.graph.nodes if META_STATS in n.meta]
    assert len(lin) == 15


def test_key_statistics_per_kv_head_and_channel(calibrated):
    gm, data = calibrated
    attn = [n for n in gm.graph.nodes if META_KEY_STATS in n.meta]
    assert len(attn) == 2 and data.keys[1] is attn[1].meta[META_KEY_STATS]
    k = data.keys[0]
    assert k.absmax.shape == (2, 16) and bool((k.absmax > 0).all()) and k.tokens == TOKENS.numel()


def test_deterministic(model, calibrated):
    gm2 = capture(model)
    again = calibrate(gm2, TOKENS, progress=False, hessian=True)
    first = calibrated[1]
    for name, s in first.inputs.items():
        assert torch.equal(s.absmax, again.inputs[name].absmax) and torch.equal(s.hessian_sum, again.inputs[name].hessian_sum)
    assert all(torch.equal(first.keys[i].absmax, again.keys[i].absmax) for i in first.keys)


def test_non_finite_activation_names_the_layer():
    m = tiny_model("llama", layers=2, hidden=64, heads=4, kv_heads=2)
    with torch.no_grad():
        m.model.layers[1].post_attention_layernorm.weight[3] = float("inf")
    with pytest.raises(CalibrationError, match=r"layers\.1\.mlp\.gate_proj"):
        calibrate(capture(m), TOKENS, progress=False)


class WordTokenizer:
    """A stand-in tokenizer: one id per whitespace-separated word."""

    def __call__(self, text, **kw):
        return {"input_ids": [hash(w) % 200 for w in text.split()]}


@pytest.mark.parametrize("bad,msg", [
    (torch.zeros(0, dtype=torch.long), "tokens"),
    (torch.zeros(2, 10, dtype=torch.long), f"at least {MIN_TOKENS}"),
    (torch.rand(4, 128), "integer"),
    (torch.full((4, 128), 999), r"\[0, 256\)"),
    (torch.zeros(2, 2, 128, dtype=torch.long), r"\[n, seq\]"),
    ([1, 2, 3], "LongTensor"),
])
def test_bad_token_batches_are_named(bad, msg):
    with pytest.raises(CalibrationError, match=msg):
        check_tokens(bad, 256)


def test_text_needs_a_tokenizer_and_enough_words():
    with pytest.raises(CalibrationError, match="tokenizer"):
        calibration_tokens(None, None, 256)
    with pytest.raises(CalibrationError, match="tokenizer"):
        calibration_tokens("some text", None, 256)
    with pytest.raises(CalibrationError, match="tokens long"):
        calibration_tokens("too short " * 10, WordTokenizer(), 256)
    with pytest.raises(CalibrationError, match="tokens long"):
        calibration_tokens("   ", WordTokenizer(), 256)
    rows = calibration_tokens("word " * 3000, WordTokenizer(), 256)
    assert rows.shape == (5, 512) and rows.dtype == torch.long


def test_compile_without_tokenizer_or_tokens_is_a_clear_error(model):
    with pytest.raises(CalibrationError, match="tokenizer"):
        lowc.compile(model, "w8a8", progress=False)


def test_shipped_text_takes_the_windows_the_scheme_asks_for():
    """calibration=None reads `n_samples` windows of 512 tokens (lowc.compile passes the scheme's
    calibration_samples, e.g. w4a8kv4's 256), 128 when none is asked for."""
    from lowc.calibrate import DEFAULT_SAMPLES
    from lowc.schemes import parse_scheme

    class Bytes:
        def __call__(self, text, **kwargs):
            return {"input_ids": list(text.encode("utf-8"))}

    assert calibration_tokens(None, Bytes(), 256, n_samples=7).shape == (7, 512)
    assert calibration_tokens(None, Bytes(), 256).shape == (DEFAULT_SAMPLES, 512)
    assert parse_scheme("w4a8kv4").calibration_samples == 256 and parse_scheme("w8a8").calibration_samples is None

import pytest
import torch

import lowc
from lowc.errors import InputError, NotImplementedYet, SchemeError
from lowc.tiny_models import tiny_model


@pytest.fixture(scope="module")
def pair():
    model = tiny_model("llama", layers=2)
    return model, lowc.compile(model, "w16a16", progress=False)


@pytest.mark.parametrize("b,t", [(1, 1), (4, 1), (2, 9), (1, 33)])
def test_w16a16_matches_eager(pair, b, t):
    model, q = pair
    ids = torch.randint(0, model.config.vocab_size, (b, t))
    with torch.no_grad():
        assert (q(ids) - model(ids).logits).abs().max().item() <= 1e-4


def test_explicit_positions(pair):
    model, q = pair
    ids = torch.randint(0, 256, (2, 5))
    pos = torch.arange(3, 8).expand(2, 5)
    with torch.no_grad():
        assert torch.allclose(q(ids, pos), model(ids, position_ids=pos).logits, atol=1e-4)


def test_model_unchanged_and_repr(pair):
    model, q = pair
    assert model.config._attn_implementation != "lowc"
    r = repr(q)
    assert "w16a16" in r and "attention_kv x2" in r and "LlamaForCausalLM" in r
    assert [rec.name for rec in q.pass_records] == list(q.scheme.passes)


@pytest.mark.parametrize("bad,msg", [
    (torch.rand(1, 4), "integer tensor"),
    (torch.zeros(4, dtype=torch.long), "unsqueeze"),
    (torch.zeros(1, 2, 3, dtype=torch.long), r"\[batch, seq\]"),
    (torch.full((1, 3), 10_000), r"\[0, 256\)"),
    (torch.zeros(1, 0, dtype=torch.long), "empty"),
    ([1, 2, 3], "torch.Tensor"),
])
def test_bad_input_ids(pair, bad, msg):
    with pytest.raises(InputError, match=msg):
        pair[1](bad)


def test_unknown_scheme_lists_presets(tiny_llama):
    with pytest.raises(SchemeError, match="w4a8kv4"):
        lowc.compile(tiny_llama, "int3")


def test_unimplemented_pass_is_a_clear_error(tiny_llama):
    s = lowc.Scheme(name="custom", passes=("annotate", "no_such_pass"))
    with pytest.raises(NotImplementedYet, match="no_such_pass"):
        lowc.compile(tiny_llama, s)


def test_import_is_cheap():
    import subprocess
    import sys

    code = "import sys, lowc; print(any(m.startswith(('transformers', 'triton')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.realmodel
def test_smollm2_compiles_and_matches_eager(smollm2):
    model, tok = smollm2
    sd_before = {k: v.clone() for k, v in list(model.state_dict().items())[:5]}
    q = lowc.compile(model, "w16a16", progress=False)
    ids = tok(["The capital of France is", "Paris"], return_tensors="pt", padding=True).input_ids
    for batch in (ids[:1, :5], ids[:, :1], ids[:1, :1]):
        with torch.no_grad():
            diff = (q(batch) - model(batch).logits).abs().max().item()
        assert diff <= 1e-4, batch.shape
    s = q.summary()
    norms = sum(v for k, v in s["lowc_ops"].items() if "rms_norm" in k)
    assert norms == 61  # 2 per layer x 30 + final (fuse_glue folds most into add_rms_norm)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in sd_before.items())


def test_compile_stays_callable_after_importing_the_module():
    import lowc.compiler  # noqa: F401  (a submodule import must not shadow lowc.compile)

    assert callable(lowc.compile) and lowc.compile is lowc.compiler.compile

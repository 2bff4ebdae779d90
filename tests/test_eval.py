"""Shipped texts, calibration batches, the perplexity harness and `lowc eval`, on tiny stand-ins."""

from __future__ import annotations

import hashlib
import io
import json
import math
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import lowc
import lowc.eval as ev
import lowc.models as models
from lowc.errors import CalibrationError, LowcError

WIKI_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"


class ByteTokenizer:
    """A tokenizer with the HF calling convention whose tokens are UTF-8 bytes."""

    def __call__(self, text, **kwargs):
        return {"input_ids": list(text.encode("utf-8"))}


class TinyCausalLM(torch.nn.Module):
    """Logits at t depend on all tokens <= t (a running mean of embeddings), so window cuts matter."""

    def __init__(self, vocab=256, dim=16, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        h = self.embed(ids).cumsum(1) / torch.arange(1, ids.shape[1] + 1).view(1, -1, 1)
        return self.head(torch.tanh(h))


# ----------------------------------------------------------------------------------------- texts
def test_wikitext_rows_and_join_rule():
    rows = ev.wikitext2_test_rows()
    assert len(rows) == 4358
    assert sum(r == "" for r in rows) == 1467
    assert all(r == "" or (r.endswith("\n") and r.strip()) for r in rows)
    text = ev.wikitext2_test_text()
    assert text == "\n\n".join(rows)
    assert text.startswith("\n\n = Robert Boulter = \n\n\n")
    assert len(text) == sum(map(len, rows)) + 2 * (len(rows) - 1)


def test_shipped_wikitext_is_the_reference_file():
    data = ev._data_file(ev.WIKITEXT2_TEST).read_bytes()
    assert hashlib.sha256(data).hexdigest() == WIKI_SHA256
    assert ev._data_file("wikitext-2-raw/README.md").read_text().count("CC BY-SA") >= 1


def test_calibration_and_heldout_texts_are_clean_distinct_and_documented():
    calib, held, wiki = ev.calibration_text(), ev.heldout_text(), ev.wikitext2_test_text()
    for text in (calib, held):
        assert "\r" not in text and "\x1a" not in text and not text.startswith("\n")
        assert not any(line != line.rstrip() for line in text.split("\n"))
    assert 900_000 < len(calib.encode()) < 2_000_000
    markers = ("Alice was beginning to get", "WORKSHOP ON ELECTRONIC TEXTS", "Of Man's first disobedience")
    for marker in markers:
        assert marker in calib
    assert "ORLANDO\tAs I remember, Adam" in held and "ORLANDO" not in calib
    assert "Robert Boulter" not in calib + held and "Alice was beginning" not in wiki + held
    for folder in ("calibration", "heldout"):
        notice = " ".join(ev._data_file(f"{folder}/README.md").read_text().split())
        assert "public domain" in notice and "Canterbury Corpus" in notice


def test_shipped_texts_match_their_notices():
    for relpath in ev.CALIBRATION_FILES + ev.HELDOUT_FILES:
        folder, name = relpath.split("/")
        digest = hashlib.sha256(ev._data_file(relpath).read_bytes()).hexdigest()
        notice = ev._data_file(f"{folder}/README.md").read_text()
        assert name in notice and digest in notice, relpath


# ----------------------------------------------------------------------------- calibration batches
def test_calibration_batches_are_deterministic_non_overlapping_windows():
    tok = ByteTokenizer()
    ids = torch.tensor(tok(ev.calibration_text())["input_ids"])
    a = ev.calibration_batches(tok, n_samples=8, seq_len=64, seed=3)
    b = ev.calibration_batches(tok, n_samples=8, seq_len=64, seed=3)
    c = ev.calibration_batches(tok, n_samples=8, seq_len=64, seed=4)
    assert a.dtype == torch.long and a.shape == (8, 64)
    assert torch.equal(a, b) and not torch.equal(a, c)
    windows = ids[: ids.numel() // 64 * 64].view(-1, 64)
    offsets = [int((windows == row).all(1).nonzero()[0]) for row in a]
    assert len(set(offsets)) == 8  # each sample is a distinct aligned window of the text


def test_calibration_batches_default_shape_from_a_given_text():
    text = "".join(chr(97 + i % 26) for i in range(140_000))
    batch = ev.calibration_batches(ByteTokenizer(), text=text)
    assert batch.shape == (128, 512)


@pytest.mark.parametrize("text", ["", "far too short"])
def test_calibration_text_too_short(text):
    with pytest.raises(CalibrationError) as info:
        ev.calibration_batches(ByteTokenizer(), n_samples=4, seq_len=8, text=text)
    assert "needs 32 tokens" in str(info.value) and f"has {len(text)} tokens" in str(info.value)


# ------------------------------------------------------------------------------------ perplexity
def _hand_perplexity(model, ids, tokens, window):
    logits, targets = [], []
    for start in range(0, tokens, window):
        x = ids[start : min(start + window, tokens)].unsqueeze(0)
        logits.append(model(x)[0, :-1])
        targets.append(x[0, 1:])
    return math.exp(F.cross_entropy(torch.cat(logits), torch.cat(targets)).item())


@pytest.mark.parametrize("tokens,window,windows,scored", [(64, 16, 4, 60), (40, 16, 3, 37), (50, 50, 1, 49)])
def test_perplexity_equals_hand_computation(tokens, window, windows, scored):
    model = TinyCausalLM()
    ids = torch.randint(0, 256, (80,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _hand_perplexity(model, ids, tokens, window)
    result = ev.perplexity(model, ids, tokens=tokens, window=window, progress=False)
    assert (result.windows, result.tokens_scored, result.window) == (windows, scored, window)
    assert result.perplexity == pytest.approx(expected, rel=1e-5)
    assert result.nll == pytest.approx(math.log(expected), rel=1e-5)
    assert "perplexity=" in repr(result) and result.seconds >= 0


def test_perplexity_accepts_hf_style_outputs_2d_ids_and_a_tokenizer():
    model = TinyCausalLM()
    text = "The quick brown fox jumps over the lazy dog. " * 4
    ids = torch.tensor([list(text.encode())])
    plain = ev.perplexity(model, ids, tokens=128, window=32, progress=False)
    hf_model = lambda x: SimpleNamespace(logits=model(x))  # noqa: E731
    hf_like = ev.perplexity(hf_model, ids, tokens=128, window=32, progress=False)
    from_text = ev.perplexity(model, ByteTokenizer(), text=text, tokens=128, window=32, progress=False)
    assert plain.perplexity == hf_like.perplexity == from_text.perplexity
    everything = ev.perplexity(model, ids, tokens=None, window=32, progress=False)
    assert everything.tokens_scored == len(text) - everything.windows


def test_a_perfect_model_has_perplexity_one():
    ids = torch.arange(1, 40)

    def oracle(x):  # puts all mass on the next token of the sequence ids[t] + 1
        return F.one_hot(x + 1, 64).float() * 1e4

    assert ev.perplexity(oracle, ids, tokens=32, window=8, progress=False).perplexity == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs,match", [
    ({"window": 1, "tokens": 8}, "window must be at least 2"),
    ({"window": 16, "tokens": 8}, "at least one window"),
    ({"window": 16, "tokens": 400}, "only 80 tokens"),
])
def test_perplexity_bad_input(kwargs, match):
    with pytest.raises(LowcError, match=match):
        ev.perplexity(TinyCausalLM(), torch.zeros(80, dtype=torch.long), progress=False, **kwargs)


def test_perplexity_rejects_bad_models_and_ids():
    ids = torch.zeros(32, dtype=torch.long)
    with pytest.raises(LowcError, match="expected \\[1, T, V\\]"):
        ev.perplexity(lambda x: torch.zeros(x.shape[1], 5), ids, tokens=16, window=8, progress=False)
    nan_model = lambda x: torch.full((1, x.shape[1], 5), float("nan"))  # noqa: E731
    with pytest.raises(LowcError, match="Non-finite loss in window 0"):
        ev.perplexity(nan_model, ids, tokens=16, window=8, progress=False)
    with pytest.raises(LowcError, match="either token ids"):
        ev.perplexity(TinyCausalLM(), ids, text="hello", tokens=16, window=8, progress=False)
    with pytest.raises(LowcError, match="integer tensor"):
        ev.perplexity(TinyCausalLM(), ids.float(), tokens=16, window=8, progress=False)


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture
def tiny_registered(monkeypatch):
    loaded = []

    def tiny(dtype=torch.float32, cache_dir=None):
        loaded.append(dtype)
        return TinyCausalLM().to(dtype), ByteTokenizer()

    monkeypatch.setitem(models.MODELS, "tiny", tiny)
    return loaded


def _run(argv):
    out = io.StringIO()
    with redirect_stdout(out):
        code = ev.eval_main(argv)
    return code, out.getvalue().strip().splitlines()


def test_eval_main_prints_perplexity_last_and_writes_json(tiny_registered, tmp_path):
    text_file = tmp_path / "t.txt"
    text_file.write_text("It was the best of times, it was the worst of times. " * 8, encoding="utf-8")
    out_json = tmp_path / "out" / "r.json"
    argv = ["--model", "tiny", "--text", str(text_file), "--tokens", "256", "--window", "64",
            "--json", str(out_json), "--no-progress", "--device", "cpu"]
    code, lines = _run(argv)
    text = text_file.read_text()
    expected = ev.perplexity(TinyCausalLM(), ByteTokenizer(), text, tokens=256, window=64, progress=False)
    assert code == 0 and lines[-1] == f"perplexity: {expected.perplexity:.4f}"
    saved = json.loads(out_json.read_text())
    assert saved["perplexity"] == pytest.approx(expected.perplexity)
    assert [saved[k] for k in ("tokens_scored", "windows", "window", "scheme")] == [252, 4, 64, "none"]
    assert [p.name for p in out_json.parent.iterdir()] == ["r.json"]


@pytest.mark.parametrize("scheme,flag,windows", [
    ("w4a8kv4", [], 256),  # the scheme asks for 256 (Scheme.calibration_samples)
    ("w8a8", [], 128),  # lowc's default
    ("w4a8kv4", ["--calibration-samples", "64"], 64),  # the flag wins
])
def test_eval_main_compiles_with_calibration_batches(tiny_registered, monkeypatch, tmp_path, scheme, flag, windows):
    calls = []

    def fake_compile(model, scheme, calibration, progress):
        calls.append((scheme, calibration))
        return model

    monkeypatch.setattr(lowc, "compile", fake_compile, raising=False)
    code, lines = _run(["--model", "tiny", "--scheme", scheme, "--dataset", "heldout",
                        "--tokens", "128", "--window", "64", "--dtype", "bfloat16", "--no-progress",
                        "--device", "cpu", *flag])
    assert code == 0 and lines[-1].startswith("perplexity: ")
    (name, calibration), = calls
    assert name == scheme and calibration.shape == (windows, 512)
    assert torch.equal(calibration, ev.calibration_batches(ByteTokenizer(), windows))
    assert tiny_registered == [torch.bfloat16]


@pytest.mark.parametrize("argv,match", [
    (["--text", "/nonexistent/file.txt"], "no such file"),
    (["--window", "1"], "at least 2"),
    (["--tokens", "512", "--window", "1024"], "at least --window"),
])
def test_eval_main_bad_input_fails_before_loading(tiny_registered, argv, match):
    with pytest.raises(LowcError, match=match):
        ev.eval_main(["--model", "tiny", *argv])
    assert tiny_registered == []

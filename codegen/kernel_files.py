"""Where rendered kernel sources live on disk, so a person can open the exact code that runs.

The directory is `$LOWC_CACHE_DIR` if set, else `$XDG_CACHE_HOME/lowc`, else `~/.cache/lowc`;
sources go to `<cache>/kernels/<spec name>-<sha256 of the source, 12 hex>.py`. The name is
content-addressed: a template edit or a new lowc version gives a new file and never overwrites one
that another process may be importing. `kernel_file_for(spec)` is what the IR dump links each
`lowc::qlinear` node to; it renders the file on first use, and rewrites it (atomically) if what is
on disk is not exactly the rendered source (truncated, edited, corrupted).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from lowc.fileio import atomic_write_text
from lowc.codegen.render import render
from lowc.codegen.spec import KernelSpec

CACHE_ENV = "LOWC_CACHE_DIR"


def cache_dir() -> Path:
    """The root of lowc's on-disk caches (kernel sources, manifests, autotune tables)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lowc"


def source_sha256(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def kernel_path(spec: KernelSpec, source: str, root: Path | None = None) -> Path:
    """The content-addressed path of `source` (rendered for `spec`) under the cache root."""
    root = cache_dir() if root is None else Path(root)
    return root / "kernels" / f"{spec.name}-{source_sha256(source)[:12]}.py"


def ensure_source(spec: KernelSpec, root: Path | None = None) -> tuple[Path, str]:
    """Render `spec`, make sure its file holds exactly that source; returns (path, source)."""
    source = render(spec)
    path = kernel_path(spec, source, root)
    try:
        intact = path.read_text(encoding="utf-8") == source
    except (OSError, UnicodeDecodeError):
        intact = False
    if not intact:
        atomic_write_text(path, source)
    return path, source


def kernel_file_for(spec: KernelSpec, root: Path | None = None) -> Path:
    """Path of the generated Triton source for `spec`, written on first use (no GPU needed)."""
    return ensure_source(spec, root)[0]

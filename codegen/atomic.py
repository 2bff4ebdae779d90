"""Crash- and race-safe file writes for everything lowc keeps on disk (kernel sources, manifests,
autotune tables).

A writer never touches the final path until its content is complete: it writes a temporary file in
the same directory (same filesystem, so the rename is atomic), flushes it to disk, then
`os.replace`s it over the target. Two processes writing the same entry at once each publish a whole
file; a reader sees the old content or one of the new ones, never a mix or a prefix.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave a half-written temporary behind, whatever interrupted us.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))

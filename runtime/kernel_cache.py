"""The kernel cache: generated Triton modules in memory and on disk, keyed by everything that can
change them.

Key = lowc version + template hash + KernelSpec + GPU compute capability + Triton version. On disk
(under `lowc.codegen.kernel_files.cache_dir()`, `LOWC_CACHE_DIR` to override):

    kernels/<spec name>-<source sha256[:12]>.py     the rendered source (content-addressed, readable)
    entries/<spec name>-<key sha256[:16]>.json      manifest: the key's fields, the source file and
                                                    its sha256

Every write is atomic (temporary file + rename, `lowc.codegen.atomic`), so two processes that build
the same entry at once each publish a complete file and the last rename wins with identical
content. On a lookup the manifest must parse, name this key, and the source must hash to the
recorded sha256 and import; anything else (a truncated or edited file, garbage JSON, a stale
manifest) is treated as a miss and the entry is rebuilt. Compiled binaries are Triton's business:
Triton caches them itself, keyed by the source and the target, so a rebuilt source that is
byte-identical reuses them.

The memory level maps the key to the imported module, so a process imports each kernel once.
`KernelCache` is the one explicit cache object; `default_cache()` returns the process-wide instance
that `lowc.runtime.gemm` uses.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

from lowc.fileio import atomic_write_text
from lowc.codegen.kernel_files import cache_dir, ensure_source, source_sha256
from lowc.codegen.render import lowc_version, template_hash
from lowc.codegen.spec import KernelSpec
from lowc.errors import CacheError, KernelError

MANIFEST_VERSION = 1


@dataclass(frozen=True)
class CacheKey:
    """Everything a cached kernel depends on."""

    lowc_version: str
    template_hash: str
    spec: str  # KernelSpec.key(): canonical JSON
    capability: str  # "sm_90", or "interpreter" / "cpu" where no GPU compiles it
    triton_version: str

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class LoadedKernel:
    """An imported kernel module: `module.qlinear_kernel` (Triton), `module.reference` (torch)."""

    spec: KernelSpec
    key: CacheKey
    path: Path
    module: ModuleType

    @property
    def kernel(self):
        return self.module.qlinear_kernel

    @property
    def reference(self):
        return self.module.reference


def triton_version() -> str:
    try:
        import triton
    except ImportError:  # the reference path still works; nothing can be compiled
        return "none"
    return triton.__version__


def current_capability() -> str:
    """'sm_XY' of the current CUDA device; 'interpreter' under TRITON_INTERPRET=1; else 'cpu'."""
    import os

    import torch

    if os.environ.get("TRITON_INTERPRET") == "1":
        return "interpreter"
    if torch.cuda.is_available():
        return _cuda_capability(torch.cuda.current_device())
    return "cpu"


class KernelCache:
    """Memory + disk cache of generated kernel modules (see module docstring)."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else cache_dir()
        self._memory: dict[CacheKey, LoadedKernel] = {}
        self._keys: dict[tuple, CacheKey] = {}  # (spec, capability) -> key: a launch computes no hash
        self._scratch: dict[tuple, object] = {}
        self._lock = threading.Lock()

    def key_for(self, spec: KernelSpec, capability: str | None = None) -> CacheKey:
        return CacheKey(
            lowc_version=lowc_version(),
            template_hash=template_hash(spec),
            spec=spec.key(),
            capability=capability or current_capability(),
            triton_version=triton_version(),
        )

    def manifest_path(self, spec: KernelSpec, key: CacheKey) -> Path:
        return self.root / "entries" / f"{spec.name}-{key.digest()[:16]}.json"

    def get(self, spec: KernelSpec, capability: str | None = None) -> LoadedKernel:
        """The loaded kernel for `spec` on this device, from memory, disk, or freshly rendered."""
        capability = capability or current_capability()
        key = self._keys.get((spec, capability))
        if key is None:
            key = self._keys.setdefault((spec, capability), self.key_for(spec, capability))
        with self._lock:
            hit = self._memory.get(key)
            if hit is None:
                hit = self._load_verified(spec, key) or self._rebuild(spec, key)
                self._memory[key] = hit
            return hit

    def scratch(self, purpose: str, device, dtype, numel: int):
        """A zero-filled buffer of >= numel elements that the split-K kernels leave zeroed again.

        Buffers come in power-of-two sizes and are never freed or reallocated, so a CUDA graph that
        captured a launch keeps pointing at live memory. Not safe for two split-K launches running
        at the same time on different streams (they would share the buffer).
        """
        import torch

        size = 1 << max(10, int(numel) - 1).bit_length()
        key = (purpose, str(device), dtype, size)
        with self._lock:
            buf = self._scratch.get(key)
            if buf is None:
                buf = torch.zeros(size, dtype=dtype, device=device)
                self._scratch[key] = buf
            return buf

    def clear_memory(self) -> None:
        """Forget imported modules and the keys memo (the disk level stays): tests use it to force a disk
        lookup, bench/template_ab.py to pick up templates read from another directory."""
        with self._lock:
            self._memory.clear()
            self._keys.clear()

    # -- disk level --------------------------------------------------------------------------------

    def _load_verified(self, spec: KernelSpec, key: CacheKey) -> LoadedKernel | None:
        """The disk entry if it is complete and consistent, else None (the caller rebuilds)."""
        try:
            manifest = json.loads(self.manifest_path(spec, key).read_text(encoding="utf-8"))
            if manifest.get("version") != MANIFEST_VERSION or manifest.get("key") != dataclasses.asdict(key):
                return None
            path = self.root / manifest["source"]
            source = path.read_text(encoding="utf-8")
            if source_sha256(source) != manifest["source_sha256"]:
                return None
            return LoadedKernel(spec, key, path, _import_source(path, key))
        except (OSError, ValueError, KeyError, TypeError, SyntaxError, UnicodeDecodeError):
            return None

    def _rebuild(self, spec: KernelSpec, key: CacheKey) -> LoadedKernel:
        try:
            path, source = ensure_source(spec, self.root)
            manifest = {
                "version": MANIFEST_VERSION,
                "key": dataclasses.asdict(key),
                "source": str(path.relative_to(self.root)),
                "source_sha256": source_sha256(source),
            }
            atomic_write_text(self.manifest_path(spec, key), json.dumps(manifest, indent=2, sort_keys=True))
        except OSError as e:
            raise CacheError(
                f"cannot write the kernel cache under {self.root} ({e}); set LOWC_CACHE_DIR to a writable directory"
            ) from e
        try:
            module = _import_source(path, key)
        except Exception as e:
            raise KernelError(f"generated kernel for {spec.name} does not import ({e}); kernel file: {path}") from e
        return LoadedKernel(spec, key, path, module)


def _import_source(path: Path, key: CacheKey) -> ModuleType:
    """Import a generated source file as a module of its own (Triton reads the source back from it)."""
    name = f"lowc_generated_{key.digest()[:16]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # inspect.getsource, which Triton uses, looks modules up here
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


@lru_cache(maxsize=None)
def _cuda_capability(index: int) -> str:
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return f"sm_{major}{minor}"


@lru_cache(maxsize=None)
def default_cache() -> KernelCache:
    """The process-wide kernel cache (root from LOWC_CACHE_DIR at first use)."""
    return KernelCache()

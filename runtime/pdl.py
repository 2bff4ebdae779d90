"""Programmatic dependent launch (PDL) of lowc's decode-step kernels, Hopper and later.

A decode step is a chain of small kernels in one CUDA graph. A kernel launched with `launch_pdl=True`
whose template calls `grid_dependency_wait(PDL)` (common.py) first lets the next kernel of the stream
launch as soon as all its programs have started, then waits (`griddepcontrol.wait`) until the
previous kernel has completed and its writes are visible. Nothing runs before that wait, so results
never change; what overlaps is the next kernel's launch and scheduling with the current one's tail
(docs/kernels.md, "Programmatic dependent launch").

Modes (`set_pdl`, or the LOWC_PDL environment variable at import):
  0  off;
  1  (default) the w4a8_g decode GEMV, which runs at M = 1-2 where the launch gap is largest against
     the kernel: 9-10% faster in chains of GEMVs, a decode step at batch 1 1.003 -> 0.962 ms;
  2  every kernel with a PDL parameter: also the bit-plane GEMV, the w4a8_g tensor-core GEMM, the
     decode attention, the fused norm/activation quantization and the RoPE + KV store. Measured: the
     tensor-core GEMM slower at M = 32, the bit-plane GEMV +3% on the geomean but 11% slower on one
     shape, whole decode steps ~1% slower at batch 16-64 (within run-to-run spread, but not better):
     not the default.
"""

from __future__ import annotations

import functools
import os

import torch

MODES = (0, 1, 2)


def _mode_from_env() -> int:
    value = os.environ.get("LOWC_PDL", "1").strip()
    if value not in {str(m) for m in MODES}:
        raise ValueError(f"LOWC_PDL={value!r}: set it to 0 (off), 1 (the w4a8_g decode GEMV, the default) or 2 "
                         f"(every kernel with a PDL parameter)")
    return int(value)


_mode = _mode_from_env()


def set_pdl(mode: int) -> None:
    """Choose the PDL mode (see the module docstring); for A/B measurements and for turning it off."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"PDL mode must be 0 (off), 1 (the w4a8_g decode GEMV) or 2 (every kernel with a "
                         f"PDL parameter), got {mode}")
    _mode = mode


def pdl_mode() -> int:
    return _mode


@functools.lru_cache(maxsize=None)
def _hopper_or_later(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (9, 0)


def pdl_args(device: torch.device, level: int = 2) -> dict:
    """Launch keyword arguments (the template's PDL constexpr and Triton's launch_pdl) for a kernel that
    takes part from mode `level` on; empty when PDL is off for it, or off the GPU / before Hopper."""
    if _mode < level or device.type != "cuda" or not _hopper_or_later(device.index or 0):
        return {}
    return {"PDL": True, "launch_pdl": True}

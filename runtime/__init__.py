"""lowc's runtime (installed as `lowc.runtime`): kernel cache, launchers, KV cache, generation.

`register_cuda_kernels()` makes the generated Triton kernels the CUDA implementation of every lowc
op (GEMMs incl. bit-plane, attention over the KV cache, fused norm/activation quantization, RoPE +
KV store). `lowc.compile` calls it when the model lives on a GPU; it is never run at `import lowc`.
On CPU the plain-torch references stay the implementation.
"""

from __future__ import annotations

import torch

_registered: bool | None = None  # None: not tried yet; the result of the one registration otherwise


def register_cuda_kernels() -> bool:
    """Register all CUDA kernels once; True when the Triton kernels are active on a GPU."""
    global _registered
    if _registered is None:
        if not torch.cuda.is_available():
            _registered = False
        else:
            from lowc.runtime import attention, bitplane_gemm, fused

            active = bitplane_gemm.register_cuda_kernels()  # lowc::qlinear: dedicated + bit-plane formats
            attention.register_cuda_kernels()
            fused.register_cuda_kernels()
            _registered = bool(active)
    return _registered

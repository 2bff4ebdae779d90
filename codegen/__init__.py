"""lowc's code generator (installed as `lowc.codegen`): KernelSpec -> Triton source -> kernel file.

    spec = spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16)
    path = kernel_file_for(spec)   # the generated module a person can open (see docs/kernels.md)

Imports only the core (torch, lowc.quant, lowc.errors); nothing here compiles or needs a GPU.
"""

from lowc.codegen.kernel_files import cache_dir, kernel_file_for
from lowc.codegen.render import template_hash  # (the function render() stays at lowc.codegen.render.render)
from lowc.codegen.spec import KernelSpec, spec_for_qlinear

__all__ = ["KernelSpec", "cache_dir", "kernel_file_for", "spec_for_qlinear", "template_hash"]

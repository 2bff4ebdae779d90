"""Build a generated kernel ahead of time for a GPU target, on a machine without that GPU.

Triton compiles for any `GPUTarget` without the device (ptxas ships with Triton), so the CPU-only CI
can check that a template lowers for Hopper (the interpreter never runs the GPU compiler) and a
bench can read the SASS of a tile it never launched:

    compiled = compile_for_target(module.qlinear_kernel, {"BM": 16, ...}, {"x_ptr": "*i8", ...})
    compiled.asm["cubin"], compiled.asm["ttgir"]

`fn` must be a real `@triton.jit` (or `@gluon.jit`) function: a module imported while
TRITON_INTERPRET=1 is set holds interpreted Triton functions, which cannot be compiled (Gluon
functions are never interpreted).
"""

from __future__ import annotations

import inspect


def compile_for_target(fn, constexprs: dict, arg_types: dict, *, default_type: str = "i32", divisible=None,
                       capability: int = 90, num_warps: int = 4, num_stages: int = 1, **options):
    """`fn` compiled for GPUTarget("cuda", capability, 32). Every argument not in `constexprs` takes its
    type from `arg_types` (else `default_type`) and, if it is in `divisible` (default: all of them), the
    divisible-by-16 specialization a launch with aligned tensors and sizes would give it. Further keyword
    arguments are compiler options, as a launch passes them (e.g. maxnreg=128)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # A constexpr parameter with a default that the caller leaves out takes its default, as at a
    # launch (otherwise it would become a run-time i32 and both sides of its branches get compiled).
    defaults = {p.name: p.default for p in fn.params if p.is_constexpr and p.default is not inspect.Parameter.empty}
    constexprs = {**{k: v for k, v in defaults.items() if k not in constexprs}, **constexprs}
    sig, attrs = {}, {}
    for idx, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        sig[name] = arg_types.get(name, default_type)
        if divisible is None or name in divisible:
            attrs[(idx,)] = [["tt.divisibility", 16]]
    source = ASTSource
    try:
        from triton.experimental.gluon._runtime import GluonASTSource, GluonJITFunction
    except ImportError:  # a Triton without Gluon
        pass
    else:
        if isinstance(fn, GluonJITFunction):
            source = GluonASTSource
    src = source(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", capability, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages, **options})

"""Build a generated kernel ahead of time for a GPU target, on a machine without that GPU.

Triton compiles for any `GPUTarget` without the device (ptxas ships with Triton), so the CPU-only CI
can check that a template lowers for Hopper (the interpreter never runs the GPU compiler) and a
bench can read the SASS of a tile it never launched:

    compiled = compile_for_target(module.qlinear_kernel, {"BM": 16, ...}, {"x_ptr": "*i8", ...})
    compiled.asm["cubin"], compiled.asm["ttgir"]

`fn` must be a real `@triton.jit` (or `@gluon.jit`) function: a module imported while
TRITON_INTERPRET=1 is set holds interpreted Triton functions, which cannot be compiled (Gluon
functions are never interpreted).

In a process that has run interpreted kernels (the CPU test suite), Triton's interpreter may have left
`triton.language` patched: a jit function called from another one patches the language's builtins,
`dtype.to_ir` and the tensor methods for the interpreter and never restores them (Triton 3.9), and a
GPU compile then fails (e.g. "'builder' object has no attribute 'get_uint8_ty'") whenever Triton's
disk cache misses. This module records those namespaces when it is imported (import it before any
kernel is interpreted: tests/conftest.py does, after collection) and `compile_for_target` puts them
back first.
"""

from __future__ import annotations

import inspect

_MISSING = object()


def _language_namespaces() -> list:
    """The objects Triton's interpreter patches (triton/runtime/interpreter.py, `_patch_lang`)."""
    import triton.language as tl

    core = tl.core
    return [tl, core, tl.math, core.tensor, core.dtype, core.condition, core.tensor_descriptor_base]


def _from_interpreter(value) -> bool:
    """A replacement the interpreter's patching made: a function of its module, also inside a property
    or a functools.partial (its interpreted jit functions are not replacements)."""
    value = getattr(value, "fget", value)
    value = getattr(value, "func", value)
    return inspect.isfunction(value) and value.__module__ == "triton.runtime.interpreter"


def _snapshot():
    """{namespace: its own attributes} while none comes from the interpreter; None once one does (too
    late to record the originals)."""
    saved = [(obj, dict(vars(obj))) for obj in _language_namespaces()]
    if any(_from_interpreter(v) for _, attrs in saved for v in attrs.values()):
        return None
    return saved


_PRISTINE = _snapshot()


def restore_language() -> None:
    """Put back every attribute of triton.language's namespaces rebound since this module was imported,
    and remove those the interpreter added (nothing when the record was taken too late)."""
    for obj, saved in _PRISTINE or []:
        for name, value in list(vars(obj).items()):
            original = saved.get(name, _MISSING)
            if original is _MISSING:
                if _from_interpreter(value):
                    delattr(obj, name)
            elif original is not value:
                setattr(obj, name, original)


def compile_for_target(fn, constexprs: dict, arg_types: dict, *, default_type: str = "i32", divisible=None,
                       capability: int = 90, num_warps: int = 4, num_stages: int = 1, **options):
    """`fn` compiled for GPUTarget("cuda", capability, 32). Every argument not in `constexprs` takes its
    type from `arg_types` (else `default_type`) and, if it is in `divisible` (default: all of them), the
    divisible-by-16 specialization a launch with aligned tensors and sizes would give it. Further keyword
    arguments are compiler options, as a launch passes them (e.g. maxnreg=128)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    restore_language()
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

"""Fixtures of the codegen tests."""

import pytest


@pytest.fixture
def gluon_sm90():
    """compile(fn, constexprs, pointer_types, warps, unaligned=("M",)) -> a Gluon kernel compiled
    ahead of time for sm_90 (no GPU needed): every other argument an i32 or the named pointer type,
    all but `unaligned` marked divisible by 16 as Triton's launcher would see them."""
    pytest.importorskip("triton.backends.nvidia")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    def compile_(fn, const, pointer_types, warps, unaligned=("M",)):
        sig, attrs = {}, {}
        for i, name in enumerate(fn.arg_names):
            if name in const:
                sig[name] = "constexpr"
                continue
            sig[name] = pointer_types.get(name, "i32")
            if name not in unaligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
        src = GluonASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

    return compile_

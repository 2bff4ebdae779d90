"""Fixtures of the codegen tests."""

import pytest


@pytest.fixture
def gluon_sm90():
    """compile(fn, constexprs, pointer_types, warps, unaligned=("M",)) -> a Gluon kernel compiled
    ahead of time for sm_90 (no GPU needed, lowc.runtime.aot_compile): every other argument an i32 or
    the named pointer type, all but `unaligned` marked divisible by 16 as Triton's launcher would see
    them."""
    pytest.importorskip("triton.backends.nvidia")
    from lowc.runtime.aot_compile import compile_for_target

    def compile_(fn, const, pointer_types, warps, unaligned=("M",)):
        divisible = {name for name in fn.arg_names if name not in const and name not in unaligned}
        return compile_for_target(fn, const, pointer_types, divisible=divisible, num_warps=warps)

    return compile_

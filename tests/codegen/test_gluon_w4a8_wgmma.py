"""The warpgroup W4A8 g128 kernel (codegen/gluon_w4a8_wgmma.py) on a machine without a GPU.

Gluon has no interpreter: the CPU suite replays in plain torch the K order the weight loads and the
permuted activation copies imply (it must give the exact integer GEMM), and compiles the kernel for
sm_90: register-A wgmma of the tile's shape, cp.async copies as the only shared-memory writes of the
K loop (4-byte ones for the permuted activations, 16-byte ones for the weights), the unpacked bytes never re-packed with PRMTs, no spills. The GPU tests
(tests/runtime/test_gemm_wgmma.py) run it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # as every CPU test module: before Triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper", reason="this Triton has no Gluon")

from lowc.codegen.gluon_w4a8_wgmma import staged_columns, staged_products  # noqa: E402

@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), tokens=st.integers(1, 9))
def test_staged_copies_give_the_exact_integer_gemm(seed, tokens):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (16, 128), generator=g, dtype=torch.uint8)
    s1 = torch.randint(1, 17, (16,), generator=g)
    zs1 = torch.randint(0, 241, (16,), generator=g)
    x = torch.randint(-128, 128, (tokens, 128), generator=g, dtype=torch.int8)
    expected = (q.long() * s1[:, None] - zs1[:, None]) @ x.long().T
    assert torch.equal(staged_products(q, s1, zs1, x), expected.to(torch.int32))


def test_staging_is_a_permutation_of_whole_words():
    cols = staged_columns()
    assert sorted(cols) == list(range(128))
    assert all(cols[4 * d + b] == cols[4 * d] + b and cols[4 * d] % 4 == 0 for d in range(32) for b in range(4))


def test_replay_notices_a_wrong_staging():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (16, 128), generator=g, dtype=torch.uint8)
    s1, zs1 = torch.full((16,), 3), torch.full((16,), 20)
    x = torch.randint(-128, 128, (8, 128), generator=g, dtype=torch.int8)
    natural = staged_products(q, s1, zs1, x[:, staged_columns()])  # staging applied twice
    assert not torch.equal(natural, ((q.long() * 3 - 20) @ x.long().T).to(torch.int32))


def _bench_module(name):
    import importlib
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[2] / "bench"
    sys.path.insert(0, str(bench))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(bench))


@pytest.mark.parametrize("bm,warps,stages,split", [(64, 4, 4, 4), (16, 4, 3, 1), (128, 8, 6, 2), (64, 16, 4, 2)])
def test_compiles_for_sm90_with_register_a_wgmma(bm, warps, stages, split):
    """Built for sm_90 (bench/sass_gluon_wgmma.py's build): 4 register-A wgmma of the tile's shape per
    group; in the K loop only cp.async writes shared memory (one 4-byte copy per token's group and
    warp of activations, two 16-byte copies per thread of weights), no byte re-packing, no spills."""
    import tempfile

    pytest.importorskip("triton.backends.nvidia")
    sass_gemv = _bench_module("sass_gemv")
    compiled = _bench_module("sass_gluon_wgmma").compile_tile(bm, warps, stages, split)
    ptx = compiled.asm["ptx"]
    assert ptx.count(f"wgmma.mma_async.sync.aligned.m64n{bm}k32.s32.s8.s8 {{") == 4  # A as registers
    assert "griddepcontrol.wait" in ptx
    assert compiled.metadata.shared >= stages * (bm * 128 + 16 * warps * 64)
    with tempfile.TemporaryDirectory() as d:
        sass, registers, stack = sass_gemv.disassemble(compiled, d)
    mix = sass_gemv.loop_mix(sass)
    assert mix["IGMMA"] == 4 and mix["LDGSTS"] == bm // warps + 2, mix
    assert not any(op.startswith(("STS", "STL", "LDL")) for op in mix), mix
    assert mix["PRMT"] <= 4, mix
    assert stack == 0 and registers <= 255


def test_layouts_reject_tiles_the_kernel_cannot_take():
    from lowc.codegen.gluon_w4a8_wgmma import layouts

    with pytest.raises(ValueError, match="whole warpgroups"):
        layouts(32, 64, 2)
    with pytest.raises(ValueError, match="whole warpgroups"):
        layouts(128, 64, 4)
    with pytest.raises(ValueError, match="wgmma N side"):
        layouts(64, 12, 4)
    with pytest.raises(ValueError, match="wgmma N side"):
        layouts(64, 256, 4)

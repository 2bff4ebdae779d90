"""The register-fragment W4A8 g128 kernel (codegen/gluon_w4a8_g128.py) on a machine without a GPU.

Gluon has no interpreter, so the CPU suite checks what it can without running the kernel: the K
permutation each lane's loads imply gives the exact integer GEMM (a plain-torch replay), the kernel
compiles for sm_90 with the MMA count its tile implies, no shared memory inside the K loop, and the
PDL wait exactly when asked for. The GPU tests (tests/runtime/test_gemm_mma_reg.py) run it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # as every CPU test module: before Triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton.experimental.gluon.language.nvidia.ampere", reason="this Triton has no Gluon")

from lowc.codegen.gluon_w4a8_g128 import fragment_products  # noqa: E402

POINTER_TYPES = {"x_ptr": "*i8", "sx_ptr": "*fp32", "qw_ptr": "*u8", "s1_ptr": "*u8", "zs1_ptr": "*u8",
                 "s0_ptr": "*fp16", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*i32", "cnt_ptr": "*i32"}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_lane_loads_give_the_exact_integer_gemm(seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (16, 128), generator=g, dtype=torch.uint8)
    s1 = torch.randint(1, 17, (16,), generator=g)
    zs1 = torch.randint(0, 241, (16,), generator=g)
    x = torch.randint(-128, 128, (8, 128), generator=g, dtype=torch.int8)
    expected = (q.long() * s1[:, None] - zs1[:, None]) @ x.long().T
    assert torch.equal(fragment_products(q, s1, zs1, x), expected.to(torch.int32))


def test_replay_notices_a_wrong_activation_order():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (16, 128), generator=g, dtype=torch.uint8)
    s1, zs1 = torch.full((16,), 3), torch.full((16,), 20)
    x = torch.randint(-128, 128, (8, 128), generator=g, dtype=torch.int8)
    swapped = x.clone()
    swapped[:, [8, 12]] = swapped[:, [12, 8]]  # two K positions of one lane quad exchanged
    expected = (q.long() * 3 - 20) @ x.long().T
    assert not torch.equal(fragment_products(q, s1, zs1, swapped), expected.to(torch.int32))


def _compile(compile_, bn, bm, gpt, split, warps, pdl):
    from lowc.codegen import gluon_w4a8_g128 as m

    w_l, x_l, o_l = m.layouts(bn, bm, gpt, warps)
    const = dict(HAS_BIAS=True, RAW=False, BN=bn, BM=bm, GPT=gpt, SPLIT_K=split, WARPS=warps,
                 w_l=w_l, x_l=x_l, o_l=o_l, PDL=pdl)
    return compile_(m.qlinear_mma_kernel, const, POINTER_TYPES, warps)


@pytest.mark.parametrize("bn,bm,gpt,split,warps,pdl", [
    (32, 8, 2, 8, 2, True), (64, 8, 2, 1, 4, False), (128, 16, 1, 4, 4, True), (64, 32, 1, 2, 4, False),
    (32, 64, 1, 4, 2, True),
])
def test_compiles_for_sm90_with_register_operands(gluon_sm90, bn, bm, gpt, split, warps, pdl):
    ptx = _compile(gluon_sm90, bn, bm, gpt, split, warps, pdl).asm["ptx"]
    # one m16n8k32 per 32 K x 16 rows x 8 tokens of a warp's tile, all in the K loop
    expected_mmas = (128 * gpt // 32) * (bn // (16 * warps)) * (bm // 8)
    assert ptx.count("mma.sync.aligned.m16n8k32.row.col") == expected_mmas
    assert ("griddepcontrol.wait" in ptx) == pdl
    # Only the epilogue's store re-layout touches shared memory: nothing between the first MMA and the last.
    body = ptx[ptx.index("mma.sync"):ptx.rindex("mma.sync")]
    assert "ld.shared" not in body and "st.shared" not in body
    if split > 1:  # the scales and the bias are loaded before the split-K reduction, none after its ticket
        assert "ld.global" not in ptx[ptx.index("acq_rel"):]


def test_layouts_reject_tiles_the_kernel_cannot_take():
    from lowc.codegen.gluon_w4a8_g128 import layouts

    with pytest.raises(ValueError, match="multiple of 16 rows per warp"):
        layouts(48, 8, 1, 2)  # 48 rows: 1.5 row repeats of 2 warps
    with pytest.raises(ValueError, match="not a power of two"):
        layouts(96, 8, 1, 2)  # 3 row repeats
    with pytest.raises(ValueError, match="of 8 tokens"):
        layouts(32, 12, 1, 2)

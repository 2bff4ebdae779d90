"""The register-fragment bit-plane kernel (codegen/gluon_bitplane.py) on a machine without a GPU.

Gluon has no interpreter: the CPU suite replays the lane mapping in plain torch from the stored plane
words (it must give the exact per-group integer GEMM for every plane count the kernel takes), and
compiles the kernel for sm_90 (MMA count of the tile, the zero on the tensor cores or folded, no
shared memory between the MMAs, the PDL wait only when asked). tests/runtime/test_bitplane_mma_reg.py
runs it on the GPU.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():  # as every CPU test module: before Triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytest.importorskip("triton.experimental.gluon.language.nvidia.ampere", reason="this Triton has no Gluon")

from lowc.codegen.gluon_bitplane import fragment_products, layouts, padded_planes  # noqa: E402

POINTER_TYPES = {"x_ptr": "*i8", "sx_ptr": "*fp32", "planes_ptr": "*u32", "scale_ptr": "*fp16", "zero_ptr": "*i8",
                 "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}


def codes(p, g):
    lo, hi = -(2 ** (p - 1)), 2 ** (p - 1) - 1
    v = torch.randint(lo, hi + 1, (16, 128), generator=g)
    zs = torch.randint(lo, hi + 1, (16,), generator=g)  # zs = z - 2^(P-1), z in 0 .. 2^P - 1
    x = torch.randint(-128, 128, (8, 128), generator=g, dtype=torch.int8)
    return v, zs, x


@settings(max_examples=30, deadline=None)
@given(p=st.integers(2, 7), seed=st.integers(0, 2**31 - 1))
def test_lane_loads_give_the_exact_group_gemm(p, seed):
    v, zs, x = codes(p, torch.Generator().manual_seed(seed))
    expected = (v - zs[:, None]) @ x.long().T
    assert torch.equal(fragment_products(v, zs, x, p), expected.to(torch.int32))


def test_replay_notices_a_wrong_activation_order():
    v, zs, x = codes(3, torch.Generator().manual_seed(0))
    swapped = x.clone()
    swapped[:, [1, 4]] = swapped[:, [4, 1]]  # two columns of one lane's word exchanged
    expected = (v - zs[:, None]) @ x.long().T
    assert not torch.equal(fragment_products(v, zs, swapped, 3), expected.to(torch.int32))


def _compile(compile_, p, bn, bm, gpt, split, warps, zero_mma, pdl, raw=False):
    from lowc.codegen import gluon_bitplane as m

    w_l, x_l, o_l = layouts(bn, bm, gpt, warps, p)
    const = dict(P=p, PP=padded_planes(p), HAS_BIAS=True, RAW=raw, BN=bn, BM=bm, GPT=gpt, SPLIT_K=split,
                 WARPS=warps, ZERO_MMA=zero_mma, w_l=w_l, x_l=x_l, o_l=o_l, PDL=pdl)
    types = dict(POINTER_TYPES, **({"out_ptr": "*i32"} if raw else {}))
    return compile_(m.qlinear_bitplane_mma_kernel, const, types, warps, unaligned=("M", "N"))


@pytest.mark.parametrize("p,bn,bm,gpt,split,warps,zero_mma,pdl", [
    (2, 64, 8, 4, 8, 4, True, True), (3, 64, 16, 2, 1, 4, True, False), (6, 128, 8, 1, 4, 4, False, True),
    (7, 32, 8, 2, 2, 2, True, False),
])
def test_compiles_for_sm90_with_register_operands(gluon_sm90, p, bn, bm, gpt, split, warps, zero_mma, pdl):
    ptx = _compile(gluon_sm90, p, bn, bm, gpt, split, warps, zero_mma, pdl).asm["ptx"]
    # per group: four m16n8k32 per 16 rows x 8 tokens of a warp's tile (and four more for the zero)
    expected_mmas = gpt * 4 * (bn // (16 * warps)) * (bm // 8) * (2 if zero_mma else 1)
    assert ptx.count("mma.sync.aligned.m16n8k32.row.col") == expected_mmas
    assert ("griddepcontrol.wait" in ptx) == pdl
    assert ptx.count("shf.r.wrap.b32") >= 7  # the rotation of registers 1..7
    body = ptx[ptx.index("mma.sync"):ptx.rindex("mma.sync")]
    assert "ld.shared" not in body and "st.shared" not in body


def test_raw_build_stores_every_group(gluon_sm90):
    ptx = _compile(gluon_sm90, 2, 64, 8, 2, 1, 4, True, False, raw=True).asm["ptx"]
    assert "atom" not in ptx  # no split-K reduction: each group's accumulator is stored by its program
    assert ptx.count("st.global") >= 2


def test_layouts_reject_what_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="2..7 weight planes"):
        layouts(64, 8, 1, 4, 8)  # q = v + 128 does not fit a signed byte
    with pytest.raises(ValueError, match="2..7 weight planes"):
        layouts(64, 8, 1, 4, 1)
    with pytest.raises(ValueError, match="multiple of 16 rows per warp"):
        layouts(48, 8, 1, 2, 3)
    assert [padded_planes(p) for p in range(2, 8)] == [2, 4, 4, 8, 8, 8]

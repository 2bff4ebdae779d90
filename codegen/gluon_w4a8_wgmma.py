"""W4A8 g128 GEMM for M = 16-256 in Gluon on Hopper: weight fragments unpacked in registers and fed
to `wgmma` as its register A operand, activations staged in shared memory as its B operand (the
`WGMMA` tile configs of w4a8_g128, up to 128 tokens per program; docs/kernels.md, "Warpgroup kernel").

Same arithmetic as the w4a8_g template (codegen/templates/qlinear_w4a8_group.py, whose `reference`
is the truth): w8 = q * s1 - zs1, acc[n, m] = sum_k w8[n, k] x[m, k] in INT32, y = (acc * s_x[m]) *
s0[n] (+ bias[n]). Computed transposed, out^T = W8 . X^T: the output channels fill the 64-row M side
of `wgmma.m64nBMk32.s32.s8.s8` (16 rows per warp, one warpgroup per 64 rows), the tokens its N side.

Weights. The A register fragment of a warp's 16 rows is the `mma.m16n8k32` one, so the weight words
are read and unpacked as in codegen/gluon_w4a8_g128.py (one 16-byte run per row, group and lane
quad t; mask / multiply-add / XOR per four codes), in that module's permuted K order: the MMA's K
position 32c + 16h + 4t + b of a group holds code 32t + 8c + 4h + b. They reach shared memory by
16-byte `cp.async`s (to keep many groups in flight without registers) and each thread reads back
exactly its runs. The group parameters s1 / zs1 are read as int32 words of four groups' bytes.

Activations. wgmma reads B from shared memory in its own K order, so the rows are copied there
already permuted: 4-byte `cp.async` copies, word d = 8c + 4h + t of a token's staged group taking
source word 8t + 2c + h (a permutation inside each 128-byte row: the 32 lanes of a copy read one
token's group, coalesced, and write one swizzled row, no bank conflicts).

Ring: STAGES stages of one group (activations [BM, 128] with 128-byte swizzle, weight words [BN, 16]),
refilled STAGES - 1 groups ahead. Loop, per group kt: issue its MMAs asynchronously; while they
run, wait for group kt + 1's copies, fence, CTA barrier (every thread's copies are in, and every
warpgroup's MMAs of group kt - 1 have retired, so that stage may be refilled), start the copies of
group kt + STAGES - 1, read and unpack group kt + 1; then wait for the MMAs. Split-K over groups
and the epilogue are the register-fragment kernel's (`finish_tile`).

Gluon has no interpreter: the CPU tests compile this kernel for sm_90 and check its SASS and replay
the activation permutation in plain torch (`staged_columns`); the GPU tests check it bit for bit.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, warpgroup_mma, warpgroup_mma_wait

from lowc.codegen.gluon_w4a8_g128 import (
    BYTE_SIGN_BITS,
    GROUP,
    cta_barrier,
    finish_tile,
    int8_lanes,
    lane_products,
    pdl_launch_dependents,
    pdl_wait,
)


@builtin
def as_words(stage, _semantic=None):
    """A ring stage of activations [BM, 128] int8 viewed as int32 words [BM, 32] (same bytes, same
    128-byte swizzle), for the 4-byte copies. (`reinterpret` is `_reinterpret` in Triton 3.6.)"""
    layout = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    shape = [stage.shape[0], stage.shape[1] // 4]
    method = getattr(stage, "reinterpret", None) or stage._reinterpret
    return method(gl.int32, shape, layout, _semantic=_semantic)


# The cp.async copy is `async_copy_global_to_shared` in Triton 3.6 and `async_load` from 3.7 on.
copy_to_shared = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared


@gluon.jit
def unpack_words(words, s1, zs1, u_l: gl.constexpr):
    """INT8 weights of one group as int32 words of four [BN, 1, c, h, t], in the permuted K order of
    the module docstring (`a_operand` makes them the MMA operand); s1, zs1: int32 [BN, 1].

    The nibble half h is a register dimension of u_l placed after the row + 8 one, so that once the
    bytes are split off (int8_lanes) the registers are already in the wgmma fragment's order (bytes,
    row + 8, h, K block): every layout change renames registers and moves no bytes."""
    words = gl.convert_layout(words, gl.SliceLayout(4, u_l))
    h_l: gl.constexpr = gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, u_l))))
    shift = gl.arange(0, 2, layout=h_l) * 4
    p_l: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(4, u_l)))
    mul = gl.convert_layout(s1, p_l)[:, :, None, None, None]
    add = ((128 - gl.convert_layout(zs1, p_l)) * 0x01010101)[:, :, None, None, None]
    nibbles = (words[:, :, :, :, None] >> shift[None, None, None, None, :]) & 0x0F0F0F0F
    w = (nibbles * mul + add) ^ BYTE_SIGN_BITS  # [BN, 1, c, t, h]
    return gl.permute(w, [0, 1, 2, 4, 3])


@gluon.jit
def a_operand(w, BN: gl.constexpr, a_l: gl.constexpr):
    """The int8 A operand [BN, 128] of `unpack_words`' words. Called next to the MMA: int8 values
    carried across a loop iteration are kept one byte per register and re-packed with PRMTs."""
    return gl.convert_layout(gl.reshape(int8_lanes(w), [BN, GROUP]), a_l)


@gluon.jit
def copy_group(xs, ws, x32, x_off, qw32, w_off, kt, k_last):
    """Start the cp.async copies of group kt (clamped to the split's last group: a copy past the end
    re-reads a cached group and is never used) into a ring stage, as one commit group: the activation
    words permuted, 4 bytes each, the weight words 16 bytes each."""
    kt = gl.minimum(kt, k_last - 1)
    copy_to_shared(as_words(xs), x32 + x_off + kt * 32)
    copy_to_shared(ws, qw32 + w_off + kt * 16)
    async_copy.commit_group()


@gluon.jit
def load_params(s1w_ptr, zs1w_ptr, p_off, chunk, last_chunk):
    """The level-1 scales and scaled zeros of four groups (4 * chunk .. + 3) as one int32 per row:
    byte j is group 4 * chunk + j (clamped to the last chunk: a prefetch past the end is never used)."""
    chunk = gl.minimum(chunk, last_chunk)
    return gl.load(s1w_ptr + p_off + chunk), gl.load(zs1w_ptr + p_off + chunk)


@gluon.jit
def unpack_group(stage, s1_chunk, zs1_chunk, kt, w_l: gl.constexpr, u_l: gl.constexpr):
    """`unpack_words` of group kt from its ring stage, its parameters byte kt % 4 of the chunk words."""
    shift = (kt % 4) * 8
    return unpack_words(stage.load(w_l), (s1_chunk >> shift) & 0xFF, (zs1_chunk >> shift) & 0xFF, u_l)


@gluon.jit
def qlinear_wgmma_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KW, stride_xm, stride_w32,
    HAS_BIAS: gl.constexpr, RAW: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr,
    SPLIT_K: gl.constexpr, STAGES: gl.constexpr, WARPS: gl.constexpr,
    w_l: gl.constexpr, u_l: gl.constexpr, c_l: gl.constexpr, o_l: gl.constexpr, PDL: gl.constexpr = False,
):
    """grid = (cdiv(N, BN), SPLIT_K, cdiv(M, BM)); BN = 16 * WARPS (WARPS a multiple of 4); K = KW, a
    multiple of 512 (the parameters are read four groups per word); stride_xm a multiple of 4 (x
    copied as int32 words); STAGES >= 3; w_l, u_l, c_l, o_l from `layouts`."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, BM, 32])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    x_sl: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=8, rank=2)
    # weight words of a stage [BN, 1, c, t] at word 16 * row + 4t + c, as in global memory
    w_sl: gl.constexpr = gl.SwizzledSharedLayout(vec=1, per_phase=1, max_phase=1, order=[2, 3, 1, 0])
    p_l: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, w_l))
    pid_n = gl.program_id(0)
    pid_m = gl.program_id(2)
    n_groups = KW // GROUP
    per_split = gl.cdiv(n_groups, SPLIT_K)
    k_first = gl.program_id(1) * per_split
    k_last = gl.minimum(k_first + per_split, n_groups)

    # weight words [BN, 1, c, t] = word 4t + c of the row's group (codegen/gluon_w4a8_g128.py)
    rn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, w_l))))
    rc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, w_l))))
    rt = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, w_l))))
    w_off = (rn % N)[:, None, None, None] * stride_w32 + rc[None, None, :, None] + 4 * rt[None, None, None, :]
    pn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, p_l))
    p_off = (pn % N)[:, None] * (n_groups // 4) + gl.arange(0, 1, layout=gl.SliceLayout(0, p_l))[None, :]
    qw32 = qw_ptr.to(gl.pointer_type(gl.int32))
    s1w = s1_ptr.to(gl.pointer_type(gl.int32))
    zs1w = zs1_ptr.to(gl.pointer_type(gl.int32))
    last_chunk = n_groups // 4 - 1

    # activation words [BM, 32]: staged word d = 8c + 4h + t takes source word 8t + 2c + h
    cm = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, c_l))
    cd = gl.arange(0, 32, layout=gl.SliceLayout(0, c_l))
    x_off = (gl.minimum(cm, M - 1) * (stride_xm // 4))[:, None] + (8 * (cd % 4) + 2 * (cd // 8) + (cd // 4) % 2)[None, :]
    x32 = x_ptr.to(gl.pointer_type(gl.int32))
    xs = gl.allocate_shared_memory(gl.int8, [STAGES, BM, GROUP], x_sl)
    ws = gl.allocate_shared_memory(gl.int32, [STAGES, BN, 1, 4, 4], w_sl)

    if PDL:
        pdl_launch_dependents()
    # No earlier kernel writes the weights: they are read before waiting for one.
    s1_now, zs1_now = load_params(s1w, zs1w, p_off, k_first // 4, last_chunk)
    s1_next, zs1_next = load_params(s1w, zs1w, p_off, k_first // 4 + 1, last_chunk)
    if PDL:
        pdl_wait()
    for s in gl.static_range(STAGES - 1):
        copy_group(xs.index(s), ws.index(s), x32, x_off, qw32, w_off, k_first + s, k_last)
    async_copy.wait_group(STAGES - 2)
    fence_async_shared()
    cta_barrier()
    w = unpack_group(ws.index(0), s1_now, zs1_now, k_first, w_l, u_l)
    acc = gl.zeros([BN, BM], gl.int32, layout=mma)
    for kt in range(k_first, k_last):
        i = kt - k_first
        acc = warpgroup_mma(a_operand(w, BN, a_l), xs.index(i % STAGES).permute((1, 0)), acc, is_async=True)
        # While the tensor cores run: wait for group kt + 1, refill the stage of group kt - 1 (its MMAs
        # retired before the barrier in every warpgroup) and unpack group kt + 1.
        if kt % 4 == 3:  # group kt + 1 starts the next four groups' parameters; prefetch the four after
            s1_now, zs1_now = s1_next, zs1_next
            s1_next, zs1_next = load_params(s1w, zs1w, p_off, kt // 4 + 2, last_chunk)
        async_copy.wait_group(STAGES - 3)
        fence_async_shared()
        cta_barrier()
        copy_group(xs.index((i + STAGES - 1) % STAGES), ws.index((i + STAGES - 1) % STAGES),
                   x32, x_off, qw32, w_off, kt + STAGES - 1, k_last)
        n_w = unpack_group(ws.index((i + 1) % STAGES), s1_now, zs1_now, kt + 1, w_l, u_l)
        # The MMA reads its A registers until it retires: `w` (the same registers, as int32) stays
        # live until the wait, so the next group's words cannot be allocated over them.
        acc, w = warpgroup_mma_wait(0, deps=[acc, w])
        w = n_w
    async_copy.wait_group(0)

    finish_tile(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, pid_m, pid_n,
                HAS_BIAS, RAW, BN, BM, SPLIT_K, mma, o_l)


def layouts(BN: int, BM: int, WARPS: int):
    """(w_l, u_l, c_l, o_l): the weight-word tile [BN, 1, 4 (c), 4 (t)] (the register-fragment
    kernel's, one group per tile, as loaded), the unpacking tile [BN, 1, c, t, 2 (h)] (`unpack_a`), the activation-copy tile [BM, 32 words] (a warp copies one token's group per
    instruction) and the store tile [BN, BM]."""
    from lowc.codegen.gluon_w4a8_g128 import layouts as fragment_layouts

    if WARPS % 4 or BN != 16 * WARPS:
        raise ValueError(f"the warpgroup kernel takes BN = 16 rows per warp and whole warpgroups: BN={BN}, WARPS={WARPS}")
    if BM % 8 or not 8 <= BM <= 128:
        raise ValueError(f"BM={BM} must be a multiple of 8 in 8..128 (the wgmma N side: Triton 3.6 lowers "
                         "int8 wgmma up to n128)")
    w_l, _, o_l = fragment_layouts(BN, BM, 1, WARPS)
    u_l = gl.DistributedLinearLayout(
        reg_bases=[[8, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 1, 0, 0], [0, 0, 2, 0, 0]],
        lane_bases=[[0, 0, 0, 1, 0], [0, 0, 0, 2, 0], [1, 0, 0, 0, 0], [2, 0, 0, 0, 0], [4, 0, 0, 0, 0]],
        warp_bases=[[16 << i, 0, 0, 0, 0] for i in range(WARPS.bit_length() - 1)], block_bases=[],
        shape=[BN, 1, 4, 4, 2])
    c_l = gl.BlockedLayout([1, 1], [1, 32], [WARPS, 1], [1, 0])
    return w_l, u_l, c_l, o_l


def staged_columns() -> list[int]:
    """Source column (byte of the token's group) of each staged K position 0..127, by the copy
    addresses' expression: staged word d = 8c + 4h + t takes source word 8t + 2c + h."""
    cols = []
    for d in range(32):
        cols.extend(4 * (8 * (d % 4) + 2 * (d // 8) + (d // 4) % 2) + b for b in range(4))
    return cols


def staged_products(q, s1, zs1, x):
    """Plain-torch replay of what the MMAs sum for one group of 16 rows and some tokens: q uint8
    codes [16, 128], s1 / zs1 int [16], x int8 [T, 128], natural K order -> int32 [16, T]. At MMA K
    position 32c + 16h + 4t + b, A is decoded from word 4t + c of the row's nibble-split group (nibble
    h of byte b: what lane quad t loads) and B is the staged byte, x[:, staged_columns()[position]].
    It equals (q * s1 - zs1) @ x^T exactly iff both sides name the same code
    (tests/codegen/test_gluon_w4a8_wgmma.py)."""
    cols = staged_columns()
    return lane_products(q, s1, zs1, x, lambda t, c, h, b: cols[32 * c + 16 * h + 4 * t + b])

"""W4A8 g128 decode GEMM in Gluon: weight fragments loaded from global memory straight into the
registers of `mma.sync` (the `MMA_REG` tile configs of w4a8_g128; docs/kernels.md, "Register-fragment
kernel").

Same arithmetic as the w4a8_g template (codegen/templates/qlinear_w4a8_group.py, whose `reference`
is the truth for both): w8 = q * s1 - zs1 in registers, acc[n, m] = sum_k w8[n, k] x[m, k] in INT32
on the INT8 tensor cores, y = (acc * s_x[m]) * s0[n] (+ bias[n]). What differs is where each value
lives. Triton decides the register layout of a `tl.dot` operand itself and, for a weight unpacked in
registers, moves it through shared memory; Gluon lets the kernel state the layouts, so each thread
loads exactly the bytes its `mma.m16n8k32` fragments need and nothing is staged.

The trick is a permutation of K inside each 128-code group, applied to both operands (a dot product
does not depend on the order of its terms). The canonical nibble-split packing stores 16 int32 words
per row and group; word j holds codes 8j + b (low nibble of byte b) and 8j + 4 + b (high nibble).
The m16n8k32 A fragment gives lane (g, t) = (lane // 4, lane % 4) rows g and g + 8 and, per K block
of 32, logical K offsets 4t + b and 16 + 4t + b (b = 0..3). Reading logical position
32c + 16h + 4t + b of the group as the code at 32t + 8c + 4h + b, thread t needs words 4t .. 4t + 3
of each of its rows: one 16-byte load per row and group, whose low nibbles (h = 0) and high nibbles
(h = 1) of word c are exactly its two A registers of K block c after the mask / multiply-add / XOR.
The activations follow the same map: the B fragment of lane (g, t) is token g's bytes 32t + 8c .. +7
of the group, two 16-byte runs per token and group. No shuffles, no shared memory, one load per
16 weights and per 32 activations.

Per program: BN output channels (16 per warp, times BN // (16 * WARPS) row repeats) x BM tokens
(8 per MMA column block), SPLIT_K programs over the K tiles of GPT groups each, split-K reduced as in
the Triton templates (relaxed atomics into an INT32 workspace, one acquire-release ticket, the last
program reads and re-zeroes the workspace). Loads of the next K tile are issued before the current
tile's MMAs (register double buffering). With PDL the first weight tile is read before
`griddepcontrol.wait` (no earlier kernel writes weights), so a decode chain overlaps it with the
previous kernel's tail: measured on an H100 that is where this kernel gains most (docs/kernels.md).

Gluon has no interpreter: the CPU tests compile this kernel for sm_90 and check its PTX, and replay
the fragment mapping in plain torch (`fragment_products`); the GPU tests check it bit for bit.
"""

from __future__ import annotations

import math

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

GROUP = gl.constexpr(128)
# The CTA barrier is `thread_barrier` in Triton 3.6 and `barrier` from 3.7 on.
cta_barrier = gl.thread_barrier if hasattr(gl, "thread_barrier") else gl.barrier
BYTE_SIGN_BITS = gl.constexpr(-0x7F7F7F80)  # 0x80808080 as an int32


@gluon.jit
def int8_lanes(v):
    """int32 [..., ] -> int8 [..., 2, 2] of its four bytes (byte i at index [i // 2, i % 2]); where
    the four land in one register (the MMA fragments), LLVM folds the extract/insert pairs away."""
    b0 = v.to(gl.int8)
    b1 = (v >> 8).to(gl.int8)
    b2 = (v >> 16).to(gl.int8)
    b3 = (v >> 24).to(gl.int8)
    return gl.join(gl.join(b0, b2), gl.join(b1, b3))


@gluon.jit
def load_weights(qw32, s1_ptr, zs1_ptr, w_off, p_off, kt, k_last, GPT: gl.constexpr):
    """Code words and level-1 parameters of K tile kt (clamped to the split's last tile: a prefetch
    past the end re-reads a cached tile and is never used)."""
    kt = gl.minimum(kt, k_last - 1)
    words = gl.load(qw32 + w_off + kt * (GPT * 16))
    s1 = gl.load(s1_ptr + p_off + kt * GPT)
    zs1 = gl.load(zs1_ptr + p_off + kt * GPT)
    return words, s1, zs1


@gluon.jit
def load_x(x32, x_off, kt, k_last, GPT: gl.constexpr):
    return gl.load(x32 + x_off + gl.minimum(kt, k_last - 1) * (GPT * 32))


@gluon.jit
def pdl_launch_dependents():
    gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def pdl_wait():
    gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False, pack=1)


@gluon.jit
def x_word_offsets(pid_m, M, stride_xm, BM: gl.constexpr, GPT: gl.constexpr, x_l: gl.constexpr):
    """Offsets of the activation words [BM, GPT, 4 (t), 4 (c), 2 (h)] of a K tile: int32 word
    32 * group + 8t + 2c + h of each token's row (tokens past M re-read row M - 1)."""
    x4_l: gl.constexpr = gl.SliceLayout(4, x_l)
    xm = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, x4_l))))
    xg = gl.arange(0, GPT, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, x4_l))))
    xt = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, x4_l))))
    xc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, x4_l))))
    xh = gl.arange(0, 2, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, x_l)))))
    return ((gl.minimum(xm, M - 1) * (stride_xm // 4))[:, None, None, None, None]
            + (xg * 32)[None, :, None, None, None] + (xt * 8)[None, None, :, None, None]
            + (xc * 2)[None, None, None, :, None] + xh[None, None, None, None, :])


@gluon.jit
def splitk_reduce(acc, ws_ptr, cnt_ptr, offs, mask, pid_m, pid_n, SPLIT_K: gl.constexpr):
    """Split-K as in the Triton templates: relaxed atomic adds of this program's partial tile into
    the workspace, one acquire-release ticket per output tile; the program taking the last ticket
    gets the sum (re-zeroing the workspace and the ticket for the next launch). Returns (the sum
    in the last program, whether this program is the last)."""
    gl.atomic_add(ws_ptr + offs, acc, mask=mask, sem="relaxed")
    cta_barrier()
    tile_id = pid_m * gl.num_programs(0) + pid_n
    is_last = gl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel") == SPLIT_K - 1
    if is_last:
        acc = gl.atomic_xchg(ws_ptr + offs, gl.zeros_like(acc), mask=mask, sem="relaxed")
        acc = gl.where(mask, acc, 0)
        gl.store(cnt_ptr + tile_id, 0)
    return acc, is_last


@gluon.jit
def finish_tile(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, pid_m, pid_n,
                HAS_BIAS: gl.constexpr, RAW: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr,
                SPLIT_K: gl.constexpr, acc_l: gl.constexpr, o_l: gl.constexpr):
    """Epilogue of an INT32 [BN, BM] accumulator tile in layout acc_l: the split-K reduction, then
    (unless RAW) y = (acc * s_x[m]) * s0[n] (+ bias[n]) stored as out[m, n] through o_l."""
    on = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, acc_l))
    om = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, acc_l))
    mask = (on[:, None] < N) & (om[None, :] < M)
    # The scales (and bias) are loaded before the split-K reduction: their latency overlaps its atomics.
    sx = gl.load(sx_ptr + om, mask=om < M, other=0.0)
    s0 = gl.load(s0_ptr + on, mask=on < N, other=0.0).to(gl.float32)
    if HAS_BIAS:
        bias = gl.load(bias_ptr + on, mask=on < N, other=0.0).to(gl.float32)
    is_last = True
    if SPLIT_K > 1:
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, om[None, :] * N + on[:, None], mask, pid_m, pid_n, SPLIT_K)
    if is_last:
        if RAW:
            y = acc
        else:
            y = (acc.to(gl.float32) * sx[None, :]) * s0[:, None]  # the reference's order of products
            if HAS_BIAS:
                y = y + bias[:, None]
        y = gl.convert_layout(y.to(out_ptr.dtype.element_ty), o_l)  # channels contiguous per thread
        sn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, o_l))
        sm = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, o_l))
        gl.store(out_ptr + sm[None, :] * N + sn[:, None], y, mask=(sn[:, None] < N) & (sm[None, :] < M))


@gluon.jit
def mma_tile(acc, words, s1, zs1, xw, BN: gl.constexpr, BM: gl.constexpr, GPT: gl.constexpr,
             a_l: gl.constexpr, b_l: gl.constexpr):
    """acc += w8 . x^T over one K tile, in the permuted K order of the module docstring."""
    mul = s1.to(gl.int32)[:, :, None, None]
    add = ((128 - zs1.to(gl.int32)) * 0x01010101)[:, :, None, None]
    lo = ((words & 0x0F0F0F0F) * mul + add) ^ BYTE_SIGN_BITS  # h = 0
    hi = (((words >> 4) & 0x0F0F0F0F) * mul + add) ^ BYTE_SIGN_BITS  # h = 1
    w = gl.permute(gl.join(lo, hi), [0, 1, 2, 4, 3])  # [BN, group, c, h, t]
    a = gl.convert_layout(gl.reshape(int8_lanes(w), [BN, GPT * 128]), a_l)
    xv = gl.permute(xw, [0, 1, 3, 4, 2])  # [BM, group, c, h, t]
    x8 = gl.reshape(int8_lanes(xv), [BM, GPT * 128])
    b = gl.convert_layout(gl.permute(x8, [1, 0]), b_l)
    return mma_v2(a, b, acc)


@gluon.jit
def qlinear_mma_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KW, stride_xm, stride_w32,
    HAS_BIAS: gl.constexpr, RAW: gl.constexpr, BN: gl.constexpr, BM: gl.constexpr, GPT: gl.constexpr,
    SPLIT_K: gl.constexpr, WARPS: gl.constexpr, w_l: gl.constexpr, x_l: gl.constexpr, o_l: gl.constexpr,
    PDL: gl.constexpr = False,
):
    """grid = (cdiv(N, BN), SPLIT_K, cdiv(M, BM)); K = KW, a multiple of 128 * GPT; stride_xm a
    multiple of 4 (x read as int32 words); w_l, x_l, o_l from `layouts`."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
    p_l: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, w_l))
    pid_n = gl.program_id(0)
    pid_m = gl.program_id(2)
    n_groups = KW // GROUP
    per_split = gl.cdiv(n_groups // GPT, SPLIT_K)
    k_first = gl.program_id(1) * per_split
    k_last = gl.minimum(k_first + per_split, n_groups // GPT)

    # weight words [BN, group, c, t] = word 16 * group + 4t + c of the row's K tile
    rn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, w_l))))
    rg = gl.arange(0, GPT, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, w_l))))
    rc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, w_l))))
    rt = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, w_l))))
    w_off = ((rn % N)[:, None, None, None] * stride_w32 + rg[None, :, None, None] * 16
             + rc[None, None, :, None] + 4 * rt[None, None, None, :])
    pn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, p_l))
    pg = gl.arange(0, GPT, layout=gl.SliceLayout(0, p_l))
    p_off = (pn % N)[:, None] * n_groups + pg[None, :]
    x_off = x_word_offsets(pid_m, M, stride_xm, BM, GPT, x_l)
    qw32 = qw_ptr.to(gl.pointer_type(gl.int32))
    x32 = x_ptr.to(gl.pointer_type(gl.int32))

    if PDL:
        pdl_launch_dependents()
    # No earlier kernel writes the weights: the first tile is read before waiting for one.
    words, s1, zs1 = load_weights(qw32, s1_ptr, zs1_ptr, w_off, p_off, k_first, k_last, GPT)
    if PDL:
        pdl_wait()
    xw = load_x(x32, x_off, k_first, k_last, GPT)
    acc = gl.zeros([BN, BM], gl.int32, layout=mma)
    for kt in range(k_first, k_last):
        n_words, n_s1, n_zs1 = load_weights(qw32, s1_ptr, zs1_ptr, w_off, p_off, kt + 1, k_last, GPT)
        n_xw = load_x(x32, x_off, kt + 1, k_last, GPT)
        acc = mma_tile(acc, words, s1, zs1, xw, BN, BM, GPT, a_l, b_l)
        words, s1, zs1, xw = n_words, n_s1, n_zs1, n_xw

    finish_tile(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, M, N, pid_m, pid_n,
                HAS_BIAS, RAW, BN, BM, SPLIT_K, mma, o_l)


def _log2(v: int) -> int:
    r = int(math.log2(v))
    if 1 << r != v:
        raise ValueError(f"{v} is not a power of two")
    return r


def layouts(BN: int, BM: int, GPT: int, WARPS: int):
    """(w_l, x_l, o_l): the linear layouts of the weight-word tile [BN, GPT, 4 (c), 4 (t)], the
    activation-word tile [BM, GPT, 4 (t), 4 (c), 2 (h)] and the store tile [BN, BM].

    Lanes: t = lane % 4 and the row (token) within the 8-row block = lane // 4, as in the MMA
    fragments; registers: c first (the four words of a 16-byte load), then row + 8, the groups of the
    tile and the row repeats; warps: 16-row blocks (the activations are the same in every warp)."""
    if BN % (16 * WARPS) or BM % 8:
        raise ValueError(f"BN={BN} must be a multiple of 16 rows per warp ({WARPS} warps) and BM={BM} of 8 tokens")
    row_repeats = BN // (16 * WARPS)
    w_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1, 0], [0, 0, 2, 0], [8, 0, 0, 0]]
        + [[0, 1 << i, 0, 0] for i in range(_log2(GPT))]
        + [[16 * WARPS << i, 0, 0, 0] for i in range(_log2(row_repeats))],
        lane_bases=[[0, 0, 0, 1], [0, 0, 0, 2], [1, 0, 0, 0], [2, 0, 0, 0], [4, 0, 0, 0]],
        warp_bases=[[16 << i, 0, 0, 0] for i in range(_log2(WARPS))], block_bases=[], shape=[BN, GPT, 4, 4])
    x_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 0, 2, 0]]
        + [[0, 1 << i, 0, 0, 0] for i in range(_log2(GPT))]
        + [[8 << i, 0, 0, 0, 0] for i in range(_log2(BM // 8))],
        lane_bases=[[0, 0, 1, 0, 0], [0, 0, 2, 0, 0], [1, 0, 0, 0, 0], [2, 0, 0, 0, 0], [4, 0, 0, 0, 0]],
        warp_bases=[[0, 0, 0, 0, 0]] * _log2(WARPS), block_bases=[], shape=[BM, GPT, 4, 4, 2])
    vec = min(8, max(1, BN // 32))
    o_l = gl.BlockedLayout([vec, 1], [32, 1], [1, WARPS] if BM >= WARPS else [WARPS, 1], [0, 1])
    return w_l, x_l, o_l


def fragment_products(q, s1, zs1, x):
    """Plain-torch replay of the kernel's K permutation for one group of 16 rows and 8 tokens:
    q uint8 codes [16, 128], s1 / zs1 int [16], x int8 [8, 128], both in natural K order -> the
    int32 [16, 8] the MMAs sum, built only from what the lanes load: for lane quad t, K block c,
    nibble h and byte b, the A value of a row is decoded from word 4t + c of its nibble-split group
    (nibble h of byte b) and the B value of a token is its byte 32t + 8c + 4h + b. It equals
    (q * s1 - zs1) @ x^T exactly iff both sides name the same K position (tests/codegen/test_gluon_w4a8.py)."""
    return lane_products(q, s1, zs1, x, lambda t, c, h, b: 32 * t + 8 * c + 4 * h + b)


def lane_products(q, s1, zs1, x, column):
    """sum over the lane slots (t, c, h, b) of one group of A x B, int32 [rows, tokens]: A decoded as
    lane quad t loads it (word 4t + c of the row's nibble-split group, nibble h of byte b), B the
    tokens' byte column(t, c, h, b) of x [tokens, 128]. The replays of both W4A8 Gluon kernels."""
    import torch

    words = torch.zeros(q.shape[0], 16, dtype=torch.int64)  # nibble-split packing of each row's group
    for j in range(16):
        for b in range(4):
            words[:, j] |= (q[:, 8 * j + b].long() | (q[:, 8 * j + 4 + b].long() << 4)) << (8 * b)
    out = torch.zeros(q.shape[0], x.shape[0], dtype=torch.int64)
    for t in range(4):
        for c in range(4):
            for h in range(2):
                for b in range(4):
                    a = ((words[:, 4 * t + c] >> (8 * b + 4 * h)) & 0xF) * s1.long() - zs1.long()
                    out += a[:, None] * x[:, column(t, c, h, b)].long()[None, :]
    return out.to(torch.int32)

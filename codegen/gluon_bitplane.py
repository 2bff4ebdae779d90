"""Bit-plane wNaM g128 decode GEMM in Gluon: plane words loaded from global memory straight into the
registers of `mma.sync` (the `MMA_REG` tile configs of the bit-plane `unpack` realization;
docs/bitplane.md, Kernels, "(a) with MMA_REG tiles", and Speed, "Sixth round").

Same arithmetic as realization (a) (codegen/templates/qlinear_bitplane_unpack.py; the truth for both
is `BitplaneWeight.linear`): for each group of 128 columns, acc[n, m] = sum_k (v[n, k] - zs[n, g])
x[m, k] exactly in INT32 on the INT8 tensor cores, y = (sum_g acc_g * s[n, g]) * s_x[m] (+ bias[n]),
groups added in ascending order in float32. P = 2..7 weight planes (codes fit a signed byte); any
activation width up to 8 bits (x arrives as int8 from lowc::quantize_act).

The register mapping is the one of codegen/gluon_w4a8_g128.py: K is permuted inside each 128-column
group for both operands, so that the m16n8k32 A fragment of lane (g, t) = (lane // 4, lane % 4) for
K block c and half h (logical K 32c + 16h + 4t + b) is the weight at column 32t + 8c + 4h + b, and
the B fragment the activation at the same column. In the stored bit order (lowc.quant.bitplane,
`BIT_ORDER`) plane word t of a group holds columns 32t .. 32t + 31, and register i = 2c + h of that
word, q_i = rotr(OR_j (word_j & (0x01010101 << ((i + j) % 8))), i) (sign plane complemented), has
in byte lane b the code q = v + 2^(P-1) of column 32t + 4i + b: exactly the A register of (c, h).
So each lane reads one 4-byte word per plane, row and group, and builds its A fragments with P
masked ORs and one funnel shift per four weights; no shuffles, no shared memory.

The zero: q - c with c = zs + 2^(P-1) per row and group. `ZERO_MMA` adds it on the tensor cores, a
second MMA chain per group whose A operand is -c in every byte (sum_k -c x[m, k]); otherwise it is
folded into the bytes as the W4A8 kernel does (q + 128 - c lies in 1..255, XOR 0x80 gives the int8
byte of q - c), two more integer operations per four weights.

Per program: BN = 16 * WARPS * repeats output channels x BM tokens; the K tiles of GPT groups of a
split; one INT32 accumulator per group (a fresh MMA chain), scaled by s[n, g] into a float32 sum.
Split-K adds the float partial sums with relaxed atomics into a workspace, and the program that takes
the last ticket (acquire-release) applies s_x and the bias and re-zeroes the workspace. RAW stores
each group's INT32 accumulator [M, NG, N] instead (no reduction: every group has one program).
Register double buffering and PDL as in the W4A8 kernel (the first weight tile is read before
`griddepcontrol.wait`).

Gluon has no interpreter: the CPU tests replay the lane mapping in plain torch (`fragment_products`)
and compile the kernel for sm_90; the GPU tests check it against the reference bit for bit (RAW).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from lowc.codegen.gluon_w4a8_g128 import (
    BYTE_SIGN_BITS,
    _log2,
    int8_lanes,
    layouts as w4a8_layouts,
    load_x,
    pdl_launch_dependents,
    pdl_wait,
    splitk_reduce,
    x_word_offsets,
)

GROUP = gl.constexpr(128)
MAX_PLANES = 7  # q = v + 2^(P-1) must fit a signed byte of the MMA's A operand
BIT_LANES = gl.constexpr(0x01010101)


@gluon.jit
def _or(a, b):
    return a | b


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def load_planes(planes_u32, scale_ptr, zero_ptr, w_off, w_live, p_off, kt, k_last, GPT: gl.constexpr,
                Q_OFFSET: gl.constexpr):
    """Plane words [BN, GPT, PP, 4] of K tile kt (planes >= P masked off: never read), the tile's
    scales (float32) and c = zs + 2^(P-1) [BN, GPT]. A prefetch past the split's end re-reads its
    last tile and is never used."""
    kt = gl.minimum(kt, k_last - 1)
    words = gl.load(planes_u32 + w_off + kt * (GPT * 4), mask=w_live, other=0)
    s = gl.load(scale_ptr + p_off + kt * GPT).to(gl.float32)
    c = gl.load(zero_ptr + p_off + kt * GPT).to(gl.int32) + Q_OFFSET
    return words, s, c


@gluon.jit
def plane_registers(words, P: gl.constexpr, PP: gl.constexpr, w_l: gl.constexpr):
    """[BN, GPT, PP, 4 (t)] plane words -> [BN, GPT, 8 (i), 4 (t)] uint32 registers q_i (module docstring)."""
    rj = gl.arange(0, PP, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, gl.SliceLayout(4, w_l)))))
    ri = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(4, w_l)))))
    j5 = rj[None, None, :, None, None]
    i5 = ri[None, None, None, :, None]
    mask = gl.where(j5 < P, BIT_LANES << ((i5 + j5) % 8), 0).to(gl.uint32, bitcast=True)
    flip = gl.where(j5 == P - 1, -1, 0).to(gl.uint32, bitcast=True)  # offset binary: complement the sign plane
    masked = (words[:, :, :, None, :] ^ flip) & mask
    q = gl.reduce(masked, 2, _or)  # [BN, GPT, 8, 4]
    ri4 = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, gl.SliceLayout(2, w_l)))))
    sh = gl.zeros_like(q) + ri4[None, None, :, None].to(gl.uint32)
    # rotate right by i: one funnel shift, opaque to LLVM, which otherwise splits a rotation whose
    # bytes are repacked for the MMA into per-byte shifts and byte permutes
    return gl.inline_asm_elementwise("shf.r.wrap.b32 $0, $1, $1, $2;", "=r,r,r", [q, sh], dtype=gl.uint32,
                                     is_pure=True, pack=1)


@gluon.jit
def pick_group(t, gi: gl.constexpr, axis: gl.constexpr, rg):
    """Slice gi of a register dimension (a select of registers once unrolled: no data movement).
    gl.reduce with this module's own combine function rather than gl.sum, whose jitted body the
    CPU suite's TRITON_INTERPRET=1 turns into an interpreter function that Gluon cannot compile."""
    return gl.reduce(gl.where(rg == gi, t, 0), axis, _add)


@gluon.jit
def tile_update(y, words, s, c, xw, kt, out_ptr, M, N, NG, P: gl.constexpr, PP: gl.constexpr, BN: gl.constexpr,
                BM: gl.constexpr, GPT: gl.constexpr, ZERO_MMA: gl.constexpr, RAW: gl.constexpr,
                w_l: gl.constexpr, x_l: gl.constexpr, mma: gl.constexpr, pid_n, pid_m):
    """y += sum over the tile's groups of acc_g * s_g (RAW: store acc_g), groups in ascending order."""
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=4)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=4)
    s4: gl.constexpr = gl.SliceLayout(2, w_l)  # [BN, GPT, 8, 4]
    sc: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, s4))  # [BN, GPT]
    q = plane_registers(words, P, PP, w_l).to(gl.int32, bitcast=True)
    cq = c[:, :, None, None]
    if ZERO_MMA:
        zq = gl.zeros_like(q) + ((0 - cq) & 0xFF) * 0x01010101
    else:
        q = (q + (128 - cq) * 0x01010101) ^ BYTE_SIGN_BITS
    rg_w = gl.arange(0, GPT, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, s4))))[None, :, None, None]
    rg_s = gl.arange(0, GPT, layout=gl.SliceLayout(0, sc))[None, :]
    rg_x = gl.arange(0, GPT, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(4, x_l)))))
    rg_x = rg_x[None, :, None, None, None]
    for gi in gl.static_range(GPT):
        a = gl.convert_layout(gl.reshape(int8_lanes(pick_group(q, gi, 1, rg_w)), [BN, GROUP]), a_l)
        xg = gl.permute(pick_group(xw, gi, 1, rg_x), [0, 2, 3, 1])  # [BM, c, h, t]
        b = gl.convert_layout(gl.permute(gl.reshape(int8_lanes(xg), [BM, GROUP]), [1, 0]), b_l)
        acc = mma_v2(a, b, gl.zeros([BN, BM], gl.int32, layout=mma))
        if ZERO_MMA:
            az = gl.convert_layout(gl.reshape(int8_lanes(pick_group(zq, gi, 1, rg_w)), [BN, GROUP]), a_l)
            acc = mma_v2(az, b, acc)
        if RAW:
            on = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, mma))
            om = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
            g = kt * GPT + gi
            gl.store(out_ptr + (om[None, :] * NG + g) * N + on[:, None], acc,
                     mask=(on[:, None] < N) & (om[None, :] < M))
        else:
            sg = gl.convert_layout(pick_group(s, gi, 1, rg_s), gl.SliceLayout(1, mma))
            y = y + acc.to(gl.float32) * sg[:, None]
    return y


@gluon.jit
def qlinear_bitplane_mma_kernel(
    x_ptr, sx_ptr, planes_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KW, stride_xm, plane_stride,
    P: gl.constexpr, PP: gl.constexpr, HAS_BIAS: gl.constexpr, RAW: gl.constexpr, BN: gl.constexpr,
    BM: gl.constexpr, GPT: gl.constexpr, SPLIT_K: gl.constexpr, WARPS: gl.constexpr, ZERO_MMA: gl.constexpr,
    w_l: gl.constexpr, x_l: gl.constexpr, o_l: gl.constexpr, PDL: gl.constexpr = False,
):
    """grid = (cdiv(N, BN), SPLIT_K, cdiv(M, BM)); K = KW, a multiple of 128 * GPT; stride_xm a
    multiple of 4 (x read as int32 words); plane_stride = N * KW / 32 words; w_l, x_l, o_l from
    `layouts`. RAW: out is int32 [M, KW / 128, N] and SPLIT_K's reduction is not used."""
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[WARPS, 1], instr_shape=[16, 8])
    wl4: gl.constexpr = gl.SliceLayout(3, w_l)  # [BN, GPT, PP, 4]
    sc: gl.constexpr = gl.SliceLayout(2, gl.SliceLayout(3, gl.SliceLayout(2, w_l)))  # [BN, GPT], as tile_update's
    Q_OFFSET: gl.constexpr = 1 << (P - 1)
    pid_n = gl.program_id(0)
    pid_m = gl.program_id(2)
    NG = KW // GROUP
    per_split = gl.cdiv(NG // GPT, SPLIT_K)
    k_first = gl.program_id(1) * per_split
    k_last = gl.minimum(k_first + per_split, NG // GPT)

    # plane words [BN, GPT, PP, t] = word 4 * group + t of plane j in the row's K tile
    rn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, wl4))))
    rg = gl.arange(0, GPT, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, wl4))))
    rj = gl.arange(0, PP, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, wl4))))
    rt = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, wl4))))
    w_off = ((rn % N)[:, None, None, None] * (KW // 32) + rg[None, :, None, None] * 4
             + (gl.minimum(rj, P - 1) * plane_stride)[None, None, :, None] + rt[None, None, None, :])
    w_live = (rj < P)[None, None, :, None]
    pn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, sc))
    pg = gl.arange(0, GPT, layout=gl.SliceLayout(0, sc))
    p_off = (pn % N)[:, None] * NG + pg[None, :]
    x_off = x_word_offsets(pid_m, M, stride_xm, BM, GPT, x_l)
    planes_u32 = planes_ptr.to(gl.pointer_type(gl.uint32))
    x32 = x_ptr.to(gl.pointer_type(gl.int32))

    if PDL:
        pdl_launch_dependents()
    # No earlier kernel writes the weights: the first tile is read before waiting for one.
    words, s, c = load_planes(planes_u32, scale_ptr, zero_ptr, w_off, w_live, p_off, k_first, k_last, GPT, Q_OFFSET)
    if PDL:
        pdl_wait()
    xw = load_x(x32, x_off, k_first, k_last, GPT)
    y = gl.zeros([BN, BM], gl.float32, layout=mma)
    for kt in range(k_first, k_last):
        n_words, n_s, n_c = load_planes(planes_u32, scale_ptr, zero_ptr, w_off, w_live, p_off, kt + 1, k_last,
                                        GPT, Q_OFFSET)
        n_xw = load_x(x32, x_off, kt + 1, k_last, GPT)
        y = tile_update(y, words, s, c, xw, kt, out_ptr, M, N, NG, P, PP, BN, BM, GPT, ZERO_MMA, RAW,
                        w_l, x_l, mma, pid_n, pid_m)
        words, s, c, xw = n_words, n_s, n_c, n_xw

    if not RAW:
        on = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, mma))
        om = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, mma))
        mask = (on[:, None] < N) & (om[None, :] < M)
        is_last = True
        if SPLIT_K > 1:
            y, is_last = splitk_reduce(y, ws_ptr, cnt_ptr, om[None, :] * N + on[:, None], mask, pid_m, pid_n, SPLIT_K)
        if is_last:
            sx = gl.load(sx_ptr + om, mask=om < M, other=0.0)
            yo = y * sx[None, :]
            if HAS_BIAS:
                yo = yo + gl.load(bias_ptr + on, mask=on < N, other=0.0).to(gl.float32)[:, None]
            yo = gl.convert_layout(yo.to(out_ptr.dtype.element_ty), o_l)  # channels contiguous per thread
            sn = pid_n * BN + gl.arange(0, BN, layout=gl.SliceLayout(1, o_l))
            sm = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(0, o_l))
            gl.store(out_ptr + sm[None, :] * N + sn[:, None], yo, mask=(sn[:, None] < N) & (sm[None, :] < M))


def padded_planes(p: int) -> int:
    """The plane dimension of the word tile: P rounded up to a power of two (the extra planes are
    masked loads that never happen)."""
    return 1 << (p - 1).bit_length()


def layouts(BN: int, BM: int, GPT: int, WARPS: int, P: int):
    """(w_l, x_l, o_l): the linear layout of the plane-register tile [BN, GPT, PP, 8 (i), 4 (t)]
    (lanes: t and the row within the 8-row block, as in the MMA fragments; registers: i, row + 8, the
    planes, the groups and the row repeats; warps: 16-row blocks), and the activation-word and store
    layouts of the W4A8 kernel."""
    if not 2 <= P <= MAX_PLANES:
        raise ValueError(f"the register-fragment kernel takes 2..{MAX_PLANES} weight planes, got {P}")
    _, x_l, o_l = w4a8_layouts(BN, BM, GPT, WARPS)
    row_repeats = BN // (16 * WARPS)
    pp = padded_planes(P)
    w_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 0, 1, 0], [0, 0, 0, 2, 0], [0, 0, 0, 4, 0], [8, 0, 0, 0, 0]]
        + [[0, 0, 1 << i, 0, 0] for i in range(_log2(pp))]
        + [[0, 1 << i, 0, 0, 0] for i in range(_log2(GPT))]
        + [[16 * WARPS << i, 0, 0, 0, 0] for i in range(_log2(row_repeats))],
        lane_bases=[[0, 0, 0, 0, 1], [0, 0, 0, 0, 2], [1, 0, 0, 0, 0], [2, 0, 0, 0, 0], [4, 0, 0, 0, 0]],
        warp_bases=[[16 << i, 0, 0, 0, 0] for i in range(_log2(WARPS))], block_bases=[], shape=[BN, GPT, pp, 8, 4])
    return w_l, x_l, o_l


def fragment_products(v, zs, x, p: int):
    """Plain-torch replay of the kernel's lane mapping for one group of 16 rows and 8 tokens: v signed
    P-bit codes [16, 128] and zs [16] (the stored form), x int8 [8, 128], natural K order -> the int32
    [16, 8] the MMAs sum, built only from what the lanes load: the rows' plane words packed by
    lowc.quant.bitplane.pack_planes; for lane quad t and register i = 2c + h, the A byte b is byte b
    of q_i of plane word t (the module docstring's formula) minus c, and the B value is the token's
    byte 32t + 8c + 4h + b. Equals (v - zs) @ x^T iff both name the same K position."""
    import torch

    from lowc.quant.bitplane import pack_planes

    words = pack_planes(v, p).view(torch.int32).long() & 0xFFFFFFFF  # [P, 16, 4]
    c = zs.long() + (1 << (p - 1))
    out = torch.zeros(v.shape[0], x.shape[0], dtype=torch.int64)
    for t in range(4):
        for i in range(8):
            reg = torch.zeros(v.shape[0], dtype=torch.int64)
            for j in range(p):
                w = words[j, :, t] ^ (0xFFFFFFFF if j == p - 1 else 0)
                reg |= w & ((0x01010101 << ((i + j) % 8)) & 0xFFFFFFFF)
            reg = ((reg >> i) | (reg << (32 - i))) & 0xFFFFFFFF if i else reg
            for b in range(4):
                a = ((reg >> (8 * b)) & 0xFF) - c
                out += a[:, None] * x[:, 32 * t + 4 * i + b].long()[None, :]
    return out.to(torch.int32)

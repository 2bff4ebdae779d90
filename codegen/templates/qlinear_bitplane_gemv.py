"""Bit-plane qlinear, realization (c): a CUDA-core GEMV for decode (M <= a few tokens), no tensor cores.

Same arithmetic as the other two realizations (lowc.quant.bitplane):
    part[n, m] = sum_{k in group} (v[n, k] - zs[n, g]) * x[m, k]        exact int32 per group
    y[n, m]    = (sum_g part * s[n, g]) * s_x[m]      float32; tiles in ascending order, a tile's groups as a tree
Program (pid 0) = BN output channels x BM tokens (pid_m = pid // cdiv(N, BN)), split pid 1 of
SPLIT_K over the K tiles; a K tile is GPT slices. A slice is one group (GROUP_SIZE > 0) or, per
channel (GROUP_SIZE == 0), PC_SLICE columns of the single group. A K tile is handled whole as
[BN, GPT, S] tensors (S = slice / 32 plane words per plane and row), so its plane words are one
load per plane that Triton spreads over the threads in 16-byte pieces along each row (neighbouring
threads read neighbouring pieces: whole sectors), and every x word is read once per thread and token.

Plane bits as byte lanes. The stored bit order (lowc.quant.bitplane) puts column 4i + r of a
32-column block at bit (8r + i + j) mod 32 of plane j's word, i.e. "lane order" rotated left by j.
Register i (i = 0..7) of the block is built as
    t_i = OR_j (word_j & (0x01010101 << ((i + j) % 8))),   q_i = t_i rotated right by i
(the sign plane complemented): one masked OR per plane and register (a LOP3) and one funnel shift per
register. Byte lane r of q_i is then q = v + 2**(P-1) of column 4i + r (offset binary: q =
sum_{j<P-1} 2^j b_j + 2^(P-1) (1 - b_{P-1}) in 0 .. 2**P - 1); the planes' masked bits never overlap,
so nothing carries.
Activations to match, with no permutation: register i of x is the natural int32 word i of the block
(columns 4i..4i+3), read as the halves of four int64 words per block and token.
Dot: one `dp4a.u32.s32` per register and token (unsigned q lanes times signed x lanes, chained), so
    qx[n, m] = sum_{k in slice} q[n, k] x[m, k],    xs[m] = sum_{k in slice} x[m, k]  (dp4a with 1s)
    part     = qx - (zs[n, g] + 2**(P-1)) * xs = sum_k (v - zs) x                   exact in int32
for every P in 2..8 (q <= 255 fits an unsigned lane). The interpreter runs the same dataflow with
`dp4a` written as masks and shifts (`_dp4a_emulated` of common.py). Per channel the parts of all
slices add in one INT32 accumulator (split-K: exact INT32 reduction), scaled once at the end.
RAW_ACCUMULATOR: store the exact per-group parts, out[m, g, n] (the exactness test).

K loop: `tl.range(..., num_stages=STAGES)`. With STAGES > 1 Triton software-pipelines the loop: the
plane words, x words and group parameters of the next STAGES - 1 tiles are copied to shared memory
(`cp.async`) while the current tile is computed, so a program's tiles do not each wait a full memory
latency (Nsight Compute on the unpipelined loop: long-scoreboard stalls were 57% of the cycles).

x reading: X_WORDS (K, the row stride and the base address multiples of 8 bytes) loads int64 words;
otherwise each int32 word is assembled from four byte loads (odd K), masked to zero past K.
Weights: planes uint32 [W_BITS, N, KW/32], scale fp16 [N, NG], zero int8 [N, NG], as stored.
"""
# --- template body ---

BIT_LANES = tl.constexpr(0x01010101)  # bit 0 of every byte lane
Q_OFFSET = tl.constexpr(2 ** (W_BITS.value - 1))  # q = v + Q_OFFSET (sign plane complemented)
PC_SLICE = tl.constexpr(128)  # columns per slice of the single per-channel group


@triton.jit
def dp4a(a, b, c, INTERPRETED: tl.constexpr):
    """c + sum over the four byte lanes of unsigned a times signed b (`dp4a.u32.s32`), int32."""
    if INTERPRETED:
        return c + _dp4a_emulated(a, b)
    else:
        return tl.inline_asm_elementwise(asm="dp4a.u32.s32 $0, $1, $2, $3;", constraints="=r,r,r,r",
                                         args=[a, b, c], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def load_x_pair(x_row, col, K, p: tl.constexpr, X_WORDS: tl.constexpr, EVEN_K: tl.constexpr):
    """(word 2p, word 2p + 1) as int32: columns col + 8p .. col + 8p + 7 of each 32-column block of
    one token's row x_row (int8 pointer; col: block starts of any shape, multiples of 32), zero past K."""
    if X_WORDS:
        # int64 index col / 8 + p: the constant p folds into the load's address offset.
        ptrs = x_row.to(tl.pointer_type(tl.int64)) + (col // 8 + p)
        if EVEN_K:
            d = tl.load(ptrs)
        else:
            d = tl.load(ptrs, mask=col + 8 * p < K, other=0)
        return d.to(tl.int32), (d >> 32).to(tl.int32)
    else:
        lo = tl.zeros(col.shape, tl.int32)
        hi = tl.zeros(col.shape, tl.int32)
        for l in tl.static_range(4):
            c = col + 8 * p + l
            lo |= (tl.load(x_row + c, mask=c < K, other=0).to(tl.int32) & 0xFF) << (8 * l)
            hi |= (tl.load(x_row + c + 4, mask=c + 4 < K, other=0).to(tl.int32) & 0xFF) << (8 * l)
        return lo, hi


@triton.jit
def tile_dots(q0, q1, q2, q3, q4, q5, q6, q7, x_row, col, K,
              X_WORDS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr):
    """(qx [BN, GPT] = sum_k q x per slice, xs [GPT] = sum_k x per slice) over one K tile for one
    token; col [GPT, S]: the first column of every 32-column block. Register i of the planes meets x
    word i (columns 4i..4i+3) of its block."""
    x0, x1 = load_x_pair(x_row, col, K, 0, X_WORDS, EVEN_K)
    x2, x3 = load_x_pair(x_row, col, K, 1, X_WORDS, EVEN_K)
    x4, x5 = load_x_pair(x_row, col, K, 2, X_WORDS, EVEN_K)
    x6, x7 = load_x_pair(x_row, col, K, 3, X_WORDS, EVEN_K)
    acc = dp4a(q0, x0[None, :, :], tl.zeros(q0.shape, tl.int32), INTERPRETED)
    acc = dp4a(q1, x1[None, :, :], acc, INTERPRETED)
    acc = dp4a(q2, x2[None, :, :], acc, INTERPRETED)
    acc = dp4a(q3, x3[None, :, :], acc, INTERPRETED)
    acc = dp4a(q4, x4[None, :, :], acc, INTERPRETED)
    acc = dp4a(q5, x5[None, :, :], acc, INTERPRETED)
    acc = dp4a(q6, x6[None, :, :], acc, INTERPRETED)
    acc = dp4a(q7, x7[None, :, :], acc, INTERPRETED)
    ones = tl.full(col.shape, BIT_LANES, tl.int32)
    xs = dp4a(ones, x0, tl.zeros(col.shape, tl.int32), INTERPRETED)
    xs = dp4a(ones, x1, xs, INTERPRETED)
    xs = dp4a(ones, x2, xs, INTERPRETED)
    xs = dp4a(ones, x3, xs, INTERPRETED)
    xs = dp4a(ones, x4, xs, INTERPRETED)
    xs = dp4a(ones, x5, xs, INTERPRETED)
    xs = dp4a(ones, x6, xs, INTERPRETED)
    xs = dp4a(ones, x7, xs, INTERPRETED)
    return tl.sum(acc, axis=2), tl.sum(xs, axis=1)


@triton.jit
def finish_tile(y, sx_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, rn, rm, rn_ld, M, N,
                HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
    """Split-K reduction of y [BN, BM] (per group: float32 sums of the splits; per channel: exact INT32),
    then out = y * s_x (per channel: acc * s[n] * s_x), or the raw per-channel accumulator."""
    if SPLIT_K > 1:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        y, is_last = splitk_reduce(y, ws_ptr, cnt_ptr, tl.program_id(0), offs, mask, SPLIT_K)
    else:
        is_last = True
    if is_last:
        if GROUP_SIZE == 0 and RAW_ACCUMULATOR:
            store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, False)
        else:
            if GROUP_SIZE == 0:
                yf = y.to(tl.float32) * tl.load(scale_ptr + rn_ld).to(tl.float32)[:, None]
            else:
                yf = y
            sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
            store_tile(out_ptr, yf * sx[None, :], rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, planes_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, KW32, stride_xm,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr, X_WORDS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, STAGES: tl.constexpr = 1,
    PDL: tl.constexpr = False,
):
    grid_dependency_wait(PDL)  # PDL: launched as a programmatic dependent (runtime/pdl.py)
    G: tl.constexpr = GROUP_SIZE if GROUP_SIZE > 0 else PC_SLICE  # columns per slice
    S: tl.constexpr = G // 32  # plane words per slice and row
    GPT: tl.constexpr = BK // G
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, 1)
    rn = pid_n * BN + tl.arange(0, BN)
    rn_ld = rn % N
    rm = pid_m * BM + tl.arange(0, BM)
    rg = tl.arange(0, GPT)
    rs = tl.arange(0, S)
    if GROUP_SIZE > 0:
        NG = KW // GROUP_SIZE
        y = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        NG = 1
        y = tl.zeros((BN, BM), dtype=tl.int32)
        c = tl.load(zero_ptr + rn_ld).to(tl.int32)[:, None] + Q_OFFSET
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    plane_rows = planes_ptr + rn_ld[:, None, None] * KW32
    for kt in tl.range(k_first, k_last, num_stages=STAGES):
        # The whole K tile at once: [BN, GPT, S] plane words, contiguous along (GPT, S) in each row, so
        # neighbouring threads read neighbouring 16-byte pieces of a row (whole 32-byte sectors).
        g = kt * GPT + rg
        w_idx = g[:, None] * S + rs[None, :]
        # Plane registers q_i (i = 0..7): four byte lanes of q = v + 2^(P-1), columns 4i..4i+3.
        q0 = tl.zeros((BN, GPT, S), tl.uint32)
        q1 = tl.zeros((BN, GPT, S), tl.uint32)
        q2 = tl.zeros((BN, GPT, S), tl.uint32)
        q3 = tl.zeros((BN, GPT, S), tl.uint32)
        q4 = tl.zeros((BN, GPT, S), tl.uint32)
        q5 = tl.zeros((BN, GPT, S), tl.uint32)
        q6 = tl.zeros((BN, GPT, S), tl.uint32)
        q7 = tl.zeros((BN, GPT, S), tl.uint32)
        for j in tl.static_range(W_BITS):
            ptrs = plane_rows + j * N * KW32 + w_idx[None, :, :]
            if EVEN_K:
                words = tl.load(ptrs)
            else:
                words = tl.load(ptrs, mask=w_idx[None, :, :] < KW32, other=0)
            if j == W_BITS - 1:
                words = ~words  # offset binary: q's top bit is the complement of the sign bit
            q0, q1, q2, q3, q4, q5, q6, q7 = or_plane_registers(q0, q1, q2, q3, q4, q5, q6, q7, words, j)
        q0 = q0.to(tl.int32, bitcast=True)
        q1 = rotate_right(q1, 1).to(tl.int32, bitcast=True)
        q2 = rotate_right(q2, 2).to(tl.int32, bitcast=True)
        q3 = rotate_right(q3, 3).to(tl.int32, bitcast=True)
        q4 = rotate_right(q4, 4).to(tl.int32, bitcast=True)
        q5 = rotate_right(q5, 5).to(tl.int32, bitcast=True)
        q6 = rotate_right(q6, 6).to(tl.int32, bitcast=True)
        q7 = rotate_right(q7, 7).to(tl.int32, bitcast=True)
        if GROUP_SIZE > 0:
            p_idx = rn_ld[:, None] * NG + g[None, :]
            in_range = (rn_ld[:, None] * 0 + g[None, :]) < NG
            c = tl.load(zero_ptr + p_idx, mask=in_range, other=0).to(tl.int32) + Q_OFFSET
            s = tl.load(scale_ptr + p_idx, mask=in_range, other=0.0).to(tl.float32)
        col = g[:, None] * G + 32 * rs[None, :]
        for mi in tl.static_range(BM):
            row = tl.minimum(pid_m * BM + mi, M - 1)
            qx, xs = tile_dots(q0, q1, q2, q3, q4, q5, q6, q7, x_ptr + row * stride_xm, col, K,
                               X_WORDS, EVEN_K, INTERPRETED)
            part = qx - c * xs[None, :]  # [BN, GPT]: exact per slice
            if GROUP_SIZE > 0 and RAW_ACCUMULATOR:
                live = (rn[:, None] < N) & ((rn[:, None] * 0 + pid_m * BM + mi) < M) & in_range
                tl.store(out_ptr + (row * NG + g[None, :]) * N + rn[:, None], part, mask=live)
            elif GROUP_SIZE > 0:
                # The tile's groups are added as a tree (one reduction across the threads that hold
                # them; group by group would cost a cross-thread reduction per group), so the float
                # output equals the reference's ascending sum to rounding, not bit for bit.
                t = tl.sum(part.to(tl.float32) * s, axis=1)
                y += tl.where(tl.arange(0, BM)[None, :] == mi, t[:, None], 0.0)
            else:
                y += tl.where(tl.arange(0, BM)[None, :] == mi, tl.sum(part, axis=1)[:, None], 0)
    if GROUP_SIZE == 0 or not RAW_ACCUMULATOR:
        finish_tile(y, sx_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, rn, rm, rn_ld, M, N, HAS_BIAS, SPLIT_K)


def reference(x, x_scale, weight, bias, out_dtype):
    """The plain-torch truth: lowc.quant.bitplane's direct integer GEMM (RAW_ACCUMULATOR: its exact
    per-group INT32 accumulators [M, NG, N]), else its scaled float output."""
    from lowc.quant import weight_from_tensors

    w = weight_from_tensors(FORMAT, weight, x.shape[-1])
    if RAW_ACCUMULATOR.value:
        return w.accumulators(x)
    return w.linear(x, x_scale, bias, out_dtype)

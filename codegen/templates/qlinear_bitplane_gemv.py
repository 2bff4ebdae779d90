"""Bit-plane qlinear, realization (c): a CUDA-core GEMV for decode (M <= a few tokens), no tensor cores.

Same arithmetic as the other two realizations (lowc.quant.bitplane):
    part[n, m] = sum_{k in group} (v[n, k] - zs[n, g]) * x[m, k]        exact int32 per group
    y[n, m]    = (sum_g part * s[n, g]) * s_x[m]                        float32, g ascending
Program (pid 0) = BN output channels x BM tokens (pid_m = pid // cdiv(N, BN)), split pid 1 of
SPLIT_K over the K tiles; a K tile is GPT slices, unrolled. A slice is one group (GROUP_SIZE > 0)
or, per channel (GROUP_SIZE == 0), PC_SLICE columns of the single group. Each thread holds whole
slices of its rows: S = slice / 32 plane words per plane and row (16-byte loads at S = 4).

Plane bits as byte lanes. Register i (i = 0..7) of a 32-column plane word w is
    (w >> i) & 0x01010101:  lane r = bit 8r + i = column 8r + i  (0 or 1)
one shift and one mask, the same for every plane: plane j's bits go to bit j of the lanes (shift by
i - j), and OR-ing the planes gives four byte lanes of q = v + 2**(P-1) (offset binary: the sign
plane is complemented, so q = sum_{j<P-1} 2^j b_j + 2^(P-1) (1 - b_{P-1}) in 0 .. 2**P - 1). The
planes' masked bits never overlap, so no lane carries.
Activations to match. x is read as natural int32 words X_t (t = 0..7: columns 4t..4t+3 of the
32-column block), and register i of x must hold columns i, 8+i, 16+i, 24+i: that is a 4x4 byte
transpose of (X_h, X_2+h, X_4+h, X_6+h) for h = 0, 1 (`byte_transpose`: eight `prmt` on the GPU).
It is done once per token and slice by every thread and shared by the thread's rows.
Dot: one `dp4a.u32.s32` per register and token (unsigned q lanes times signed x lanes, chained), so
    qx[n, m] = sum_{k in slice} q[n, k] x[m, k],    xs[m] = sum_{k in slice} x[m, k]  (dp4a with 1s)
    part     = qx - (zs[n, g] + 2**(P-1)) * xs = sum_k (v - zs) x                   exact in int32
for every P in 2..8 (q <= 255 fits an unsigned lane). The interpreter runs the same dataflow with
`prmt`/`dp4a` written as masks and shifts (`_dp4a_emulated` of common.py). Per channel the parts of
all slices add in one INT32 accumulator (split-K: exact INT32 reduction), scaled once at the end.
RAW_ACCUMULATOR: store the exact per-group parts, out[m, g, n] (the exactness test).

x reading: X_WORDS (K, the row stride and the base address multiples of 4 bytes) loads int32 words;
otherwise each word is assembled from four byte loads (odd K), masked to zero past K.
Weights: planes uint32 [W_BITS, N, KW/32], scale fp16 [N, NG], zero int8 [N, NG], as stored.
"""
# --- template body ---

BIT_LANES = tl.constexpr(0x01010101)  # bit 0 of every byte lane
Q_OFFSET = tl.constexpr(2 ** (W_BITS.value - 1))  # q = v + Q_OFFSET (sign plane complemented)
PC_SLICE = tl.constexpr(128)  # columns per slice of the single per-channel group


@triton.jit
def plane_lanes(words, i: tl.constexpr, j: tl.constexpr):
    """uint32: bit 8r + i of each plane word -> bit j of byte lane r (one shift, one mask)."""
    mask = tl.full((1, 1), BIT_LANES, tl.uint32) << j
    if i >= j:
        return (words >> (i - j)) & mask
    else:
        return (words << (j - i)) & mask


@triton.jit
def dp4a(a, b, c, INTERPRETED: tl.constexpr):
    """c + sum over the four byte lanes of unsigned a times signed b (`dp4a.u32.s32`), int32."""
    if INTERPRETED:
        return c + _dp4a_emulated(a, b)
    else:
        return tl.inline_asm_elementwise(asm="dp4a.u32.s32 $0, $1, $2, $3;", constraints="=r,r,r,r",
                                         args=[a, b, c], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def prmt(a, b, SELECTOR: tl.constexpr, INTERPRETED: tl.constexpr):
    """`prmt.b32` (default mode): lane l of the result = byte SELECTOR nibble l of {b:a} (0-3 = a)."""
    if INTERPRETED:
        r = tl.zeros(a.shape, tl.int32)
        for lane in tl.static_range(4):
            src: tl.constexpr = (SELECTOR >> (4 * lane)) & 7
            v = a if src < 4 else b
            r |= ((v >> (8 * (src % 4))) & 0xFF) << (8 * lane)
        return r
    else:
        # The selector travels as a register operand; ptxas folds the constant into the instruction.
        sel = tl.full(a.shape, SELECTOR, tl.int32)
        return tl.inline_asm_elementwise(asm="prmt.b32 $0, $1, $2, $3;", constraints="=r,r,r,r",
                                         args=[a, b, sel], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def byte_transpose(a, b, c, d, INTERPRETED: tl.constexpr):
    """int32 (a, b, c, d) -> (o0, o1, o2, o3) with o_l = (a_l, b_l, c_l, d_l): byte l of each word in
    lanes 0..3. Two rounds of byte interleaving, eight `prmt`."""
    ab_lo = prmt(a, b, 0x5140, INTERPRETED)  # a0 b0 a1 b1
    ab_hi = prmt(a, b, 0x7362, INTERPRETED)  # a2 b2 a3 b3
    cd_lo = prmt(c, d, 0x5140, INTERPRETED)
    cd_hi = prmt(c, d, 0x7362, INTERPRETED)
    return (prmt(ab_lo, cd_lo, 0x5410, INTERPRETED), prmt(ab_lo, cd_lo, 0x7632, INTERPRETED),
            prmt(ab_hi, cd_hi, 0x5410, INTERPRETED), prmt(ab_hi, cd_hi, 0x7632, INTERPRETED))


@triton.jit
def load_x_word(x_row, col, K, t: tl.constexpr, X_WORDS: tl.constexpr, EVEN_K: tl.constexpr):
    """int32 word t (columns col + 4t .. col + 4t + 3) of each 32-column block of one token's row
    x_row (int8 pointer; col: [S] block starts, multiples of 32), zero past K."""
    if X_WORDS:
        # Word index col / 4 + t: the constant t folds into the load's address offset.
        ptrs = x_row.to(tl.pointer_type(tl.int32)) + (col // 4 + t)
        if EVEN_K:
            return tl.load(ptrs)
        return tl.load(ptrs, mask=col + 4 * t < K, other=0)
    else:
        w = tl.zeros(col.shape, tl.int32)
        for l in tl.static_range(4):
            c = col + 4 * t + l
            b = tl.load(x_row + c, mask=c < K, other=0)
            w |= (b.to(tl.int32) & 0xFF) << (8 * l)
        return w


@triton.jit
def slice_dots(q0, q1, q2, q3, q4, q5, q6, q7, x_row, k0, K, S: tl.constexpr,
               X_WORDS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr):
    """(qx [BN] = sum_k q x, xs = sum_k x) over one slice (S plane words) for one token."""
    col = k0 + 32 * tl.arange(0, S)
    xw0 = load_x_word(x_row, col, K, 0, X_WORDS, EVEN_K)
    xw1 = load_x_word(x_row, col, K, 1, X_WORDS, EVEN_K)
    xw2 = load_x_word(x_row, col, K, 2, X_WORDS, EVEN_K)
    xw3 = load_x_word(x_row, col, K, 3, X_WORDS, EVEN_K)
    xw4 = load_x_word(x_row, col, K, 4, X_WORDS, EVEN_K)
    xw5 = load_x_word(x_row, col, K, 5, X_WORDS, EVEN_K)
    xw6 = load_x_word(x_row, col, K, 6, X_WORDS, EVEN_K)
    xw7 = load_x_word(x_row, col, K, 7, X_WORDS, EVEN_K)
    # Register i of x = columns i, 8+i, 16+i, 24+i (the lanes of plane register i).
    x0, x1, x2, x3 = byte_transpose(xw0, xw2, xw4, xw6, INTERPRETED)
    x4, x5, x6, x7 = byte_transpose(xw1, xw3, xw5, xw7, INTERPRETED)
    acc = dp4a(q0, x0[None, :], tl.zeros(q0.shape, tl.int32), INTERPRETED)
    acc = dp4a(q1, x1[None, :], acc, INTERPRETED)
    acc = dp4a(q2, x2[None, :], acc, INTERPRETED)
    acc = dp4a(q3, x3[None, :], acc, INTERPRETED)
    acc = dp4a(q4, x4[None, :], acc, INTERPRETED)
    acc = dp4a(q5, x5[None, :], acc, INTERPRETED)
    acc = dp4a(q6, x6[None, :], acc, INTERPRETED)
    acc = dp4a(q7, x7[None, :], acc, INTERPRETED)
    ones = tl.full(col.shape, BIT_LANES, tl.int32)
    xs = dp4a(ones, xw0, tl.zeros(col.shape, tl.int32), INTERPRETED)
    xs = dp4a(ones, xw1, xs, INTERPRETED)
    xs = dp4a(ones, xw2, xs, INTERPRETED)
    xs = dp4a(ones, xw3, xs, INTERPRETED)
    xs = dp4a(ones, xw4, xs, INTERPRETED)
    xs = dp4a(ones, xw5, xs, INTERPRETED)
    xs = dp4a(ones, xw6, xs, INTERPRETED)
    xs = dp4a(ones, xw7, xs, INTERPRETED)
    return tl.sum(acc, axis=1), tl.sum(xs, axis=0)


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
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr,
):
    G: tl.constexpr = GROUP_SIZE if GROUP_SIZE > 0 else PC_SLICE  # columns per slice
    S: tl.constexpr = G // 32  # plane words per slice and row
    GPT: tl.constexpr = BK // G
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, 1)
    rn = pid_n * BN + tl.arange(0, BN)
    rn_ld = rn % N
    rm = pid_m * BM + tl.arange(0, BM)
    rs = tl.arange(0, S)
    if GROUP_SIZE > 0:
        NG = KW // GROUP_SIZE
        y = tl.zeros((BN, BM), dtype=tl.float32)
    else:
        NG = 1
        y = tl.zeros((BN, BM), dtype=tl.int32)
        c = tl.load(zero_ptr + rn_ld).to(tl.int32) + Q_OFFSET
    n_slices = tl.cdiv(KW, G)
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    plane_rows = planes_ptr + rn_ld[:, None] * KW32
    for kt in range(k_first, k_last):
        for gi in tl.static_range(GPT):
            g = kt * GPT + gi
            w_idx = g * S + rs
            # Plane registers q_i (i = 0..7): four byte lanes of q = v + 2^(P-1) per register.
            q0 = tl.zeros((BN, S), tl.uint32)
            q1 = tl.zeros((BN, S), tl.uint32)
            q2 = tl.zeros((BN, S), tl.uint32)
            q3 = tl.zeros((BN, S), tl.uint32)
            q4 = tl.zeros((BN, S), tl.uint32)
            q5 = tl.zeros((BN, S), tl.uint32)
            q6 = tl.zeros((BN, S), tl.uint32)
            q7 = tl.zeros((BN, S), tl.uint32)
            for j in tl.static_range(W_BITS):
                ptrs = plane_rows + j * N * KW32 + w_idx[None, :]
                if EVEN_K:
                    words = tl.load(ptrs)
                else:
                    words = tl.load(ptrs, mask=w_idx[None, :] < KW32, other=0)
                if j == W_BITS - 1:
                    words = ~words  # offset binary: q's top bit is the complement of the sign bit
                q0 |= plane_lanes(words, 0, j)
                q1 |= plane_lanes(words, 1, j)
                q2 |= plane_lanes(words, 2, j)
                q3 |= plane_lanes(words, 3, j)
                q4 |= plane_lanes(words, 4, j)
                q5 |= plane_lanes(words, 5, j)
                q6 |= plane_lanes(words, 6, j)
                q7 |= plane_lanes(words, 7, j)
            q0 = q0.to(tl.int32, bitcast=True)
            q1 = q1.to(tl.int32, bitcast=True)
            q2 = q2.to(tl.int32, bitcast=True)
            q3 = q3.to(tl.int32, bitcast=True)
            q4 = q4.to(tl.int32, bitcast=True)
            q5 = q5.to(tl.int32, bitcast=True)
            q6 = q6.to(tl.int32, bitcast=True)
            q7 = q7.to(tl.int32, bitcast=True)
            if GROUP_SIZE > 0:
                in_range = (rn_ld * 0 + g) < NG
                c = tl.load(zero_ptr + rn_ld * NG + g, mask=in_range, other=0).to(tl.int32) + Q_OFFSET
                s = tl.load(scale_ptr + rn_ld * NG + g, mask=in_range, other=0.0).to(tl.float32)
            for mi in tl.static_range(BM):
                row = tl.minimum(pid_m * BM + mi, M - 1)
                qx, xs = slice_dots(q0, q1, q2, q3, q4, q5, q6, q7, x_ptr + row * stride_xm, g * G, K, S,
                                    X_WORDS, EVEN_K, INTERPRETED)
                part = qx - c * xs
                if GROUP_SIZE > 0 and RAW_ACCUMULATOR:
                    live = (rn < N) & ((rn * 0 + pid_m * BM + mi) < M) & ((rn * 0 + g) < NG)
                    tl.store(out_ptr + (row * NG + g) * N + rn, part, mask=live)
                elif GROUP_SIZE > 0:
                    y += tl.where(tl.arange(0, BM)[None, :] == mi, (part.to(tl.float32) * s)[:, None], 0.0)
                else:
                    y += tl.where(tl.arange(0, BM)[None, :] == mi, part[:, None], 0)
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

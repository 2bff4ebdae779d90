"""Bit-plane qlinear, realization (a): weight planes recombined into INT8 in registers, INT8 tl.dot.

Hopper has no binary MMA, so this is ABQ-LLM's decomposition with the weight sum done first:
    v[n, k]    = sum_j w_j * bit(planes[j, n, k // 32], k % 32)   w_j = 1, 2, ..., -2**(W_BITS-1)
    part[n, m] = sum_{k in group} (v[n, k] - zs[n, g]) * x[m, k]
The W_BITS planes are read as bytes (bytes moved scale with the bit-width) and recombined four K
values per 32-bit register into the INT8 tile that feeds one tensor-core dot per group (INT32
accumulation). Groups (GROUP_SIZE > 0): a K tile is GPT = BK / GROUP_SIZE whole groups, unrolled,
and each group's exact INT32 part is scaled by s[n, g] in float32 and added in ascending g, as the
reference does. Per channel (GROUP_SIZE == 0): one INT32 accumulator over all of K, scaled once in
the epilogue. RAW_ACCUMULATOR: store the exact per-group INT32 parts, out[m, g, n] (the exactness test).
W_AS_B: tokens on the MMA's A side and the weight on its B side (acc[m, n] = x . w8^T), turned once
after the K loop; with 16-32 tokens Triton then emits mma.sync with both operands in registers.
Weights: planes uint32 [W_BITS, N, KW/32] (plane-major; column 4i + r of a 32-column word at bit
(8r + i + j) mod 32 of plane j), scale fp16 [N, NG], zero int8 [N, NG]
(lowc.quant.bitplane.BitplaneWeight, read as stored).

Recombination, SIMD within a register (the same integer code on the GPU and under TRITON_INTERPRET).
The stored order is chosen for it: register i (i = 0..7) of a 32-column plane word is
    t_i = OR_j (word_j & (0x01010101 << ((i + j) % 8))),   q_i = t_i rotated right by i
(one masked OR per plane and register, one funnel shift per register), whose byte lane r is bit j
of column 4i + r for every plane j: four byte lanes of
    q = v + 2**(P-1) in 0 .. 2**P - 1      (offset binary: the sign plane's bit is complemented),
P = W_BITS, for columns 4i..4i+3 in natural order. For P <= 7 the zero is folded in there (as the
W4A8 kernel does):
    lane = q + (128 - 2**(P-1) - zs) = (v - zs) + 128,   v - zs in -(2**P - 1) .. 2**P - 1,
so every lane lies in 1..255 and adding the same constant to all four lanes never carries; XOR
0x80808080 turns each lane into the int8 byte of v - zs, and the dot gives part directly (no row
sum of x per group). For P = 8 the eight bits already are v's two's-complement byte, and part is
corrected by zs * sum_k x. The eight registers of each word are joined in order (register i =
K values 4i..4i+3) and `unpack_byte_lanes` (common.py) views the lanes as int8 K values.
"""
# --- template body ---

# The values an unsigned 32-bit register of four byte lanes needs (uint32, so no constant is read as
# a negative or a 64-bit integer).
LANE_ONES = tl.constexpr(0x01010101)  # bit 0 of every lane
FOLD_ZERO = tl.constexpr(W_BITS.value <= 7)  # the zero fits the lanes (v - zs in -127..127)
ZERO_BASE = tl.constexpr(128 - 2 ** (W_BITS.value - 1))  # lane = q + ZERO_BASE - zs = v - zs + 128


@triton.jit
def load_x_tile(x_ptr, rm_ld, k, K, stride_xm, EVEN_K: tl.constexpr):
    ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=k[None, :] < K, other=0)


@triton.jit
def plane_words(planes_ptr, j, rn_ld, g, N, KW32, EVEN_K: tl.constexpr, BN: tl.constexpr, G: tl.constexpr):
    """uint32 [BN, G // 32]: the words of K slice g (G values) of plane j, as stored."""
    rw = g * (G // 32) + tl.arange(0, G // 32)
    ptrs = planes_ptr + j * N * KW32 + rn_ld[:, None] * KW32 + rw[None, :]
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=rw[None, :] < KW32, other=0)


@triton.jit
def register_lanes(t, i: tl.constexpr, c, FOLD: tl.constexpr):
    """Register i from its masked bits t: rotated right by i (bit j of each lane), then, with the
    zero folded (c = 128 - 2^(P-1) - zs per row), (q + c) ^ 0x80 per lane = the int8 byte of v - zs."""
    t = rotate_right(t, i)
    if FOLD:
        t = (t + c) ^ (tl.full((1, 1), LANE_ONES, tl.uint32) << 7)
    return t


@triton.jit
def recombine_slice(planes_ptr, zero, rn_ld, g, N, KW32, EVEN_K: tl.constexpr, BN: tl.constexpr, G: tl.constexpr):
    """int8 w8 [BN, G] of K slice g, four K values per 32-bit register (module docstring):
    w8 = v - zs when FOLD_ZERO (zero: int32 [BN], the slice's zs), else w8 = v (8 planes)."""
    t0 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t1 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t2 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t3 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t4 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t5 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t6 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    t7 = tl.zeros((BN, G // 32), dtype=tl.uint32)
    for j in tl.static_range(W_BITS):
        w = plane_words(planes_ptr, j, rn_ld, g, N, KW32, EVEN_K, BN, G)
        if FOLD_ZERO and j == W_BITS - 1:
            w = ~w  # offset binary: q's top bit is the complement of the sign plane's
        t0, t1, t2, t3, t4, t5, t6, t7 = or_plane_registers(t0, t1, t2, t3, t4, t5, t6, t7, w, j)
    if FOLD_ZERO:
        # lane = q + 128 - 2^(P-1) - zs = w8 + 128 in 1..255: no lane carries; ^ 0x80 makes it int8 w8.
        c = ((tl.full((BN,), ZERO_BASE, tl.int32) - zero).to(tl.uint32) * LANE_ONES)[:, None]
    else:
        c = tl.zeros((BN, 1), dtype=tl.uint32)
    r0 = register_lanes(t0, 0, c, FOLD_ZERO)
    r1 = register_lanes(t1, 1, c, FOLD_ZERO)
    r2 = register_lanes(t2, 2, c, FOLD_ZERO)
    r3 = register_lanes(t3, 3, c, FOLD_ZERO)
    r4 = register_lanes(t4, 4, c, FOLD_ZERO)
    r5 = register_lanes(t5, 5, c, FOLD_ZERO)
    r6 = register_lanes(t6, 6, c, FOLD_ZERO)
    r7 = register_lanes(t7, 7, c, FOLD_ZERO)
    # Natural K order: flat index 4a + 2b + c of the joined [.., 2, 2, 2] is register 4a + 2b + c.
    r = tl.join(tl.join(tl.join(r0, r4), tl.join(r2, r6)), tl.join(tl.join(r1, r5), tl.join(r3, r7)))
    return unpack_byte_lanes(r.reshape(BN, G // 4).to(tl.int32, bitcast=True), BN, G)


@triton.jit
def store_raw(out_ptr, part, rn, rm, g, M, N, NG):
    mask = (rn[:, None] < N) & (rm[None, :] < M) & ((rn[:, None] * 0 + g) < NG)
    tl.store(out_ptr + (rm[None, :] * NG + g) * N + rn[:, None], part, mask=mask)


@triton.jit
def finish_channel(acc, sx_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, rn, rm, rn_ld, pid_n, pid_m, M, N,
                   HAS_BIAS: tl.constexpr, BN: tl.constexpr, SPLIT_K: tl.constexpr):
    """Per channel: (split-K INT32 reduction), then y = (acc * s[n]) * s_x[m] (+ bias), or the raw acc."""
    if SPLIT_K > 1:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, pid_m * tl.cdiv(N, BN) + pid_n, offs, mask, SPLIT_K)
    else:
        is_last = True
    if is_last:
        if RAW_ACCUMULATOR:
            store_raw(out_ptr, acc, rn, rm, 0, M, N, 1)
        else:
            y = acc.to(tl.float32) * tl.load(scale_ptr + rn_ld).to(tl.float32)[:, None]
            sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
            store_tile(out_ptr, y * sx[None, :], rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def finish_groups(y, sx_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, rn, rm, pid_n, pid_m, M, N,
                  HAS_BIAS: tl.constexpr, BN: tl.constexpr, SPLIT_K: tl.constexpr):
    """Groups: y = sum_g part_g * s[n, g] (float32, split-K adds the splits' sums), then * s_x[m] (+ bias)."""
    if SPLIT_K > 1:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        y, is_last = splitk_reduce(y, ws_ptr, cnt_ptr, pid_m * tl.cdiv(N, BN) + pid_n, offs, mask, SPLIT_K)
    else:
        is_last = True
    if is_last:
        sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
        store_tile(out_ptr, y * sx[None, :], rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, planes_ptr, scale_ptr, zero_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, KWB, stride_xm,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    W_AS_B: tl.constexpr = False,
):
    # A K tile holds GPT slices of G values: whole groups (G = GROUP_SIZE), or per channel G = BK.
    G: tl.constexpr = GROUP_SIZE if GROUP_SIZE > 0 else BK
    GPT: tl.constexpr = BK // G
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rg = tl.arange(0, G)
    KW32 = KWB // 4  # plane row in words; KWB (bytes) comes from the host with its divisibility
    if GROUP_SIZE > 0:
        NG = KW // GROUP_SIZE
    else:
        NG = 1
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    # Accumulators in the MMA's orientation: [BN, BM] (weight as A), or [BM, BN] with W_AS_B, turned
    # once after the loop; the per-group float products are element-wise, so the orientation does
    # not change a bit of the result.
    if W_AS_B:
        y = tl.zeros((BM, BN), dtype=tl.float32)
        acc = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        y = tl.zeros((BN, BM), dtype=tl.float32)
        acc = tl.zeros((BN, BM), dtype=tl.int32)
    xsum = tl.zeros((BM,), dtype=tl.int32)
    if GROUP_SIZE == 0:
        zs = tl.load(zero_ptr + rn_ld).to(tl.int32)
    for kt in range(k_first, k_last):
        # The GPT slices are unrolled, so every slice's loads can be in flight before the first dot.
        for gi in tl.static_range(GPT):
            g = kt * GPT + gi
            x = load_x_tile(x_ptr, rm_ld, g * G + rg, K, stride_xm, EVEN_K)
            if GROUP_SIZE > 0:
                zs = tl.load(zero_ptr + rn_ld * NG + g, mask=(rn_ld * 0 + g) < NG, other=0).to(tl.int32)
            w8 = recombine_slice(planes_ptr, zs, rn_ld, g, N, KW32, EVEN_K, BN, G)
            if GROUP_SIZE > 0:
                if W_AS_B:
                    part = tl.dot(x, tl.trans(w8), out_dtype=tl.int32)
                    if not FOLD_ZERO:
                        part -= tl.sum(x.to(tl.int32), axis=1)[:, None] * zs[None, :]
                    if RAW_ACCUMULATOR:
                        store_raw(out_ptr, tl.trans(part), rn, rm, g, M, N, NG)
                    else:
                        s = tl.load(scale_ptr + rn_ld * NG + g, mask=(rn_ld * 0 + g) < NG, other=0.0).to(tl.float32)
                        y += part.to(tl.float32) * s[None, :]
                else:
                    part = tl.dot(w8, tl.trans(x), out_dtype=tl.int32)
                    if not FOLD_ZERO:
                        part -= zs[:, None] * tl.sum(x.to(tl.int32), axis=1)[None, :]
                    if RAW_ACCUMULATOR:
                        store_raw(out_ptr, part, rn, rm, g, M, N, NG)
                    else:
                        s = tl.load(scale_ptr + rn_ld * NG + g, mask=(rn_ld * 0 + g) < NG, other=0.0).to(tl.float32)
                        y += part.to(tl.float32) * s[:, None]
            else:
                if W_AS_B:
                    acc = tl.dot(x, tl.trans(w8), acc, out_dtype=tl.int32)
                else:
                    acc = tl.dot(w8, tl.trans(x), acc, out_dtype=tl.int32)
                if not FOLD_ZERO:
                    xsum += tl.sum(x.to(tl.int32), axis=1)
    if W_AS_B:
        y = tl.trans(y)
        acc = tl.trans(acc)

    if GROUP_SIZE == 0:
        if not FOLD_ZERO:
            # Per channel: the zero correction is linear, so each split corrects its own partial sum,
            # and the splits add exactly in INT32.
            acc -= zs[:, None] * xsum[None, :]
        finish_channel(acc, sx_ptr, scale_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, rn, rm, rn_ld, pid_n, pid_m,
                       M, N, HAS_BIAS, BN, SPLIT_K)
    elif not RAW_ACCUMULATOR:
        finish_groups(y, sx_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr, rn, rm, pid_n, pid_m, M, N, HAS_BIAS, BN, SPLIT_K)


def reference(x, x_scale, weight, bias, out_dtype):
    """The plain-torch truth: lowc.quant.bitplane's direct integer GEMM (RAW_ACCUMULATOR: its exact
    per-group INT32 accumulators [M, NG, N]), else its scaled float output."""
    from lowc.quant import weight_from_tensors

    w = weight_from_tensors(FORMAT, weight, x.shape[-1])
    if RAW_ACCUMULATOR.value:
        return w.accumulators(x)
    return w.linear(x, x_scale, bias, out_dtype)

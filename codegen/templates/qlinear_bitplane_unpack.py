"""Bit-plane qlinear, realization (a): weight planes recombined into INT8 in registers, INT8 tl.dot.

Hopper has no binary MMA, so this is ABQ-LLM's decomposition with the weight sum done first:
    v[n, k]      = sum_j w_j * bit(planes[j, n, k // 32], k % 32)   w_j = 1, 2, ..., -2**(W_BITS-1)
    part[n, m]   = sum_{k in tile} v[n, k] * x[m, k]  -  zs[n, g] * sum_{k in tile} x[m, k]
The W_BITS planes are read as uint32 words (bytes moved scale with the bit-width), each word is
spread over its 32 K positions by one shift and mask per element, and the signed sum v (which fits
int8 for every W_BITS <= 8) feeds one INT8 tensor-core dot per tile with INT32 accumulation; the
asymmetric zero costs one row sum of x per tile instead of a subtraction per weight.
Groups (GROUP_SIZE > 0): a K tile is exactly one group (BK == GROUP_SIZE), so each tile's exact
INT32 part is scaled by s[n, g] in float32 and summed in ascending g, as the reference does.
Per channel (GROUP_SIZE == 0): one INT32 accumulator over all of K, scaled once in the epilogue.
RAW_ACCUMULATOR: store the exact per-group INT32 parts, out[m, g, n] (the test of exactness).
Weights: planes uint32 [W_BITS, N, KW/32] (plane-major, bit k % 32 of word k // 32 = column k),
scale fp16 [N, NG], zero int8 [N, NG] (lowc.quant.bitplane.BitplaneWeight, read as stored).

On the GPU the recombination runs four K values per 32-bit register (`spread_nibble`): the planes
are read as bytes (little-endian, so byte b of a word is columns 8b..8b+7), each byte split into
two nibbles; a nibble's four bits are moved to the four byte lanes by one multiply and one mask
(nibble * 0x00204081: bit i lands at 8i, the other copies fall outside the mask), and added in with
the plane's weight by one multiply-add: 2**j for the value planes, 256 - 2**(W_BITS-1) for the sign
plane (its two's complement in a byte). Every lane ends in 0..255 and each lane's products stay
below 256, so no lane carries into its neighbour, and the four lanes are the int8 values v.
Under TRITON_INTERPRET the same v comes from one shift and mask per element (no inline assembly).
"""

# --- template body ---


@triton.jit
def load_x_tile(x_ptr, rm_ld, k, K, stride_xm, EVEN_K: tl.constexpr):
    ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=k[None, :] < K, other=0)


@triton.jit
def spread_nibble(nib, weight, v):
    """GPU only. v + weight * bits of `nib`, four byte lanes per register (module docstring).
    nib, weight: [BN, BK] int32, equal over each four K values; v: [BN, BK] int8."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t;
        mul.lo.u32 t, $1, 0x00204081;
        and.b32 t, t, 0x01010101;
        mad.lo.u32 $0, t, $5, $9;
        }""",
        constraints="=r,r,r,r,r,r,r,r,r,r",
        args=[nib, weight, v],
        dtype=tl.int8,
        is_pure=True,
        pack=4,
    )


@triton.jit
def recombine_planes(planes_ptr, rn_ld, kt, N, KWB, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr,
                     BN: tl.constexpr, BK: tl.constexpr):
    """uint32 plane words [W_BITS x BN x BK/32] -> int8 v [BN, BK] in natural K order. KWB is a
    plane row in bytes (KW / 8), passed from the host so that Triton sees its divisibility."""
    if INTERPRETED:
        KW32 = KWB // 4
        wk = kt * (BK // 32) + tl.arange(0, BK // 32)
        shifts = tl.arange(0, 32).to(tl.uint32)
        v = tl.zeros((BN, BK // 32, 32), dtype=tl.int32)
        for j in tl.static_range(W_BITS):
            ptrs = planes_ptr + j * N * KW32 + rn_ld[:, None] * KW32 + wk[None, :]
            if EVEN_K:
                words = tl.load(ptrs)
            else:
                words = tl.load(ptrs, mask=wk[None, :] < KW32, other=0)
            bits = ((words[:, :, None] >> shifts[None, None, :]) & 1).to(tl.int32)
            if j == W_BITS - 1:
                v -= bits << j  # the sign plane weighs -2**(W_BITS-1)
            else:
                v += bits << j
        return v.reshape(BN, BK).to(tl.int8)
    else:
        KW8 = KWB
        rb = kt * (BK // 8) + tl.arange(0, BK // 8)
        byte_ptr = planes_ptr.to(tl.pointer_type(tl.uint8))
        v = tl.zeros((BN, BK), dtype=tl.int8)
        for j in tl.static_range(W_BITS):
            ptrs = byte_ptr + j * N * KW8 + rn_ld[:, None] * KW8 + rb[None, :]
            if EVEN_K:
                b = tl.load(ptrs)
            else:
                b = tl.load(ptrs, mask=rb[None, :] < KW8, other=0)
            nib = tl.join(b & 0xF, b >> 4).reshape(BN, BK // 4).to(tl.int32)
            nib = tl.broadcast_to(nib[:, :, None], (BN, BK // 4, 4)).reshape(BN, BK)
            if j == W_BITS - 1:
                weight = 256 - (1 << j)  # -2**(W_BITS-1) as an unsigned byte
            else:
                weight = 1 << j
            v = spread_nibble(nib, tl.full((BN, BK), weight, tl.int32), v)
        return v


@triton.jit
def store_raw(out_ptr, part, rn, rm, g, M, N, NG):
    mask = (rn[:, None] < N) & (rm[None, :] < M)
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
):
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rk = tl.arange(0, BK)
    if GROUP_SIZE > 0:
        NG = KW // GROUP_SIZE
    else:
        NG = 1
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    y = tl.zeros((BN, BM), dtype=tl.float32)
    acc = tl.zeros((BN, BM), dtype=tl.int32)
    xsum = tl.zeros((BM,), dtype=tl.int32)
    for kt in range(k_first, k_last):
        x = load_x_tile(x_ptr, rm_ld, kt * BK + rk, K, stride_xm, EVEN_K)
        v = recombine_planes(planes_ptr, rn_ld, kt, N, KWB, EVEN_K, INTERPRETED, BN, BK)
        if GROUP_SIZE > 0:
            part = tl.dot(v, tl.trans(x), out_dtype=tl.int32)
            zs = tl.load(zero_ptr + rn_ld * NG + kt).to(tl.int32)
            part -= zs[:, None] * tl.sum(x.to(tl.int32), axis=1)[None, :]
            if RAW_ACCUMULATOR:
                store_raw(out_ptr, part, rn, rm, kt, M, N, NG)
            else:
                s = tl.load(scale_ptr + rn_ld * NG + kt).to(tl.float32)
                y += part.to(tl.float32) * s[:, None]
        else:
            acc = tl.dot(v, tl.trans(x), acc, out_dtype=tl.int32)
            xsum += tl.sum(x.to(tl.int32), axis=1)

    if GROUP_SIZE == 0:
        # Per channel: the zero correction is linear, so each split corrects its own partial sum,
        # and the splits add exactly in INT32.
        acc -= tl.load(zero_ptr + rn_ld).to(tl.int32)[:, None] * xsum[None, :]
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

"""Bit-plane qlinear, realization (b): a true binary GEMM over both operands' planes (AND + popcount).

ABQ-LLM's decomposition as written, with CUDA-core popcounts standing in for sm80's binary MMA
(`mma .b1 .and.popc`, which Hopper does not expose to Triton):
    part[n, m] = sum_j sum_i w_j * a_i * popcount(W_j[n, words] & X_i[m, words])  -  zs[n, g] * sum_k x[m, k]
The weight planes W_j are read as stored (uint32 words, 32 K positions each, plane j in lane order
rotated left by j: lowc.quant.bitplane) and turned back by j (one funnel shift per word); the
activation planes X_i are cut from the int8 activation tile in registers (x >> i & 1, the sign
plane weighted -2**(A_BITS-1)) and packed 32 per word in lane order (column 4i + r at bit 8r + i),
once per tile and shared by the BN weight rows. A popcount does not care which bit holds which
column, only that both operands agree. Each
popcount covers 32 products, so at decode sizes this path issues far fewer instructions per weight
than unpacking to INT8; its cost grows with W_BITS * A_BITS * BM, so the selector
(lowc.runtime.bitplane_gemm) measures where it wins. No tensor core is used: BM may be 1..16.
popcount: libdevice's popc on the GPU, the SWAR bit count under TRITON_INTERPRET (no libdevice).
Groups, per-channel mode, RAW_ACCUMULATOR, split-K and the weight tensors: as the unpack
realization (planes uint32 [W_BITS, N, KW/32], scale fp16 [N, NG], zero int8 [N, NG]).
"""

# --- template body ---

from triton.language.extra import libdevice


@triton.jit
def popcount(words, INTERPRETED: tl.constexpr):
    """Set bits of each uint32 word, as int32."""
    if INTERPRETED:
        c = words - ((words >> 1) & 0x55555555)
        c = (c & 0x33333333) + ((c >> 2) & 0x33333333)
        c = (c + (c >> 4)) & 0x0F0F0F0F
        return ((c * 0x01010101) >> 24).to(tl.int32)
    return libdevice.popc(words.to(tl.int32, bitcast=True))


@triton.jit
def binary_part(x, planes_ptr, rn_ld, wk, N, KW32, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """sum_j sum_i w_j a_i popcount(W_j & X_i) over one tile -> int32 [BN, BM]."""
    A_P2: tl.constexpr = 4 if A_BITS == 4 else 8  # plane axis padded to a power of two (weight 0)
    ia = tl.arange(0, A_P2)
    c = tl.arange(0, 32)
    shifts = (8 * (c % 4) + c // 4).to(tl.uint32)  # lane order: column c = 4i + r at bit 8r + i
    bits = ((x.to(tl.int32)[None, :, :] >> ia[:, None, None]) & 1).to(tl.uint32)  # [A_P2, BM, BK]
    x_words = tl.sum(bits.reshape(A_P2, BM, BK // 32, 32) << shifts[None, None, None, :], axis=3)
    a_weight = tl.where(ia < A_BITS - 1, 1 << ia, tl.where(ia == A_BITS - 1, -(1 << ia), 0))
    part = tl.zeros((BN, BM), dtype=tl.int32)
    for j in tl.static_range(W_BITS):
        ptrs = planes_ptr + j * N * KW32 + rn_ld[:, None] * KW32 + wk[None, :]
        if EVEN_K:
            words = tl.load(ptrs)
        else:
            words = tl.load(ptrs, mask=wk[None, :] < KW32, other=0)
        words = rotate_right(words, j)  # stored rotated left by j: back to lane order
        counts = tl.sum(popcount(words[None, :, None, :] & x_words[:, None, :, :], INTERPRETED), axis=3)
        t = tl.sum(counts * a_weight[:, None, None], axis=0)  # [BN, BM]
        if j == W_BITS - 1:
            part -= t << j  # the sign plane weighs -2**(W_BITS-1)
        else:
            part += t << j
    return part


@triton.jit
def load_x_tile(x_ptr, rm_ld, k, K, stride_xm, EVEN_K: tl.constexpr):
    ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
    if EVEN_K:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=k[None, :] < K, other=0)


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
    rw = tl.arange(0, BK // 32)
    KW32 = KWB // 4  # plane row in words; KWB (bytes) comes from the host with its divisibility
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
        part = binary_part(x, planes_ptr, rn_ld, kt * (BK // 32) + rw, N, KW32, EVEN_K, INTERPRETED, BM, BN, BK)
        if GROUP_SIZE > 0:
            zs = tl.load(zero_ptr + rn_ld * NG + kt).to(tl.int32)
            part -= zs[:, None] * tl.sum(x.to(tl.int32), axis=1)[None, :]
            if RAW_ACCUMULATOR:
                store_raw(out_ptr, part, rn, rm, kt, M, N, NG)
            else:
                s = tl.load(scale_ptr + rn_ld * NG + kt).to(tl.float32)
                y += part.to(tl.float32) * s[:, None]
        else:
            acc += part
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
    per-group INT32 accumulators [M, NG, N]), else its scaled float output. Its popcount form is
    BitplaneWeight.binary_accumulators, which the tests hold equal to the direct GEMM."""
    from lowc.quant import weight_from_tensors

    w = weight_from_tensors(FORMAT, weight, x.shape[-1])
    if RAW_ACCUMULATOR.value:
        return w.accumulators(x)
    return w.linear(x, x_scale, bias, out_dtype)

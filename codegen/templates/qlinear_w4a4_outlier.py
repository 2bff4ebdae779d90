"""W4A4 qlinear with INT8 outlier channels (Atom), on INT8 tensor cores.

The first K_n = K - N_OUTLIERS input channels are INT4 (weights and activations, symmetric, one
scale per group of GROUP_SIZE); the last N_OUTLIERS channels (moved there by the reorder pass) are
INT8. Hopper has no INT4 MMA, so the INT4 codes are sign-extended to INT8 in registers and each group
is one INT8 dot whose INT32 partial sum is scaled on its own:
    acc_g[n, m] = sum_{k in g} w4[n, k] * x4[m, k]                          INT32, exact
    acc[n, m]  += acc_g * s_x[m, g] * s_w[n, g]                             float32, per group
    acc[n, m]  += (sum_{k in tail} w8[n, k] * x8[m, k]) * s_x[m, -1] * s_o[n]
    y[m, n]     = acc (+ bias[n])
so a tile is exactly one group (the launcher sets BK = GROUP_SIZE). Weight tensors (lowc.quant
W4A4Outlier, read as they are): qweight uint8 [N, K_np/2] (two's-complement nibbles, low nibble =
even k, K_np = K_n padded to the group), scale fp16 [N, K_np/G], outlier_weight int8 [N, O],
outlier_scale fp16 [N]. Activations (quantize_act): int8 [M, K] holding INT4 values in the first
K_n channels, float32 scales [M, K_np/G (+1 if O)], the outlier scale last.

The INT4 weights enter the dot as 16 * w4: a code's nibble placed in the high half of a byte IS the
two's-complement int8 of 16 * w4, so unpacking needs no sign extension, and the GPU path builds four
such bytes per register with three bit operations (`i4_words_to_i8x16`). The group's INT32 partial
sum is then 16 * acc_g (|16 * acc_g| <= 16 * 8 * 8 * G, far from overflow), and multiplying it by
1/16 in float32 is exact, so the epilogue computes the reference's products bit for bit.
"""

# --- template body ---


@triton.jit
def i4_words_to_i8x16(words, BN: tl.constexpr, BK: tl.constexpr):
    """GPU only. Four signed 4-bit codes per 16-bit word -> int8 16 * w4 [BN, BK] (one word per
    32-bit register of four byte lanes, then viewed as int8 by `unpack_byte_lanes`)."""
    r = tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 r, t;
        prmt.b32 r, $1, 0, 0x1100;
        shl.b32 t, r, 4;
        and.b32 t, t, 0x00F000F0;
        and.b32 r, r, 0xF000F000;
        or.b32 $0, r, t;
        }""",
        constraints="=r,r",
        args=[words],
        dtype=tl.int32,
        is_pure=True,
        pack=1,
    )
    return unpack_byte_lanes(r, BN, BK)


@triton.jit
def weight_tile_x16(qw_ptr, rn_ld, kt, KW, stride_w16, BN: tl.constexpr, BK: tl.constexpr, FAST_DEQUANT: tl.constexpr):
    """int8 16 * w4 [BN, BK] of K tile kt (one group), natural K order."""
    if FAST_DEQUANT:
        return i4_words_to_i8x16(load_code_words(qw_ptr, rn_ld, kt, stride_w16, BN, BK, True), BN, BK)
    else:
        rb = kt * (BK // 2) + tl.arange(0, BK // 2)
        p = tl.load(qw_ptr + rn_ld[:, None] * (KW // 2) + rb[None, :])
        # Low nibble shifted up, high nibble masked in place: both read as int8 are 16 * w4.
        return tl.join((p << 4).to(tl.int8, bitcast=True), (p & 0xF0).to(tl.int8, bitcast=True)).reshape(BN, BK)

# Outlier tail tile width: a power of two covering N_OUTLIERS, at least one INT8 MMA K-step (32).
OUTLIER_BLOCK = tl.constexpr(max(32, 1 << max(0, N_OUTLIERS.value - 1).bit_length()))


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, qw_ptr, s_ptr, ow_ptr, os_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm, stride_w16,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr, FAST_DEQUANT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    tl.static_assert(BK == GROUP_SIZE, "w4a4: one K tile must be exactly one group")
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rk = tl.arange(0, BK)
    k_normal = K - N_OUTLIERS
    n_groups = KW // GROUP_SIZE
    stride_sx = n_groups + (N_OUTLIERS > 0)
    pid_k = tl.program_id(1)
    k_first, k_last = split_range(pid_k, n_groups, SPLIT_K)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    # Per-group scales are tiny loads Triton does not pipeline: fetch them one group ahead.
    # (The launcher guarantees n_groups >= 1 in the scale tensors' row strides: see _launch.)
    first = tl.maximum(tl.minimum(k_first, n_groups - 1), 0)
    sw = tl.load(s_ptr + rn_ld * n_groups + first).to(tl.float32)
    sx = tl.load(sx_ptr + rm_ld * stride_sx + first)
    for kt in range(k_first, k_last):
        nxt = tl.minimum(kt + 1, n_groups - 1)
        sw_next = tl.load(s_ptr + rn_ld * n_groups + nxt).to(tl.float32)
        sx_next = tl.load(sx_ptr + rm_ld * stride_sx + nxt)
        k = kt * BK + rk
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
        else:
            # Columns past K_n are outliers (or nothing): they must not enter a group's sum.
            x = tl.load(x_ptrs, mask=k[None, :] < k_normal, other=0)
        w16 = weight_tile_x16(qw_ptr, rn_ld, kt, KW, stride_w16, BN, BK, FAST_DEQUANT)
        part = tl.dot(w16, tl.trans(x), out_dtype=tl.int32)
        # acc_g = part / 16 exactly; then the reference's order of float products: (acc_g * s_x) * s_w.
        acc += ((part.to(tl.float32) * 0.0625) * sx[None, :]) * sw[:, None]
        sw, sx = sw_next, sx_next

    if N_OUTLIERS > 0:
        if pid_k == SPLIT_K - 1:
            ro = tl.arange(0, OUTLIER_BLOCK)
            omask = ro[None, :] < N_OUTLIERS
            xo = tl.load(x_ptr + rm_ld[:, None] * stride_xm + (k_normal + ro)[None, :], mask=omask, other=0)
            wo = tl.load(ow_ptr + rn_ld[:, None] * N_OUTLIERS + ro[None, :], mask=omask, other=0)
            part = tl.dot(wo, tl.trans(xo), out_dtype=tl.int32)
            sxo = tl.load(sx_ptr + rm_ld * stride_sx + n_groups)
            so = tl.load(os_ptr + rn_ld).to(tl.float32)
            acc += (part.to(tl.float32) * sxo[None, :]) * so[:, None]

    if SPLIT_K == 1:
        store_tile(out_ptr, acc, rn, rm, M, N, bias_ptr, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            store_tile(out_ptr, acc, rn, rm, M, N, bias_ptr, HAS_BIAS)


def reference(x, x_scale, weight, bias, out_dtype):
    """The plain-torch truth this kernel reproduces up to float32 summation order: lowc.quant's
    W4A4Outlier reference GEMM (exact integer group sums, float32 per-group scaling)."""
    from lowc.quant import weight_from_tensors

    return weight_from_tensors(FORMAT, weight, x.shape[-1]).linear(x, x_scale, bias, out_dtype)

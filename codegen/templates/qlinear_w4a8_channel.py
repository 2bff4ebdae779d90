"""W4A8 qlinear with QoQ per-channel UINT4 weights (QServe's per-channel W4A8).

    w[n, k]   = q[n, k] - z[n]                       UINT4 -> INT8 in registers
    acc[n, m] = sum_k w[n, k] * x[m, k]              INT8 tensor-core dot, INT32 accumulation (exact)
    y[m, n]   = acc * s_x[m] * s[n] (+ bias[n])      float32 epilogue, then the output dtype
acc equals the reference's `x_q @ q^T - z * sum_k x_q` exactly (both are the same integer), so the
kernel needs no per-token sum of x. Weight tensors (lowc.quant W4A8Channel, read as they are):
qweight uint8 [N, Kp/2] (low nibble = even k; Kp = K rounded up to even), scale fp16 [N],
zero fp16 [N] (integers 0..15, converted once per tile).

Dequantization is the grouped W4A8 one with s1 = 1 and c = 128 - z: q + c = w + 128 lies in
113..143, so the GPU path (`u4_words_to_i8`, four codes per register) never carries across lanes.
A config with DEQUANT_FIRST writes w (int8 [N, Kp]) with `dequant_kernel` and runs the W8A8 kernel.
"""

# --- template body ---


@triton.jit
def dequant_tile(qw_ptr, c, rn_ld, kt, KW, stride_w16, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr,
                 FAST_DEQUANT: tl.constexpr):
    """int8 w [BN, BK] of K tile kt from the codes and c = 128 - z ([BN] int32)."""
    if FAST_DEQUANT:
        words = load_code_words(qw_ptr, rn_ld, kt, stride_w16, BN, BK, EVEN_K)
        one = tl.full((BN, BK // 4), 1, tl.int32)
        add_x4 = tl.broadcast_to((c * 0x01010101)[:, None], (BN, BK // 4))
        return u4_words_to_i8(words, one, add_x4, BN, BK)
    else:
        q = load_codes(qw_ptr, rn_ld, kt, KW, BN, BK, EVEN_K).to(tl.int32)
        return ((q + c[:, None]) ^ 0x80).to(tl.int8)


@triton.jit
def epilogue(acc, sx_ptr, s_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS: tl.constexpr):
    if RAW_ACCUMULATOR:
        store_tile(out_ptr, acc, rn, rm, M, N, bias_ptr, False)
    else:
        sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        # Same order of float products as the reference: (acc * s_x) * s.
        y = (acc.to(tl.float32) * sx[None, :]) * s[:, None]
        store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm, stride_w16,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr, FAST_DEQUANT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rk = tl.arange(0, BK)
    c = 128 - tl.load(z_ptr + rn_ld).to(tl.int32)
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    acc = tl.zeros((BN, BM), dtype=tl.int32)
    for kt in range(k_first, k_last):
        k = kt * BK + rk
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=k[None, :] < K, other=0)
        w = dequant_tile(qw_ptr, c, rn_ld, kt, KW, stride_w16, BN, BK, EVEN_K, FAST_DEQUANT)
        acc = tl.dot(w, tl.trans(x), acc, out_dtype=tl.int32)

    if SPLIT_K == 1:
        epilogue(acc, sx_ptr, s_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx_ptr, s_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)


@triton.jit
def dequant_kernel(qw_ptr, s_ptr, z_ptr, w8_ptr, N, KW, BN: tl.constexpr, BK: tl.constexpr):
    """w int8 [N, KW] from the packed weight (first pass of the DEQUANT_FIRST strategy)."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    kt = tl.program_id(1)
    rk = kt * BK + tl.arange(0, BK)
    c = 128 - tl.load(z_ptr + rn % N).to(tl.int32)
    w = dequant_tile(qw_ptr, c, rn % N, kt, KW, KW // 4, BN, BK, False, False)
    tl.store(w8_ptr + rn[:, None] * KW + rk[None, :], w, mask=(rn[:, None] < N) & (rk[None, :] < KW))


def reference(x, x_scale, weight, bias, out_dtype):
    """The plain-torch truth this kernel reproduces: lowc.quant's W4A8Channel reference GEMM (with
    RAW_ACCUMULATOR, its exact integer part x_q @ q^T - z * sum_k x_q)."""
    from lowc.quant import weight_from_tensors
    from lowc.quant.numerics import exact_int_matmul

    w = weight_from_tensors(FORMAT, weight, x.shape[-1])
    if RAW_ACCUMULATOR.value:
        x2 = x.reshape(-1, x.shape[-1])
        acc = exact_int_matmul(x2, w.codes()) - w.zero.to(torch.int32)[None, :] * x2.to(torch.int32).sum(1, keepdim=True)
        return acc.reshape(*x.shape[:-1], -1)
    return w.linear(x, x_scale, bias, out_dtype)

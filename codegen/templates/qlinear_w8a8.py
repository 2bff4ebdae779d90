"""W8A8 qlinear (SmoothQuant): per-token INT8 activations x per-output-channel INT8 weights.

    acc[n, m] = sum_k q[n, k] * x[m, k]            INT8 tensor-core dot, INT32 accumulation (exact)
    y[m, n]   = acc * s_x[m] * s_w[n] (+ bias[n])   float32 epilogue, then the output dtype
Weight tensors (lowc.quant W8A8): qweight int8 [N, K] row-major (K contiguous: the K-major operand
an INT8 wgmma wants), scale fp16 [N]. Activations: int8 [M, K] and float32 scales [M, 1].
With RAW_ACCUMULATOR the kernel stores acc itself as int32 (no scales, no bias).
"""

# --- template body ---


@triton.jit
def epilogue(acc, sx_ptr, sw_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS: tl.constexpr):
    if RAW_ACCUMULATOR:
        store_tile(out_ptr, acc, rn, rm, M, N, bias_ptr, False)
    else:
        sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
        sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        # Same order of float products as the reference: (acc * s_x) * s_w.
        y = (acc.to(tl.float32) * sx[None, :]) * sw[:, None]
        store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, w_ptr, sw_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm, stride_w16,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr, FAST_DEQUANT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    # Rows past the edge re-read valid rows (modulo) instead of masking every load; the store masks.
    rn_ld = rn % N
    rm_ld = rm % M
    rk = tl.arange(0, BK)
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(K, BK), SPLIT_K)
    acc = tl.zeros((BN, BM), dtype=tl.int32)
    for kt in range(k_first, k_last):
        k = kt * BK + rk
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        w_ptrs = w_ptr + rn_ld[:, None] * KW + k[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            x = tl.load(x_ptrs, mask=k[None, :] < K, other=0)
            w = tl.load(w_ptrs, mask=k[None, :] < KW, other=0)
        acc = tl.dot(w, tl.trans(x), acc, out_dtype=tl.int32)

    if SPLIT_K == 1:
        epilogue(acc, sx_ptr, sw_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx_ptr, sw_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)


def reference(x, x_scale, weight, bias, out_dtype):
    """The plain-torch truth this kernel reproduces: lowc.quant's W8A8 reference GEMM (with
    RAW_ACCUMULATOR, its exact integer part)."""
    from lowc.quant import weight_from_tensors
    from lowc.quant.numerics import exact_int_matmul

    w = weight_from_tensors(FORMAT, weight, x.shape[-1])
    if RAW_ACCUMULATOR.value:
        return exact_int_matmul(x.reshape(-1, x.shape[-1]), w.qweight).reshape(*x.shape[:-1], -1)
    return w.linear(x, x_scale, bias, out_dtype)

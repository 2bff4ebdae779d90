"""W4A8 qlinear with QoQ progressive group dequantization (QServe's W4A8 g128).

    w8[n, k]  = q[n, k] * s1[n, g] - zs1[n, g]      UINT4 -> INT8 in registers, one multiply-subtract
    acc[n, m] = sum_k w8[n, k] * x[m, k]            INT8 tensor-core dot, INT32 accumulation (exact)
    y[m, n]   = acc * s_x[m] * s0[n] (+ bias[n])     float32 epilogue, then the output dtype
Weight tensors (lowc.quant W4A8Grouped, read as they are): qweight uint8 [N, Kp/2] (two codes per
byte along K, low nibble = even k), s1 uint8 [N, Kp/G], zs1 uint8 [N, Kp/G], s0 fp16 [N]; Kp is K
padded to the group (padded codes decode to exactly 0, and x is masked there anyway).
The two nibbles of a byte are split with a shift and a mask and re-interleaved with tl.join +
reshape, which Triton lowers to a register relabelling: each thread already holds both halves of
its bytes, so the natural K order costs no shuffle and the tile feeds wgmma's A operand directly.
The per-group integers s1, zs1 are broadcast over the tile; GROUP_SIZE is a compile-time constant,
so a tile covers whole groups (BK >= GROUP_SIZE) or lies inside one group (BK < GROUP_SIZE).
"""

# --- template body ---


@triton.jit
def dequant_tile(p, s1_ptr, zs1_ptr, rn_ld, kt, n_groups, BN: tl.constexpr, BK: tl.constexpr):
    """Packed uint8 [BN, BK/2] -> int8 w8 [BN, BK] in natural K order (see module docstring)."""
    q = tl.join(p & 0xF, p >> 4).reshape(BN, BK).to(tl.int32)
    if BK <= GROUP_SIZE:
        g = (kt * BK) // GROUP_SIZE
        s1 = tl.load(s1_ptr + rn_ld * n_groups + g).to(tl.int32)
        zs1 = tl.load(zs1_ptr + rn_ld * n_groups + g).to(tl.int32)
        w8 = q * s1[:, None] - zs1[:, None]
    else:
        GPT: tl.constexpr = BK // GROUP_SIZE
        g = kt * GPT + tl.arange(0, GPT)
        offs = rn_ld[:, None] * n_groups + g[None, :]
        gmask = g[None, :] < n_groups
        s1 = tl.load(s1_ptr + offs, mask=gmask, other=0).to(tl.int32)
        zs1 = tl.load(zs1_ptr + offs, mask=gmask, other=0).to(tl.int32)
        w8 = q.reshape(BN, GPT, GROUP_SIZE) * s1[:, :, None] - zs1[:, :, None]
        w8 = w8.reshape(BN, BK)
    return w8.to(tl.int8)


@triton.jit
def epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS: tl.constexpr):
    if RAW_ACCUMULATOR:
        store_tile(out_ptr, acc, rn, rm, M, N, bias_ptr, False)
    else:
        sx = tl.load(sx_ptr + rm, mask=rm < M, other=0.0)
        s0 = tl.load(s0_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        # Same order of float products as the reference: (acc * s_x) * s0.
        y = (acc.to(tl.float32) * sx[None, :]) * s0[:, None]
        store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rk = tl.arange(0, BK)
    rb = tl.arange(0, BK // 2)
    n_groups = KW // GROUP_SIZE
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    acc = tl.zeros((BN, BM), dtype=tl.int32)
    for kt in range(k_first, k_last):
        k = kt * BK + rk
        b = kt * (BK // 2) + rb
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        p_ptrs = qw_ptr + rn_ld[:, None] * (KW // 2) + b[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
            p = tl.load(p_ptrs)
        else:
            x = tl.load(x_ptrs, mask=k[None, :] < K, other=0)
            p = tl.load(p_ptrs, mask=b[None, :] < KW // 2, other=0)
        w8 = dequant_tile(p, s1_ptr, zs1_ptr, rn_ld, kt, n_groups, BN, BK)
        acc = tl.dot(w8, tl.trans(x), acc, out_dtype=tl.int32)

    if SPLIT_K == 1:
        epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx_ptr, s0_ptr, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)


def reference(x, x_scale, weight, bias, out_dtype):
    """The plain-torch truth this kernel reproduces: lowc.quant's W4A8Grouped reference GEMM (with
    RAW_ACCUMULATOR, its exact integer part x_q @ w8'^T)."""
    from lowc.quant import weight_from_tensors
    from lowc.quant.numerics import exact_int_matmul, pad_last_dim

    w = weight_from_tensors(FORMAT, weight, x.shape[-1])
    if RAW_ACCUMULATOR.value:
        w8 = w.int_weight()
        x2 = pad_last_dim(x.reshape(-1, x.shape[-1]), w8.shape[1])
        return exact_int_matmul(x2, w8).reshape(*x.shape[:-1], -1)
    return w.linear(x, x_scale, bias, out_dtype)

"""W4A16 qlinear: asymmetric UINT4 weights per group, floating-point activations.

    w[n, k]   = (q[n, k] - z[n, g]) * s[n, g]        in float32, rounded once to the dot dtype
    acc[n, m] = sum_k w[n, k] * x[m, k]              bf16/fp16 tensor-core dot, float32 accumulation
    y[m, n]   = acc (+ bias[n])                      then the output dtype
Weight tensors (lowc.quant W4A16Grouped, read as they are): qweight uint8 [N, Kp/2] (low nibble =
even k), scale fp16 [N, Kp/G], zero fp16 [N, Kp/G] (integers 0..15). Activations: x [M, K] in
DOT_DTYPE (bf16, fp16; fp32 runs an IEEE fp32 dot, slow but exact to float32 rounding).
q - z is formed without an integer-to-float conversion (a slow instruction on the GPU): q OR the
bit pattern of 2^23 is the float32 2^23 + q exactly, so subtracting the float32 2^23 + z gives q - z
exactly, and one multiply by s gives the reference's float32 weight, rounded once to DOT_DTYPE.
For decode the launcher picks split-K (several programs share one output tile's K range).
"""

# --- template body ---

# float32 bit pattern of 2^23: OR-ing a 4-bit code into its mantissa gives 2^23 + code exactly.
MAGIC_F32_BITS = tl.constexpr(0x4B000000)
MAGIC_F32 = tl.constexpr(8388608.0)


@triton.jit
def dequant_tile(p, s_ptr, z_ptr, rn_ld, kt, n_groups, BN: tl.constexpr, BK: tl.constexpr):
    """Packed uint8 [BN, BK/2] -> weights [BN, BK] in DOT_DTYPE, natural K order."""
    q = tl.join(p & 0xF, p >> 4).reshape(BN, BK)
    qf = (q.to(tl.uint32) | MAGIC_F32_BITS).to(tl.float32, bitcast=True)  # 2^23 + q
    if BK <= GROUP_SIZE:
        g = (kt * BK) // GROUP_SIZE
        s = tl.load(s_ptr + rn_ld * n_groups + g).to(tl.float32)
        zf = tl.load(z_ptr + rn_ld * n_groups + g).to(tl.float32) + MAGIC_F32
        w = (qf - zf[:, None]) * s[:, None]
    else:
        GPT: tl.constexpr = BK // GROUP_SIZE
        g = kt * GPT + tl.arange(0, GPT)
        offs = rn_ld[:, None] * n_groups + g[None, :]
        gmask = g[None, :] < n_groups
        s = tl.load(s_ptr + offs, mask=gmask, other=0.0).to(tl.float32)
        zf = tl.load(z_ptr + offs, mask=gmask, other=0.0).to(tl.float32) + MAGIC_F32
        w = (qf.reshape(BN, GPT, GROUP_SIZE) - zf[:, :, None]) * s[:, :, None]
        w = w.reshape(BN, BK)
    return w.to(DOT_DTYPE)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
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
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    for kt in range(k_first, k_last):
        k = kt * BK + rk
        b = kt * (BK // 2) + rb
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        p_ptrs = qw_ptr + rn_ld[:, None] * (KW // 2) + b[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
            p = tl.load(p_ptrs)
        else:
            x = tl.load(x_ptrs, mask=k[None, :] < K, other=0.0)
            p = tl.load(p_ptrs, mask=b[None, :] < KW // 2, other=0)
        w = dequant_tile(p, s_ptr, z_ptr, rn_ld, kt, n_groups, BN, BK)
        xt = tl.trans(x.to(DOT_DTYPE))
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(w, xt, acc, input_precision="ieee")
        elif INTERPRETED and DOT_DTYPE == tl.bfloat16:
            # Triton's CPU interpreter multiplies bf16 operands as raw integers; the same math
            # (bf16 products are exact in float32, float32 accumulation) as an fp32 dot.
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)

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
    """The plain-torch truth this kernel approximates (float32 accumulation, weights rounded to the
    activation dtype): lowc.quant's W4A16Grouped reference GEMM."""
    from lowc.quant import weight_from_tensors

    return weight_from_tensors(FORMAT, weight, x.shape[-1]).linear(x, x_scale, bias, out_dtype)

"""W4A16 qlinear: asymmetric UINT4 weights per group, floating-point activations.

    w[n, k]   = (q[n, k] - z[n, g]) * s[n, g]        rounded once to the dot dtype
    acc[n, m] = sum_k w[n, k] * x[m, k]              bf16/fp16 tensor-core dot, float32 accumulation
    y[m, n]   = acc (+ bias[n])                      then the output dtype
Weight tensors (lowc.quant W4A16Grouped, read as they are): qweight uint8 [N, Kp/2] (low nibble =
even k), scale fp16 [N, Kp/G], zero fp16 [N, Kp/G] (integers 0..15). Activations: x [M, K] in
DOT_DTYPE (bf16, fp16; fp32 runs an IEEE fp32 dot, slow but exact to float32 rounding).

The weight is q - z (exact) times the scale rounded to DOT_DTYPE, rounded once to DOT_DTYPE: for
fp16 that equals rounding the reference's float32 (q - z) * s; for bf16 the scale itself is rounded
to bf16 first (relative error <= 2^-9 on top of the weight's own bf16 rounding). The GPU path
(`u4_bytes_to_halves`) does this for two codes per register without integer-to-float conversions:
a code OR-ed into the mantissa of MAGIC (128 in bf16, 1024 in fp16, both with a unit last place) is
MAGIC + q exactly, one packed fma subtracts MAGIC + z exactly, one packed fma multiplies by the
scale. The element-wise path computes the same values in float32 (MAGIC = 2^23).
For decode the launcher picks split-K (several programs share one output tile's K range).
"""
# --- template body ---

# float32 bit pattern of 2^23: OR-ing a 4-bit code into its mantissa gives 2^23 + code exactly.
MAGIC_F32_BITS = tl.constexpr(0x4B000000)
MAGIC_F32 = tl.constexpr(8388608.0)


@triton.jit
def u4_bytes_to_halves(b, s2, zn2, BN: tl.constexpr, BK: tl.constexpr):
    """GPU only. Packed bytes (two codes each) [BN, BK // 2] -> DOT_DTYPE weights (q - z) * s
    [BN, BK]. b: the bytes (int32); s2, zn2: the scale and -(MAGIC + z) as two packed DOT_DTYPE
    halves. One byte per 32-bit register of two halves (low = even k), then split and interleaved."""
    if DOT_DTYPE == tl.bfloat16:
        r = tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 r, one, nz;
            mov.b32 one, 0x3F803F80;
            mov.b32 nz, 0x80008000;
            mad.lo.u32 r, $1, 0x1001, 0;
            and.b32 r, r, 0x000F000F;
            or.b32 r, r, 0x43004300;
            fma.rn.bf16x2 r, r, one, $3;
            fma.rn.bf16x2 $0, r, $2, nz;
            }""",
            constraints="=r,r,r,r", args=[b, s2, zn2], dtype=tl.int32, is_pure=True, pack=1)
    else:
        r = tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 r, one, nz;
            mov.b32 one, 0x3C003C00;
            mov.b32 nz, 0x80008000;
            mad.lo.u32 r, $1, 0x1001, 0;
            and.b32 r, r, 0x000F000F;
            or.b32 r, r, 0x64006400;
            fma.rn.f16x2 r, r, one, $3;
            fma.rn.f16x2 $0, r, $2, nz;
            }""",
            constraints="=r,r,r,r", args=[b, s2, zn2], dtype=tl.int32, is_pure=True, pack=1)
    lo = r.to(tl.uint16).to(DOT_DTYPE, bitcast=True)
    hi = (r >> 16).to(tl.uint16).to(DOT_DTYPE, bitcast=True)
    return tl.join(lo, hi).reshape(BN, BK)


@triton.jit
def packed_halves(v):
    """int32 holding two copies of the DOT_DTYPE bits of v (float32 tensor)."""
    bits = v.to(DOT_DTYPE).to(tl.uint16, bitcast=True).to(tl.int32)
    return bits | (bits << 16)


@triton.jit
def group_params(s_ptr, z_ptr, rn_ld, kt, n_groups, BK: tl.constexpr):
    """(scale as the dot dtype holds it, zero) as float32 [BN, groups of tile kt]; kt may run one
    past the last tile (the prefetch), where the loads are clamped to the last group."""
    kt = tl.minimum(kt, tl.cdiv(n_groups * GROUP_SIZE, BK) - 1)
    # The scale rounded to the dot dtype (exact for fp16/fp32, rounded for bf16).
    s = load_group_values(s_ptr, rn_ld, kt, n_groups, BK, GROUP_SIZE).to(DOT_DTYPE).to(tl.float32)
    z = load_group_values(z_ptr, rn_ld, kt, n_groups, BK, GROUP_SIZE).to(tl.float32)
    return s, z


@triton.jit
def dequant_tile(qw_ptr, s, z, rn_ld, kt, KW,
                 BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr, FAST_DEQUANT: tl.constexpr):
    """Weights [BN, BK] in DOT_DTYPE from the tile's group parameters, natural K order."""
    if FAST_DEQUANT:
        magic = 128.0 if DOT_DTYPE == tl.bfloat16 else 1024.0
        rb = kt * (BK // 2) + tl.arange(0, BK // 2)
        ptrs = qw_ptr + rn_ld[:, None] * (KW // 2) + rb[None, :]
        if EVEN_K:
            p = tl.load(ptrs)
        else:
            p = tl.load(ptrs, mask=rb[None, :] < KW // 2, other=0)
        s2 = expand_groups(packed_halves(s), BN, BK // 2)
        zn2 = expand_groups(packed_halves(-(z + magic)), BN, BK // 2)
        return u4_bytes_to_halves(p.to(tl.int32), s2, zn2, BN, BK)
    else:
        q = load_codes(qw_ptr, rn_ld, kt, KW, BN, BK, EVEN_K)
        qf = (q.to(tl.uint32) | MAGIC_F32_BITS).to(tl.float32, bitcast=True)  # 2^23 + q
        w = (qf - expand_groups(z + MAGIC_F32, BN, BK)) * expand_groups(s, BN, BK)
        return w.to(DOT_DTYPE)


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
    n_groups = KW // GROUP_SIZE
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    acc = tl.zeros((BN, BM), dtype=tl.float32)
    # Group parameters are tiny loads Triton does not pipeline: fetch them one tile ahead.
    s, z = group_params(s_ptr, z_ptr, rn_ld, k_first, n_groups, BK)
    for kt in range(k_first, k_last):
        k = kt * BK + rk
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=k[None, :] < K, other=0.0)
        s_next, z_next = group_params(s_ptr, z_ptr, rn_ld, kt + 1, n_groups, BK)
        w = dequant_tile(qw_ptr, s, z, rn_ld, kt, KW, BN, BK, EVEN_K, FAST_DEQUANT)
        xt = tl.trans(x.to(DOT_DTYPE))
        if DOT_DTYPE == tl.float32:
            acc = tl.dot(w, xt, acc, input_precision="ieee")
        elif INTERPRETED and DOT_DTYPE == tl.bfloat16:
            # Triton's CPU interpreter multiplies bf16 operands as raw integers; the same math
            # (bf16 products are exact in float32, float32 accumulation) as an fp32 dot.
            acc = tl.dot(w.to(tl.float32), xt.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(w, xt, acc)
        s, z = s_next, z_next

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

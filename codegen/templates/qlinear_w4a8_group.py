"""W4A8 qlinear with QoQ progressive group dequantization (QServe's W4A8 g128).

    w8[n, k]  = q[n, k] * s1[n, g] - zs1[n, g]      UINT4 -> INT8 in registers, one multiply-add
    acc[n, m] = sum_k w8[n, k] * x[m, k]            INT8 tensor-core dot, INT32 accumulation (exact)
    y[m, n]   = acc * s_x[m] * s0[n] (+ bias[n])     float32 epilogue, then the output dtype
Weight tensors (lowc.quant W4A8Grouped, read as they are): qweight uint8 [N, Kp/2] in nibble-split
order (each 32-bit word holds eight consecutive codes: code b of the word in the low nibble of byte
b, code 4 + b in its high nibble, b = 0..3), s1 uint8 [N, Kp/G], zs1 uint8 [N, Kp/G], s0 fp16 [N];
Kp is K padded to the group (padded codes decode to exactly 0, and x is masked there anyway).

Dequantization computes w8 as ((q * s1 + c) ^ 0x80) with c = 128 - zs1, read as int8: q * s1 + c
= w8 + 128, which lies in 0..255 because the protective range keeps w8 in -128..127, and XOR-ing
bit 7 turns w8 + 128 into the two's-complement byte of w8. The packing lets that run on four codes
per register with plain integer operations (`dequant_tile`): `word & 0x0F0F0F0F` holds codes 0..3
of a word and `(word >> 4) & 0x0F0F0F0F` codes 4..7, each in four byte lanes and in natural K
order, so one multiply-add with (s1, c * 0x01010101) and one XOR finish four weights: seven
integer instructions per eight weights, the same code on the GPU and under the interpreter.
Products q * s1 <= 15 * 16 = 240 fit a byte lane, and since every lane's final value stays in
0..255 and all four lanes add the same c, the word arithmetic never carries or borrows across lanes.

Decode (M <= 16): a config with GEMV runs `gemv_kernel`, which never forms w8 and uses no tensor
cores. The weight is the only real traffic there, so the kernel streams it in 16-byte loads of
int32 code words and keeps the arithmetic near one instruction per four weights: the word's two
masks give codes 0..3 and 4..7 as unsigned byte lanes, which meet the activations x0..x3 and x4..x7
exactly as two int32 words of x hold them, and two `dp4a` give sum q*x over the word. Per group the
level-1 parameters are applied once, to the sums:
    sum_k (q*s1 - zs1) * x = s1 * sum_k q*x - zs1 * sum_k x,
the same integer as the tensor-core path's sum_k w8 * x (all int32, exact).

Operand mapping (tensor-core kernel). By default the dequantized tile is the MMA's A operand and
the tokens its N side (acc[n, m], common.py). With W_AS_B the kernel computes acc_t[m, n] = x . w8^T
instead (tokens as A, weight as B) and transposes the accumulator once after the K loop; the
integer sum is the same. What that changes is the instruction Triton picks: with 16-32 tokens as A
it is `mma.sync` (the Ampere MMA, under Triton's 64-rows-per-warpgroup threshold for `wgmma`) with
both operands in registers, so the unpacked weight neither waits on a `wgmma` nor passes through
shared memory; with 64+ tokens it is `wgmma` with the weight stored to shared memory as B. The
tuner decides per shape (docs/kernels.md, "Operand mapping").

Large M: a config with DEQUANT_FIRST runs `dequant_kernel` once (w8 into an int8 [N, Kp] buffer)
and then the W8A8 kernel, whose epilogue (acc * s_x * s) is this one with s = s0.
"""

# --- template body ---


BYTE_SIGN_BITS = tl.constexpr(-0x7F7F7F80)  # 0x80808080 as an int32


@triton.jit
def group_params(s1_ptr, zs1_ptr, rn_ld, kt, n_groups, BK: tl.constexpr):
    """(s1, c = 128 - zs1) as int32 [BN, groups of tile kt]; kt may run one past the last tile
    (the prefetch), where the loads are clamped to the last group."""
    kt = tl.minimum(kt, tl.cdiv(n_groups * GROUP_SIZE, BK) - 1)
    s1 = load_group_values(s1_ptr, rn_ld, kt, n_groups, BK, GROUP_SIZE).to(tl.int32)
    c = 128 - load_group_values(zs1_ptr, rn_ld, kt, n_groups, BK, GROUP_SIZE).to(tl.int32)
    return s1, c


@triton.jit
def dequant_tile(qw_ptr, s1, c, rn_ld, kt, stride_w32, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr):
    """int8 w8 [BN, BK] of K tile kt from its group parameters, natural K order (module docstring).
    stride_w32 = KW // 8, the row length in 32-bit code words (from the host, so that Triton sees
    its divisibility and loads 16 bytes at a time). A word never straddles a group (G >= 8)."""
    rw = kt * (BK // 8) + tl.arange(0, BK // 8)
    ptrs = qw_ptr.to(tl.pointer_type(tl.int32)) + rn_ld[:, None] * stride_w32 + rw[None, :]
    if EVEN_K:
        words = tl.load(ptrs)
    else:  # past the row: w8 comes out as garbage, but x is masked to 0 there
        words = tl.load(ptrs, mask=rw[None, :] < stride_w32, other=0)
    mul = expand_groups(s1, BN, BK // 8)
    add_x4 = expand_groups(c * 0x01010101, BN, BK // 8)
    lo = ((words & 0x0F0F0F0F) * mul + add_x4) ^ BYTE_SIGN_BITS  # K offsets 8w + 0..3
    hi = (((words >> 4) & 0x0F0F0F0F) * mul + add_x4) ^ BYTE_SIGN_BITS  # K offsets 8w + 4..7
    return unpack_byte_lanes(tl.join(lo, hi).reshape(BN, BK // 4), BN, BK)


@triton.jit
def epilogue_scales(sx_ptr, s0_ptr, rn, rm, M, N):
    """The per-token and per-channel scales of the epilogue. Split-K kernels load them before the
    reduction, so their latency overlaps its atomics instead of following the last ticket."""
    if RAW_ACCUMULATOR:
        return tl.zeros((1,), tl.float32), tl.zeros((1,), tl.float32)
    else:
        return (tl.load(sx_ptr + rm, mask=rm < M, other=0.0),
                tl.load(s0_ptr + rn, mask=rn < N, other=0.0).to(tl.float32))


@triton.jit
def epilogue(acc, sx, s0, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS: tl.constexpr):
    if RAW_ACCUMULATOR:
        store_tile(out_ptr, acc, rn, rm, M, N, bias_ptr, False)
    else:
        # Same order of float products as the reference: (acc * s_x) * s0.
        y = (acc.to(tl.float32) * sx[None, :]) * s0[:, None]
        store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, HAS_BIAS)


@triton.jit
def qlinear_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, K, KW, stride_xm, stride_w32,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, INTERPRETED: tl.constexpr, FAST_DEQUANT: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr,
    W_AS_B: tl.constexpr = False, PDL: tl.constexpr = False,
):
    # FAST_DEQUANT (shared launcher argument) is unused: this format's unpacking is plain integer
    # code, the same on the GPU and under the interpreter.
    grid_dependency_wait(PDL)  # PDL: launched as a programmatic dependent (runtime/pdl.py)
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rn = pid_n * BN + tl.arange(0, BN)
    rm = pid_m * BM + tl.arange(0, BM)
    rn_ld = rn % N
    rm_ld = rm % M
    rk = tl.arange(0, BK)
    n_groups = KW // GROUP_SIZE
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    if W_AS_B:
        acc_t = tl.zeros((BM, BN), dtype=tl.int32)
    else:
        acc = tl.zeros((BN, BM), dtype=tl.int32)
    # The per-group integers are tiny loads Triton does not pipeline: fetch them one tile ahead so
    # their memory latency overlaps the current tile's work instead of stalling every iteration.
    # (Three tiles ahead was measured slower on an H200, 2026-11-21: 7.9 -> 9.7 us at M=16 and
    # 22 -> 28 us at M=128 on 4096x4096; the per-tile time is not this load's latency.)
    s1, c = group_params(s1_ptr, zs1_ptr, rn_ld, k_first, n_groups, BK)
    for kt in range(k_first, k_last):
        k = kt * BK + rk
        x_ptrs = x_ptr + rm_ld[:, None] * stride_xm + k[None, :]
        if EVEN_K:
            x = tl.load(x_ptrs)
        else:
            x = tl.load(x_ptrs, mask=k[None, :] < K, other=0)
        s1_next, c_next = group_params(s1_ptr, zs1_ptr, rn_ld, kt + 1, n_groups, BK)
        w8 = dequant_tile(qw_ptr, s1, c, rn_ld, kt, stride_w32, BN, BK, EVEN_K)
        if W_AS_B:
            acc_t = tl.dot(x, tl.trans(w8), acc_t, out_dtype=tl.int32)
        else:
            acc = tl.dot(w8, tl.trans(x), acc, out_dtype=tl.int32)
        s1, c = s1_next, c_next
    if W_AS_B:
        acc = tl.trans(acc_t)

    sx, s0 = epilogue_scales(sx_ptr, s0_ptr, rn, rm, M, N)
    if SPLIT_K == 1:
        epilogue(acc, sx, s0, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        tile_id = pid_m * tl.cdiv(N, BN) + pid_n
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx, s0, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)



@triton.jit
def gemv_kernel(
    x_ptr, sx_ptr, qw_ptr, s1_ptr, zs1_ptr, s0_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KW, KX8, stride_xm8, stride_w32,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, FAST: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr = False,
):
    """Decode (M <= 16) on the CUDA cores: no dequantized weight, no tensor cores (module docstring).

    Program (pid 0) = BN output channels x BM tokens, split pid 1 of SPLIT_K over the K tiles. The
    weight tile [BN, groups, words of a group] is read as int32 code words (eight codes, 16-byte
    loads); x as int64 words (eight int8 values, KX8 = K / 8 of them per row, stride_xm8 per row)."""
    WPG: tl.constexpr = GROUP_SIZE // 8  # code words per group
    GPT: tl.constexpr = BK // GROUP_SIZE  # groups per K tile
    pid_n, pid_m = tile_coords(tl.program_id(0), M, N, BM, BN, 1)
    rn = pid_n * BN + tl.arange(0, BN)
    rn_ld = rn % N
    rm = pid_m * BM + tl.arange(0, BM)
    rg = tl.arange(0, GPT)
    rj = tl.arange(0, WPG)
    n_groups = KW // GROUP_SIZE
    qw32 = qw_ptr.to(tl.pointer_type(tl.int32))
    x64 = x_ptr.to(tl.pointer_type(tl.int64))
    k_first, k_last = split_range(tl.program_id(1), tl.cdiv(KW, BK), SPLIT_K)
    acc = tl.zeros((BN, BM), dtype=tl.int32)
    grid_dependency_wait(PDL)  # PDL: launched as a programmatic dependent (runtime/pdl.py)
    for kt in range(k_first, k_last):
        g = kt * GPT + rg
        w_ptrs = qw32 + rn_ld[:, None, None] * stride_w32 + g[None, :, None] * WPG + rj[None, None, :]
        p_ptrs = rn_ld[:, None] * n_groups + g[None, :]
        if EVEN_K:
            words = tl.load(w_ptrs)
            s1 = tl.load(s1_ptr + p_ptrs).to(tl.int32)
            zs1 = tl.load(zs1_ptr + p_ptrs).to(tl.int32)
        else:
            words = tl.load(w_ptrs, mask=g[None, :, None] < n_groups, other=0)
            s1 = tl.load(s1_ptr + p_ptrs, mask=g[None, :] < n_groups, other=0).to(tl.int32)
            zs1 = tl.load(zs1_ptr + p_ptrs, mask=g[None, :] < n_groups, other=0).to(tl.int32)
        lo, hi = u4_nibble_lanes(words)
        xw_off = g[:, None] * WPG + rj[None, :]
        for i in tl.static_range(BM):
            x_ptrs = x64 + tl.minimum(pid_m * BM + i, M - 1) * stride_xm8 + xw_off
            if EVEN_K:
                xw = tl.load(x_ptrs)
            else:
                xw = tl.load(x_ptrs, mask=xw_off < KX8, other=0)
            xa = xw.to(tl.int32)  # x 8w + 0..3, the lanes of lo
            xb = (xw >> 32).to(tl.int32)  # x 8w + 4..7, the lanes of hi
            # Per group: sum_k q*x (two dp4a per word), then s1 * that - zs1 * sum_k x, which is
            # sum_k (q*s1 - zs1) * x = sum_k w8 * x exactly (integer arithmetic throughout).
            qx = tl.sum(dot8_u4_i8(lo, hi, xa[None, :, :], xb[None, :, :], FAST), axis=2)
            ones = tl.full((GPT, WPG), 0x01010101, tl.int32)
            xsum = tl.sum(dot8_u4_i8(ones, ones, xa, xb, FAST), axis=1)
            part = tl.sum(qx * s1 - zs1 * xsum[None, :], axis=1)
            acc += tl.where(tl.arange(0, BM)[None, :] == i, part[:, None], 0)

    sx, s0 = epilogue_scales(sx_ptr, s0_ptr, rn, rm, M, N)
    if SPLIT_K == 1:
        epilogue(acc, sx, s0, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)
    else:
        offs = rm[None, :] * N + rn[:, None]
        mask = (rn[:, None] < N) & (rm[None, :] < M)
        acc, is_last = splitk_reduce(acc, ws_ptr, cnt_ptr, tl.program_id(0), offs, mask, SPLIT_K)
        if is_last:
            epilogue(acc, sx, s0, bias_ptr, out_ptr, rn, rm, M, N, HAS_BIAS)


@triton.jit
def dequant_kernel(qw_ptr, s1_ptr, zs1_ptr, w8_ptr, N, KW, BN: tl.constexpr, BK: tl.constexpr):
    """w8 int8 [N, KW] from the packed weight (first pass of the DEQUANT_FIRST strategy)."""
    rn = tl.program_id(0) * BN + tl.arange(0, BN)
    kt = tl.program_id(1)
    rk = kt * BK + tl.arange(0, BK)
    s1, c = group_params(s1_ptr, zs1_ptr, rn % N, kt, KW // GROUP_SIZE, BK)
    w8 = dequant_tile(qw_ptr, s1, c, rn % N, kt, KW // 8, BN, BK, False)
    tl.store(w8_ptr + rn[:, None] * KW + rk[None, :], w8, mask=(rn[:, None] < N) & (rk[None, :] < KW))


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

"""RoPE fused with the KV cache store: q rotated, k rotated and quantized, v quantized, one launch.

Program (row block of BLOCK_T tokens of batch row b, head hh) over hh in [0, HQ + HKV (+ HKV)):
    hh <  HQ          q[b, hh]      -> rotate-half RoPE -> q_out[b, hh] (contiguous [B, HQ, T, D])
    hh <  HQ + HKV    k[b, hh-HQ]   -> RoPE (ROPE_K)     -> quantize -> k cache of slot_ids[b]
    otherwise         v[b, ...]     ->                      quantize -> v cache (HAS_V)
so one kernel serves lowc::rope_qkv_store (HQ = H, ROPE_K, HAS_V), lowc::rope_kv_store (HQ = 0,
ROPE_K) and lowc::kv_store (HQ = 0). Rows are left-padded: token t of row b is real when
t >= T - new_lens[b] and goes to cache position cache_lens[b] + t - (T - new_lens[b]); padding is
rotated (for q) but never stored. With ROTATE (the scheme's kv_rotation), q and k go through the
key rotation after RoPE: the normalized Walsh-Hadamard transform over head_dim
(lowc.ops.kv_ops.hadamard_reference), with the same float32 butterflies in the same order, so the
result is bit-identical too. With CENTER_K (the scheme's kv_key_center), the stored keys are
centred after that: k - key_bias[head] in float32, rounded to the RoPE dtype
(lowc.ops.kv_ops.center_key_reference).

RoPE is x*cos + rotate_half(x)*sin with each product and the sum rounded to the output dtype, the
eager graph's order, so it is bit-identical to lowc.ops.kv_ops.rotate_half_rope: the launcher turns
off floating-point contraction (enable_fp_fusion=False), which would otherwise fuse a product into
the add as an FMA (seen in fp16 and fp32 on sm_90). The cache encoding is
lowc.quant.kv's exactly (KV_BITS = the format's bits): float32 math, IEEE division (div_rn),
round-half-to-even, fp16 scales rounded up (a scale above 65504 becomes inf here, where the
reference raises); KV4 packs two UINT4 a byte, low nibble = even d.
"""

# --- template body ---

KV_BITS = W_BITS  # 16: the model dtype, unquantized; 8: symmetric INT8; 4: asymmetric UINT4
FP16_TINY = tl.constexpr(5.960464477539063e-08)  # 2**-24, the smallest fp16 scale


@triton.jit
def fp16_scale_up(s):
    """lowc.quant.numerics.to_fp16_scale: clamp at 2**-24, round to fp16, step up if that fell below."""
    s = tl.maximum(s, FP16_TINY)
    h = s.to(tl.float16)
    up = (h.to(tl.int16, bitcast=True) + 1).to(tl.float16, bitcast=True)
    return tl.where(h.to(tl.float32) < s, up, h)


@triton.jit
def rope_tile(x_base, stride_t, cos_base, sin_base, stride_ct, stride_st, t, tmask, d, out_ty,
              HEAD_DIM: tl.constexpr):
    """x*cos + rotate_half(x)*sin for a [BLOCK_T, HEAD_DIM] tile, rounded like eager torch."""
    m = tmask[:, None]
    x = tl.load(x_base + t[:, None] * stride_t + d[None, :], mask=m, other=0.0).to(tl.float32)
    partner = tl.where(d < HEAD_DIM // 2, d + HEAD_DIM // 2, d - HEAD_DIM // 2)
    xr = tl.load(x_base + t[:, None] * stride_t + partner[None, :], mask=m, other=0.0).to(tl.float32)
    xr = tl.where(d[None, :] < HEAD_DIM // 2, -xr, xr)
    c = tl.load(cos_base + t[:, None] * stride_ct + d[None, :], mask=m, other=0.0).to(tl.float32)
    s = tl.load(sin_base + t[:, None] * stride_st + d[None, :], mask=m, other=0.0).to(tl.float32)
    a = round_to(x * c, out_ty).to(tl.float32)
    b = round_to(xr * s, out_ty).to(tl.float32)
    return round_to(a + b, out_ty)


@triton.jit
def butterfly(x, BLOCK_T: tl.constexpr, HEAD_DIM: tl.constexpr, H: tl.constexpr):
    """One Walsh-Hadamard stage: in each block of 2H columns, (x[i], x[i + H]) -> (a + b, a - b)."""
    pairs = tl.permute(tl.reshape(x, (BLOCK_T, HEAD_DIM // (2 * H), 2, H)), (0, 1, 3, 2))  # the pair last
    a, b = tl.split(pairs)
    return tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (BLOCK_T, HEAD_DIM))


@triton.jit
def hadamard_tile(y, out_ty, RSQRT_D: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr):
    """lowc.ops.kv_ops.hadamard_reference on a [BLOCK_T, HEAD_DIM] tile: float32 stages h = 1, 2, 4, ...
    (HEAD_DIM <= 256), then * RSQRT_D (= fp32(1/sqrt(HEAD_DIM)), from the launcher) and rounding."""
    x = butterfly(y.to(tl.float32), BLOCK_T, HEAD_DIM, 1)
    if HEAD_DIM > 2:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 2)
    if HEAD_DIM > 4:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 4)
    if HEAD_DIM > 8:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 8)
    if HEAD_DIM > 16:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 16)
    if HEAD_DIM > 32:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 32)
    if HEAD_DIM > 64:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 64)
    if HEAD_DIM > 128:
        x = butterfly(x, BLOCK_T, HEAD_DIM, 128)
    return round_to(x * RSQRT_D, out_ty)


@triton.jit
def store_kv(y, data_ptr, scale_ptr, zero_ptr, row, valid, d, HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr,
             GROUPS: tl.constexpr = 1):
    """Encode y [BLOCK_T, HEAD_DIM] per token as the cache format and store the valid rows at cache
    rows `row` (= (slot * HKV + head) * max_tokens + position). kv4 with GROUPS > 1: one scale/zero
    pair per contiguous HEAD_DIM / GROUPS piece of each row, stored at row * GROUPS + group."""
    m = valid[:, None]
    if KV_BITS == 16:
        tl.store(data_ptr + row[:, None] * HEAD_DIM + d[None, :], y.to(data_ptr.dtype.element_ty), mask=m)
    elif KV_BITS == 8:
        y = y.to(tl.float32)
        amax = tl.max(tl.abs(y), axis=1)
        s16 = fp16_scale_up(tl.math.div_rn(amax, tl.zeros_like(amax) + 127.0))
        s = s16.to(tl.float32)
        q = tl.minimum(tl.maximum(rint(tl.math.div_rn(y, tl.zeros_like(y) + s[:, None])), -127.0), 127.0)
        tl.store(data_ptr + row[:, None] * HEAD_DIM + d[None, :], q.to(tl.int8), mask=m)
        tl.store(scale_ptr + row, s16, mask=valid)
    else:
        y = tl.reshape(y.to(tl.float32), (BLOCK_T, GROUPS, HEAD_DIM // GROUPS))
        vmin = tl.minimum(tl.min(y, axis=2), 0.0)
        vmax = tl.maximum(tl.max(y, axis=2), 0.0)
        s16 = fp16_scale_up(tl.math.div_rn(vmax - vmin, tl.zeros_like(vmin) + 15.0))
        s = s16.to(tl.float32)
        z16 = tl.math.div_rn(-vmin, s).to(tl.float16)  # the fractional zero point, as stored
        z = z16.to(tl.float32)
        q = rint(tl.math.div_rn(y, tl.zeros_like(y) + s[:, :, None]) + z[:, :, None])
        q = tl.reshape(tl.minimum(tl.maximum(q, 0.0), 15.0).to(tl.uint8), (BLOCK_T, HEAD_DIM))
        lo, hi = tl.split(tl.reshape(q, (BLOCK_T, HEAD_DIM // 2, 2)))
        j = tl.arange(0, HEAD_DIM // 2)
        tl.store(data_ptr + row[:, None] * (HEAD_DIM // 2) + j[None, :], lo | (hi << 4), mask=m)
        g = tl.arange(0, GROUPS)
        at = row[:, None] * GROUPS + g[None, :]
        tl.store(scale_ptr + at, s16, mask=m)
        tl.store(zero_ptr + at, z16, mask=m)


@triton.jit
def rope_store_kernel(
    q_ptr, k_ptr, v_ptr, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t,
    cos_ptr, sin_ptr, sc_b, sc_t, ss_b, ss_t, qo_ptr,
    kd_ptr, ks_ptr, kz_ptr, vd_ptr, vs_ptr, vz_ptr,
    slot_ptr, clen_ptr, nlen_ptr, kb_ptr,
    T, HQ, HKV, MAX_TOKENS,
    ROPE_K: tl.constexpr, HAS_V: tl.constexpr, ROTATE: tl.constexpr, CENTER_K: tl.constexpr, RSQRT_D: tl.constexpr,
    HEAD_DIM: tl.constexpr, BLOCK_T: tl.constexpr, K_GROUPS: tl.constexpr = 1, PDL: tl.constexpr = False,
):
    grid_dependency_wait(PDL)  # PDL: launched as a programmatic dependent (runtime/pdl.py)
    n_tb = tl.cdiv(T, BLOCK_T)
    b = tl.program_id(0) // n_tb
    tb = tl.program_id(0) % n_tb
    hh = tl.program_id(1)
    t = tb * BLOCK_T + tl.arange(0, BLOCK_T)
    tmask = t < T
    d = tl.arange(0, HEAD_DIM)
    out_ty = qo_ptr.dtype.element_ty  # the RoPE result dtype (promotion of x and cos)
    cos_base = cos_ptr + b.to(tl.int64) * sc_b
    sin_base = sin_ptr + b.to(tl.int64) * ss_b
    if hh < HQ:
        y = rope_tile(q_ptr + b.to(tl.int64) * sq_b + hh * sq_h, sq_t, cos_base, sin_base, sc_t, ss_t,
                      t, tmask, d, out_ty, HEAD_DIM)
        if ROTATE:
            y = hadamard_tile(y, out_ty, RSQRT_D, HEAD_DIM, BLOCK_T)
        out = qo_ptr + ((b.to(tl.int64) * HQ + hh) * T + t[:, None]) * HEAD_DIM + d[None, :]
        tl.store(out, y, mask=tmask[:, None])
    else:
        new = tl.load(nlen_ptr + b)
        first = T - new
        valid = tmask & (t >= first)
        pos = tl.load(clen_ptr + b) + t - first
        slot = tl.load(slot_ptr + b)
        head = hh - HQ
        if head < HKV:
            base = k_ptr + b.to(tl.int64) * sk_b + head * sk_h
            if ROPE_K:
                y = rope_tile(base, sk_t, cos_base, sin_base, sc_t, ss_t, t, tmask, d, out_ty, HEAD_DIM)
                if ROTATE:
                    y = hadamard_tile(y, out_ty, RSQRT_D, HEAD_DIM, BLOCK_T)
                if CENTER_K:
                    centre = tl.load(kb_ptr + head * HEAD_DIM + d).to(tl.float32)
                    y = round_to(y.to(tl.float32) - centre[None, :], out_ty)
            else:
                y = tl.load(base + t[:, None] * sk_t + d[None, :], mask=tmask[:, None], other=0.0)
            row = (slot * HKV + head) * MAX_TOKENS + pos
            store_kv(y, kd_ptr, ks_ptr, kz_ptr, row, valid, d, HEAD_DIM, BLOCK_T, K_GROUPS)
        elif HAS_V:
            head = head - HKV
            y = tl.load(v_ptr + b.to(tl.int64) * sv_b + head * sv_h + t[:, None] * sv_t + d[None, :],
                        mask=tmask[:, None], other=0.0)
            row = (slot * HKV + head) * MAX_TOKENS + pos
            store_kv(y, vd_ptr, vs_ptr, vz_ptr, row, valid, d, HEAD_DIM, BLOCK_T)


def reference(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, rotate=False, key_bias=None):
    """The plain-torch truth: lowc.ops.fused_ops.rope_qkv_store_reference (q and v may be None for
    lowc::rope_kv_store; cos and sin None too for lowc::kv_store); returns the rotated q or None."""
    from lowc.ops.fused_ops import rope_qkv_store_reference
    from lowc.ops.kv_ops import kv_store_reference, rope_kv_store_reference

    if q is not None:
        return rope_qkv_store_reference(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, FORMAT,
                                        rotate, key_bias)
    if cos is None:
        kv_store_reference(k, k_cache, slot_ids, cache_lens, new_lens, FORMAT)
    else:
        rope_kv_store_reference(k, cos, sin, k_cache, slot_ids, cache_lens, new_lens, FORMAT, rotate, key_bias)
    return None

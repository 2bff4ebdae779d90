"""Row glue fused with per-token activation quantization: one program per token, one launch per op.

    PROLOGUE "none"          y = x                                       (lowc::quantize_act)
    PROLOGUE "rms_norm"      y = rms_norm(x, w, eps)                     (lowc::rms_norm_quant)
    PROLOGUE "add_rms_norm"  s = x + r (stored); y = rms_norm(s, w, eps) (lowc::add_rms_norm_quant, add_rms_norm)
    PROLOGUE "silu_mul"      y = silu(x) * r                             (lowc::silu_mul_quant)
then, with QUANT, y is quantized per token as lowc.quant.activations does (A_BITS 8: one INT8 scale
absmax/127 per token; A_BITS 4: INT4 per group of GROUP_SIZE channels with scale absmax/7, the last
N_OUTLIERS channels INT8 with one scale), else y is stored in the output dtype.

The whole row lives in registers (BLOCK_K = K rounded up to a power of two), so x is read once and
the row statistics (sum of squares, absmax) need no second pass. Every intermediate is rounded to
the dtype the eager graph rounds it to (the add and the normalized value to x's dtype, the weight
product to the promoted dtype, silu and the product to x's dtype), and the quantizer uses IEEE
division (div_rn) and round-half-to-even like the reference. What can differ is the order of the
float32 sums (sum of squares) and the exp inside silu, by an ulp: a quantized value then moves by
one step where x/scale lies within an ulp of a rounding boundary (rare; the tests bound it).
"""

# --- template body ---

@triton.jit
def symmetric_scale(amax, QMAX: tl.constexpr):
    """absmax / qmax in float32 (IEEE); an all-zero row gets scale 1, as the reference guards it."""
    s = tl.math.div_rn(amax, tl.zeros_like(amax) + QMAX)
    return tl.where(s > 0, s, 1.0)


@triton.jit
def quantize_store(y, k, K, q_ptr, s_ptr, row, BLOCK_K: tl.constexpr):
    """Quantize the float32 row y (0 beyond K) and store q int8 [K] and its float32 scales."""
    a = tl.abs(y)
    if A_BITS == 8:
        s = symmetric_scale(tl.max(a, axis=0), 127.0)
        q = tl.minimum(tl.maximum(rint(tl.math.div_rn(y, tl.zeros_like(y) + s)), -127.0), 127.0)
        tl.store(q_ptr + row * K + k, q.to(tl.int8), mask=k < K)
        tl.store(s_ptr + row, s)
    else:
        normal = K - N_OUTLIERS
        n_groups = tl.cdiv(normal, GROUP_SIZE)
        is_normal = k < normal
        grouped = tl.reshape(tl.where(is_normal, a, 0.0), (BLOCK_K // GROUP_SIZE, GROUP_SIZE))
        gs = symmetric_scale(tl.max(grouped, axis=1), 7.0)
        s_el = tl.reshape(tl.broadcast_to(gs[:, None], (BLOCK_K // GROUP_SIZE, GROUP_SIZE)), (BLOCK_K,))
        qmax = tl.full(y.shape, 7.0, tl.float32)
        n_scales = n_groups
        if N_OUTLIERS > 0:
            n_scales = n_groups + 1  # the outlier tail's scale comes last
            tail_s = symmetric_scale(tl.max(tl.where(is_normal, 0.0, a), axis=0), 127.0)
            s_el = tl.where(is_normal, s_el, tail_s)
            qmax = tl.where(is_normal, qmax, 127.0)
            tl.store(s_ptr + row * n_scales + n_groups, tail_s)
        q = tl.minimum(tl.maximum(rint(tl.math.div_rn(y, s_el)), -qmax), qmax)
        tl.store(q_ptr + row * K + k, q.to(tl.int8), mask=k < K)
        g = tl.arange(0, BLOCK_K // GROUP_SIZE)
        tl.store(s_ptr + row * n_scales + g, gs, mask=g < n_groups)


@triton.jit
def rms_norm_row(x, w_ptr, k, K, eps, y_ptr):
    """lowc::rms_norm of one row x (input dtype): float32 statistics, normalized value rounded to x's
    dtype, times the weight rounded to the promoted dtype (y_ptr's element type); float32 result."""
    x32 = x.to(tl.float32)
    ssq = tl.sum(x32 * x32, axis=0)
    var = tl.math.div_rn(ssq, tl.zeros_like(ssq) + K)  # the mean, as torch: sum / K
    rstd = tl.math.div_rn(tl.zeros_like(var) + 1.0, tl.math.sqrt_rn(var + eps))
    normed = round_to(x32 * rstd, x.dtype).to(tl.float32)
    w = tl.load(w_ptr + k, mask=k < K, other=0.0).to(tl.float32)
    return round_to(normed * w, y_ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def act_quant_kernel(
    x_ptr, r_ptr, w_ptr, sum_ptr, y_ptr, q_ptr, s_ptr,
    K, stride_x, stride_r, eps,
    PROLOGUE: tl.constexpr, QUANT: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr = False,
):
    grid_dependency_wait(PDL)  # PDL: launched as a programmatic dependent (runtime/pdl.py)
    row = tl.program_id(0).to(tl.int64)
    k = tl.arange(0, BLOCK_K)
    kmask = k < K
    x = tl.load(x_ptr + row * stride_x + k, mask=kmask, other=0.0)
    if PROLOGUE == "none":
        y = x.to(tl.float32)
    elif PROLOGUE == "rms_norm":
        y = rms_norm_row(x, w_ptr, k, K, eps, y_ptr)
    elif PROLOGUE == "add_rms_norm":
        r = tl.load(r_ptr + row * stride_r + k, mask=kmask, other=0.0)
        s = round_to(x.to(tl.float32) + r.to(tl.float32), x.dtype)  # aten.add in x's dtype
        tl.store(sum_ptr + row * K + k, s, mask=kmask)
        y = rms_norm_row(s, w_ptr, k, K, eps, y_ptr)
    else:  # "silu_mul"
        u = tl.load(r_ptr + row * stride_r + k, mask=kmask, other=0.0).to(tl.float32)
        g = x.to(tl.float32)
        act = round_to(tl.math.div_rn(g, 1.0 + tl.exp(-g)), x.dtype).to(tl.float32)
        y = round_to(act * u, x.dtype).to(tl.float32)
    if QUANT:
        quantize_store(y, k, K, q_ptr, s_ptr, row, BLOCK_K)
    else:
        tl.store(y_ptr + row * K + k, round_to(y, y_ptr.dtype.element_ty), mask=kmask)


def reference(prologue, x, r=None, weight=None, eps=0.0):
    """The plain-torch truth of one launch: the fused op's reference from lowc.ops.fused_ops."""
    from lowc.ops import fused_ops as f
    from lowc.quant.activations import quantize_activation

    quant = FORMAT != "none"
    if prologue == "none":
        return quantize_activation(x, FORMAT)
    if prologue == "rms_norm":
        return f.rms_norm_quant_reference(x, weight, eps, FORMAT)
    if prologue == "add_rms_norm":
        if quant:
            return f.add_rms_norm_quant_reference(x, r, weight, eps, FORMAT)
        return f.add_rms_norm_reference(x, r, weight, eps)
    return f.silu_mul_quant_reference(x, r, FORMAT)

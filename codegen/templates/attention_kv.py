"""Attention over lowc's KV cache (kv16 / kv8 / kv4) with the dequantization inside the dot products.

Cache layout read as stored by lowc.ops.kv_ops (per layer, K and V alike; S slots, HKV heads, M
max tokens, D head_dim): data [S, HKV, M, D_LOAD] (kv16: model dtype, D_LOAD = D; kv8: int8, D;
kv4: uint8, D/2, low nibble = even d), scale fp16 [S, HKV, M], zero fp16 [S, HKV, M] (kv4).
Each (slot, head) is one contiguous run of tokens, so a tile of BLOCK_N tokens is one coalesced
block of BLOCK_N * D_LOAD bytes plus BLOCK_N scales (and zeros).

The per-token scale and zero come out of the dot products instead of being applied to every element:
    scores[h, n] = s_k[n] * (sum_d q[h, d] * k_q[n, d] - z_k[n] * sum_d q[h, d])
    out[h, d]   += sum_n (p[h, n] * s_v[n]) * v_q[n, d] - sum_n (p[h, n] * s_v[n]) * z_v[n]
with k_q, v_q the raw integers (exact in the dot dtype) and p * s_v rounded once to the dot dtype,
as flash attention rounds p. For kv4 the even and odd halves of head_dim are separate dots (q split
into its even and odd columns, the output interleaved back), so no nibble is ever shuffled. kv4 keys with two scale/zero pairs per head vector (K_GROUPS = 2, scale and
zero [S, HKV, M, 2], one pair per contiguous half of head_dim) take each half as its own pair of dots
with its own scale and zero, and the halves' scores add up.

decode_kernel (one new token per row): one program per (row, KV head, split) handles the GROUP query
heads that share the KV head (padded to BLOCK_H rows; Triton pads the MMA to 16), so each KV head is read once
per group. Long contexts are split over num_splits programs (a run-time argument, so a new split count
compiles nothing; the constexpr SPLIT says whether there is more than one); each writes its partial (acc, max, sum)
to a workspace and takes a ticket, and the last to arrive merges them and resets the ticket: one
launch, no memset, replayable in a CUDA graph. prefill_kernel (T > 1 new tokens, causal, flash-style
online softmax): one program per (BLOCK_M query tokens, query head). Both honour left padding (pad
rows give 0), history in the cache (cache_lens) and a sliding window (> 0).
"""

# --- template body ---

KV_BITS = W_BITS  # 16: the model dtype, unquantized; 8: symmetric INT8; 4: asymmetric UINT4
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def as_dot(x, INTERPRETED: tl.constexpr):
    """x as a dot operand: the dot dtype on a GPU; float32 under Triton's interpreter, which keeps
    bf16 as raw uint16 and would multiply (and convert integers into) those bits."""
    if INTERPRETED:
        return x.to(tl.float32)
    else:
        return x.to(DOT_DTYPE)


@triton.jit
def nibble_operand(nib, INTERPRETED: tl.constexpr):
    """UINT4 codes (uint8 0..15) as a dot operand without an int-to-float conversion instruction (a
    quarter-rate I2F per value was half the decode time): OR-ing the code into the mantissa of
    0x4300 gives the bf16 value 128 + code (fp16: 0x6400 -> 1024 + code), exactly. The bias is
    taken out with the zero point (nibble_bias). float32 dots convert plainly (bias 0)."""
    if DOT_DTYPE == tl.bfloat16:
        x = (nib.to(tl.int32) | 0x4300).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    elif DOT_DTYPE == tl.float16:
        x = (nib.to(tl.int32) | 0x6400).to(tl.uint16).to(tl.float16, bitcast=True)
    else:
        x = nib.to(tl.float32)
    if INTERPRETED:
        x = x.to(tl.float32)  # the interpreter's dot would multiply bf16 bit patterns
    return x


@triton.jit
def nibble_operands(raw, UNPACK_ASM: tl.constexpr, INTERPRETED: tl.constexpr):
    """(low, high) nibbles of a uint8 tile as dot operands (nibble_operand's values). With UNPACK_ASM
    (bf16/fp16 on a GPU) four bytes go through one inline-PTX block: two byte permutes, two shifts
    and four LOP3s make eight operands, about 1 instruction per value against ~5 for the
    element-wise form, which the compiler cannot pack into the paired registers the MMA reads."""
    if UNPACK_ASM and not INTERPRETED and DOT_DTYPE != tl.float32:
        if DOT_DTYPE == tl.bfloat16:
            lo, hi = tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 a, b;
                prmt.b32 a, $4, 0, 0x4140;
                prmt.b32 b, $4, 0, 0x4342;
                lop3.b32 $0, a, 0x000f000f, 0x43004300, 0xea;
                lop3.b32 $1, b, 0x000f000f, 0x43004300, 0xea;
                shr.u32 a, a, 4;
                shr.u32 b, b, 4;
                lop3.b32 $2, a, 0x000f000f, 0x43004300, 0xea;
                lop3.b32 $3, b, 0x000f000f, 0x43004300, 0xea;
                }""",
                constraints="=r,=r,=r,=r,r", args=[raw], dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(
                asm="""{
                .reg .b32 a, b;
                prmt.b32 a, $4, 0, 0x4140;
                prmt.b32 b, $4, 0, 0x4342;
                lop3.b32 $0, a, 0x000f000f, 0x64006400, 0xea;
                lop3.b32 $1, b, 0x000f000f, 0x64006400, 0xea;
                shr.u32 a, a, 4;
                shr.u32 b, b, 4;
                lop3.b32 $2, a, 0x000f000f, 0x64006400, 0xea;
                lop3.b32 $3, b, 0x000f000f, 0x64006400, 0xea;
                }""",
                constraints="=r,=r,=r,=r,r", args=[raw], dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
        return lo, hi
    else:
        return nibble_operand(raw & 15, INTERPRETED), nibble_operand(raw >> 4, INTERPRETED)


@triton.jit
def staged(x, STAGE: tl.constexpr, INTERPRETED: tl.constexpr):
    """x unchanged; with STAGE, behind an opaque (side-effecting) register move. Triton picks a dot
    operand's register layout from the narrowest load feeding it: for an 8-bit cache that is 4
    consecutive contraction elements per thread (k-width 4), which costs a register copy per MMA
    operand quad (q side) and byte-wise gathers of V (its contraction axis, tokens, is strided).
    The opaque move hides the 8-bit origin: Triton then writes the dequantized tile to shared memory
    once and reads it back with ldmatrix in the 16-bit MMA layout (docs/kernels-attention.md). float32
    dots (and the interpreter) ignore STAGE."""
    if STAGE and not INTERPRETED and DOT_DTYPE != tl.float32:
        return tl.inline_asm_elementwise("mov.b32 $0, $1;", "=r,r", [x], dtype=x.dtype, is_pure=False, pack=2)
    else:
        return x


@triton.jit
def nibble_bias():
    """The constant nibble_operand adds to every code."""
    if DOT_DTYPE == tl.bfloat16:
        return 128.0
    elif DOT_DTYPE == tl.float16:
        return 1024.0
    else:
        return 0.0


@triton.jit
def load_q(q_base, rows, rmask, stride_r, HEAD_DIM: tl.constexpr, D_LOAD: tl.constexpr, INTERPRETED: tl.constexpr):
    """(qa, qb, qsum) of query rows: kv4 splits q into even and odd columns (qa, qb); otherwise qa is q
    and qb an unused zero tile. qsum = sum_d q in float32 (for the kv4 zero-point term)."""
    j = tl.arange(0, D_LOAD)
    ptrs = q_base + rows[:, None] * stride_r
    if KV_BITS == 4:
        qa = as_dot(tl.load(ptrs + 2 * j[None, :], mask=rmask[:, None], other=0.0), INTERPRETED)
        qb = as_dot(tl.load(ptrs + 2 * j[None, :] + 1, mask=rmask[:, None], other=0.0), INTERPRETED)
        qsum = tl.sum(qa.to(tl.float32), axis=1) + tl.sum(qb.to(tl.float32), axis=1)
    else:
        qa = as_dot(tl.load(ptrs + j[None, :], mask=rmask[:, None], other=0.0), INTERPRETED)
        qb = tl.zeros(qa.shape, qa.dtype)
        qsum = tl.zeros((qa.shape[0],), tl.float32)
    return qa, qb, qsum


@triton.jit
def load_scales(s_ptr, z_ptr, tok, tmask):
    """Per-token (scale, zero) of a tile as float32 (zeros where the format has none). The kernels
    load them one tile ahead: they are too small for the async copies that stream the data tiles,
    and a load issued one iteration early has its latency hidden behind that iteration's math."""
    if KV_BITS == 16:
        s = tl.zeros(tok.shape, tl.float32)
        z = s
    else:
        s = tl.load(s_ptr + tok, mask=tmask, other=0.0).to(tl.float32)
        if KV_BITS == 4:
            z = tl.load(z_ptr + tok, mask=tmask, other=0.0).to(tl.float32)
        else:
            z = s
    return s, z


@triton.jit
def load_q_half(q_base, rows, rmask, stride_r, HALF: tl.constexpr, D_LOAD: tl.constexpr, INTERPRETED: tl.constexpr):
    """(qa, qb, qsum) of the query columns of one half of head_dim (HALF 0 or 1), for kv4 keys in two
    scale/zero groups: qa/qb its even/odd columns [rows, D_LOAD / 2], qsum their float32 sum."""
    j = HALF * (D_LOAD // 2) + tl.arange(0, D_LOAD // 2)
    ptrs = q_base + rows[:, None] * stride_r
    qa = as_dot(tl.load(ptrs + 2 * j[None, :], mask=rmask[:, None], other=0.0), INTERPRETED)
    qb = as_dot(tl.load(ptrs + 2 * j[None, :] + 1, mask=rmask[:, None], other=0.0), INTERPRETED)
    qsum = tl.sum(qa.to(tl.float32), axis=1) + tl.sum(qb.to(tl.float32), axis=1)
    return qa, qb, qsum


@triton.jit
def load_group_scales(s_ptr, z_ptr, tok, tmask, HALF: tl.constexpr):
    """Per-token (scale, zero) of one of two key groups (stored [..., tokens, 2]) as float32."""
    s = tl.load(s_ptr + 2 * tok + HALF, mask=tmask, other=0.0).to(tl.float32)
    z = tl.load(z_ptr + 2 * tok + HALF, mask=tmask, other=0.0).to(tl.float32)
    return s, z


@triton.jit
def q_row_scale(q_base, rows, rmask, stride_r, HEAD_DIM: tl.constexpr):
    """One symmetric INT8 scale per query row (Q_INT8): max |q| / 127 over the whole head (1 for a
    zero or masked row)."""
    d = tl.arange(0, HEAD_DIM)
    q = tl.load(q_base + rows[:, None] * stride_r + d[None, :], mask=rmask[:, None], other=0.0).to(tl.float32)
    amax = tl.max(tl.abs(q), axis=1)
    return tl.where(amax > 0, amax / 127.0, 1.0)


@triton.jit
def load_q_codes(q_base, rows, rmask, stride_r, q_scale, FIRST: tl.constexpr, N: tl.constexpr):
    """Q_INT8: (qa, qb, qsum) of q rounded to INT8 codes with the row scales q_scale. kv4: the even and
    odd columns 2j, 2j + 1 for j in FIRST .. FIRST + N (the bytes of a key tile that hold them), qsum
    their int32 sum; kv8: columns FIRST .. FIRST + N as qa (qb, qsum unused zeros)."""
    j = FIRST + tl.arange(0, N)
    ptrs = q_base + rows[:, None] * stride_r
    sc = q_scale[:, None]
    if KV_BITS == 4:
        qa = rint(tl.load(ptrs + 2 * j[None, :], mask=rmask[:, None], other=0.0).to(tl.float32) / sc).to(tl.int8)
        qb = rint(tl.load(ptrs + 2 * j[None, :] + 1, mask=rmask[:, None], other=0.0).to(tl.float32) / sc).to(tl.int8)
        qsum = tl.sum(qa.to(tl.int32), axis=1) + tl.sum(qb.to(tl.int32), axis=1)
    else:
        qa = rint(tl.load(ptrs + j[None, :], mask=rmask[:, None], other=0.0).to(tl.float32) / sc).to(tl.int8)
        qb = tl.zeros(qa.shape, tl.int8)
        qsum = tl.zeros((qa.shape[0],), tl.int32)
    return qa, qb, qsum


@triton.jit
def nibble_codes(raw, UNPACK_ASM: tl.constexpr, INTERPRETED: tl.constexpr):
    """(low, high) nibbles of a uint8 tile as int8 codes 0..15 for an INT8 dot. With UNPACK_ASM on the GPU
    four bytes at a time in one inline-PTX block (one AND, one shift, one AND): the four bytes of a
    register stay where the MMA operand wants them, where element-wise byte code re-packs them."""
    if INTERPRETED or not UNPACK_ASM:
        return (raw & 15).to(tl.int8), (raw >> 4).to(tl.int8)
    else:
        return tl.inline_asm_elementwise(
            asm="""{
            and.b32 $0, $2, 0x0f0f0f0f;
            shr.u32 $1, $2, 4;
            and.b32 $1, $1, 0x0f0f0f0f;
            }""",
            constraints="=r,=r,r", args=[raw], dtype=(tl.int8, tl.int8), is_pure=True, pack=4)


@triton.jit
def int8_scores(qa, qb, qsum, q_factor, d_ptr, s, z, tok, tmask, FIRST: tl.constexpr, NBYTES: tl.constexpr,
                D_LOAD: tl.constexpr, UNPACK_ASM: tl.constexpr, INTERPRETED: tl.constexpr):
    """Q_INT8 scores over the key bytes FIRST .. FIRST + NBYTES of each token (a whole head, or one of
    two key groups), times q_factor (the row's q scale and the softmax scale): float32 [rows, BLOCK_N].
    The codes go to an INT8 dot as they are: kv8 bytes directly, kv4 nibbles as bytes 0..15
    (nibble_codes), so q . k_q is exact in int32 and the zero point comes out as z * sum(q codes)."""
    j = FIRST + tl.arange(0, NBYTES)
    raw = tl.load(d_ptr + tok[:, None] * D_LOAD + j[None, :], mask=tmask[:, None], other=0)
    if KV_BITS == 4:
        lo, hi = nibble_codes(raw, UNPACK_ASM, INTERPRETED)
        acc = tl.dot(qa, tl.trans(lo), out_dtype=tl.int32)
        acc = tl.dot(qb, tl.trans(hi), acc, out_dtype=tl.int32)
        return (acc.to(tl.float32) * (q_factor[:, None] * s[None, :])
                - (q_factor * qsum.to(tl.float32))[:, None] * (s * z)[None, :])
    else:
        acc = tl.dot(qa, tl.trans(raw), out_dtype=tl.int32)
        return acc.to(tl.float32) * (q_factor[:, None] * s[None, :])


@triton.jit
def half_scores(qa, qb, qsum, d_ptr, s, z, tok, tmask, HALF: tl.constexpr, D_LOAD: tl.constexpr,
                PRECISION: tl.constexpr, UNPACK_ASM: tl.constexpr, INTERPRETED: tl.constexpr):
    """kv4 q . k over one half of head_dim (bytes HALF * D_LOAD/2 ...) with that half's own scale s
    and zero z: float32 [rows, BLOCK_N]. The two halves' results add up to the scores."""
    j = HALF * (D_LOAD // 2) + tl.arange(0, D_LOAD // 2)
    raw = tl.load(d_ptr + tok[:, None] * D_LOAD + j[None, :], mask=tmask[:, None], other=0)
    lo, hi = nibble_operands(raw, UNPACK_ASM, INTERPRETED)
    acc = tl.dot(qa, tl.trans(lo), input_precision=PRECISION)
    acc = tl.dot(qb, tl.trans(hi), acc, input_precision=PRECISION)
    return acc * s[None, :] - qsum[:, None] * (s * (z + nibble_bias()))[None, :]


@triton.jit
def tile_scores(qa, qb, qsum, d_ptr, s, z, tok, tmask, D_LOAD: tl.constexpr, PRECISION: tl.constexpr,
                UNPACK_ASM: tl.constexpr, INTERPRETED: tl.constexpr, STAGE: tl.constexpr = False):
    """q . k for the BLOCK_N cached tokens `tok` of one (slot, head), with their scales s and zeros z:
    float32 [rows, BLOCK_N]. STAGE: see staged()."""
    j = tl.arange(0, D_LOAD)
    raw = tl.load(d_ptr + tok[:, None] * D_LOAD + j[None, :], mask=tmask[:, None], other=0)
    if KV_BITS == 4:
        lo, hi = nibble_operands(raw, UNPACK_ASM, INTERPRETED)
        lo = staged(lo, STAGE, INTERPRETED)
        hi = staged(hi, STAGE, INTERPRETED)
        acc = tl.dot(qa, tl.trans(lo), input_precision=PRECISION)
        acc = tl.dot(qb, tl.trans(hi), acc, input_precision=PRECISION)
        # s * (acc - qsum * (z + bias)) with the per-token products formed once per token.
        return acc * s[None, :] - qsum[:, None] * (s * (z + nibble_bias()))[None, :]
    elif KV_BITS == 8:
        acc = tl.dot(qa, tl.trans(staged(as_dot(raw, INTERPRETED), STAGE, INTERPRETED)), input_precision=PRECISION)
        return acc * s[None, :]
    else:
        return tl.dot(qa, tl.trans(as_dot(raw, INTERPRETED)), input_precision=PRECISION)


@triton.jit
def tile_pv(p, acc_a, acc_b, d_ptr, s, z, tok, tmask, D_LOAD: tl.constexpr, PRECISION: tl.constexpr,
            UNPACK_ASM: tl.constexpr, INTERPRETED: tl.constexpr, STAGE: tl.constexpr = False):
    """acc += p . v for the same tokens (p float32 [rows, BLOCK_N], 0 where masked). STAGE: see staged()."""
    j = tl.arange(0, D_LOAD)
    raw = tl.load(d_ptr + tok[:, None] * D_LOAD + j[None, :], mask=tmask[:, None], other=0)
    if KV_BITS == 4:
        ps = as_dot(p * s[None, :], INTERPRETED)
        corr = tl.sum(ps.to(tl.float32) * (z + nibble_bias())[None, :], axis=1)
        lo, hi = nibble_operands(raw, UNPACK_ASM, INTERPRETED)
        lo = staged(lo, STAGE, INTERPRETED)
        hi = staged(hi, STAGE, INTERPRETED)
        acc_a = tl.dot(ps, lo, acc_a, input_precision=PRECISION) - corr[:, None]
        acc_b = tl.dot(ps, hi, acc_b, input_precision=PRECISION) - corr[:, None]
    elif KV_BITS == 8:
        ps = as_dot(p * s[None, :], INTERPRETED)
        acc_a = tl.dot(ps, staged(as_dot(raw, INTERPRETED), STAGE, INTERPRETED), acc_a, input_precision=PRECISION)
    else:
        acc_a = tl.dot(as_dot(p, INTERPRETED), as_dot(raw, INTERPRETED), acc_a, input_precision=PRECISION)
    return acc_a, acc_b


@triton.jit
def full_width(acc_a, acc_b, ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """[rows, HEAD_DIM] from the kernel's accumulators (kv4: even and odd halves interleaved back)."""
    if KV_BITS == 4:
        return tl.reshape(tl.join(acc_a, acc_b), (ROWS, HEAD_DIM))
    else:
        return acc_a


@triton.jit
def online_softmax_step(s, m, l, acc_a, acc_b):
    """One flash-attention update with base-2 scores s (-inf where masked); rows that have seen no
    key yet keep m = -inf and contribute nothing (no inf - inf)."""
    m_new = tl.maximum(m, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l = l * alpha + tl.sum(p, axis=1)
    return p, m_new, l, acc_a * alpha[:, None], acc_b * alpha[:, None]


@triton.jit(do_not_specialize=["window", "num_splits"])
def decode_kernel(
    q_ptr, stride_qb, stride_qh,
    kd_ptr, ks_ptr, kz_ptr, vd_ptr, vs_ptr, vz_ptr,
    slot_ptr, clen_ptr, nlen_ptr, out_ptr, ws_acc_ptr, ws_ml_ptr, ticket_ptr,
    sm_scale, HKV, MAX_TOKENS, window, num_splits,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_LOAD: tl.constexpr, BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PRECISION: tl.constexpr, UNPACK_ASM: tl.constexpr,
    INTERPRETED: tl.constexpr, STAGE_K: tl.constexpr = False, STAGE_V: tl.constexpr = False,
    K_GROUPS: tl.constexpr = 1, Q_INT8: tl.constexpr = False, PDL: tl.constexpr = False,
):
    grid_dependency_wait(PDL)  # PDL: launched as a programmatic dependent (runtime/pdl.py)
    pair = tl.program_id(0)  # (batch row, KV head)
    split = tl.program_id(1)
    b = pair // HKV
    kvh = pair % HKV
    slot = tl.load(slot_ptr + b)
    total = (tl.load(clen_ptr + b) + tl.load(nlen_ptr + b)).to(tl.int32)  # the new token is already stored
    first = tl.where(window > 0, tl.maximum(total - window, 0), 0)
    chunk = tl.cdiv(tl.cdiv(total - first, num_splits), BLOCK_N) * BLOCK_N
    lo = first + split * chunk
    hi = tl.minimum(lo + chunk, total)

    h = tl.arange(0, BLOCK_H)
    hmask = h < GROUP
    q_base = q_ptr + b.to(tl.int64) * stride_qb + (kvh * GROUP) * stride_qh
    qk_scale = sm_scale * LOG2E
    if Q_INT8:  # q as INT8 codes, one scale per row; the scores' dots run on the INT8 MMA
        q_scale = q_row_scale(q_base, h, hmask, stride_qh, HEAD_DIM)
        q_factor = q_scale * qk_scale
        if K_GROUPS == 2:
            qa, qb, qsum = load_q_codes(q_base, h, hmask, stride_qh, q_scale, 0, D_LOAD // 2)
            qa1, qb1, qsum1 = load_q_codes(q_base, h, hmask, stride_qh, q_scale, D_LOAD // 2, D_LOAD // 2)
        else:
            qa, qb, qsum = load_q_codes(q_base, h, hmask, stride_qh, q_scale, 0, D_LOAD)
    elif K_GROUPS == 2:  # kv4 keys with a scale/zero pair per half of head_dim
        qa, qb, qsum = load_q_half(q_base, h, hmask, stride_qh, 0, D_LOAD, INTERPRETED)
        qa1, qb1, qsum1 = load_q_half(q_base, h, hmask, stride_qh, 1, D_LOAD, INTERPRETED)
    else:
        qa, qb, qsum = load_q(q_base, h, hmask, stride_qh, HEAD_DIM, D_LOAD, INTERPRETED)
    head_row = (slot * HKV + kvh) * MAX_TOKENS  # first cache row of this (slot, head)
    kd = kd_ptr + head_row * D_LOAD
    vd = vd_ptr + head_row * D_LOAD
    ks = ks_ptr + head_row * K_GROUPS  # key scales and zeros: K_GROUPS per token
    kz = kz_ptr + head_row * K_GROUPS
    vs = vs_ptr + head_row
    vz = vz_ptr + head_row

    m = tl.full((BLOCK_H,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_H,), tl.float32)
    acc_a = tl.zeros((BLOCK_H, D_LOAD), tl.float32)
    acc_b = tl.zeros((BLOCK_H, D_LOAD), tl.float32)
    tok = lo + tl.arange(0, BLOCK_N)
    if K_GROUPS == 2:
        k_s, k_z = load_group_scales(ks, kz, tok, tok < hi, 0)
        k_s1, k_z1 = load_group_scales(ks, kz, tok, tok < hi, 1)
    else:
        k_s, k_z = load_scales(ks, kz, tok, tok < hi)
    v_s, v_z = load_scales(vs, vz, tok, tok < hi)
    for n0 in range(lo, hi, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        tmask = tok < hi
        if K_GROUPS == 2:
            nxt_k_s, nxt_k_z = load_group_scales(ks, kz, tok + BLOCK_N, tok + BLOCK_N < hi, 0)  # prefetch
            nxt_k_s1, nxt_k_z1 = load_group_scales(ks, kz, tok + BLOCK_N, tok + BLOCK_N < hi, 1)
            if Q_INT8:
                s = int8_scores(qa, qb, qsum, q_factor, kd, k_s, k_z, tok, tmask, 0, D_LOAD // 2, D_LOAD, UNPACK_ASM,
                                INTERPRETED)
                s += int8_scores(qa1, qb1, qsum1, q_factor, kd, k_s1, k_z1, tok, tmask, D_LOAD // 2, D_LOAD // 2,
                                 D_LOAD, UNPACK_ASM, INTERPRETED)
            else:
                s = half_scores(qa, qb, qsum, kd, k_s, k_z, tok, tmask, 0, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED)
                s += half_scores(qa1, qb1, qsum1, kd, k_s1, k_z1, tok, tmask, 1, D_LOAD, PRECISION, UNPACK_ASM,
                                 INTERPRETED)
                s = s * qk_scale
            k_s1, k_z1 = nxt_k_s1, nxt_k_z1
        else:
            nxt_k_s, nxt_k_z = load_scales(ks, kz, tok + BLOCK_N, tok + BLOCK_N < hi)  # prefetch
            if Q_INT8:
                s = int8_scores(qa, qb, qsum, q_factor, kd, k_s, k_z, tok, tmask, 0, D_LOAD, D_LOAD, UNPACK_ASM,
                                INTERPRETED)
            else:
                s = tile_scores(qa, qb, qsum, kd, k_s, k_z, tok, tmask, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED,
                                STAGE_K) * qk_scale
        nxt_v_s, nxt_v_z = load_scales(vs, vz, tok + BLOCK_N, tok + BLOCK_N < hi)
        s = tl.where(tmask[None, :], s, float("-inf"))
        p, m, l, acc_a, acc_b = online_softmax_step(s, m, l, acc_a, acc_b)
        acc_a, acc_b = tile_pv(p, acc_a, acc_b, vd, v_s, v_z, tok, tmask, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED,
                               STAGE_V)
        k_s, k_z, v_s, v_z = nxt_k_s, nxt_k_z, nxt_v_s, nxt_v_z

    d = tl.arange(0, HEAD_DIM)
    out_rows = out_ptr + (b.to(tl.int64) * HKV * GROUP + kvh * GROUP + h) * HEAD_DIM  # out [B, 1, H, D]
    acc = full_width(acc_a, acc_b, BLOCK_H, HEAD_DIM)
    if not SPLIT:
        tl.store(out_rows[:, None] + d[None, :], (acc / l[:, None]).to(out_ptr.dtype.element_ty),
                 mask=hmask[:, None])
    else:
        # Partial results of this split: acc [BLOCK_H, D], then (m, l) per row.
        part = (pair * num_splits + split) * BLOCK_H + h
        tl.store(ws_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc)
        tl.store(ws_ml_ptr + 2 * part, m)
        tl.store(ws_ml_ptr + 2 * part + 1, l)
        tl.debug_barrier()  # every thread's partial stores precede the ticket (release below)
        ticket = tl.atomic_add(ticket_ptr + pair, 1, sem="acq_rel")
        if ticket == num_splits - 1:
            # Last split of this (row, head): merge all partials, then leave the ticket at 0.
            m_all = tl.full((BLOCK_H,), float("-inf"), tl.float32)
            for sp in range(num_splits):
                idx = (pair * num_splits + sp) * BLOCK_H + h
                m_all = tl.maximum(m_all, tl.load(ws_ml_ptr + 2 * idx, cache_modifier=".cg"))
            l_all = tl.zeros((BLOCK_H,), tl.float32)
            o = tl.zeros((BLOCK_H, HEAD_DIM), tl.float32)
            for sp in range(num_splits):
                idx = (pair * num_splits + sp) * BLOCK_H + h
                w = tl.exp2(tl.load(ws_ml_ptr + 2 * idx, cache_modifier=".cg") - m_all)
                l_all += w * tl.load(ws_ml_ptr + 2 * idx + 1, cache_modifier=".cg")
                part_acc = tl.load(ws_acc_ptr + idx[:, None] * HEAD_DIM + d[None, :], cache_modifier=".cg")
                o += w[:, None] * part_acc
            tl.store(out_rows[:, None] + d[None, :], (o / l_all[:, None]).to(out_ptr.dtype.element_ty),
                     mask=hmask[:, None])
            tl.store(ticket_ptr + pair, 0)


@triton.jit(do_not_specialize=["window"])
def prefill_kernel(
    q_ptr, stride_qb, stride_qh, stride_qt,
    kd_ptr, ks_ptr, kz_ptr, vd_ptr, vs_ptr, vz_ptr,
    slot_ptr, clen_ptr, nlen_ptr, out_ptr,
    sm_scale, T, H, HKV, MAX_TOKENS, window,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, D_LOAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PRECISION: tl.constexpr, UNPACK_ASM: tl.constexpr,
    INTERPRETED: tl.constexpr, K_GROUPS: tl.constexpr = 1,
):
    tb = tl.program_id(0)
    b = tl.program_id(1) // H
    head = tl.program_id(1) % H
    kvh = head // GROUP
    slot = tl.load(slot_ptr + b)
    past = tl.load(clen_ptr + b)
    new = tl.load(nlen_ptr + b)
    total = past + new
    first = T - new  # rows are left-padded: input positions < first are padding
    t = tb * BLOCK_M + tl.arange(0, BLOCK_M)
    real = (t < T) & (t >= first)
    qpos = tl.where(real, past + t - first, -1)  # position of each query in its sequence

    q_base = q_ptr + b.to(tl.int64) * stride_qb + head * stride_qh
    if K_GROUPS == 2:
        qa, qb, qsum = load_q_half(q_base, t, t < T, stride_qt, 0, D_LOAD, INTERPRETED)
        qa1, qb1, qsum1 = load_q_half(q_base, t, t < T, stride_qt, 1, D_LOAD, INTERPRETED)
    else:
        qa, qb, qsum = load_q(q_base, t, t < T, stride_qt, HEAD_DIM, D_LOAD, INTERPRETED)
    head_row = (slot * HKV + kvh) * MAX_TOKENS
    kd = kd_ptr + head_row * D_LOAD
    vd = vd_ptr + head_row * D_LOAD
    ks = ks_ptr + head_row * K_GROUPS  # key scales and zeros: K_GROUPS per token
    kz = kz_ptr + head_row * K_GROUPS
    vs = vs_ptr + head_row
    vz = vz_ptr + head_row

    hi = tl.minimum(tl.max(qpos, axis=0) + 1, total)  # causal: no key after the last query
    lo = tl.where(window > 0, tl.maximum(tl.min(tl.where(real, qpos, total), axis=0) - window + 1, 0), 0)
    qk_scale = sm_scale * LOG2E
    m = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l = tl.zeros((BLOCK_M,), tl.float32)
    acc_a = tl.zeros((BLOCK_M, D_LOAD), tl.float32)
    acc_b = tl.zeros((BLOCK_M, D_LOAD), tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        tok = n0 + tl.arange(0, BLOCK_N)
        tmask = tok < hi
        v_s, v_z = load_scales(vs, vz, tok, tmask)
        if K_GROUPS == 2:
            k_s, k_z = load_group_scales(ks, kz, tok, tmask, 0)
            s = half_scores(qa, qb, qsum, kd, k_s, k_z, tok, tmask, 0, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED)
            k_s, k_z = load_group_scales(ks, kz, tok, tmask, 1)
            s += half_scores(qa1, qb1, qsum1, kd, k_s, k_z, tok, tmask, 1, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED)
            s = s * qk_scale
        else:
            k_s, k_z = load_scales(ks, kz, tok, tmask)
            s = tile_scores(qa, qb, qsum, kd, k_s, k_z, tok, tmask, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED) * qk_scale
        allowed = tmask[None, :] & (tok[None, :] <= qpos[:, None])
        allowed = allowed & ((window <= 0) | (qpos[:, None] - tok[None, :] < window))
        s = tl.where(allowed, s, float("-inf"))
        p, m, l, acc_a, acc_b = online_softmax_step(s, m, l, acc_a, acc_b)
        acc_a, acc_b = tile_pv(p, acc_a, acc_b, vd, v_s, v_z, tok, tmask, D_LOAD, PRECISION, UNPACK_ASM, INTERPRETED)

    acc = full_width(acc_a, acc_b, BLOCK_M, HEAD_DIM)
    o = tl.where(l[:, None] > 0, acc / tl.where(l > 0, l, 1.0)[:, None], 0.0)  # padding rows: 0
    d = tl.arange(0, HEAD_DIM)
    rows = ((b.to(tl.int64) * T + t) * H + head) * HEAD_DIM  # out [B, T, H, D]
    tl.store(out_ptr + rows[:, None] + d[None, :], o.to(out_ptr.dtype.element_ty), mask=(t < T)[:, None])


def reference(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, sliding_window):
    """The plain-torch truth: lowc.ops.kv_ops.attention_kv_reference for this format."""
    from lowc.ops.kv_ops import attention_kv_reference

    return attention_kv_reference(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, sliding_window, FORMAT)

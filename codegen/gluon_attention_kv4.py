"""KV4 decode attention in Gluon: cache bytes loaded from global memory straight into the registers of
`mma.sync`, one warp per program with its own running max and sum (docs/kernels-attention.md,
"Fifth round").

Same arithmetic as `decode_kernel` (codegen/templates/attention_kv.py; the truth for both is
`lowc.ops.kv_ops.attention_kv_reference`): per token n and query head h of a KV head's group,
    score[n, h] = u_k[n] * (q_h . (128 + k_q[n])) - u_k[n] * (z_k[n] + 128) * sum(q_h)
with u_k = s_k * sm_scale * log2(e) (one pair of such terms per key group), an online softmax in
base 2, and out[h] = (sum_n ps[n, h] (128 + v_q[n]) - sum_n ps[n, h] (z_v[n] + 128)) / sum_n p[n, h]
with ps = p * s_v rounded once to the dot dtype. The codes enter the MMAs as bf16 128 + code
(fp16: 1024 + code) by OR-ing the nibble into the mantissa; the offset leaves with the zero point.

What differs from the Triton kernel is where each value lives. Triton picks a dot operand's register
layout itself: the q operand is re-packed before every MMA, V's contraction axis (tokens) is gathered
byte by byte, and the softmax of a tile shared by four warps needs shared-memory reductions and
barriers (about 32 instructions per token and KV head; docs/kernels-attention.md). Here the layouts
are stated, and two permutations make every load feed the MMA fragments directly:

- q . k with the cache tile as the MMA's A operand (tokens on M, the GQA group on N = 8): head_dim is
  permuted inside the dot (the same permutation for q and k), so that lane (r, c) = (lane // 4,
  lane % 4) reads one contiguous run of 4 * WI bytes of each of its tokens' key rows per key group;
  word w of that run gives the A registers of k-steps 2w and 2w + 1 with four LOP3 and three shifts.
- The token order inside a tile is permuted too (a softmax does not depend on it): MMA row
  R = 16 j + 8 b + r of the score tile is token TL * r + 2 j + b (TL = BLOCK_N / 8), so the per-token
  scales and zeros of a lane are TL consecutive tokens (one vector load each), and in P . V, computed
  transposed as out^T[d, h] += V^T[d, n] P[n, h] (head_dim on M), lane (r, c) needs tokens
  2 TL c .. 2 TL c + 2 TL - 1 and, with head_dim permuted on the output side (MMA row
  16 i + 8 h + r of out^T is d = 2 (r * D / 16 + i) + h), bytes r * D / 16 .. of each: one vector load
  per token, and two tokens' bytes become the A registers by two PRMT, six shifts and eight LOP3 per
  sixteen values.

So a tile costs about 13 instructions per token and KV head (the Triton kernel: 32), with no shared
memory between the loads and the MMAs and no barrier in the loop; the next tile's loads are issued
before the current tile's math (register double buffering). The split over the sequence and its
workspace format are the Triton kernel's (acquire-release ticket, the last program merges and resets
it); the merge is one online pass over the partials, four at a time. Under PDL the metadata and a
first tile holding no token of this step are read before `griddepcontrol.wait` (`load_first_tile`).

Gluon has no interpreter: the CPU tests replay the two permutations in plain torch
(`key_dot_replay`, `value_dot_replay`) and compile the kernel for sm_90; the GPU tests compare it with
the reference and with the Triton kernel.
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

from lowc.codegen.gluon_w4a8_g128 import _log2, cta_barrier, pdl_launch_dependents, pdl_wait

LOG2E = gl.constexpr(1.4426950408889634)
RESCALE_SLACK = gl.constexpr(8.0)

def _spread_nibbles(src: str, first: int) -> str:
    """PTX: the nibbles of register `src` into registers $first .. $first + 3 as pairs of 16-bit
    values bias + nibble: {b0.lo, b2.lo}, {b1.lo, b3.lo}, {b0.hi, b2.hi}, {b1.hi, b3.hi}."""
    lines = [f"lop3.b32 ${first}, {src}, 0x000f000f, {{magic}}, 0xea;"]
    for reg, shift in ((first + 1, 8), (first + 2, 4), (first + 3, 12)):
        lines += [f"shr.u32 t, {src}, {shift};", f"lop3.b32 ${reg}, t, 0x000f000f, {{magic}}, 0xea;"]
    return "\n".join(lines)


# One word (four bytes) of a key row ($4) -> the four registers _spread_nibbles names.
_KEY_ASM = "{{\n.reg .b32 t;\n" + _spread_nibbles("$4", 0) + "\n}}"
# The same word of value rows X ($8) and Y ($9) -> the pairs {X, Y} of byte 2s + u, nibble h in
# register $(4s + 2h + u): the bf16 pairs that V^T's A registers hold (X and Y adjacent tokens of K).
_VALUE_ASM = ("{{\n.reg .b32 a, b, t;\nprmt.b32 a, $8, $9, 0x5410;\nprmt.b32 b, $8, $9, 0x7632;\n"
              + _spread_nibbles("a", 0) + "\n" + _spread_nibbles("b", 4) + "\n}}")
KEY_ASM_BF16 = gl.constexpr(_KEY_ASM.format(magic="0x43004300"))
KEY_ASM_FP16 = gl.constexpr(_KEY_ASM.format(magic="0x64006400"))
VALUE_ASM_BF16 = gl.constexpr(_VALUE_ASM.format(magic="0x43004300"))
VALUE_ASM_FP16 = gl.constexpr(_VALUE_ASM.format(magic="0x64006400"))


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _max(a, b):
    return gl.maximum(a, b)


@gluon.jit
def code_bias(BF16: gl.constexpr):
    """The constant the nibble trick adds to every code."""
    if BF16:
        return 128.0
    else:
        return 1024.0


@gluon.jit
def halves(v, BF16: gl.constexpr):
    """int32 [...] -> its two 16-bit halves [..., 2] as the dot dtype (low half first); where the
    pair lands in one MMA register, LLVM folds the split and the re-join away."""
    if BF16:
        dt: gl.constexpr = gl.bfloat16
    else:
        dt: gl.constexpr = gl.float16
    return gl.join(v.to(gl.int16).to(dt, bitcast=True), (v >> 16).to(gl.int16).to(dt, bitcast=True))


@gluon.jit
def key_operand(kw, BF16: gl.constexpr, T: gl.constexpr, DG: gl.constexpr, a_l: gl.constexpr):
    """Key words [8 (r), TL (t), 4 (c), WI (i)] of one key group -> the A operand [T, DG] of q . k:
    row 16 j + 8 b + r is token TL r + 2 j + b, column 16 (2 i + e) + 8 h + 2 c + p is nibble h of
    byte e + 2 p of word i of lane c's run."""
    if BF16:
        r00, r10, r01, r11 = gl.inline_asm_elementwise(KEY_ASM_BF16, "=r,=r,=r,=r,r", [kw], dtype=(gl.int32,) * 4,
                                                       is_pure=True, pack=1)
    else:
        r00, r10, r01, r11 = gl.inline_asm_elementwise(KEY_ASM_FP16, "=r,=r,=r,=r,r", [kw], dtype=(gl.int32,) * 4,
                                                       is_pure=True, pack=1)
    k = gl.join(gl.join(halves(r00, BF16), halves(r10, BF16)), gl.join(halves(r01, BF16), halves(r11, BF16)))
    WI: gl.constexpr = DG // 32
    k = gl.reshape(k, [8, T // 16, 2, 4, WI, 2, 2, 2])  # r, j, b, c, i, p, e, h
    k = gl.permute(k, [1, 2, 0, 4, 6, 7, 3, 5])  # j, b, r | i, e, h, c, p
    return gl.convert_layout(gl.reshape(k, [T, DG]), a_l)


@gluon.jit
def value_operand(vx, vy, BF16: gl.constexpr, T: gl.constexpr, D: gl.constexpr, a_l: gl.constexpr):
    """Value words of tokens X = 2 TL c + t and Y = X + TL, [4 (c), TL (t), 8 (r), D / 64 (w)] ->
    the A operand [D, T] of out^T += V^T P: row 16 i + 8 h + r is d = 2 (r D / 16 + i) + h with
    i = 4 w + 2 s + u, column 16 j + 8 b + 2 c + p is token 2 TL c + TL p + 2 j + b."""
    if BF16:
        o = gl.inline_asm_elementwise(VALUE_ASM_BF16, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [vx, vy], dtype=(gl.int32,) * 8,
                                      is_pure=True, pack=1)
    else:
        o = gl.inline_asm_elementwise(VALUE_ASM_FP16, "=r,=r,=r,=r,=r,=r,=r,=r,r,r", [vx, vy], dtype=(gl.int32,) * 8,
                                      is_pure=True, pack=1)
    s0 = gl.join(gl.join(halves(o[0], BF16), halves(o[1], BF16)), gl.join(halves(o[2], BF16), halves(o[3], BF16)))
    s1 = gl.join(gl.join(halves(o[4], BF16), halves(o[5], BF16)), gl.join(halves(o[6], BF16), halves(o[7], BF16)))
    v = gl.reshape(gl.join(s0, s1), [4, T // 16, 2, 8, D // 64, 2, 2, 2, 2])  # c, j, b, r, w, p, u, h, s
    v = gl.permute(v, [4, 8, 6, 7, 3, 1, 2, 0, 5])  # w, s, u, h, r | j, b, c, p
    return gl.convert_layout(gl.reshape(v, [D, T]), a_l)


@gluon.jit
def token_order(x, T: gl.constexpr, row_l: gl.constexpr):
    """Per-token values [8 (r), TL (t)] (token TL r + t) -> [T] in score-row order 16 j + 8 b + r."""
    x = gl.permute(gl.reshape(x, [8, T // 16, 2]), [1, 2, 0])
    return gl.convert_layout(gl.reshape(x, [T]), row_l)


@gluon.jit
def tile_pointers(kd, vd, ks, kz, vs, vz, n0, k_off, vx_off, ks_off, vs_off, K_GROUPS: gl.constexpr,
                  DB: gl.constexpr, TL: gl.constexpr):
    """Pointers of the tile starting at token n0 (kd, vd: the cache as int32 words): key runs of
    group 0 and 1 (group 1 = group 0 with one group), value words of tokens X and Y = X + TL, key
    scale/zero [8, TL, K_GROUPS], value scale/zero [8, TL]."""
    k = kd + n0 * (DB // 4) + k_off
    v = vd + n0 * (DB // 4) + vx_off
    return (k, k + (DB // 4 // K_GROUPS) * (K_GROUPS - 1), v, v + TL * (DB // 4), ks + n0 * K_GROUPS + ks_off,
            kz + n0 * K_GROUPS + ks_off, vs + n0 + vs_off, vz + n0 + vs_off)


@gluon.jit
def load_tile(kd, vd, ks, kz, vs, vz, n0, k_off, vx_off, ks_off, vs_off, K_GROUPS: gl.constexpr, DB: gl.constexpr,
              TL: gl.constexpr):
    """The words and fp16 scales/zeros of the tile starting at token n0 (tile_pointers' order)."""
    p = tile_pointers(kd, vd, ks, kz, vs, vz, n0, k_off, vx_off, ks_off, vs_off, K_GROUPS, DB, TL)
    k0 = gl.load(p[0])
    k1 = k0
    if K_GROUPS == 2:
        k1 = gl.load(p[1])
    return k0, k1, gl.load(p[2]), gl.load(p[3]), gl.load(p[4]), gl.load(p[5]), gl.load(p[6]), gl.load(p[7])


@gluon.jit
def load_first_tile(kd, vd, ks, kz, vs, vz, n0, stored, k_off, vx_off, ks_off, vs_off, K_GROUPS: gl.constexpr,
                    DB: gl.constexpr, TL: gl.constexpr, PDL: gl.constexpr):
    """load_tile of the first tile, and under PDL the wait for the previous kernel: a tile that ends
    at or before `stored` (the tokens cached by earlier steps) is read before `griddepcontrol.wait`,
    since only this step's new tokens can be written by the kernel before (the RoPE + KV store);
    otherwise it is read after, into the same registers (the second loads are predicated, `other`
    the first ones)."""
    if PDL:
        p = tile_pointers(kd, vd, ks, kz, vs, vz, n0, k_off, vx_off, ks_off, vs_off, K_GROUPS, DB, TL)
        early = n0 + 8 * TL <= stored
        k0 = gl.load(p[0], mask=early)
        k1 = k0
        if K_GROUPS == 2:
            k1 = gl.load(p[1], mask=early)
        vx = gl.load(p[2], mask=early)
        vy = gl.load(p[3], mask=early)
        k_s = gl.load(p[4], mask=early)
        k_z = gl.load(p[5], mask=early)
        v_s = gl.load(p[6], mask=early)
        v_z = gl.load(p[7], mask=early)
        pdl_wait()
        late = n0 + 8 * TL > stored
        k0 = gl.load(p[0], mask=late, other=k0)
        k1 = k0
        if K_GROUPS == 2:
            k1 = gl.load(p[1], mask=late, other=k1)
        return (k0, k1, gl.load(p[2], mask=late, other=vx), gl.load(p[3], mask=late, other=vy),
                gl.load(p[4], mask=late, other=k_s), gl.load(p[5], mask=late, other=k_z),
                gl.load(p[6], mask=late, other=v_s), gl.load(p[7], mask=late, other=v_z))
    else:
        return load_tile(kd, vd, ks, kz, vs, vz, n0, k_off, vx_off, ks_off, vs_off, K_GROUPS, DB, TL)


@gluon.jit
def group_scores(acc, s, z, qsum, qk_scale, bias, T: gl.constexpr, row_l: gl.constexpr):
    """u * acc - u (z + bias) sum(q) of one key group, u = s * qk_scale (per token; s, z [8, TL])."""
    u = s.to(gl.float32) * qk_scale
    w = u * (z.to(gl.float32) + bias)
    u = token_order(u, T, row_l)
    w = token_order(w, T, row_l)
    return acc * u[:, None] - w[:, None] * qsum[None, :]


@gluon.jit
def query_operand(q_base, stride_qh, GROUP: gl.constexpr, g: gl.constexpr, K_GROUPS: gl.constexpr,
                  D: gl.constexpr, NH: gl.constexpr, b_l: gl.constexpr):
    """q as the B operand [D / K_GROUPS, NH] of key group g, in key_operand's column order (heads
    past GROUP are 0)."""
    DG: gl.constexpr = D // K_GROUPS
    WI: gl.constexpr = DG // 32
    k = gl.arange(0, DG, layout=gl.SliceLayout(1, b_l))
    n = gl.arange(0, NH, layout=gl.SliceLayout(0, b_l))
    p = k % 2
    c = (k // 2) % 4
    h = (k // 8) % 2
    e = (k // 16) % 2
    i = k // 32
    byte = g * (D // 2 // K_GROUPS) + 4 * (c * WI + i) + e + 2 * p
    d = 2 * byte + h
    return gl.load(q_base + n[None, :] * stride_qh + d[:, None], mask=n[None, :] < GROUP, other=0.0)


@gluon.jit
def load_partial(ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp, num_splits, D: gl.constexpr, NH: gl.constexpr):
    """(acc, max, sum) of split sp's partial; max -inf past the last split (whose partial it re-reads)."""
    spc = gl.minimum(sp, num_splits - 1)
    idx = (pair * num_splits + spc) * NH + n
    acc = gl.load(ws_acc_ptr + (pair * num_splits + spc) * (D * NH) + acc_off, cache_modifier=".cg")
    m = gl.where(sp < num_splits, gl.load(ws_ml_ptr + 2 * idx, cache_modifier=".cg"), float("-inf"))
    return acc, m, gl.load(ws_ml_ptr + 2 * idx + 1, cache_modifier=".cg")


@gluon.jit
def merge_partials(o, l_all, m_all, ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp0, num_splits, D: gl.constexpr,
                   NH: gl.constexpr):
    """Fold splits sp0 .. sp0 + 3 (those that exist) into the running merge (o, l_all, m_all), an online
    softmax over partials: the loads of all four (sums, maxima and accumulators) are issued before any
    is used, so the merging program waits one memory latency per four splits and none for a separate
    pass over the maxima. A split that saw no token has max -inf and weighs 0."""
    a0, m0, l0 = load_partial(ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp0, num_splits, D, NH)
    a1, m1, l1 = load_partial(ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp0 + 1, num_splits, D, NH)
    a2, m2, l2 = load_partial(ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp0 + 2, num_splits, D, NH)
    a3, m3, l3 = load_partial(ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp0 + 3, num_splits, D, NH)
    m_new = gl.maximum(gl.maximum(m_all, gl.maximum(m0, m1)), gl.maximum(m2, m3))
    m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
    keep = gl.exp2(m_all - m_safe)
    w0 = gl.exp2(m0 - m_safe)
    w1 = gl.exp2(m1 - m_safe)
    w2 = gl.exp2(m2 - m_safe)
    w3 = gl.exp2(m3 - m_safe)
    l_all = l_all * keep + w0 * l0 + w1 * l1 + w2 * l2 + w3 * l3
    o = o * keep[None, :] + w0[None, :] * a0 + w1[None, :] * a1 + w2[None, :] * a2 + w3[None, :] * a3
    return o, l_all, m_new


@gluon.jit(do_not_specialize=["window", "num_splits"])
def decode_kv4_kernel(
    q_ptr, stride_qb, stride_qh,
    kd_ptr, ks_ptr, kz_ptr, vd_ptr, vs_ptr, vz_ptr,
    slot_ptr, clen_ptr, nlen_ptr, out_ptr, ws_acc_ptr, ws_ml_ptr, ticket_ptr,
    sm_scale, HKV, MAX_TOKENS, window, num_splits,
    GROUP: gl.constexpr, HEAD_DIM: gl.constexpr, NH: gl.constexpr, BLOCK_N: gl.constexpr,
    K_GROUPS: gl.constexpr, SPLIT: gl.constexpr, BF16: gl.constexpr,
    k_l: gl.constexpr, v_l: gl.constexpr, ks_l: gl.constexpr, vs_l: gl.constexpr,
    PDL: gl.constexpr = False,
):
    """grid = (rows * HKV, num_splits), one warp; MAX_TOKENS a multiple of BLOCK_N; layouts from
    `layouts`. Same arguments and workspace format as attention_kv's decode_kernel."""
    D: gl.constexpr = HEAD_DIM
    DB: gl.constexpr = D // 2
    T: gl.constexpr = BLOCK_N
    TL: gl.constexpr = T // 8
    DG: gl.constexpr = D // K_GROUPS
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, 1], instr_shape=[16, 8])
    a_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    b_l: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)
    row_l: gl.constexpr = gl.SliceLayout(1, mma)
    col_l: gl.constexpr = gl.SliceLayout(0, mma)
    # The per-row metadata comes from host copies before the step, never from the kernel before this
    # one: read before the PDL wait (load_first_tile), like the first tile of earlier tokens.
    pair = gl.program_id(0)  # (batch row, KV head)
    split = gl.program_id(1)
    b = pair // HKV
    kvh = pair % HKV
    slot = gl.load(slot_ptr + b)
    stored = gl.load(clen_ptr + b).to(gl.int32)
    total = stored + gl.load(nlen_ptr + b).to(gl.int32)  # the new token is already stored
    first = gl.where(window > 0, gl.maximum(total - window, 0), 0)
    chunk = gl.cdiv(gl.cdiv(total - first, num_splits), T) * T
    lo = first + split * chunk
    hi = gl.minimum(lo + chunk, total)

    head_row = (slot * HKV + kvh).to(gl.int64) * MAX_TOKENS  # first cache row of this (slot, head)
    kd = kd_ptr.to(gl.pointer_type(gl.int32)) + head_row * (DB // 4)  # the cache bytes as words
    vd = vd_ptr.to(gl.pointer_type(gl.int32)) + head_row * (DB // 4)
    ks = ks_ptr + head_row * K_GROUPS
    kz = kz_ptr + head_row * K_GROUPS
    vs = vs_ptr + head_row
    vz = vz_ptr + head_row

    # Offsets inside a tile (tokens relative to its first): keys [8 (r), TL (t), 4 (c), 4 WI],
    # token TL r + t; values [4 (c), TL (t), 8 (r), D / 16], token X = 2 TL c + t.
    WI: gl.constexpr = DG // 32
    kr = gl.arange(0, 8, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, k_l))))
    kt = gl.arange(0, TL, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, k_l))))
    kc = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, k_l))))
    ki = gl.arange(0, WI, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, k_l))))
    k_off = ((TL * kr[:, None, None, None] + kt[None, :, None, None]) * (DB // 4) + kc[None, None, :, None] * WI
             + ki[None, None, None, :])
    MI: gl.constexpr = D // 16
    vc = gl.arange(0, 4, layout=gl.SliceLayout(1, gl.SliceLayout(2, gl.SliceLayout(3, v_l))))
    vt = gl.arange(0, TL, layout=gl.SliceLayout(0, gl.SliceLayout(2, gl.SliceLayout(3, v_l))))
    vr = gl.arange(0, 8, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(3, v_l))))
    vw = gl.arange(0, MI // 4, layout=gl.SliceLayout(0, gl.SliceLayout(1, gl.SliceLayout(2, v_l))))
    vx_off = ((2 * TL * vc[:, None, None, None] + vt[None, :, None, None]) * (DB // 4)
              + vr[None, None, :, None] * (MI // 4) + vw[None, None, None, :])
    sr = gl.arange(0, 8, layout=gl.SliceLayout(1, gl.SliceLayout(2, ks_l)))
    st = gl.arange(0, TL, layout=gl.SliceLayout(0, gl.SliceLayout(2, ks_l)))
    sg = gl.arange(0, K_GROUPS, layout=gl.SliceLayout(0, gl.SliceLayout(1, ks_l)))
    ks_off = (TL * sr[:, None, None] + st[None, :, None]) * K_GROUPS + sg[None, None, :]
    vr2 = gl.arange(0, 8, layout=gl.SliceLayout(1, vs_l))
    vt2 = gl.arange(0, TL, layout=gl.SliceLayout(0, vs_l))
    vs_off = TL * vr2[:, None] + vt2[None, :]
    tok_rel = token_order(vs_off, T, row_l)  # token of each score row, relative to the tile

    # Tiles at multiples of T (aligned vector loads); tokens outside [lo, hi) are masked. Loads never
    # leave [0, MAX_TOKENS): the launcher makes MAX_TOKENS a multiple of T.
    last_start = MAX_TOKENS - T
    start = gl.minimum((lo // T) * T, last_start)
    end_start = gl.minimum(gl.maximum((hi - 1) // T * T, start), last_start)

    k0, k1, vx, vy, k_s, k_z, v_s, v_z = load_first_tile(kd, vd, ks, kz, vs, vz, start, stored, k_off, vx_off,
                                                         ks_off, vs_off, K_GROUPS, DB, TL, PDL)

    # q is written by the kernel before (RoPE): read after the wait.
    q_base = q_ptr + b.to(gl.int64) * stride_qb + (kvh * GROUP) * stride_qh
    qa = query_operand(q_base, stride_qh, GROUP, 0, K_GROUPS, D, NH, b_l)
    qsum = gl.convert_layout(gl.reduce(qa.to(gl.float32), 0, _add), col_l)
    if K_GROUPS == 2:
        qb = query_operand(q_base, stride_qh, GROUP, 1, K_GROUPS, D, NH, b_l)
        qsum1 = gl.convert_layout(gl.reduce(qb.to(gl.float32), 0, _add), col_l)
    else:
        qb = qa
        qsum1 = qsum
    qk_scale = sm_scale * LOG2E
    bias = code_bias(BF16)

    m = gl.full([NH], float("-inf"), gl.float32, layout=col_l)
    l = gl.zeros([NH], gl.float32, layout=col_l)
    acc = gl.zeros([D, NH], gl.float32, layout=mma)
    for n0 in range(start, hi, T):
        nxt = gl.minimum(n0 + T, end_start)  # the last tile re-reads itself (cached, never used)
        n_k0, n_k1, n_vx, n_vy, n_k_s, n_k_z, n_v_s, n_v_z = load_tile(kd, vd, ks, kz, vs, vz, nxt, k_off, vx_off,
                                                                       ks_off, vs_off, K_GROUPS, DB, TL)

        tok = n0 + tok_rel
        valid = (tok >= lo) & (tok < hi)
        zero = gl.zeros([T, NH], gl.float32, layout=mma)
        if K_GROUPS == 2:
            ks0, ks1 = gl.split(k_s)
            kz0, kz1 = gl.split(k_z)
            s = group_scores(mma_v2(key_operand(k0, BF16, T, DG, a_l), qa, zero), ks0, kz0, qsum, qk_scale, bias,
                             T, row_l)
            s += group_scores(mma_v2(key_operand(k1, BF16, T, DG, a_l), qb, zero), ks1, kz1, qsum1, qk_scale, bias,
                              T, row_l)
        else:
            s = group_scores(mma_v2(key_operand(k0, BF16, T, DG, a_l), qa, zero), gl.reshape(k_s, [8, TL]),
                             gl.reshape(k_z, [8, TL]), qsum, qk_scale, bias, T, row_l)
        s = gl.where(valid[:, None], s, float("-inf"))
        # The running max moves only when a tile's max exceeds it by more than RESCALE_SLACK (base 2):
        # p stays <= 2^RESCALE_SLACK, and the accumulator is rescaled in a few tiles, not in every one.
        m_tile = gl.reduce(s, 0, _max)
        m_new = gl.where(m_tile > m + RESCALE_SLACK, m_tile, m)
        m_safe = gl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = gl.exp2(m - m_safe)
        p = gl.exp2(s - m_safe[None, :])
        l = l * alpha + gl.reduce(p, 0, _add)
        sv = gl.where(valid, token_order(v_s.to(gl.float32), T, row_l), 0.0)
        zv = gl.where(valid, token_order(v_z.to(gl.float32), T, row_l), 0.0) + bias
        ps = (p * sv[:, None]).to(qa.dtype)
        if gl.reduce((m_new != m).to(gl.int32), 0, _max) > 0:
            acc = acc * alpha[None, :]
        # The codes' bias leaves the accumulator every tile, as in the Triton kernel: accumulated over
        # thousands of tokens, (bias + v) sums lose the float32 precision the small result needs.
        corr = gl.reduce(ps.to(gl.float32) * zv[:, None], 0, _add)
        acc = mma_v2(value_operand(vx, vy, BF16, T, D, a_l), gl.convert_layout(ps, b_l), acc) - corr[None, :]
        m = m_new
        k0, k1, vx, vy, k_s, k_z, v_s, v_z = n_k0, n_k1, n_vx, n_vy, n_k_s, n_k_z, n_v_s, n_v_z

    if PDL:
        # The next kernel may launch now, its prologue overlapping this one's epilogue and merge. Not
        # at the start: chains of this kernel triggering there ran 27% slower at B = 16, S = 256 and
        # 10% at S = 1024 (H100; 5% faster at S = 4096); here it is within 0.6 µs of no PDL
        # (docs/kernels-attention.md, "Sixth round").
        pdl_launch_dependents()

    # out^T row 16 i + 8 h + r is d = 2 (r D / 16 + i) + h; columns are the group's query heads.
    rr = gl.arange(0, D, layout=row_l)
    d = 2 * ((rr % 8) * MI + rr // 16) + (rr // 8) % 2
    n = gl.arange(0, NH, layout=col_l)
    out_rows = out_ptr + (b.to(gl.int64) * HKV * GROUP + kvh * GROUP + n) * D  # out [B, 1, H, D]
    out_mask = (n[None, :] < GROUP) & (d[:, None] >= 0)
    if not SPLIT:
        gl.store(out_rows[None, :] + d[:, None], (acc / l[None, :]).to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # Partials in the accumulator's own order (row 16 i + 8 h + r, then the head): two heads per load.
        part = pair * num_splits + split
        gl.store(ws_acc_ptr + part * (D * NH) + rr[:, None] * NH + n[None, :], acc)
        gl.store(ws_ml_ptr + 2 * (part * NH + n), m)
        gl.store(ws_ml_ptr + 2 * (part * NH + n) + 1, l)
        cta_barrier()  # the partial stores precede the ticket (release below)
        ticket = gl.atomic_add(ticket_ptr + pair, 1, sem="acq_rel")
        if ticket == num_splits - 1:
            m_all = gl.full([NH], float("-inf"), gl.float32, layout=col_l)
            l_all = gl.zeros([NH], gl.float32, layout=col_l)
            o = gl.zeros([D, NH], gl.float32, layout=mma)
            acc_off = rr[:, None] * NH + n[None, :]
            for sp0 in range(0, num_splits, 4):
                o, l_all, m_all = merge_partials(o, l_all, m_all, ws_acc_ptr, ws_ml_ptr, acc_off, n, pair, sp0,
                                                 num_splits, D, NH)
            gl.store(out_rows[None, :] + d[:, None], (o / l_all[None, :]).to(out_ptr.dtype.element_ty),
                     mask=out_mask)
            gl.store(ticket_ptr + pair, 0)


def layouts(block_n: int, head_dim: int, key_groups: int):
    """(k_l, v_l, ks_l, vs_l): the linear layouts of the key words [8 (r), TL, 4 (c), head_dim / 32 /
    key_groups], the value words [4 (c), TL, 8 (r), head_dim / 64], the key scales [8, TL,
    key_groups] and the value scales [8, TL] of a tile (one warp; lane = 4 r + c)."""
    if block_n not in (16, 32, 64, 128) or head_dim not in (64, 128, 256) or key_groups not in (1, 2):
        raise ValueError(f"BLOCK_N {block_n} (16..128), head_dim {head_dim} (64, 128, 256), key groups {key_groups}")
    tl_ = block_n // 8
    wi = head_dim // 32 // key_groups
    vw = head_dim // 64
    k_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 0, 1 << i] for i in range(_log2(wi))] + [[0, 1 << i, 0, 0] for i in range(_log2(tl_))],
        lane_bases=[[0, 0, 1, 0], [0, 0, 2, 0], [1, 0, 0, 0], [2, 0, 0, 0], [4, 0, 0, 0]],
        warp_bases=[], block_bases=[], shape=[8, tl_, 4, wi])
    v_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 0, 1 << i] for i in range(_log2(vw))] + [[0, 1 << i, 0, 0] for i in range(_log2(tl_))],
        lane_bases=[[1, 0, 0, 0], [2, 0, 0, 0], [0, 0, 1, 0], [0, 0, 2, 0], [0, 0, 4, 0]],
        warp_bases=[], block_bases=[], shape=[4, tl_, 8, vw])
    ks_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 0, 1 << i] for i in range(_log2(key_groups))] + [[0, 1 << i, 0] for i in range(_log2(tl_))],
        lane_bases=[[0, 0, 0], [0, 0, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]],
        warp_bases=[], block_bases=[], shape=[8, tl_, key_groups])
    vs_l = gl.DistributedLinearLayout(
        reg_bases=[[0, 1 << i] for i in range(_log2(tl_))],
        lane_bases=[[0, 0], [0, 0], [1, 0], [2, 0], [4, 0]],
        warp_bases=[], block_bases=[], shape=[8, tl_])
    return k_l, v_l, ks_l, vs_l


# -- plain-torch replays of the operand permutations (the CPU tests' check of the index algebra) ---------


def _halves(v):
    import torch

    return torch.stack([v & 0xFFFF, (v >> 16) & 0xFFFF], -1)


def _key_asm(w):
    """_KEY_ASM on int64 words, without the bias bits: (r00, r10, r01, r11)."""
    return tuple((w >> s) & 0x000F000F for s in (0, 8, 4, 12))


def _value_asm(x, y):
    """_VALUE_ASM on int64 words of tokens X and Y, without the bias bits: registers $0 .. $7."""
    a = (x & 0xFFFF) | ((y & 0xFFFF) << 16)  # prmt 0x5410: {X0, X1, Y0, Y1}
    b = (x >> 16) | ((y >> 16) << 16)  # prmt 0x7632: {X2, X3, Y2, Y3}
    return tuple((r >> s) & 0x000F000F for r in (a, b) for s in (0, 8, 4, 12))


def _words(rows):
    """uint8 [..., 4n] -> int64 words [..., n] (little-endian, as the kernel reads them)."""
    r = rows.long().reshape(*rows.shape[:-1], -1, 4)
    return r[..., 0] | (r[..., 1] << 8) | (r[..., 2] << 16) | (r[..., 3] << 24)


def key_operand_replay(k_rows, g: int, key_groups: int):
    """What `key_operand` hands the MMA for key group g of a tile, from the tile's key rows (uint8
    [T, D / 2], token order): the same loads, asm, joins, reshapes and permutes in torch -> codes [T, D / G]."""
    import torch

    t, db = k_rows.shape
    tl_, dg = t // 8, 2 * db // key_groups
    wi = dg // 32
    words = _words(k_rows)  # [T, DB / 4]
    r, tt, c, i = torch.meshgrid(torch.arange(8), torch.arange(tl_), torch.arange(4), torch.arange(wi), indexing="ij")
    kw = words[tl_ * r + tt, g * (db // 4 // key_groups) + c * wi + i]  # the kernel's k_off
    r00, r10, r01, r11 = _key_asm(kw)
    k = torch.stack([torch.stack([_halves(r00), _halves(r10)], -1), torch.stack([_halves(r01), _halves(r11)], -1)], -1)
    k = k.reshape(8, t // 16, 2, 4, wi, 2, 2, 2).permute(1, 2, 0, 4, 6, 7, 3, 5)
    return k.reshape(t, dg)


def value_operand_replay(v_rows):
    """What `value_operand` hands the MMA (V^T, [D, T]) from a tile's value rows (uint8 [T, D / 2])."""
    import torch

    t, db = v_rows.shape
    tl_, d = t // 8, 2 * db
    words = _words(v_rows)
    c, tt, r, w = torch.meshgrid(torch.arange(4), torch.arange(tl_), torch.arange(8), torch.arange(d // 64),
                                 indexing="ij")
    x = words[2 * tl_ * c + tt, r * (d // 64) + w]  # the kernel's vx_off
    y = words[2 * tl_ * c + tt + tl_, r * (d // 64) + w]
    o = [_halves(v) for v in _value_asm(x, y)]
    s0 = torch.stack([torch.stack([o[0], o[1]], -1), torch.stack([o[2], o[3]], -1)], -1)
    s1 = torch.stack([torch.stack([o[4], o[5]], -1), torch.stack([o[6], o[7]], -1)], -1)
    v = torch.stack([s0, s1], -1).reshape(4, t // 16, 2, 8, d // 64, 2, 2, 2, 2).permute(4, 8, 6, 7, 3, 1, 2, 0, 5)
    return v.reshape(d, t)


def token_order_replay(x):
    """`token_order` in torch: [8, TL] -> [T] in score-row order."""
    tl_ = x.shape[1]
    return x.reshape(8, tl_ // 2, 2).permute(1, 2, 0).reshape(8 * tl_)


def query_columns(head_dim: int, g: int, key_groups: int):
    """The head_dim index of each column of `query_operand` for key group g (int64 [D / G])."""
    import torch

    dg = head_dim // key_groups
    k = torch.arange(dg)
    p, c, h, e, i = k % 2, (k // 2) % 4, (k // 8) % 2, (k // 16) % 2, k // 32
    byte = g * (head_dim // 2 // key_groups) + 4 * (c * (dg // 32) + i) + e + 2 * p
    return 2 * byte + h


def output_rows(head_dim: int):
    """The head_dim index of each row of the kernel's out^T accumulator (int64 [D])."""
    import torch

    rr = torch.arange(head_dim)
    return 2 * ((rr % 8) * (head_dim // 16) + rr // 16) + (rr // 8) % 2

"""Helpers shared by every qlinear template: tile order, split-K ranges and the split-K reduction,
and the output store.

Orientation: every qlinear kernel computes the transposed tile acc[n, m] = sum_k W[n, k] * x[m, k],
i.e. the weights are the MMA's A operand and the tokens its N dimension. On Hopper a dequantized
weight tile can then feed `wgmma` straight from registers (A may live in registers, B may not), and a
decode batch of 1-16 tokens fills the small N side of the instruction instead of wasting a 64-row M.

Split-K (small M, large K): the K tiles are divided among SPLIT_K programs per output tile. Each
adds its partial accumulator into a zero-initialised workspace with atomics, then takes a ticket on
the tile's counter; the program that arrives last swaps the workspace back to zeros (reading the
total in the same atomic), resets the counter and runs the epilogue. One launch, no memset, and the
buffers are left as found, so the launch can be replayed inside a CUDA graph. Integer partial sums
make the result exact and deterministic; float partial sums (w4a16, w4a4) are exact up to the
order of at most SPLIT_K float32 additions.

Dequantization, two implementations of one arithmetic. Decode is memory-bound only if unpacking a
4-bit code costs about one instruction; Triton's element-wise code for "nibble -> int8" costs about
eight (each byte is extracted into its own register and the results are re-packed for the MMA).
So on the GPU (FAST_DEQUANT) the 4-bit templates unpack with a few lines of inline PTX that work on
four codes per 32-bit register (SIMD within a register): the 16-bit word holding four consecutive
codes is spread into four byte lanes, and one multiply-add per register applies the per-group
integers to all four lanes at once; the operations are chosen so that no lane ever carries into its
neighbour (each template's docstring proves it for its format). The assembly maps one word to one
int32 of four byte lanes (`pack=1`, so its meaning never depends on Triton's register layout);
`unpack_byte_lanes` then views the lanes as int8 K values.
The same arithmetic written element-wise in plain Triton (FAST_DEQUANT=False) is what the CPU
interpreter runs in CI and what the GPU uses when the packed row length is not a multiple of four
bytes; both produce identical integers (and identical rounded floats for w4a16).
w4a8_g needs neither: its nibble-split packing puts four consecutive codes in the byte lanes of a
register with one mask, so its template unpacks in plain Triton integer code on both paths.
"""

# --- template body ---


@triton.jit
def tile_coords(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_n, pid_m) for a 1-D program id, walking GROUP_M token tiles per weight tile band so
    that the weight tiles of a band stay in L2 while all token tiles use them. GROUP_M = 1 is the plain
    order (pid_n fastest), computed without the band arithmetic."""
    num_n = tl.cdiv(N, BN)
    if GROUP_M == 1:
        return pid % num_n, pid // num_n
    num_m = tl.cdiv(M, BM)
    per_band = GROUP_M * num_n
    band = pid // per_band
    first_m = band * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_band) % rows
    pid_n = (pid % per_band) // rows
    return pid_n, pid_m


@triton.jit
def grid_dependency_wait(PDL: tl.constexpr):
    """Programmatic dependent launch (a launch with launch_pdl, sm_90+): let the next kernel of the
    stream begin launching now, then wait until the previous kernel has finished and its writes are
    visible. Before this call a kernel may only read what no earlier kernel writes (the weights)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()


@triton.jit
def split_range(pid_k, k_tiles, SPLIT_K: tl.constexpr):
    """[first, last) K tiles of split pid_k; splits get near-equal contiguous shares."""
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, k_tiles)
    return first, last


@triton.jit
def splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K: tl.constexpr):
    """Add `acc` into the workspace; return (total, is_last). Only when is_last is total valid.

    Ordering: the partial sums are relaxed atomics (independent, fire-and-forget); the barrier
    orders them before the ticket, which one thread takes with acquire-release semantics at GPU
    scope, so they happen before the last program's acquire of the final ticket; that program's
    threads read after its barrier. (Release semantics on every partial sum would put a fence in
    front of each atomic and serialize them: measured several microseconds per launch.)"""
    tl.atomic_add(ws_ptr + offs, acc, mask=mask, sem="relaxed")
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel")
    is_last = ticket == SPLIT_K - 1
    total = acc
    if is_last:
        # Read every partial sum and leave zeros for the next launch. Exchange through an integer
        # view: the swap only moves bits, and every backend (the CPU interpreter too) has it.
        bits_ptr = ws_ptr.to(tl.pointer_type(tl.int32))
        total = tl.atomic_xchg(bits_ptr + offs, tl.zeros(acc.shape, tl.int32), mask=mask, sem="relaxed")
        # Masked-off lanes return undefined bits: zero them so no garbage reaches a cast.
        total = tl.where(mask, total.to(acc.dtype, bitcast=True), 0)
        tl.store(cnt_ptr + tile_id, 0)
    return total, is_last


@triton.jit
def load_code_words(qw_ptr, rn_ld, kt, stride_w16, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr):
    """[BN, BK // 4] int32: the zero-extended 16-bit words of K tile kt, each holding four codes
    (canonical packing: code 4j in bits 0-3, 4j+1 in 4-7, 4j+2 in 8-11, 4j+3 in 12-15).
    stride_w16 = KW // 4, the row length in 16-bit words, passed from the host so that Triton sees
    its divisibility and loads 16 bytes at a time."""
    rw = kt * (BK // 4) + tl.arange(0, BK // 4)
    ptrs = qw_ptr.to(tl.pointer_type(tl.uint16)) + rn_ld[:, None] * stride_w16 + rw[None, :]
    if EVEN_K:
        words = tl.load(ptrs)
    else:
        words = tl.load(ptrs, mask=rw[None, :] < stride_w16, other=0)
    return words.to(tl.int32)


@triton.jit
def unpack_byte_lanes(r, BN: tl.constexpr, BK: tl.constexpr):
    """int32 [BN, BK // 4] holding four int8 lanes each (lane j = K offset j) -> int8 [BN, BK].

    Written as byte extractions and joins, which is correct in any register layout Triton picks;
    where the layout keeps four consecutive K values in one register (the MMA's A fragment) the
    extract/insert pairs cancel and nothing is re-packed."""
    b0 = r.to(tl.int8)
    b1 = (r >> 8).to(tl.int8)
    b2 = (r >> 16).to(tl.int8)
    b3 = (r >> 24).to(tl.int8)
    return tl.join(tl.join(b0, b2), tl.join(b1, b3)).reshape(BN, BK)


@triton.jit
def load_codes(qw_ptr, rn_ld, kt, KW, BN: tl.constexpr, BK: tl.constexpr, EVEN_K: tl.constexpr):
    """[BN, BK] uint8 codes 0..15 in natural K order (element-wise unpacking)."""
    rb = kt * (BK // 2) + tl.arange(0, BK // 2)
    ptrs = qw_ptr + rn_ld[:, None] * (KW // 2) + rb[None, :]
    if EVEN_K:
        p = tl.load(ptrs)
    else:
        p = tl.load(ptrs, mask=rb[None, :] < KW // 2, other=0)
    # join + reshape interleaves low (even k) and high (odd k) nibbles; Triton lowers it to a
    # register relabelling, since each thread already holds both nibbles of its bytes.
    return tl.join(p & 0xF, p >> 4).reshape(BN, BK)


@triton.jit
def load_group_values(ptr, rn_ld, kt, n_groups, BK: tl.constexpr, GROUP: tl.constexpr):
    """Per-(row, group) values for the groups of K tile kt: [BN, BK // GROUP] (or [BN, 1] when the
    tile lies inside one group)."""
    if BK >= GROUP:
        g = kt * (BK // GROUP) + tl.arange(0, BK // GROUP)
        return tl.load(ptr + rn_ld[:, None] * n_groups + g[None, :], mask=g[None, :] < n_groups, other=0)
    else:
        return tl.load(ptr + rn_ld * n_groups + (kt * BK) // GROUP)[:, None]


@triton.jit
def expand_groups(v, BN: tl.constexpr, BK: tl.constexpr):
    """[BN, GPT] per-group values -> [BN, BK], each repeated over its group's K values."""
    GPT: tl.constexpr = v.shape[1]
    return tl.broadcast_to(v[:, :, None], (BN, GPT, BK // GPT)).reshape(BN, BK)


@triton.jit
def u4_words_to_i8(words, mul, add_x4, BN: tl.constexpr, BK: tl.constexpr):
    """GPU only. Four uint4 codes per 16-bit word -> int8 (code * mul + add) ^ 0x80 [BN, BK]: the
    SIMD form of the element-wise `((q * mul + add) ^ 0x80).to(int8)`, one word (four codes) per
    32-bit register. Valid when each lane's q * mul + add lies in 0..255 and `add` is the same in all
    four lanes (add_x4 = add * 0x01010101): then no lane carries into or borrows from its neighbour.
    words, mul, add_x4: int32 [BN, BK // 4] (one value per word; a word never straddles a group)."""
    r = tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 r, t;
        prmt.b32 r, $1, 0, 0x1100;
        shr.b32 t, r, 4;
        and.b32 t, t, 0x0F000F00;
        and.b32 r, r, 0x000F000F;
        or.b32 r, r, t;
        mad.lo.s32 r, r, $2, $3;
        xor.b32 $0, r, 0x80808080;
        }""",
        constraints="=r,r,r,r",
        args=[words, mul, add_x4],
        dtype=tl.int32,
        is_pure=True,
        pack=1,
    )
    return unpack_byte_lanes(r, BN, BK)


@triton.jit
def store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, HAS_BIAS: tl.constexpr):
    """out[m, n] = y[n, m] (+ bias[n]) cast to the output dtype; y is float32 or the raw int32."""
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
    mask = (rn[:, None] < N) & (rm[None, :] < M)
    tl.store(out_ptr + rm[None, :] * N + rn[:, None], y.to(out_ptr.dtype.element_ty), mask=mask)


# Rounding shared by the quantizing kernels (activation quantization, KV store).
FP32_ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2**23: (x + M) - M rounds |x| < 2**22 half to even


@triton.jit
def rint(x):
    """Round half to even (torch.round) of float32 |x| < 2**22, identical on GPU and interpreter."""
    return (x + FP32_ROUND_MAGIC) - FP32_ROUND_MAGIC


@triton.jit
def round_to(x, ty: tl.constexpr):
    """float32 x rounded to nearest-even in dtype ty. bf16 is rounded through its bits because
    Triton's interpreter truncates float32 -> bf16 casts (the GPU rounds; this agrees with both)."""
    if ty == tl.bfloat16:
        bits = x.to(tl.uint32, bitcast=True)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.to(tl.float32, bitcast=True).to(tl.bfloat16)
    else:
        return x.to(ty)


# -- CUDA-core (dp4a) decode path: the GEMV kernels of the 4-bit integer templates ------------------


@triton.jit
def u4_nibble_lanes(words):
    """int32 code words in nibble-split order (code b of the word in bits 8b..8b+3, code 4 + b in
    bits 8b+4..8b+7; lowc.quant.packing) -> (codes 0..3, codes 4..7), each as four unsigned byte
    lanes in natural order: they meet the activations x0..x3 and x4..x7 as two int32 words hold them."""
    return words & 0x0F0F0F0F, (words >> 4) & 0x0F0F0F0F


@triton.jit
def _dp4a_emulated(a, b):
    """sum_i unsigned byte i of a * signed byte i of b (plain integer ops; what `dp4a.u32.s32` does)."""
    s = (a & 0xFF) * ((b << 24) >> 24)
    s += ((a >> 8) & 0xFF) * ((b << 16) >> 24)
    s += ((a >> 16) & 0xFF) * ((b << 8) >> 24)
    s += ((a >> 24) & 0xFF) * (b >> 24)
    return s


@triton.jit
def dot8_u4_i8(lo, hi, xa, xb, FAST: tl.constexpr):
    """Exact int32 sum of eight products code * x: lo/hi from `u4_nibble_lanes` (unsigned lanes), xa/xb
    the matching activation words (signed lanes). Two chained `dp4a` on the GPU."""
    if FAST:
        return tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 t;
            dp4a.u32.s32 t, $1, $3, 0;
            dp4a.u32.s32 $0, $2, $4, t;
            }""",
            constraints="=r,r,r,r,r",
            args=[lo, hi, xa, xb],
            dtype=tl.int32,
            is_pure=True,
            pack=1,
        )
    else:
        return _dp4a_emulated(lo, xa) + _dp4a_emulated(hi, xb)


@triton.jit
def plane_lane_mask(i: tl.constexpr, j: tl.constexpr):
    """uint32 [1, 1]: where plane j's bits of register i lie in a stored bit-plane word (lowc.quant.bitplane:
    bit (i + j) % 8 of every byte lane, i.e. 0x01010101 rotated left by i + j, which repeats every 8 bits)."""
    return tl.full((1, 1), 0x01010101, tl.uint32) << ((i + j) % 8)


@triton.jit
def or_plane_registers(t0, t1, t2, t3, t4, t5, t6, t7, words, j: tl.constexpr):
    """The eight registers of a 32-column block with plane j's bits OR-ed in (one LOP3 each)."""
    return (t0 | (words & plane_lane_mask(0, j)), t1 | (words & plane_lane_mask(1, j)),
            t2 | (words & plane_lane_mask(2, j)), t3 | (words & plane_lane_mask(3, j)),
            t4 | (words & plane_lane_mask(4, j)), t5 | (words & plane_lane_mask(5, j)),
            t6 | (words & plane_lane_mask(6, j)), t7 | (words & plane_lane_mask(7, j)))


@triton.jit
def rotate_right(t, i: tl.constexpr):
    """uint32 t rotated right by the constant i (one funnel shift on the GPU): register i of a bit-plane
    block, from bit i + j to bit j of its byte lanes."""
    if i == 0:
        return t
    else:
        return (t >> i) | (t << (32 - i))

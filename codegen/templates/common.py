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
"""

# --- template body ---


@triton.jit
def tile_coords(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_n, pid_m) for a 1-D program id, walking GROUP_M token tiles per weight tile band so
    that the weight tiles of a band stay in L2 while all token tiles use them."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    per_band = GROUP_M * num_n
    band = pid // per_band
    first_m = band * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_band) % rows
    pid_n = (pid % per_band) // rows
    return pid_n, pid_m


@triton.jit
def split_range(pid_k, k_tiles, SPLIT_K: tl.constexpr):
    """[first, last) K tiles of split pid_k; splits get near-equal contiguous shares."""
    per_split = tl.cdiv(k_tiles, SPLIT_K)
    first = pid_k * per_split
    last = tl.minimum(first + per_split, k_tiles)
    return first, last


@triton.jit
def splitk_reduce(acc, ws_ptr, cnt_ptr, tile_id, offs, mask, SPLIT_K: tl.constexpr):
    """Add `acc` into the workspace; return (total, is_last). Only when is_last is total valid."""
    # Release: this program's partial sums are visible before its ticket is.
    tl.atomic_add(ws_ptr + offs, acc, mask=mask, sem="release")
    tl.debug_barrier()
    ticket = tl.atomic_add(cnt_ptr + tile_id, 1, sem="acq_rel")
    is_last = ticket == SPLIT_K - 1
    total = acc
    if is_last:
        # Acquire: every partial sum arrived before the last ticket; read them and leave zeros.
        # Exchange through an integer view: the swap only moves bits, and every backend (the CPU
        # interpreter too) supports integer exchange.
        bits_ptr = ws_ptr.to(tl.pointer_type(tl.int32))
        total = tl.atomic_xchg(bits_ptr + offs, tl.zeros(acc.shape, tl.int32), mask=mask, sem="acq_rel")
        # Masked-off lanes return undefined bits: zero them so no garbage reaches a cast.
        total = tl.where(mask, total.to(acc.dtype, bitcast=True), 0)
        tl.store(cnt_ptr + tile_id, 0)
    return total, is_last


@triton.jit
def store_tile(out_ptr, y, rn, rm, M, N, bias_ptr, HAS_BIAS: tl.constexpr):
    """out[m, n] = y[n, m] (+ bias[n]) cast to the output dtype; y is float32 or the raw int32."""
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[:, None]
    mask = (rn[:, None] < N) & (rm[None, :] < M)
    tl.store(out_ptr + rm[None, :] * N + rn[:, None], y.to(out_ptr.dtype.element_ty), mask=mask)

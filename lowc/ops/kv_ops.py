"""The KV cache as graph inputs, and the ops that write and read it.

    lowc::kv_store(Tensor x, Tensor(a!)[] cache, Tensor slot_ids, Tensor cache_lens, Tensor new_lens,
                   str fmt) -> ()
    lowc::rope_kv_store(Tensor x, Tensor cos, Tensor sin, Tensor(a!)[] cache, Tensor slot_ids,
                        Tensor cache_lens, Tensor new_lens, str fmt, bool rotate=False,
                        Tensor? key_bias=None) -> ()
    lowc::hadamard(Tensor x) -> Tensor
    lowc::attention_kv(Tensor q, Tensor[] k_cache, Tensor[] v_cache, Tensor slot_ids, Tensor cache_lens,
                       Tensor new_lens, float scale, int layer_idx, int sliding_window, str fmt) -> Tensor

The forward context is three int64 vectors of length B (one entry per row of the batch), passed to
every op explicitly: `slot_ids` (the cache slot the row writes and reads), `cache_lens` (tokens that
slot held before this forward) and `new_lens` (valid tokens of this row). Rows are left-padded: of
the T input positions of row b, the last new_lens[b] are real and go to cache positions
cache_lens[b] .. cache_lens[b] + new_lens[b] - 1; padding is never stored, and its attention output
is 0. One-token decode is T = 1, new_lens = 1.

Cache formats (per layer, for K and for V; S slots, M max tokens, H KV heads, D head_dim):
- `kv16`: unquantized, in the model's dtype: data [S, H, M, D].
- `kv8`:  data int8 [S, H, M, D], scale fp16 [S, H, M]   (symmetric, lowc.quant.kv).
- `kv4`:  data uint8 [S, H, M, D/2] (two values a byte), scale fp16 [S, H, M], zero fp16 [S, H, M]
          (asymmetric UINT4 per token per head, lowc.quant.kv).
Key rotation (`rotate=True`, the scheme's `kv_rotation`): keys are stored as hadamard(rope(k)) and
the queries that read them are hadamard(rope(q)) (QuaRot's online rotation). The normalized
Walsh-Hadamard transform over head_dim is orthogonal, so q.k is unchanged in exact arithmetic, while
a few large key channels spread over all of head_dim before the per-token 4-bit grid sees them. It
has to run after RoPE (no fixed rotation commutes with RoPE's position-dependent one), so it is
online, inside the RoPE + store op. `hadamard_reference` fixes its arithmetic: float32 butterflies
in a fixed order, then one multiply by 1/sqrt(D), rounded to x's dtype (kernels reproduce it bit
for bit).
Key centering (`key_bias`, the scheme's `kv_key_center`): a fixed vector c [H, D] per layer (the
calibration mean of the stored keys) is subtracted before the key is quantized, so the cache holds
k - c. Attention needs no correction: q.(k - c) = q.k - q.c, and q.c is the same for every key a
query reads, which softmax cancels; so the centering is exact in full precision, while the per-token
4-bit grid no longer spends its range on the channel offsets every token shares. The subtraction is
in float32, rounded to the key's dtype (`center_key_reference`).

Values are quantized when written and dequantized inside attention, so prefill attention already
sees quantized keys and values (the papers' accuracy protocol). The references below are the truth
and the test oracle; a device kernel must reproduce their rounding (that of lowc.quant.kv).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lowc.errors import CacheError
from lowc.ops.attention import attention_reference
from lowc.quant.kv import KV4, KV8, dequantize_kv4, dequantize_kv8, quantize_kv4, quantize_kv8

KV_PARTS = {"kv16": ("data",), "kv8": ("data", "scale"), "kv4": ("data", "scale", "zero")}
CONTEXT_INPUTS = ("kv_slot_ids", "kv_cache_lens", "kv_new_lens")


def kv_format(kv_bits: int) -> str:
    """The cache format name for a scheme's kv_bits (16 -> 'kv16': the model dtype, unquantized)."""
    fmt = f"kv{int(kv_bits)}"
    if fmt not in KV_PARTS:
        raise CacheError(f"no KV cache format for {kv_bits} bits; lowc has {', '.join(KV_PARTS)}")
    return fmt


@dataclass(frozen=True)
class KVCacheSpec:
    """Shape of a model's KV cache: what the kv_cache pass adds as graph inputs, in their order."""

    fmt: str
    layers: int
    kv_heads: int
    head_dim: int
    dtype: torch.dtype  # the dtype K and V are computed in (and stored in, for kv16)
    key_groups: int = 1  # kv4: scale/zero pairs per key head vector (scale/zero [S, H, M, G] when > 1)

    def __post_init__(self):
        if self.fmt not in KV_PARTS:
            raise CacheError(f"unknown KV cache format {self.fmt!r}; valid: {', '.join(KV_PARTS)}")
        if min(self.layers, self.kv_heads, self.head_dim) < 1:
            raise CacheError(f"KV cache needs positive layers/heads/head_dim, got {self}")
        if self.fmt == "kv4" and self.head_dim % 2:
            raise CacheError(f"kv4 packs two values a byte; head_dim {self.head_dim} must be even (use kv8)")
        if not self.dtype.is_floating_point:
            raise CacheError(f"K/V compute dtype must be floating, got {self.dtype}")
        if self.key_groups != 1 and (self.fmt != "kv4" or self.key_groups < 1 or self.head_dim % (2 * self.key_groups)):
            raise CacheError(
                f"key_groups={self.key_groups} needs the kv4 format and a head_dim divisible by {2 * self.key_groups} "
                f"(got {self.fmt}, head_dim {self.head_dim}); use key_groups=1"
            )

    @property
    def parts(self) -> tuple[str, ...]:
        return KV_PARTS[self.fmt]

    def part_layout(self, slots: int, max_tokens: int, keys: bool = False) -> list[tuple[str, torch.dtype, tuple[int, ...]]]:
        """(part, dtype, shape) of one layer's V tensors, or its K tensors with `keys` (they differ only
        when key_groups > 1: scale and zero [S, H, M, G])."""
        s, h, m, d = slots, self.kv_heads, max_tokens, self.head_dim
        data = {"kv16": (self.dtype, d), "kv8": (torch.int8, d), "kv4": (torch.uint8, d // 2)}[self.fmt]
        layout = [("data", data[0], (s, h, m, data[1]))]
        groups = (self.key_groups,) if keys and self.key_groups > 1 else ()
        layout += [(p, torch.float16, (s, h, m, *groups)) for p in self.parts[1:]]
        return layout

    def input_names(self) -> list[str]:
        """Graph input names after (input_ids, position_ids): the context, then per layer K then V."""
        names = list(CONTEXT_INPUTS)
        for layer in range(self.layers):
            names += [f"kv{layer}_{kv}_{part}" for kv in ("k", "v") for part in self.parts]
        return names

    def bytes_per_token(self) -> int:
        """Cache bytes one token takes over all layers, K and V, scales and zeros included."""
        per_layer = sum(dt.itemsize * torch.Size(shape).numel()
                        for keys in (True, False) for _, dt, shape in self.part_layout(1, 1, keys))
        return self.layers * per_layer

    def allocate(self, slots: int, max_tokens: int, device=None) -> list[Tensor]:
        """Zeroed cache tensors in `input_names()` order (after the three context inputs)."""
        if slots < 1 or max_tokens < 1:
            raise CacheError(f"a KV cache needs slots >= 1 and max_tokens >= 1, got {slots} and {max_tokens}")
        layouts = [self.part_layout(slots, max_tokens, keys) for keys in (True, False)]
        return [torch.zeros(shape, dtype=dt, device=device)
                for _ in range(self.layers) for layout in layouts for _, dt, shape in layout]

    def layer_tensors(self, tensors: list[Tensor], layer: int) -> tuple[list[Tensor], list[Tensor]]:
        """(K parts, V parts) of one layer out of the flat list `allocate` returns."""
        n = len(self.parts)
        base = 2 * n * layer
        return list(tensors[base: base + n]), list(tensors[base + n: base + 2 * n])

    def transient_inputs(self, batch: int, seq_len: int, device=None) -> list[Tensor]:
        """Context + cache for one forward of `batch` full rows of `seq_len` tokens and no history."""
        slot_ids = torch.arange(batch, dtype=torch.int64, device=device)
        cache_lens = torch.zeros(batch, dtype=torch.int64, device=device)
        new_lens = torch.full((batch,), seq_len, dtype=torch.int64, device=device)
        return [slot_ids, cache_lens, new_lens, *self.allocate(batch, seq_len, device)]


# ------------------------------------------------------------------------------ checks (fake + ref)
def _check_cache(x: Tensor, cache: list[Tensor], fmt: str, op: str, device=None) -> None:
    """x [B, H, T, D] against one layer's K or V parts; raises CacheError naming the mismatch."""
    if fmt not in KV_PARTS:
        raise CacheError(f"{op}: unknown KV format {fmt!r}; valid: {', '.join(KV_PARTS)}")
    if len(cache) != len(KV_PARTS[fmt]):
        raise CacheError(f"{op}: a {fmt} cache has parts {KV_PARTS[fmt]}, got {len(cache)} tensors")
    if x.dim() != 4:
        raise CacheError(f"{op}: expected K/V/Q as [batch, heads, tokens, head_dim], got {tuple(x.shape)}")
    groups = cache_groups(cache, fmt)
    try:
        spec = KVCacheSpec(fmt, 1, cache[0].shape[1], x.shape[-1], x.dtype, key_groups=groups)
    except CacheError as e:
        raise CacheError(f"{op}: {e}") from None
    expect = spec.part_layout(cache[0].shape[0], cache[0].shape[2], keys=groups > 1)
    for t, (part, dt, shape) in zip(cache, expect):
        if t.dtype != dt or tuple(t.shape) != shape:
            raise CacheError(
                f"{op}: {fmt} cache part {part!r} is {_dt(t.dtype)}{list(t.shape)} but this layer computes "
                f"{_dt(x.dtype)} K/V with head_dim {x.shape[-1]}, so it must be {_dt(dt)}{list(shape)}; create the "
                "KVCache from this compiled model (model.new_cache(...)) after any dtype change"
            )
        if t.device != (device or x.device):
            raise CacheError(f"{op}: cache part {part!r} is on {t.device} but K/V are on {device or x.device}")


def cache_groups(cache: list[Tensor], fmt: str) -> int:
    """Scale/zero groups per head vector of one layer's K or V parts: 1 unless a kv4 scale is
    [S, H, M, G] (keys of a spec with key_groups = G)."""
    return cache[1].shape[-1] if fmt == "kv4" and len(cache) > 1 and cache[1].dim() == 4 else 1


def _dt(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _check_context(batch: int, slot_ids: Tensor, cache_lens: Tensor, new_lens: Tensor, op: str) -> None:
    for name, t in (("slot_ids", slot_ids), ("cache_lens", cache_lens), ("new_lens", new_lens)):
        if t.dtype != torch.int64 or tuple(t.shape) != (batch,):
            raise CacheError(f"{op}: forward context {name} must be int64 [{batch}], got {t.dtype}{list(t.shape)}")


def _check_bounds(cache: Tensor, seq_len: int, slot_ids: Tensor, cache_lens: Tensor, new_lens: Tensor, op: str) -> None:
    """The reference checks the context values too (a kernel would trust the runtime's checks)."""
    slots, max_tokens = cache.shape[0], cache.shape[2]
    if slot_ids.numel() and (int(slot_ids.min()) < 0 or int(slot_ids.max()) >= slots):
        raise CacheError(f"{op}: slot ids {slot_ids.tolist()} outside the cache's {slots} slots")
    if new_lens.numel() and (int(new_lens.min()) < 1 or int(new_lens.max()) > seq_len):
        raise CacheError(f"{op}: new_lens {new_lens.tolist()} must lie in 1..{seq_len} (the input length)")
    end = cache_lens + new_lens
    if cache_lens.numel() and (int(cache_lens.min()) < 0 or int(end.max()) > max_tokens):
        raise CacheError(
            f"{op}: cache full: rows need {end.tolist()} tokens but a slot holds {max_tokens}; create the "
            "cache with a larger max_tokens or shorten the request"
        )


def _check_attention_inputs(q: Tensor, k_cache: list[Tensor], v_cache: list[Tensor], slot_ids: Tensor,
                            cache_lens: Tensor, new_lens: Tensor, fmt: str) -> None:
    if q.dim() != 4 or not k_cache:
        raise CacheError(f"lowc::attention_kv: expected q [batch, heads, tokens, head_dim], got {tuple(q.shape)}")
    kv_like = q.new_empty((q.shape[0], k_cache[0].shape[1], q.shape[2], q.shape[3]), device="meta")
    _check_cache(kv_like, k_cache, fmt, "lowc::attention_kv", q.device)
    _check_cache(kv_like, v_cache, fmt, "lowc::attention_kv", q.device)
    _check_context(q.shape[0], slot_ids, cache_lens, new_lens, "lowc::attention_kv")


# --------------------------------------------------------------------------------- references
def rotate_half_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Llama-style RoPE, x * cos + rotate_half(x) * sin, in the same op order as transformers."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _check_hadamard_dim(d: int, what: str) -> None:
    if d < 2 or d & (d - 1):
        raise CacheError(f"{what}: head_dim must be a power of two, got {d}")


def hadamard_reference(x: Tensor) -> Tensor:
    """Normalized Walsh-Hadamard transform over the last dim (a power of two), Sylvester order:
    stage h = 1, 2, 4, ... maps each pair (a, b) = (x[i], x[i + h]) of a block of 2h to (a + b, a - b),
    in float32; then * (1/sqrt(D)) in float32 and rounding to x's dtype. Its own inverse."""
    d = x.shape[-1]
    _check_hadamard_dim(d, "the key rotation (a Walsh-Hadamard transform)")
    y = x.to(torch.float32)
    h = 1
    while h < d:
        y = y.reshape(*x.shape[:-1], d // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return (y.reshape(x.shape) * torch.tensor(d ** -0.5, dtype=torch.float32)).to(x.dtype)


def center_key_reference(k: Tensor, key_bias: Tensor | None) -> Tensor:
    """k [B, H, T, D] - key_bias [H, D] (broadcast over batch and tokens), in float32, rounded to k's dtype."""
    if key_bias is None:
        return k
    return (k.to(torch.float32) - key_bias.to(torch.float32)[:, None, :]).to(k.dtype)


def stored_key(k: Tensor, rotate: bool, key_bias: Tensor | None) -> Tensor:
    """What the cache stores for post-RoPE keys k: the rotation (if `rotate`), then the centering."""
    return center_key_reference(hadamard_reference(k) if rotate else k, key_bias)


def check_key_bias(k: Tensor, key_bias: Tensor | None, op: str) -> None:
    """key_bias must be a floating [Hkv, D] tensor on k's device (one centre per KV head)."""
    if key_bias is None:
        return
    want = (k.shape[1], k.shape[-1])
    if key_bias.dim() != 2 or tuple(key_bias.shape) != want or not key_bias.is_floating_point():
        raise CacheError(f"{op}: key_bias must be a float tensor [Hkv, D] = {list(want)} (one centre per KV head), "
                         f"got {key_bias.dtype} {tuple(key_bias.shape)}")
    if key_bias.device != k.device:
        raise CacheError(f"{op}: key_bias is on {key_bias.device} but the keys are on {k.device}")


def _encode(x: Tensor, fmt: str, groups: int = 1) -> list[Tensor]:
    """x [B, H, T, D] -> the cache parts' values for every token (per token per head, in `groups`
    scale/zero groups along D for kv4)."""
    if fmt == "kv16":
        return [x]
    if fmt == "kv8":
        return list(quantize_kv8(x))
    return list(quantize_kv4(x, groups))


def _decode(parts: list[Tensor], fmt: str, dtype: torch.dtype) -> Tensor:
    if fmt == "kv16":
        return parts[0]
    if fmt == "kv8":
        return dequantize_kv8(KV8(*parts), dtype)
    return dequantize_kv4(KV4(*parts), dtype)


def kv_store_reference(x: Tensor, cache: list[Tensor], slot_ids: Tensor, cache_lens: Tensor, new_lens: Tensor,
                       fmt: str) -> None:
    """Quantize x [B, H, T, D] per token per head and write each row's valid tokens into its slot."""
    _check_cache(x, cache, fmt, "lowc::kv_store")
    b, _, t, _ = x.shape
    groups = cache_groups(cache, fmt)
    _check_context(b, slot_ids, cache_lens, new_lens, "lowc::kv_store")
    _check_bounds(cache[0], t, slot_ids, cache_lens, new_lens, "lowc::kv_store")
    if bool((new_lens == t).all()):
        # No padding: each row is one contiguous run of its slot; plain slice copies, no scatter.
        for b, (slot, start) in enumerate(zip(slot_ids.tolist(), cache_lens.tolist())):
            for dst, src in zip(cache, _encode(x[b: b + 1], fmt, groups)):
                dst[slot, :, start: start + t] = src[0]
        return
    first = t - new_lens  # first valid input position of each row (left padding)
    cols = torch.arange(t, device=x.device)
    valid = cols[None, :] >= first[:, None]
    rows, tok = valid.nonzero(as_tuple=True)
    slots = slot_ids[rows]
    pos = cache_lens[rows] + tok - first[rows]
    for dst, src in zip(cache, _encode(x[rows, :, tok].unsqueeze(2), fmt, groups)):
        dst[slots, :, pos] = src.squeeze(2)  # [N, H, ...] in both: advanced dims come first


def _gather(parts: list[Tensor], slot_ids: Tensor, length: int) -> list[Tensor]:
    """Each row's slot, first `length` tokens; the cache itself when that is all of it, in order."""
    slots, max_tokens = parts[0].shape[0], parts[0].shape[2]
    if length == max_tokens and slot_ids.numel() == slots and bool((slot_ids == torch.arange(slots, device=slot_ids.device)).all()):
        return list(parts)
    return [p[slot_ids, :, :length] for p in parts]


def attention_kv_reference(q: Tensor, k_cache: list[Tensor], v_cache: list[Tensor], slot_ids: Tensor,
                           cache_lens: Tensor, new_lens: Tensor, scale: float, sliding_window: int,
                           fmt: str) -> Tensor:
    """Causal GQA attention of q [B, H, T, D] over each row's slot, dequantized; returns [B, T, H, D]."""
    b, h, t, d = q.shape
    _check_attention_inputs(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt)
    _check_bounds(k_cache[0], t, slot_ids, cache_lens, new_lens, "lowc::attention_kv")
    total = cache_lens + new_lens  # the new tokens were stored before this op runs
    length = int(total.max())
    k = _decode(_gather(k_cache, slot_ids, length), fmt, q.dtype)
    v = _decode(_gather(v_cache, slot_ids, length), fmt, q.dtype)
    if bool((cache_lens == 0).all()) and bool((new_lens == t).all()):
        # No history and no padding: exactly the captured lowc::attention (same kernel, same numbers).
        return attention_reference(q, k, v, scale, sliding_window)
    hkv = k.shape[1]
    if h % hkv:
        raise CacheError(f"lowc::attention_kv: query heads ({h}) must be a multiple of KV heads ({hkv})")
    first = t - new_lens
    q_pos = cache_lens[:, None] + torch.arange(t, device=q.device)[None, :] - first[:, None]  # [B, T]
    k_pos = torch.arange(length, device=q.device)
    allowed = k_pos[None, None, :] <= q_pos[:, :, None]  # also < total: q_pos < total
    if sliding_window > 0:
        allowed = allowed & (q_pos[:, :, None] - k_pos[None, None, :] < sliding_window)
    pad_row = q_pos < cache_lens[:, None]  # left padding: no key of its own; give it one, then zero it
    allowed[:, :, 0] |= pad_row
    in_slot = (k_pos[None, :] < total[:, None])[:, None, :, None]
    v = torch.where(in_slot, v, torch.zeros((), dtype=v.dtype, device=v.device))
    group = h // hkv
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1),
        attn_mask=allowed[:, None], scale=scale,
    )
    out = out.masked_fill(pad_row[:, None, :, None], 0)
    return out.transpose(1, 2).contiguous()


# ---------------------------------------------------------------------------------------- ops
@torch.library.custom_op("lowc::kv_store", mutates_args=("cache",))
def kv_store(x: Tensor, cache: list[Tensor], slot_ids: Tensor, cache_lens: Tensor, new_lens: Tensor,
             fmt: str) -> None:
    """Write K or V [B, H, T, D] into one layer's cache parts, quantizing per `fmt`."""
    kv_store_reference(x, cache, slot_ids, cache_lens, new_lens, fmt)


@kv_store.register_fake
def _kv_store_fake(x, cache, slot_ids, cache_lens, new_lens, fmt):
    _check_cache(x, cache, fmt, "lowc::kv_store")
    _check_context(x.shape[0], slot_ids, cache_lens, new_lens, "lowc::kv_store")


def rope_kv_store_reference(x: Tensor, cos: Tensor, sin: Tensor, cache: list[Tensor], slot_ids: Tensor,
                            cache_lens: Tensor, new_lens: Tensor, fmt: str, rotate: bool = False,
                            key_bias: Tensor | None = None) -> None:
    k = stored_key(rotate_half_rope(x, cos, sin), rotate, key_bias)
    kv_store_reference(k, cache, slot_ids, cache_lens, new_lens, fmt)


@torch.library.custom_op("lowc::rope_kv_store", mutates_args=("cache",))
def rope_kv_store(x: Tensor, cos: Tensor, sin: Tensor, cache: list[Tensor], slot_ids: Tensor, cache_lens: Tensor,
                  new_lens: Tensor, fmt: str, rotate: bool = False, key_bias: Tensor | None = None) -> None:
    """RoPE on pre-rotation keys (then the key rotation if `rotate`, then minus the key centre
    `key_bias` if given), then kv_store: one pass over K from projection to cache."""
    check_key_bias(x, key_bias, "lowc::rope_kv_store")
    rope_kv_store_reference(x, cos, sin, cache, slot_ids, cache_lens, new_lens, fmt, rotate, key_bias)


@rope_kv_store.register_fake
def _rope_kv_store_fake(x, cos, sin, cache, slot_ids, cache_lens, new_lens, fmt, rotate=False, key_bias=None):
    check_key_bias(x, key_bias, "lowc::rope_kv_store")
    _check_cache(x, cache, fmt, "lowc::rope_kv_store")
    _check_context(x.shape[0], slot_ids, cache_lens, new_lens, "lowc::rope_kv_store")


@torch.library.custom_op("lowc::hadamard", mutates_args=())
def hadamard(x: Tensor) -> Tensor:
    """The key rotation applied to queries (and to keys that do not go through rope_kv_store)."""
    return hadamard_reference(x)


@hadamard.register_fake
def _hadamard_fake(x):
    _check_hadamard_dim(x.shape[-1], "lowc::hadamard")
    return torch.empty_like(x)


@torch.library.custom_op("lowc::attention_kv", mutates_args=())
def attention_kv(q: Tensor, k_cache: list[Tensor], v_cache: list[Tensor], slot_ids: Tensor, cache_lens: Tensor,
                 new_lens: Tensor, scale: float, layer_idx: int, sliding_window: int, fmt: str) -> Tensor:
    """Attention of layer `layer_idx` reading K/V from the cache (after this step's kv_store)."""
    return attention_kv_reference(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, sliding_window, fmt)


@attention_kv.register_fake
def _attention_kv_fake(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, scale, layer_idx, sliding_window, fmt):
    _check_attention_inputs(q, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt)
    b, h, t, d = q.shape
    return q.new_empty((b, t, h, d))

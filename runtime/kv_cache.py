"""The KV cache: fixed slots x max tokens, one slot per sequence, allocated once.

A `KVCache` owns the per-layer tensors the kv_cache pass made graph inputs (layout and formats in
lowc.ops.kv_ops), the number of tokens each slot holds, and which slots are taken. Its capacity is
fixed at creation and reported in bytes; nothing grows later, so the same tensors can back CUDA-graph
decode. Slot lengths live on the host (they decide every shape and bound check without a device sync)
and advance only when a forward that wrote them succeeded (`ForwardContext.commit`), so a failed
request leaves every slot's committed tokens as they were.
"""

from __future__ import annotations

import torch

from lowc.errors import CacheError
from lowc.ops.kv_ops import KVCacheSpec

CAPACITY_ALIGN = 64  # tokens per slot are allocated in multiples of this on a GPU


class KVCache:
    """`slots` sequences of up to `max_tokens` tokens each, in `spec`'s format."""

    def __init__(self, spec: KVCacheSpec, slots: int, max_tokens: int, device: torch.device | str | None = None):
        if not isinstance(spec, KVCacheSpec):
            raise CacheError(f"KVCache needs a KVCacheSpec (model.kv_spec), got {type(spec).__name__}")
        if not (isinstance(slots, int) and isinstance(max_tokens, int)) or slots < 1 or max_tokens < 1:
            raise CacheError(f"KVCache needs integer slots >= 1 and max_tokens >= 1, got {slots!r} and {max_tokens!r}")
        self.spec = spec
        self.slots = slots
        self.max_tokens = max_tokens
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and self.device.index is None:  # "cuda" -> "cuda:N", as tensors report it
            self.device = torch.device("cuda", torch.cuda.current_device())
        # On a GPU the token axis is padded to whole tiles of the register-fragment decode kernel, which
        # reads aligned 64-token tiles (runtime/attention_gluon.py); the padding is never written or used.
        capacity = -(-max_tokens // CAPACITY_ALIGN) * CAPACITY_ALIGN if self.device.type == "cuda" else max_tokens
        self.tensors = spec.allocate(slots, capacity, self.device)
        self.lengths = [0] * slots  # committed tokens per slot
        self._taken = [False] * slots

    # ---------------------------------------------------------------------------------- capacity
    @property
    def nbytes(self) -> int:
        """Bytes of every cache tensor (data, scales, zeros), fixed at creation."""
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @property
    def bytes_per_token(self) -> int:
        return self.spec.bytes_per_token()

    def free_slots(self) -> list[int]:
        return [s for s in range(self.slots) if not self._taken[s]]

    # ----------------------------------------------------------------------------------- slots
    def allocate(self, n: int = 1) -> list[int]:
        """Take `n` free slots (emptied); CacheError if fewer are free."""
        free = self.free_slots()
        if n < 1 or n > len(free):
            raise CacheError(
                f"asked for {n} cache slots but {len(free)} of {self.slots} are free; release finished "
                "sequences (cache.release) or create the cache with more slots"
            )
        taken = free[:n]
        for s in taken:
            self._taken[s] = True
            self.lengths[s] = 0
        return taken

    def release(self, slots) -> None:
        """Give slots back; their tokens are forgotten (the memory is overwritten by the next user)."""
        for s in self._check_slots(slots, taken=True):
            self._taken[s] = False
            self.lengths[s] = 0

    def reset(self) -> None:
        """Release every slot."""
        self.lengths = [0] * self.slots
        self._taken = [False] * self.slots

    def _check_slots(self, slots, taken: bool) -> list[int]:
        slots = [int(s) for s in slots]
        for s in slots:
            if not 0 <= s < self.slots:
                raise CacheError(f"slot {s} does not exist: the cache has slots 0..{self.slots - 1}")
            if taken and not self._taken[s]:
                raise CacheError(f"slot {s} is not allocated; take slots with cache.allocate(n) first")
        if len(set(slots)) != len(slots):
            raise CacheError(f"slots {slots} repeat a slot; each row of a batch needs its own slot")
        return slots

    def reserve(self, slots, new_lens) -> list[int]:
        """Check that each slot can take its new tokens; returns their current lengths."""
        slots = self._check_slots(slots, taken=True)
        before = [self.lengths[s] for s in slots]
        for s, have, n in zip(slots, before, new_lens):
            if have + n > self.max_tokens:
                what = "prompt is longer than the cache" if have == 0 else "cache full"
                raise CacheError(
                    f"{what}: slot {s} holds {have} tokens and {n} more exceed its capacity of "
                    f"{self.max_tokens}; create the cache with max_tokens >= {have + n}"
                )
        return before

    def advance(self, slots, new_lens) -> None:
        """Commit tokens written by a successful forward (called by ForwardContext.commit)."""
        for s, n in zip(slots, new_lens):
            self.lengths[s] += int(n)

    def __repr__(self) -> str:
        return (f"KVCache({self.spec.fmt}, slots={self.slots}, max_tokens={self.max_tokens}, "
                f"{self.nbytes / 2**20:.2f} MiB, {self.bytes_per_token} bytes/token, "
                f"lengths={self.lengths})")

"""The forward context: which slot each batch row uses, what it already holds, how many tokens it adds.

The attention ops read positions and lengths from here, passed as explicit graph inputs (see
lowc.ops.kv_ops), never from globals. A context serves exactly one forward: it checks the request
against the cache before anything runs (slots allocated and distinct, lengths within capacity),
and `commit()` advances the slot lengths only after the graph ran without error, so a failing
request cannot change what other (or its own) slots hold.

Rows are left-padded: row b's last `new_lens[b]` positions are real tokens. Its positions for RoPE
continue from what its slot holds (padding gets position 0 and is never stored).
"""

from __future__ import annotations

import torch

from lowc.errors import CacheError, InputError
from lowc.ops.kv_ops import KVCacheSpec
from lowc.runtime.kv_cache import KVCache


class ForwardContext:
    """One forward over `cache`: rows -> `slots`, each adding `new_lens[b]` of `seq_len` tokens."""

    def __init__(self, cache: KVCache, slots, new_lens, seq_len: int):
        slots, new_lens = [int(s) for s in slots], [int(n) for n in new_lens]
        if not slots or len(slots) != len(new_lens):
            raise InputError(f"a forward context needs one new length per slot, got slots={slots} new_lens={new_lens}")
        if seq_len < 1 or any(n < 1 or n > seq_len for n in new_lens):
            raise InputError(
                f"each row adds 1..{seq_len} tokens (the input length), got new_lens={new_lens}; "
                "an empty prompt cannot be run"
            )
        self.cache = cache
        self.slots = slots
        self.new_lens = new_lens
        self.seq_len = int(seq_len)
        self.cache_lens = cache.reserve(slots, new_lens)
        self._committed = False

    @classmethod
    def transient(cls, spec: KVCacheSpec, batch: int, seq_len: int, device=None) -> "ForwardContext":
        """A fresh cache sized to one forward of `batch` full rows (what forward() uses with no context)."""
        cache = KVCache(spec, batch, seq_len, device)
        return cls(cache, cache.allocate(batch), [seq_len] * batch, seq_len)

    @property
    def batch(self) -> int:
        return len(self.slots)

    def position_ids(self) -> torch.Tensor:
        """[B, T] RoPE positions: the slot's length onwards for real tokens, 0 for left padding."""
        t = torch.arange(self.seq_len)
        first = torch.tensor([self.seq_len - n for n in self.new_lens])
        pos = torch.tensor(self.cache_lens)[:, None] + t[None, :] - first[:, None]
        return pos.clamp_min(0).to(self.cache.device)

    def graph_inputs(self) -> list[torch.Tensor]:
        """The tensors the kv_cache pass added as graph inputs, in their order."""
        if self._committed:
            raise CacheError("this ForwardContext was already used; make a new ForwardContext(cache, ...) for every forward")
        dev = self.cache.device
        ctx = [torch.tensor(v, dtype=torch.int64, device=dev) for v in (self.slots, self.cache_lens, self.new_lens)]
        return ctx + list(self.cache.tensors)

    def commit(self) -> None:
        """Record the tokens this forward stored (call once, after the graph ran)."""
        if self._committed:
            raise CacheError("this ForwardContext was already committed")
        self.cache.advance(self.slots, self.new_lens)
        self._committed = True

    def __repr__(self) -> str:
        return (f"ForwardContext(slots={self.slots}, cache_lens={self.cache_lens}, new_lens={self.new_lens}, "
                f"seq_len={self.seq_len})")

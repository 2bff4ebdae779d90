"""CUDA-graph decode: one captured graph per batch-size bucket, replayed every decode step.

A decode step of a compiled model is ~10 kernels per layer on tensors of a few KB; launched one by
one from Python it is bound by launch overhead, not by the GPU. `DecodeGraphs` captures the whole
step — `graph_module(input_ids, position_ids, slot_ids, cache_lens, new_lens, *cache)` with T = 1 —
once per bucket (1, 2, 4, ... up to `max_batch`) into static buffers, and a step is then: one
host-to-device copy of the per-row metadata, one device copy of the token ids, one graph replay.

Rows beyond the real batch (a batch of 5 runs the bucket of 8) point at a scratch slot the runner
reserves in the cache, so padding never touches a real sequence. A batch larger than the largest
bucket runs eagerly (never a wrong answer, only slower). Every op in the graph must have a
capture-safe CUDA kernel (no host synchronisation): capture fails otherwise, and the error names
the reason and how to fall back (`cuda_graphs=False`).
"""

from __future__ import annotations

import logging
import time

import torch

from lowc.errors import InputError, KernelError
from lowc.runtime.context import ForwardContext
from lowc.runtime.kv_cache import KVCache

log = logging.getLogger("lowc.runtime.cuda_graphs")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class _Bucket:
    """Static buffers and the captured graph of one batch size."""

    def __init__(self, batch: int, device: torch.device):
        self.batch = batch
        self.meta = torch.zeros(4, batch, dtype=torch.int64, device=device)  # positions, slots, cache_lens, new_lens
        self.host = torch.zeros(4, batch, dtype=torch.int64)  # pageable: the copy below is synchronous
        self.input_ids = torch.zeros(batch, 1, dtype=torch.int64, device=device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None

    def inputs(self, cache: KVCache) -> list[torch.Tensor]:
        positions, slots, cache_lens, new_lens = self.meta.unbind(0)
        return [self.input_ids, positions.view(self.batch, 1), slots, cache_lens, new_lens, *cache.tensors]


class DecodeGraphs:
    """Replays captured one-token decode steps of `model` over `cache`.

    The cache must have a free slot for padding rows; the runner takes it at creation
    (`scratch_slot`) and gives it back with `close()`.
    """

    def __init__(self, model, cache: KVCache, *, max_batch: int | None = None, buckets=DEFAULT_BUCKETS,
                 warmup: int = 2):
        if cache.device.type != "cuda":
            raise InputError(f"CUDA-graph decode needs the KV cache on a CUDA device, it is on {cache.device}")
        self.model = model
        self.cache = cache
        limit = max_batch or cache.slots - 1
        self.buckets = sorted(b for b in buckets if b <= max(1, limit))
        if not self.buckets:
            raise InputError(f"no bucket fits max_batch={limit}; give buckets with a size <= {limit}")
        (self.scratch_slot,) = cache.allocate(1)
        self._graphs: dict[int, _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.capture_seconds = 0.0
        t0 = time.perf_counter()
        for b in reversed(self.buckets):  # largest first: smaller graphs reuse its memory pool
            self._graphs[b] = self._capture(b, warmup)
        self.capture_seconds = time.perf_counter() - t0
        log.info("captured %d decode graphs %s in %.1fs", len(self.buckets), self.buckets, self.capture_seconds)

    def _scratch_rows(self, bk: _Bucket, start: int = 0) -> None:
        bk.host[:, start:] = 0
        bk.host[1, start:] = self.scratch_slot
        bk.host[3, start:] = 1

    def _capture(self, b: int, warmup: int) -> _Bucket:
        bk = _Bucket(b, self.cache.device)
        self._scratch_rows(bk)
        bk.meta.copy_(bk.host)
        gm = self.model.graph_module
        args = bk.inputs(self.cache)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        try:
            with torch.cuda.stream(stream), torch.no_grad():
                for _ in range(warmup):  # compiles and autotunes every kernel outside the capture
                    gm(*args)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool), torch.no_grad():
                bk.logits = gm(*args)
        except RuntimeError as e:
            raise KernelError(
                f"capturing the decode step for batch {b} as a CUDA graph failed: {e}. Every lowc op needs a "
                "capture-safe CUDA kernel (no host synchronisation); run with cuda_graphs=False to decode eagerly"
            ) from e
        bk.graph = graph
        return bk

    def bucket_for(self, batch: int) -> int | None:
        return next((b for b in self.buckets if b >= batch), None)

    def step(self, input_ids: torch.Tensor, slots: list[int]) -> torch.Tensor:
        """One decode step: `input_ids` [B, 1] for sequences in `slots`; returns logits [B, V]."""
        b = len(slots)
        if input_ids.shape != (b, 1):
            raise InputError(f"a decode step takes input_ids [{b}, 1] for {b} slots, got {tuple(input_ids.shape)}")
        if self.scratch_slot in slots:
            raise InputError(f"slot {self.scratch_slot} is the CUDA-graph runner's scratch slot; it holds no sequence")
        ctx = ForwardContext(self.cache, slots, [1] * b, 1)  # validates slots and capacity, reserves
        bucket = self.bucket_for(b)
        if bucket is None:  # larger than any captured graph: run the same graph eagerly
            logits = self.model(input_ids, context=ctx)[:, -1]
            return logits
        bk = self._graphs[bucket]
        lens = torch.tensor(ctx.cache_lens, dtype=torch.int64)
        bk.host[0, :b] = lens
        bk.host[1, :b] = torch.tensor(slots, dtype=torch.int64)
        bk.host[2, :b] = lens
        bk.host[3, :b] = 1
        self._scratch_rows(bk, b)
        bk.meta.copy_(bk.host)  # synchronous, so the next step may rewrite `host` at once
        bk.input_ids[:b].copy_(input_ids)
        bk.graph.replay()
        ctx.commit()
        return bk.logits[:b, -1]

    def close(self) -> None:
        """Release the scratch slot and the graphs."""
        self._graphs.clear()
        self.cache.release([self.scratch_slot])

    def __repr__(self) -> str:
        return (f"DecodeGraphs(buckets={self.buckets}, scratch_slot={self.scratch_slot}, "
                f"capture={self.capture_seconds:.1f}s)")

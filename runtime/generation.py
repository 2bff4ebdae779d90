"""generate(): prefill, then batched one-token decode over lowc's KV cache.

Prompts of different lengths share a batch: they are left-padded for one prefill forward (the
context's per-row lengths keep padding out of the cache and out of RoPE positions), then every
decode step runs the same captured graph with one token per unfinished sequence; a sequence that
emits EOS leaves the batch, its slot untouched. Token choice is greedy (argmax, the first index on
ties, as torch and transformers do) or sampled with temperature, top-k and top-p.

    out = generate(model, input_ids, max_new_tokens=32)                 # [B, T + n], like HF
    out = generate(model, input_ids, 32, attention_mask=mask)           # left-padded batch
    new = generate(model, [[1, 2, 3], [4, 5]], 32, do_sample=True, top_p=0.9)   # lists of new ids
    for step in stream(model, prompts, 32): ...                         # [B] ids per step
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch

from lowc.errors import CacheError, InputError
from lowc.runtime.context import ForwardContext
from lowc.runtime.kv_cache import KVCache


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits of a step."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    top_p: float = 1.0  # 1.0 = no nucleus filter

    def __post_init__(self):
        if self.do_sample and not self.temperature > 0:
            raise InputError(f"temperature must be > 0 when sampling, got {self.temperature} (use do_sample=False for greedy)")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must lie in (0, 1], got {self.top_p}")

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Next token ids [B] from logits [B, V]."""
        if not self.do_sample:
            return logits.argmax(dim=-1)
        scores = logits.float() / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = scores.topk(self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            ordered, order = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            # Drop a token when the more likely ones already reach top_p; the most likely always stays.
            drop_sorted = probs.cumsum(dim=-1) - probs >= self.top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        probs = scores.softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _prompts(input_ids, attention_mask) -> tuple[list[list[int]], bool]:
    """(prompt token lists, whether the caller passed a tensor); left padding only."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 2:
            raise InputError(f"input_ids must be [batch, seq]; got {tuple(input_ids.shape)} (a list of prompts also works)")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise InputError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        rows = input_ids.tolist()
        if attention_mask is None:
            return rows, True
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask must be a tensor shaped like input_ids {tuple(input_ids.shape)}")
        prompts = []
        for b, (row, mask) in enumerate(zip(rows, attention_mask.tolist())):
            n = sum(1 for m in mask if m)
            if any(mask[: len(mask) - n]) or not all(mask[len(mask) - n:]):
                raise InputError(f"attention_mask row {b} is not left padding (0s then 1s); pad on the left "
                                 "(tokenizer.padding_side = 'left') or pass a list of prompts")
            prompts.append(row[len(row) - n:])
        return prompts, True
    if attention_mask is not None:
        raise InputError("attention_mask goes with a padded input_ids tensor, not with a list of prompts")
    if not isinstance(input_ids, (list, tuple)) or not input_ids:
        raise InputError("input_ids must be a [batch, seq] tensor or a non-empty list of prompts (lists of ids)")
    prompts = []
    for p in input_ids:
        if isinstance(p, torch.Tensor):
            if p.dim() != 1 or p.is_floating_point():
                raise InputError(f"each prompt tensor must be 1-d integer ids, got {p.dtype}{tuple(p.shape)}")
            p = p.tolist()
        prompts.append([int(t) for t in p])
    return prompts, False


def _check_prompts(prompts: list[list[int]], vocab: int) -> None:
    for b, p in enumerate(prompts):
        if not p:
            raise InputError(f"prompt {b} is empty; every prompt needs at least one token")
        if min(p) < 0 or max(p) >= vocab:
            raise InputError(f"prompt {b} has token ids outside [0, {vocab})")


def _stop_ids(model, eos_token_id) -> set[int]:
    if eos_token_id is None:
        eos_token_id = getattr(model.config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {int(e) for e in (eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])}


def stream(model, input_ids, max_new_tokens: int = 32, *, attention_mask=None, do_sample: bool = False,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None,
           generator: torch.Generator | None = None, cache: KVCache | None = None,
           cuda_graphs: bool | None = None) -> Iterator[torch.Tensor]:
    """Yield one LongTensor [B] per step: each sequence's new token, `pad_token_id` once it has finished.

    `cache`: a KVCache to draw slots from (default: a fresh one sized to this request); the slots are
    released when the iterator ends. `cuda_graphs`: replay captured decode steps (default: on when
    the cache is on a GPU; see lowc.runtime.cuda_graphs). See `generate` for the other arguments.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    sampling = Sampling(do_sample, temperature, top_k, top_p)
    prompts, _ = _prompts(input_ids, attention_mask)
    _check_prompts(prompts, model.vocab_size)
    stop = _stop_ids(model, eos_token_id)
    pad = pad_token_id if pad_token_id is not None else (min(stop) if stop else 0)
    if model.kv_spec is None:
        raise InputError("generate needs a model compiled with the kv_cache pass (every default pipeline has it)")
    longest = max(map(len, prompts))
    if cache is None:
        # One slot per prompt, plus the CUDA-graph runner's scratch slot for padding rows.
        on_gpu = next(itertools.chain(model.graph_module.parameters(), model.graph_module.buffers())).is_cuda
        extra = 1 if (cuda_graphs is not False and on_gpu) else 0
        cache = model.new_cache(len(prompts) + extra, longest + max_new_tokens)
    elif cache.spec != model.kv_spec:
        raise CacheError(f"the cache was made for {cache.spec}, but this model needs {model.kv_spec}")
    for b, p in enumerate(prompts):
        if len(p) > cache.max_tokens:
            raise CacheError(f"prompt {b} has {len(p)} tokens, longer than the cache's {cache.max_tokens} per slot")
        if len(p) + max_new_tokens - 1 > cache.max_tokens:  # the last new token is never stored
            raise CacheError(
                f"cache full: prompt {b} ({len(p)} tokens) plus {max_new_tokens} new tokens needs "
                f"{len(p) + max_new_tokens - 1} cached tokens but a slot holds {cache.max_tokens}; lower "
                "max_new_tokens or create the cache with a larger max_tokens")
    slots = cache.allocate(len(prompts))
    device = cache.device
    decode = _decoder(model, cache, len(prompts), cuda_graphs)
    try:
        # Prefill: one left-padded batch; the padding id is irrelevant (never stored, never attended).
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts],
                           dtype=torch.long, device=device)
        logits = model(ids, context=ForwardContext(cache, slots, [len(p) for p in prompts], longest))[:, -1]
        active = list(range(len(prompts)))  # batch rows still generating
        for step in range(max_new_tokens):
            chosen = sampling.choose(logits, generator).tolist()
            out = [pad] * len(prompts)
            for row, tok in zip(active, chosen):
                out[row] = tok
            yield torch.tensor(out, dtype=torch.long)
            active_next = [row for row, tok in zip(active, chosen) if tok not in stop]
            if not active_next or step == max_new_tokens - 1:
                return
            keep = [i for i, tok in enumerate(chosen) if tok not in stop]
            ids = torch.tensor([[chosen[i]] for i in keep], dtype=torch.long, device=device)
            logits = decode(ids, [slots[row] for row in active_next])
            active = active_next
    finally:
        cache.release(slots)


def _decoder(model, cache: KVCache, batch: int, cuda_graphs: bool | None):
    """`decode(ids [b, 1], slots) -> logits [b, V]`: CUDA-graph replay where possible, else eager."""

    def eager(ids, slots):
        return model(ids, context=ForwardContext(cache, slots, [1] * len(slots), 1))[:, -1]

    if cuda_graphs is False or cache.device.type != "cuda":
        if cuda_graphs:
            raise InputError(f"cuda_graphs=True needs the KV cache on a GPU; it is on {cache.device}")
        return eager
    runner = _graph_runner(model, cache, batch, required=bool(cuda_graphs))
    return runner.step if runner is not None else eager


def _graph_runner(model, cache: KVCache, batch: int, required: bool):
    """The decode-graph runner of `cache` (kept on the model, recaptured when the batch outgrows it)."""
    from lowc.runtime.cuda_graphs import DecodeGraphs

    runners = model.__dict__.setdefault("_decode_graphs", weakref.WeakKeyDictionary())
    runner = runners.get(cache)
    if runner is not None and runner.buckets[-1] >= batch:
        return runner
    if runner is not None:
        runner.close()
    if not cache.free_slots():
        if required:
            raise CacheError("CUDA-graph decode needs one free cache slot for padding rows; create the cache "
                             "with one more slot than sequences, or pass cuda_graphs=False")
        return None
    runner = DecodeGraphs(model, cache, max_batch=batch)
    runners[cache] = runner
    return runner


def generate(model, input_ids, max_new_tokens: int = 32, *, attention_mask=None, do_sample: bool = False,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_token_id=None, pad_token_id=None,
             generator: torch.Generator | None = None, cache: KVCache | None = None,
             cuda_graphs: bool | None = None):
    """Generate up to `max_new_tokens` per prompt with `model` (a lowc CompiledModel).

    input_ids: a LongTensor [B, T] (with `attention_mask` for a left-padded batch) -> returns a
        LongTensor [B, T + n] (the input followed by the n generated steps, `pad_token_id` after a
        sequence's EOS), as transformers' generate does; or a list of prompts (lists or 1-d tensors
        of ids) -> returns a list with each prompt's new ids, up to and including its EOS.
    eos_token_id: an id or list of ids that end a sequence (default: model.config.eos_token_id).
    pad_token_id: what fills finished sequences (default: the smallest EOS id, else 0).
    do_sample/temperature/top_k/top_p/generator: sampling; greedy when do_sample is False.
    cache: a KVCache (model.new_cache) to take slots from; default: a fresh one for this call.
    cuda_graphs: decode by CUDA-graph replay (default: when the cache is on a GPU and has a free slot).
    """
    prompts, as_tensor = _prompts(input_ids, attention_mask)
    steps = list(stream(model, input_ids, max_new_tokens, attention_mask=attention_mask, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id,
                        pad_token_id=pad_token_id, generator=generator, cache=cache, cuda_graphs=cuda_graphs))
    new = torch.stack(steps, dim=1)  # [B, n]
    if as_tensor:
        return torch.cat([input_ids.to(new.device, torch.long), new], dim=1).to(input_ids.device)
    stop = _stop_ids(model, eos_token_id)
    result = []
    for row in new.tolist():
        ids = []
        for tok in row:
            ids.append(tok)
            if tok in stop:
                break
        result.append(ids)
    return result

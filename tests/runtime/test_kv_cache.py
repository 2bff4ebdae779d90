"""KVCache and ForwardContext through a compiled tiny Llama: slots, capacity, decode equivalence,
cache-full and bad-input errors, and failure isolation between requests."""

import pytest
import torch

import lowc
from lowc.errors import CacheError, InputError
from lowc.ops import fused_ops, kv_ops
from lowc.runtime.context import ForwardContext
from lowc.runtime.kv_cache import KVCache
from lowc.tiny_models import tiny_model

SCHEMES = {"kv16": "w16a16", "kv8": "w16a16kv8", "kv4": "w16a16kv4"}


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", layers=2)


@pytest.fixture(scope="module", params=list(SCHEMES))
def model(request, llama):
    return lowc.compile(llama, SCHEMES[request.param], progress=False)


def _run(model, cache, slots, rows):
    """One forward of left-padded `rows` (lists of new ids) into `slots`; last-position logits [B, V]."""
    t = max(map(len, rows))
    ids = torch.tensor([[0] * (t - len(r)) + r for r in rows])
    with torch.no_grad():
        return model(ids, context=ForwardContext(cache, slots, [len(r) for r in rows], t))[:, -1]


def _full(model, seq):
    with torch.no_grad():
        return model(torch.tensor([seq]))[0, -1]


SEQS = [[5, 9, 1, 44, 7, 3, 8, 100, 21], [17, 4, 66], [250, 3, 3, 91, 60]]


def test_capacity_is_fixed_and_reported_in_bytes(model):
    cache = model.new_cache(3, 10)
    per_token = model.kv_spec.bytes_per_token()
    assert cache.nbytes == 3 * 10 * per_token and cache.bytes_per_token == per_token
    expected = {"kv16": 2 * 2 * 2 * 16 * 4, "kv8": 2 * 2 * 2 * (16 + 2), "kv4": 2 * 2 * 2 * (8 + 4)}
    assert per_token == expected[model.kv_spec.fmt]  # 2 layers x K,V x 2 heads x head_dim 16
    assert f"{per_token} bytes/token" in repr(cache)


def test_decode_step_equals_longer_prefill(model):
    """Prefill of n+1 tokens vs prefill of n then one decode step: same last logits."""
    seq = SEQS[0]
    cache = model.new_cache(1, 16)
    slot = cache.allocate(1)
    _run(model, cache, slot, [seq[:-1]])
    step = _run(model, cache, slot, [seq[-1:]])[0]
    torch.testing.assert_close(step, _full(model, seq), atol=1e-4, rtol=1e-4)
    assert cache.lengths[slot[0]] == len(seq)


def test_slots_of_different_lengths_share_a_batch(model):
    """Three sequences prefilled together (left padding), then batched decode steps in a shuffled
    slot order: each row's logits equal its own full forward."""
    cache = model.new_cache(4, 16)
    cache.allocate(1)  # slot 0 stays busy and untouched
    slots = cache.allocate(3)[::-1]
    prefix = [s[:-2] for s in SEQS]
    first = _run(model, cache, slots, prefix)
    for b, s in enumerate(SEQS):
        torch.testing.assert_close(first[b], _full(model, s[:-2]), atol=1e-4, rtol=1e-4)
    for k in (2, 1):
        step = _run(model, cache, slots, [[s[-k]] for s in SEQS])
        for b, s in enumerate(SEQS):
            torch.testing.assert_close(step[b], _full(model, s[: len(s) - k + 1]), atol=1e-4, rtol=1e-4)
    assert [cache.lengths[s] for s in slots] == [len(s) for s in SEQS] and cache.lengths[0] == 0


def test_cache_full_and_too_long_prompt(model):
    cache = model.new_cache(2, 5)
    slots = cache.allocate(2)
    with pytest.raises(CacheError, match="prompt is longer than the cache"):
        _run(model, cache, slots[:1], [list(range(6))])
    _run(model, cache, slots[:1], [[1, 2, 3, 4]])
    _run(model, cache, slots[:1], [[5]])
    with pytest.raises(CacheError, match="cache full.*max_tokens >= 6"):
        _run(model, cache, slots[:1], [[6]])
    assert cache.lengths == [5, 0]


def test_slot_bookkeeping_errors(model):
    cache = model.new_cache(2, 8)
    with pytest.raises(CacheError, match="not allocated"):
        ForwardContext(cache, [0], [1], 1)
    a = cache.allocate(2)
    with pytest.raises(CacheError, match="3 cache slots but 0 of 2 are free"):
        cache.allocate(3)
    with pytest.raises(CacheError, match="repeat"):
        ForwardContext(cache, [a[0], a[0]], [1, 1], 1)
    with pytest.raises(CacheError, match="does not exist"):
        cache.release([7])
    with pytest.raises(InputError, match="empty prompt"):
        ForwardContext(cache, [a[0]], [0], 1)
    ctx = ForwardContext(cache, [a[0]], [1], 1)
    with torch.no_grad():
        model(torch.tensor([[3]]), context=ctx)
    with pytest.raises(CacheError, match="already"):
        model(torch.tensor([[3]]), context=ctx)
    cache.release(a)
    assert cache.free_slots() == [0, 1] and cache.lengths == [0, 0]
    with pytest.raises(CacheError):
        KVCache(model.kv_spec, 0, 8)


def test_mismatched_cache_and_inputs_are_clear_errors(model):
    spec = model.kv_spec
    wrong = KVCache(type(spec)(spec.fmt, spec.layers, spec.kv_heads, spec.head_dim, torch.float16), 1, 8)
    ctx = ForwardContext(wrong, wrong.allocate(1), [2], 2)
    with pytest.raises(CacheError, match="made for"):
        model(torch.tensor([[1, 2]]), context=ctx)
    cache = model.new_cache(1, 8)
    with pytest.raises(InputError, match="context describes"):
        model(torch.tensor([[1, 2, 3]]), context=ForwardContext(cache, cache.allocate(1), [2], 2))
    with pytest.raises(InputError, match="integer"):
        model(torch.tensor([[1.0, 2.0]]))


def test_forward_without_context_uses_a_transient_cache(model):
    ids = torch.tensor([SEQS[0], SEQS[0][::-1]])
    with torch.no_grad():
        plain = model(ids)
        cache = model.new_cache(2, 9)
        explicit = model(ids, context=ForwardContext(cache, cache.allocate(2), [9, 9], 9))
    assert torch.equal(plain, explicit)


def test_a_failed_request_does_not_corrupt_other_slots(model, monkeypatch):
    """A batch decode that fails in layer 1 (after layer 0 stored), and a request rejected up front,
    leave every slot as it was: the survivor's next logits equal, bit for bit, those of an undisturbed
    cache that ran the same batches without the failed ones. (The undisturbed run must batch exactly
    like the disturbed one: a prefill of [a, b] and one of [a] alone round differently in the last
    bit of the fp32 matmuls, which a 16-bit cache keeps.)"""
    seq = SEQS[2]

    def prefill():
        cache = model.new_cache(3, 12)
        slots = cache.allocate(3)
        _run(model, cache, slots[:2], [seq, SEQS[1]])
        return cache, slots

    clean, (ca, _, _) = prefill()
    want = [_run(model, clean, [ca], [[t]]) for t in (11, 12)]

    cache, (a, b, c) = prefill()
    calls = {"n": 0}
    real = kv_ops.kv_store_reference

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # layer 1's first store: layer 0 already wrote both rows
            raise RuntimeError("injected failure")
        return real(*args)

    # The store runs inside kv_ops' ops and, after fuse_glue, inside the fused RoPE + store op.
    monkeypatch.setattr(kv_ops, "kv_store_reference", failing)
    monkeypatch.setattr(fused_ops, "kv_store_reference", failing)
    with pytest.raises(RuntimeError, match="injected"):
        _run(model, cache, [a, b], [[11], [42]])
    assert calls["n"] == 3, "the injected failure did not happen where intended"
    monkeypatch.setattr(kv_ops, "kv_store_reference", real)
    monkeypatch.setattr(fused_ops, "kv_store_reference", real)
    with pytest.raises(CacheError):
        _run(model, cache, [c, a], [list(range(13)), [11]])  # c's prompt does not fit: nothing runs
    assert [cache.lengths[s] for s in (a, b, c)] == [len(seq), len(SEQS[1]), 0]
    got = [_run(model, cache, [a], [[t]]) for t in (11, 12)]
    assert all(torch.equal(g, w) for g, w in zip(got, want))

"""generate()/stream(): greedy parity with transformers, EOS per sequence, sampling, bad input."""

import pytest
import torch

import lowc
from lowc.errors import CacheError, InputError
from lowc.runtime.generation import Sampling, generate, stream
from lowc.tiny_models import tiny_model

PROMPTS = [[5, 7, 9, 11, 13, 2, 8], [3, 4], [100, 101, 102, 103]]


@pytest.fixture(scope="module")
def llama():
    m = tiny_model("llama", layers=2)
    m.generation_config.pad_token_id = 0
    return m


@pytest.fixture(scope="module")
def model(llama):
    return lowc.compile(llama, "w16a16", progress=False)


def _left_padded(prompts):
    t = max(map(len, prompts))
    ids = torch.tensor([[0] * (t - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (t - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


def test_greedy_matches_transformers_generate(model, llama):
    ids, mask = _left_padded(PROMPTS)
    out = model.generate(ids, 24, attention_mask=mask, eos_token_id=[])
    with torch.no_grad():
        hf = llama.generate(ids, attention_mask=mask, max_new_tokens=24, do_sample=False, eos_token_id=None)
    assert out.shape == (3, ids.shape[1] + 24) and torch.equal(out, hf)
    assert generate(model, PROMPTS, 24, eos_token_id=[]) == hf[:, ids.shape[1]:].tolist()


def test_eos_stops_each_sequence(model):
    free = generate(model, PROMPTS, 12, eos_token_id=[])
    eos = free[0][3]  # row 0 emits this at step 3
    steps = {b: row.index(eos) if eos in row else None for b, row in enumerate(free)}
    new = generate(model, PROMPTS, 12, eos_token_id=eos)
    for b, row in enumerate(new):
        stop = steps[b]
        assert row == (free[b][: stop + 1] if stop is not None else free[b])
    ids, mask = _left_padded(PROMPTS)
    out = model.generate(ids, 12, attention_mask=mask, eos_token_id=eos, pad_token_id=255)
    assert out[0, ids.shape[1] + steps[0] + 1:].eq(255).all()
    # Every sequence stops at once: the output is only as long as the steps that ran.
    first = [row[0] for row in free]
    short = model.generate(ids, 12, attention_mask=mask, eos_token_id=first)
    assert short.shape[1] == ids.shape[1] + 1


def test_stream_yields_one_token_per_sequence_per_step(model):
    steps = list(stream(model, PROMPTS, 5, eos_token_id=[]))
    assert len(steps) == 5 and all(s.shape == (3,) for s in steps)
    assert torch.stack(steps, 1).tolist() == generate(model, PROMPTS, 5, eos_token_id=[])


def test_sampling_is_reproducible_and_top_k_1_is_greedy(model):
    def sample(seed, **kw):
        return generate(model, PROMPTS, 8, do_sample=True, eos_token_id=[], generator=torch.Generator().manual_seed(seed), **kw)

    a, b = sample(0, temperature=1.5), sample(0, temperature=1.5)
    assert a == b and a != sample(1, temperature=1.5)
    assert sample(3, top_k=1) == generate(model, PROMPTS, 8, eos_token_id=[])


def test_sampling_filters():
    logits = torch.log(torch.tensor([[0.05, 0.6, 0.3, 0.05]])).expand(400, 4)
    g = torch.Generator().manual_seed(0)
    assert set(Sampling(True, top_k=2).choose(logits, g).tolist()) == {1, 2}
    assert set(Sampling(True, top_p=0.55).choose(logits, g).tolist()) == {1}
    assert set(Sampling(True, top_p=0.8).choose(logits, g).tolist()) == {1, 2}
    assert set(Sampling(True, temperature=0.01).choose(logits, g).tolist()) == {1}
    for bad in (dict(temperature=0.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(InputError):
            Sampling(True, **bad)


def test_bad_input_is_a_clear_error_and_frees_slots(model):
    cache = model.new_cache(2, 10)
    for bad in (0, -3):
        with pytest.raises(InputError, match="max_new_tokens"):
            generate(model, PROMPTS, bad)
    with pytest.raises(InputError, match="prompt 1 is empty"):
        generate(model, [[1, 2], []], 4)
    with pytest.raises(CacheError, match="3 cache slots but 2"):
        generate(model, PROMPTS, 2, cache=cache)
    with pytest.raises(CacheError, match="longer than the cache"):
        generate(model, [list(range(11))], 2, cache=cache)
    with pytest.raises(CacheError, match="cache full.*needs 11"):
        generate(model, [PROMPTS[0]], 5, cache=cache, eos_token_id=[])  # 7 + 4 decoded > 10
    ids, mask = _left_padded(PROMPTS)
    with pytest.raises(InputError, match="left padding"):
        generate(model, ids, 2, attention_mask=mask.flip(1))
    with pytest.raises(InputError, match="integer"):
        generate(model, ids.float(), 2)
    with pytest.raises(InputError, match="outside"):
        generate(model, [[1, 10**6]], 2)
    assert cache.free_slots() == [0, 1] and cache.lengths == [0, 0]
    assert generate(model, PROMPTS[:2], 3, cache=cache, eos_token_id=[]) == generate(model, PROMPTS[:2], 3, eos_token_id=[])


@pytest.mark.realmodel
@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(smollm2):
    """16-bit cache: three prompts of different lengths in one batch, 32 new tokens, token for token."""
    hf_model, tok = smollm2
    texts = ["The capital of France is", "Once upon a time, in a small village by the sea, there lived",
             "def fibonacci(n):"]
    prompts = [tok(t)["input_ids"] for t in texts]
    assert len({len(p) for p in prompts}) == 3
    ids, mask = _left_padded(prompts)
    with torch.no_grad():
        hf = hf_model.generate(ids, attention_mask=mask, max_new_tokens=32, do_sample=False,
                               pad_token_id=tok.eos_token_id)
    q = lowc.compile(hf_model, "w16a16", progress=False)
    out = q.generate(ids, 32, attention_mask=mask, eos_token_id=hf_model.generation_config.eos_token_id,
                     pad_token_id=tok.eos_token_id)
    assert torch.equal(out, hf)

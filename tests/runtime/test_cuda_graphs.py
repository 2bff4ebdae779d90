"""CUDA-graph decode: same tokens and logits as eager decode; clear errors where it cannot run."""

import pytest
import torch

import lowc
from lowc.errors import InputError
from lowc.runtime.context import ForwardContext
from lowc.runtime.cuda_graphs import DecodeGraphs
from lowc.tiny_models import tiny_model


def _compiled(device, scheme="w16a16", dtype=torch.float32):
    model = tiny_model("llama", layers=2, hidden=128, heads=4, kv_heads=2, dtype=dtype).to(device)
    calib = torch.randint(0, 256, (4, 64), generator=torch.Generator().manual_seed(0))
    return lowc.compile(model, scheme, calibration=calib, progress=False)


def test_cpu_cache_is_refused():
    q = _compiled("cpu")
    cache = q.new_cache(3, 32)
    with pytest.raises(InputError, match="CUDA device"):
        DecodeGraphs(q, cache)
    with pytest.raises(InputError, match="needs the KV cache on a GPU"):
        q.generate(torch.randint(0, 256, (2, 4)), max_new_tokens=2, cuda_graphs=True)


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["w16a16", "w4a8kv4", "w8a8", "w4a16"])
def test_graphed_generate_equals_eager(scheme):
    q = _compiled("cuda", scheme, torch.float16)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
    eager = q.generate(prompts, max_new_tokens=12, eos_token_id=[], cuda_graphs=False)
    graphed = q.generate(prompts, max_new_tokens=12, eos_token_id=[], cuda_graphs=True)
    assert graphed == eager


@pytest.mark.gpu
def test_step_logits_match_eager_and_padding_rows_touch_no_slot():
    q = _compiled("cuda", "w4a8kv4", torch.float16)
    cache = q.new_cache(6, 64)
    slots = cache.allocate(3)
    ids = torch.randint(0, 256, (3, 9), device="cuda")
    q(ids, context=ForwardContext(cache, slots, [9, 9, 9], 9))
    runner = DecodeGraphs(q, cache, max_batch=4, buckets=(4,))  # 3 rows run in the bucket of 4
    snapshot = [t.clone() for t in cache.tensors]
    tok = torch.randint(0, 256, (3, 1), device="cuda")
    graphed = runner.step(tok, slots)
    after_graph = [t.clone() for t in cache.tensors]
    # Undo the step and run it eagerly on the same cache state.
    for t, s in zip(cache.tensors, snapshot):
        t.copy_(s)
    cache.lengths = [9 if i in slots else 0 for i in range(cache.slots)]
    eager = q(tok, context=ForwardContext(cache, slots, [1, 1, 1], 1))[:, -1]
    torch.testing.assert_close(graphed.float(), eager.float(), rtol=2e-2, atol=2e-2)
    free = [s for s in range(cache.slots) if s not in slots and s != runner.scratch_slot]
    for t, s in zip(after_graph, snapshot):  # slots nobody owns are untouched by padding rows
        assert torch.equal(t[free], s[free])


@pytest.mark.gpu
def test_batch_beyond_largest_bucket_runs_eagerly():
    q = _compiled("cuda")
    cache = q.new_cache(8, 32)
    slots = cache.allocate(5)
    q(torch.randint(0, 256, (5, 4), device="cuda"), context=ForwardContext(cache, slots, [4] * 5, 4))
    runner = DecodeGraphs(q, cache, buckets=(1, 2))
    out = runner.step(torch.randint(0, 256, (5, 1), device="cuda"), slots)
    assert out.shape == (5, q.vocab_size) and torch.isfinite(out).all()

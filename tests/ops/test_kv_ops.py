"""lowc::kv_store / rope_kv_store / attention_kv against independent plain-torch oracles."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lowc.ops  # noqa: F401  (registers the ops)
from lowc.errors import CacheError
from lowc.ops.attention import attention_reference
from lowc.ops.kv_ops import KVCacheSpec, attention_kv_reference, kv_format, rotate_half_rope
from lowc.quant.kv import KV4, KV8, dequantize_kv, quantize_kv

FORMATS = ("kv16", "kv8", "kv4")
ops = torch.ops.lowc


def _layer(fmt, slots, max_tokens, heads, dim, dtype=torch.float32):
    spec = KVCacheSpec(fmt, 1, heads, dim, dtype)
    return spec.layer_tensors(spec.allocate(slots, max_tokens), 0)


def _ctx(*lists):
    return [torch.tensor(v, dtype=torch.int64) for v in lists]


def _read(parts, fmt, slot, start, n):
    """Dequantized tokens start..start+n of one slot: [H, n, D] float32."""
    sel = [p[slot, :, start:start + n] for p in parts]
    if fmt == "kv16":
        return sel[0].float()
    kv = (KV8 if fmt == "kv8" else KV4)(*sel)  # per (head, token) vectors: any leading layout works
    return dequantize_kv(kv)


@settings(max_examples=25, deadline=None)
@given(
    fmt=st.sampled_from(FORMATS),
    heads=st.integers(1, 3),
    half_dim=st.integers(1, 8),
    lens=st.lists(st.tuples(st.integers(0, 5), st.integers(1, 6)), min_size=1, max_size=3),
    magnitude=st.sampled_from([1e-3, 1.0, 300.0]),
    seed=st.integers(0, 2**16),
)
def test_store_round_trip_error_bound(fmt, heads, half_dim, lens, magnitude, seed):
    """Each row's valid tokens land at cache_lens.. of its slot, within the format's error bound."""
    dim, b = 2 * half_dim, len(lens)
    t = max(n for _, n in lens)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, heads, t, dim, generator=g) * magnitude + magnitude * torch.rand(1, generator=g)
    slots = list(range(b))[::-1]  # rows do not map to slots in order
    cache = _layer(fmt, b, 12, heads, dim)[0]
    ops.kv_store(x, cache, *_ctx(slots, [c for c, _ in lens], [n for _, n in lens]), fmt)
    for row, (slot, (start, n)) in enumerate(zip(slots, lens)):
        got = _read(cache, fmt, slot, start, n)
        want = x[row, :, t - n:]
        if fmt == "kv16":
            assert torch.equal(got, want)
            continue
        step = cache[1][slot, :, start:start + n].float()[..., None]  # the stored scale per (head, token)
        assert ((got - want).abs() <= 0.52 * step + 1e-12).all()
        # The cache holds exactly what lowc.quant.kv makes of those tokens.
        ref = quantize_kv(want.transpose(0, 1).contiguous(), fmt)
        assert torch.equal(cache[0][slot, :, start:start + n], ref[0].transpose(0, 1))
        # Positions outside the written range stay untouched (zero).
        assert not cache[0][slot, :, start + n:].any() and not cache[0][slot, :, :start].any()


@pytest.mark.parametrize("fmt", FORMATS)
def test_padding_is_never_stored(fmt):
    x = torch.randn(2, 2, 5, 8) + 3
    cache = _layer(fmt, 2, 8, 2, 8)[0]
    ops.kv_store(x, cache, *_ctx([0, 1], [0, 0], [2, 5]), fmt)
    assert not cache[0][0, :, 2:].any()  # row 0: only its 2 real tokens
    assert cache[0][1, :, :5].any()


def _oracle_attention(q, ks, vs, hist, new, scale, window=-1):
    """Per row: the row's full key history, attention_reference on its real queries, zeros for padding."""
    b, h, t, d = q.shape
    out = torch.zeros(b, t, h, d)
    for i in range(b):
        n = new[i]
        out[i, t - n:] = attention_reference(q[i:i + 1, :, t - n:], ks[i][None, :, :hist[i] + n],
                                             vs[i][None, :, :hist[i] + n], scale, window)[0]
    return out


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("window", [-1, 3])
def test_attention_over_history_and_padding(fmt, window):
    """Rows with different histories and left padding, GQA 4:2, against a per-row oracle."""
    g = torch.Generator().manual_seed(1)
    heads, kv_heads, dim, hist, new, t = 4, 2, 8, [0, 3, 6], [4, 1, 2], 4
    k_full = [torch.randn(kv_heads, h + t, dim, generator=g) for h in hist]
    v_full = [torch.randn(kv_heads, h + t, dim, generator=g) for h in hist]
    kc, vc = _layer(fmt, 4, 12, kv_heads, dim)
    slots = [2, 0, 3]
    for i, h in enumerate(hist):  # history written one token at a time, as decode does
        for j in range(h):
            c = _ctx([slots[i]], [j], [1])
            ops.kv_store(k_full[i][None, :, j:j + 1], kc, *c, fmt)
            ops.kv_store(v_full[i][None, :, j:j + 1], vc, *c, fmt)
    pad = lambda src, i: torch.cat([torch.full((kv_heads, t - new[i], dim), 7.0), src[i][:, hist[i]:hist[i] + new[i]]], 1)
    k_new = torch.stack([pad(k_full, i) for i in range(3)])
    v_new = torch.stack([pad(v_full, i) for i in range(3)])
    c = _ctx(slots, hist, new)
    ops.kv_store(k_new, kc, *c, fmt)
    ops.kv_store(v_new, vc, *c, fmt)
    q = torch.randn(3, heads, t, dim, generator=g)
    out = ops.attention_kv(q, kc, vc, *c, 0.3, 0, window, fmt)
    # Oracle on what the cache holds (dequantized), so this checks placement, masking and padding.
    ks = [_read(kc, fmt, s, 0, h + n) for s, h, n in zip(slots, hist, new)]
    vs = [_read(vc, fmt, s, 0, h + n) for s, h, n in zip(slots, hist, new)]
    torch.testing.assert_close(out, _oracle_attention(q, ks, vs, hist, new, 0.3, window), atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all() and not out[0, :0].any() and not out[1, :3].any()
    if fmt == "kv16":  # and the cache holds the true keys
        torch.testing.assert_close(ks[2], k_full[2][:, :8])


def test_full_prefill_matches_captured_attention_exactly():
    q, k, v = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    kc, vc = _layer("kv16", 2, 6, 2, 8)
    c = _ctx([0, 1], [0, 0], [6, 6])
    ops.kv_store(k, kc, *c, "kv16")
    ops.kv_store(v, vc, *c, "kv16")
    assert torch.equal(ops.attention_kv(q, kc, vc, *c, 0.35, 0, -1, "kv16"), attention_reference(q, k, v, 0.35))


def test_rope_store_is_rope_then_store():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    x, q = torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    cos, sin = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    _, hf_k = apply_rotary_pos_emb(q, x, cos, sin)
    assert torch.equal(rotate_half_rope(x, cos[:, None], sin[:, None]), hf_k)
    for fmt in FORMATS:
        a, b = _layer(fmt, 2, 5, 2, 8)[0], _layer(fmt, 2, 5, 2, 8)[0]
        c = _ctx([0, 1], [0, 0], [5, 3])
        ops.rope_kv_store(x, cos[:, None], sin[:, None], a, *c, fmt)
        ops.kv_store(hf_k, b, *c, fmt)
        assert all(torch.equal(u, w) for u, w in zip(a, b))


def test_errors_name_the_problem():
    x = torch.randn(1, 2, 3, 8)
    cache = _layer("kv8", 1, 4, 2, 8)[0]
    with pytest.raises(CacheError, match="cache full"):
        ops.kv_store(x, cache, *_ctx([0], [2], [3]), "kv8")
    with pytest.raises(CacheError, match="slot ids"):
        ops.kv_store(x, cache, *_ctx([1], [0], [3]), "kv8")
    with pytest.raises(CacheError, match="must be float16"):
        ops.kv_store(x.half(), _layer("kv16", 1, 4, 2, 8)[0], *_ctx([0], [0], [3]), "kv16")
    with pytest.raises(CacheError, match="parts"):
        ops.kv_store(x, cache[:1], *_ctx([0], [0], [3]), "kv8")
    with pytest.raises(CacheError, match="int64"):
        ops.kv_store(x, cache, torch.tensor([0], dtype=torch.int32), *_ctx([0], [3]), "kv8")
    with pytest.raises(CacheError, match="head_dim 7 must be even"):
        KVCacheSpec("kv4", 1, 1, 7, torch.float32)
    with pytest.raises(CacheError):
        kv_format(2)


def test_fake_kernels_give_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, x = torch.empty(3, 4, 1, 16), torch.empty(3, 2, 1, 16)
        kc, vc = _layer("kv4", 5, 9, 2, 16)
        c = [torch.empty(3, dtype=torch.int64) for _ in range(3)]
        ops.kv_store(x, kc, *c, "kv4")
        out = ops.attention_kv(q, kc, vc, *c, 0.25, 0, -1, "kv4")
        assert out.shape == (3, 1, 4, 16)
        with pytest.raises(CacheError):
            ops.attention_kv(q, kc, vc, *c, 0.25, 0, -1, "kv8")


def test_bytes_per_token_llama3_8b_shape():
    # 32 layers x 8 KV heads x 128 dims, K and V: fp16 256 B/head; int8 128 + 2; uint4 64 + 2 + 2.
    per = {f: KVCacheSpec(f, 32, 8, 128, torch.float16).bytes_per_token() for f in FORMATS}
    assert per == {"kv16": 131072, "kv8": 66560, "kv4": 34816}
    names = KVCacheSpec("kv4", 2, 1, 8, torch.float32).input_names()
    assert names[:6] == ["kv_slot_ids", "kv_cache_lens", "kv_new_lens", "kv0_k_data", "kv0_k_scale", "kv0_k_zero"]
    assert len(names) == 3 + 2 * 2 * 3


@pytest.mark.parametrize("d", [2, 16, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hadamard_is_the_normalized_sylvester_transform(d, dtype):
    from lowc.ops.kv_ops import hadamard_reference

    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    x = torch.randn(3, 2, 5, d, generator=torch.Generator().manual_seed(d), dtype=torch.float64)
    got = hadamard_reference(x.to(dtype))
    want = x.to(dtype).to(torch.float64) @ h / d ** 0.5
    assert got.dtype == dtype
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(got.to(torch.float64), want, atol=tol * want.abs().max(), rtol=0)
    back = hadamard_reference(got.to(torch.float32)).to(torch.float64)  # its own inverse
    torch.testing.assert_close(back, x.to(dtype).to(torch.float64), atol=tol * 4 * x.abs().max(), rtol=0)
    spike = torch.zeros(d, dtype=torch.float32)
    spike[d // 3] = 1.0  # one outlier channel spreads evenly over every channel
    assert torch.allclose(hadamard_reference(spike).abs(), torch.full((d,), d ** -0.5))


def test_hadamard_rejects_other_sizes():
    from lowc.ops.kv_ops import hadamard_reference

    with pytest.raises(CacheError, match="power of two"):
        hadamard_reference(torch.randn(2, 24))
    with pytest.raises(CacheError, match="power of two"):
        torch.ops.lowc.hadamard(torch.randn(2, 3, 4, 24, device="meta"))


def test_rope_store_with_rotation_is_rope_hadamard_store():
    from lowc.ops.kv_ops import hadamard_reference, kv_store_reference, rotate_half_rope

    spec = KVCacheSpec("kv4", 1, 2, 16, torch.float32)
    g = torch.Generator().manual_seed(5)
    k = torch.randn(2, 2, 3, 16, generator=g)
    cos, sin = torch.randn(2, 1, 3, 16, generator=g), torch.randn(2, 1, 3, 16, generator=g)
    ctx = [torch.tensor([0, 1]), torch.tensor([0, 2]), torch.tensor([3, 3])]
    a, b = spec.allocate(2, 8), spec.allocate(2, 8)
    torch.ops.lowc.rope_kv_store(k, cos, sin, a[:3], *ctx, "kv4", True)
    kv_store_reference(hadamard_reference(rotate_half_rope(k, cos, sin)), b[:3], *ctx, "kv4")
    assert all(torch.equal(x, y) for x, y in zip(a, b))

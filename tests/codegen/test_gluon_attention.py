"""The register-fragment KV4 decode attention kernel (codegen/gluon_attention_kv4.py).

CPU: the index algebra of its operand permutations (replayed in torch exactly as the kernel joins,
reshapes and permutes), its sm_90 build (MMA count, nothing through shared memory in the loop, no
spills), and the launcher's limits and fallback. GPU (`pytest -m gpu`): against the reference and the
Triton decode kernel at Llama-3-8B and SmolLM2 head shapes.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowc.codegen import gluon_attention_kv4 as kernel  # noqa: E402
from lowc.ops.kv_ops import attention_kv_reference  # noqa: E402
from lowc.runtime.attention import DecodeConfig, attention_kv_triton  # noqa: E402
from lowc.runtime.attention_gluon import gluon_limits  # noqa: E402

from test_attention_kernels import TOLERANCE, rel_err, step  # noqa: E402  (tests/codegen is on sys.path)


@pytest.mark.parametrize("block_n", [16, 32, 64, 128])
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("key_groups", [1, 2])
def test_operand_permutations_name_the_same_positions(block_n, head_dim, key_groups):
    """The key operand row R / column k holds the code of token token_order(R) at the head_dim index
    query_columns names for k (so q . k sums matching positions), the value operand's columns follow the
    same token order and its rows the head_dim index output_rows names; both index maps are bijections."""
    g = torch.Generator().manual_seed(block_n + head_dim + key_groups)
    rows = torch.randint(0, 256, (block_n, head_dim // 2), dtype=torch.uint8, generator=g)
    codes = torch.stack([rows & 15, rows >> 4], -1).reshape(block_n, head_dim).long()  # low nibble = even d
    tokens = kernel.token_order_replay(torch.arange(block_n).reshape(8, block_n // 8))
    assert torch.equal(tokens.sort().values, torch.arange(block_n))
    columns = [kernel.query_columns(head_dim, gi, key_groups) for gi in range(key_groups)]
    assert torch.equal(torch.cat(columns).sort().values, torch.arange(head_dim))
    for gi in range(key_groups):
        assert torch.equal(kernel.key_operand_replay(rows, gi, key_groups), codes[tokens][:, columns[gi]])
    out_rows = kernel.output_rows(head_dim)
    assert torch.equal(out_rows.sort().values, torch.arange(head_dim))
    assert torch.equal(kernel.value_operand_replay(rows), codes[tokens][:, out_rows].T)


def test_replay_catches_a_wrong_permutation(monkeypatch):
    """The check above is not vacuous: the key permutation with two axes swapped fails it."""
    rows = torch.randint(0, 256, (32, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    codes = torch.stack([rows & 15, rows >> 4], -1).reshape(32, 128).long()
    tokens = kernel.token_order_replay(torch.arange(32).reshape(8, 4))
    good = kernel.key_operand_replay(rows, 0, 1)
    swapped = kernel._key_asm
    monkeypatch.setattr(kernel, "_key_asm", lambda w: tuple(swapped(w)[i] for i in (1, 0, 2, 3)))
    assert torch.equal(good, codes[tokens][:, kernel.query_columns(128, 0, 1)])
    assert not torch.equal(kernel.key_operand_replay(rows, 0, 1), good)


def _bench_module(name):
    """A script of bench/ as a module (bench/ is not a package)."""
    import importlib.util
    import pathlib
    import sys

    bench = pathlib.Path(__file__).parents[2] / "bench"
    sys.path.insert(0, str(bench))  # its own imports of sibling scripts
    try:
        spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


@pytest.mark.parametrize("block_n,head_dim,key_groups", [(32, 128, 1), (32, 128, 2), (64, 64, 2)])
def test_sm90_build_feeds_the_mma_from_registers(block_n, head_dim, key_groups):
    """Built for sm_90 (bench/sass_gluon_attention.py's build): the loop holds the expected MMAs
    (q . k: BLOCK_N / 16 x head_dim / 16, and as many for P . V), no shared-memory traffic, no barrier
    and no spill stores; the unpack is the inline PTX."""
    import tempfile

    import triton

    pytest.importorskip("triton.backends.nvidia")
    sass_gemv = _bench_module("sass_gemv")
    compiled = _bench_module("sass_gluon_attention").compile_tile(block_n, head_dim, key_groups)
    assert "griddepcontrol.wait" in compiled.asm["ptx"]
    assert compiled.asm["ptx"].count("prmt.b32 a, ") >= 1  # the value unpack's byte pairing
    with tempfile.TemporaryDirectory() as d:
        sass, registers, stack = sass_gemv.disassemble(compiled, d)
    mix = sass_gemv.loop_mix(sass)
    assert mix["HMMA"] == 2 * (block_n // 16) * (head_dim // 16)
    assert not any(op.startswith(("LDS", "STS", "BAR", "STL")) for op in mix), mix
    # Triton 3.6 (the device's) builds it without local memory; 3.9 keeps 16 bytes of stack that the
    # loop reads (no spill stores there).
    assert registers <= 255 and (stack == 0 or not triton.__version__.startswith("3.6")), (registers, stack, mix)


def test_limits_name_the_reason_and_cpu_runs_the_triton_kernel():
    q = torch.zeros(1, 4, 1, 128, dtype=torch.bfloat16)
    cfg = DecodeConfig(gluon=True)
    assert "kv4" in gluon_limits("kv8", q, 128, 4, 1024, 32, cfg)
    assert "CUDA" in gluon_limits("kv4", q, 128, 4, 1024, 32, cfg)
    qs, kc, vc, slot_ids, cache_lens, new = step("kv4", torch.bfloat16, 1, [1, 1, 1], history=(20, 0, 33))
    ref = attention_kv_reference(qs, kc, vc, slot_ids, cache_lens, new, 0.2, -1, "kv4")
    out = attention_kv_triton(qs, kc, vc, slot_ids, cache_lens, new, 0.2, -1, "kv4", decode=cfg)
    assert rel_err(out, ref) < TOLERANCE[torch.bfloat16]


def test_limits_on_a_gpu_shape(monkeypatch):
    """The shape checks after the device ones (device support and Gluon faked present)."""
    import lowc.runtime.gemm as gemm
    import lowc.runtime.gemm_mma_reg as mma_reg
    from lowc.runtime.attention_gluon import gluon_limits as limits

    monkeypatch.setattr(gemm, "gpu_support", lambda index: (True, "a GPU"))
    monkeypatch.setattr(mma_reg, "has_gluon", lambda: True)
    cfg = DecodeConfig(gluon=True)
    q = type("FakeCudaQuery", (), {"device": torch.device("cuda", 0), "dtype": torch.float32})()
    assert "bf16 or fp16" in limits("kv4", q, 128, 4, 1024, 32, cfg)
    q.dtype = torch.bfloat16
    assert "head_dim" in limits("kv4", q, 96, 4, 1024, 32, cfg)
    assert "query heads" in limits("kv4", q, 128, 32, 1024, 32, cfg)
    assert "multiple" in limits("kv4", q, 128, 4, 1000, 32, cfg)
    assert "gluon_block_n" in limits("kv4", q, 128, 4, 1024, 48, cfg)
    assert "Triton kernel" in limits("kv4", q, 128, 4, 1024, 32, DecodeConfig(gluon=True, q_int8=True))
    assert limits("kv4", q, 128, 4, 1024, 32, cfg) is None


@pytest.mark.gpu
@pytest.mark.parametrize("key_groups", [1, 2])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("block_n", [32, 64])
def test_gpu_llama_shapes(key_groups, dtype, block_n):
    """32 query / 8 KV heads, head_dim 128: one split, four, thirteen (four merge rounds, the last
    partial; rows whose later splits saw no token) and the default; a sliding window; against the
    reference and the Triton kernel (the same arithmetic up to float rounding)."""
    q, kc, vc, slot_ids, cache_lens, new = step("kv4", dtype, 1, [1, 1, 1], history=(3000, 517, 1200), heads=32,
                                                hkv=8, d=128, max_tokens=4096, key_groups=key_groups)
    for window in (-1, 700):
        ref = attention_kv_reference(q, kc, vc, slot_ids, cache_lens, new, 128**-0.5, window, "kv4")
        triton_out = attention_kv_triton(q, kc, vc, slot_ids, cache_lens, new, 128**-0.5, window, "kv4")
        for splits in (1, 4, 13, None):
            cfg = DecodeConfig(gluon=True, gluon_block_n=block_n, num_splits=splits)
            out = attention_kv_triton(q, kc, vc, slot_ids, cache_lens, new, 128**-0.5, window, "kv4", decode=cfg)
            assert rel_err(out, ref) < TOLERANCE[dtype], (window, splits)
            assert rel_err(out, triton_out) < TOLERANCE[dtype] / 2, (window, splits)


@pytest.mark.gpu
def test_gpu_smollm2_heads_tickets_and_graph_replay():
    """9 query / 3 KV heads of 64 (group 3), two key groups; the split tickets are left at 0 and a CUDA
    graph replays the launch while the lengths change on the device."""
    from lowc.runtime.kernel_cache import default_cache

    q, kc, vc, slot_ids, cache_lens, new = step("kv4", torch.bfloat16, 1, [1, 1, 1], history=(900, 31, 400), heads=9,
                                                hkv=3, d=64, max_tokens=1024, key_groups=2)
    cfg = DecodeConfig(gluon=True, num_splits=3)
    ref = attention_kv_reference(q, kc, vc, slot_ids, cache_lens, new, 0.125, -1, "kv4")
    out = attention_kv_triton(q, kc, vc, slot_ids, cache_lens, new, 0.125, -1, "kv4", decode=cfg)
    assert rel_err(out, ref) < TOLERANCE[torch.bfloat16]
    tickets = default_cache().scratch("attention_tickets", q.device, torch.int32, 3)
    assert int(tickets.abs().sum()) == 0
    lens = cache_lens.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gout = attention_kv_triton(q, kc, vc, slot_ids, lens, new, 0.125, -1, "kv4", decode=cfg)
    lens.copy_(torch.tensor([500, 7, 399], device=lens.device))
    graph.replay()
    ref2 = attention_kv_reference(q, kc, vc, slot_ids, lens, new, 0.125, -1, "kv4")
    assert rel_err(gout, ref2) < TOLERANCE[torch.bfloat16]


@pytest.mark.gpu
def test_gpu_cache_capacity_is_padded_to_whole_tiles():
    """A GPU KVCache allocates whole 64-token tiles (so the default decode runs the Gluon kernel) and
    still refuses tokens past the capacity it was asked for."""
    from lowc.errors import CacheError
    from lowc.ops.kv_ops import KVCacheSpec
    from lowc.runtime.kv_cache import KVCache

    cache = KVCache(KVCacheSpec("kv4", 1, 2, 64, torch.bfloat16, key_groups=2), 2, 1000, "cuda")
    assert cache.max_tokens == 1000 and cache.tensors[0].shape[2] == 1024
    (slot,) = cache.allocate(1)
    with pytest.raises(CacheError):
        cache.reserve([slot], [1001])


@pytest.mark.gpu
@pytest.mark.parametrize("splits", [1, 2, None])
def test_gpu_pdl_chain_reads_the_token_stored_just_before(splits):
    """Under PDL the first tile is read before griddepcontrol.wait only when it holds no token of this
    step. In a CUDA graph of the KV store (writing the new token) followed by the attention, both
    launched with PDL, the attention must see the new token: new tokens at the first and the last
    position of a tile and inside a later one, a split starting at the new token's tile, and the new
    key made dominant, so that a stale read would be far off. The cache is reset to stale contents
    before every replay."""
    from lowc.runtime import pdl
    from lowc.runtime.fused import rope_store_triton

    q, kc, vc, slot_ids, cache_lens, new = step("kv4", torch.bfloat16, 1, [1, 1, 1], history=(128, 127, 1000),
                                                heads=32, hkv=8, d=128, max_tokens=2048)
    group = q.float().reshape(3, 8, 4, 1, 128).mean(2)  # [B, Hkv, 1, D]: each KV head's query direction
    k_new = (4 * group).to(torch.bfloat16)
    v_new = torch.randn(3, 8, 1, 128, device=q.device).to(torch.bfloat16)
    stale = [t.clone() for t in (*kc, *vc)]
    cfg = DecodeConfig(gluon=True, num_splits=splits)

    def chain():
        rope_store_triton(None, k_new, v_new, None, None, kc, vc, slot_ids, cache_lens, new, "kv4")
        return attention_kv_triton(q, kc, vc, slot_ids, cache_lens, new, 128**-0.5, -1, "kv4", decode=cfg)

    previous = pdl.pdl_mode()
    pdl.set_pdl(2)
    try:
        chain()  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = chain()
        ref = attention_kv_reference(q, kc, vc, slot_ids, cache_lens, new, 128**-0.5, -1, "kv4")
        n_k = len(kc)
        stale_out = attention_kv_reference(q, type(kc)(stale[:n_k]), type(vc)(stale[n_k:]), slot_ids, cache_lens,
                                           new, 128**-0.5, -1, "kv4")
        assert rel_err(stale_out, ref) > 0.3  # the test can tell a stale read from a fresh one
        for _ in range(5):
            for t, s in zip((*kc, *vc), stale):
                t.copy_(s)
            graph.replay()
            torch.cuda.synchronize()
            assert rel_err(out, ref) < TOLERANCE[torch.bfloat16]
    finally:
        pdl.set_pdl(previous)

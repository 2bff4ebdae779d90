"""The warpgroup W4A8 g128 kernel through lowc's launcher (`TileConfig.WGMMA`).

CPU: configs are validated by name, the tuner offers the kernel only on sm_90, and a WGMMA config
met off the GPU runs the Triton default instead (the interpreter cannot run Gluon). GPU (`pytest -m
gpu`, sm_90): INT32 accumulators equal the exact reference and float outputs equal the Triton
template's bit for bit, for Llama-3-8B shapes, odd M, both warpgroup counts, stage counts and split-K,
masked rows, bias, fp16 and a replayed CUDA graph.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowc.codegen.spec import spec_for_qlinear  # noqa: E402
from lowc.errors import KernelError  # noqa: E402
from lowc.runtime import autotune  # noqa: E402
from lowc.runtime.autotune import TileConfig, wgmma_candidates  # noqa: E402
from lowc.runtime.gemm import qlinear_triton  # noqa: E402

from test_gemm_mma_reg import operands  # noqa: E402  (tests/runtime is on sys.path)

SPEC = spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16)
TEMPLATE = TileConfig(64, 64, 256, 2)


@pytest.mark.parametrize("cfg,problem", [
    (TileConfig(64, 64, 128, 1, 4, 3, WGMMA=1, MMA_REG=1), "its own kernel"),
    (TileConfig(256, 64, 128, 1, 4, 3, WGMMA=1), "BM = 16-128"),
    (TileConfig(64, 64, 256, 1, 4, 3, WGMMA=1), "BK = 128"),
    (TileConfig(64, 128, 128, 1, 4, 3, WGMMA=1), "warpgroups of 64 rows"),
    (TileConfig(64, 32, 128, 1, 2, 3, WGMMA=1), "warpgroups of 64 rows"),
    (TileConfig(128, 256, 128, 1, 16, 4, WGMMA=1), "BM <= 64"),
    (TileConfig(64, 64, 128, 1, 4, 2, WGMMA=1), "num_stages = 3-8"),
])
def test_bad_configs_are_named(cfg, problem):
    with pytest.raises(KernelError, match=problem):
        cfg.check(SPEC)


def test_candidates_only_on_sm90_and_valid(monkeypatch):
    monkeypatch.setattr(autotune, "_is_sm90", lambda: False)
    assert wgmma_candidates(SPEC, 64, 4096, 4096) == []
    monkeypatch.setattr(autotune, "_is_sm90", lambda: True)
    cands = wgmma_candidates(SPEC, 64, 4096, 4096)
    assert cands and all(c.check(SPEC).WGMMA for c in cands)
    assert {c.num_warps for c in cands} == {4, 8, 16} and {c.num_stages for c in cands} == {4, 6, 8}
    assert max(c.BM for c in wgmma_candidates(SPEC, 256, 4096, 4096)) == 128
    assert wgmma_candidates(SPEC, 8, 4096, 4096) == [] and wgmma_candidates(SPEC, 512, 4096, 4096) == []
    assert wgmma_candidates(spec_for_qlinear("w4a8_g64", torch.int8, torch.bfloat16), 64, 4096, 4096) == []
    assert "WGMMA" not in TileConfig(16, 64, 256).to_dict()  # old tables keep their bytes
    assert TileConfig.from_dict(cands[0].to_dict()) == cands[0]


def test_off_the_gpu_a_stored_wgmma_config_runs_the_default():
    x, sx, w = operands(20, 40, 256, "cpu")
    cfg = TileConfig(32, 64, 128, 2, 4, 4, WGMMA=1)
    got = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=cfg)
    assert torch.equal(got, qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TileConfig(16, 16, 128)))


# -- GPU ---------------------------------------------------------------------------------------------

LLAMA = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]
sm90 = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                          reason="wgmma is sm_90's")


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("n,k", LLAMA)
@pytest.mark.parametrize("m", [9, 16, 37, 64, 100, 128, 256])
def test_gpu_exact_on_llama_shapes(n, k, m):
    x, sx, w = operands(m, n, k, "cuda", seed=m)
    ref_int = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TEMPLATE)
    ref_bf = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.bfloat16, config=TEMPLATE)
    cands = wgmma_candidates(SPEC, m, n, k)
    assert cands
    for cfg in cands[:: max(1, len(cands) // 5)]:
        assert torch.equal(qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=cfg), ref_int), cfg
        assert torch.equal(qlinear_triton(x, sx, w, None, "w4a8_g128", torch.bfloat16, config=cfg), ref_bf), cfg


@pytest.mark.gpu
@sm90
@pytest.mark.parametrize("cfg", [TileConfig(32, 64, 128, 3, 4, 3, WGMMA=1), TileConfig(64, 128, 128, 1, 8, 4, WGMMA=1),
                                 TileConfig(128, 64, 128, 8, 4, 6, WGMMA=1), TileConfig(64, 256, 128, 2, 16, 4, WGMMA=1)])
def test_gpu_masked_rows_bias_fp16_and_graph_replay(cfg):
    n, k = 1000, 1536  # N not a multiple of BN (masked rows), 12 groups: uneven splits, empty ones
    x, sx, w = operands(45, n, k, "cuda", seed=3)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    ref = qlinear_triton(x, sx, w, bias, "w4a8_g128", torch.float16, config=TEMPLATE)
    assert torch.equal(qlinear_triton(x, sx, w, bias, "w4a8_g128", torch.float16, config=cfg), ref)
    out = [None] * 4  # four dependent launches in a graph: the split-K workspace and tickets reused
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(4):
            out[i] = qlinear_triton(x, sx, w, bias, "w4a8_g128", torch.float16, config=cfg)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert all(torch.equal(o, ref) for o in out)


@pytest.mark.gpu
@sm90
def test_gpu_k_not_a_multiple_of_512_runs_the_default():
    x, sx, w = operands(40, 256, 640, "cuda", seed=6)  # 5 groups
    cfg = TileConfig(64, 64, 128, 1, 4, 4, WGMMA=1)
    ref = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TEMPLATE)
    assert torch.equal(qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=cfg), ref)


@pytest.mark.gpu
@sm90
def test_gpu_strided_activation_rows():
    """x rows with a stride past K (a view of a wider buffer): the copies follow stride_xm."""
    x, sx, w = operands(33, 512, 1024, "cuda", seed=5)
    wide = torch.zeros(33, 1024 + 64, dtype=torch.int8, device="cuda")
    wide[:, :1024] = x
    view = wide[:, :1024]
    cfg = TileConfig(64, 64, 128, 2, 4, 4, WGMMA=1)
    ref = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TEMPLATE)
    assert torch.equal(qlinear_triton(view, sx, w, None, "w4a8_g128", torch.int32, config=cfg), ref)

"""The register-fragment W4A8 g128 kernel through lowc's launcher (`TileConfig.MMA_REG`).

CPU: configs are validated by name, and an MMA_REG config met off the GPU runs the Triton default
instead (the interpreter cannot run Gluon). GPU (`pytest -m gpu`): INT32 accumulators equal the exact
reference and float outputs equal the Triton template's bit for bit, for Llama-3-8B shapes, odd M,
every tile shape of the tuner's space, split-K, bias, fp16, PDL on and off and a replayed CUDA graph.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowc.codegen.spec import spec_for_qlinear  # noqa: E402
from lowc.errors import KernelError  # noqa: E402
from lowc.quant import quantize_activation, quantize_weight  # noqa: E402
from lowc.runtime.autotune import TileConfig, mma_reg_candidates  # noqa: E402
from lowc.runtime.gemm import qlinear_triton  # noqa: E402
from lowc.runtime.pdl import set_pdl  # noqa: E402

SPEC = spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16)


def operands(m, n, k, device, seed=0, fmt="w4a8_g128"):
    g = torch.Generator().manual_seed(seed)
    w = quantize_weight((torch.randn(n, k, generator=g) * 0.02).to(device), fmt).tensors()
    x, sx = quantize_activation(torch.randn(m, k, generator=g).to(device), fmt)
    return x, sx, w


@pytest.mark.parametrize("cfg,problem", [
    (TileConfig(8, 64, 128, 1, 4, 1, MMA_REG=1, GEMV=1), "no GEMV"),
    (TileConfig(8, 48, 128, 1, 4, 1, MMA_REG=1), "power of two"),
    (TileConfig(8, 128, 512, 1, 2, 1, MMA_REG=1), "BK = 128 or 256"),
    (TileConfig(8, 256, 128, 1, 4, 1, MMA_REG=1), "16 or 32 rows per warp"),
    (TileConfig(128, 64, 128, 1, 4, 1, MMA_REG=1), "BM = 8-64"),
])
def test_bad_configs_are_named(cfg, problem):
    with pytest.raises(KernelError, match=problem):
        cfg.check(SPEC)


def test_only_w4a8_g128_takes_it():
    with pytest.raises(KernelError, match="only for w4a8_g128"):
        TileConfig(8, 64, 128, 1, 4, 1, MMA_REG=1).check(spec_for_qlinear("w4a8_g64", torch.int8, torch.bfloat16))
    assert mma_reg_candidates(spec_for_qlinear("w8a8", torch.int8, torch.bfloat16), 4, 4096, 4096) == []


def test_candidates_are_valid_and_tables_stay_compatible():
    cands = mma_reg_candidates(SPEC, 4, 4096, 4096)
    assert cands and all(c.check(SPEC).MMA_REG for c in cands)
    assert mma_reg_candidates(SPEC, 128, 4096, 4096) == []  # decode sizes only
    assert "MMA_REG" not in TileConfig(16, 64, 256).to_dict()  # old tables keep their bytes
    assert TileConfig.from_dict(cands[0].to_dict()) == cands[0]


def test_off_the_gpu_a_stored_mma_reg_config_runs_the_default():
    x, sx, w = operands(3, 40, 256, "cpu")
    cfg = TileConfig(8, 32, 128, 2, 2, 1, MMA_REG=1)
    got = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=cfg)
    assert torch.equal(got, qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TileConfig(16, 16, 128)))


def test_a_failing_gluon_launch_names_kernel_spec_config_and_file():
    import types

    from lowc.runtime.gemm_mma_reg import _launch_gluon

    class Failing:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("out of resources: shared memory")
            return launch

    module = types.SimpleNamespace(qlinear_mma_kernel=Failing(), __file__="/kernels/gluon_w4a8_g128.py")
    cfg = TileConfig(8, 64, 128, 1, 4, 1, MMA_REG=1)
    out = torch.empty(1)
    with pytest.raises(KernelError, match=r"qlinear_mma_kernel for qlinear_w4a8_g128.*MMA_REG=1.*"
                                          r"out of resources.*/kernels/gluon_w4a8_g128.py"):
        _launch_gluon(module, "qlinear_mma_kernel", (1, 1, 1), SPEC, cfg, out, out)


# -- GPU ---------------------------------------------------------------------------------------------

LLAMA = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", LLAMA)
@pytest.mark.parametrize("m", [1, 2, 3, 8, 13, 16, 37, 64])
def test_gpu_exact_on_llama_shapes(n, k, m):
    x, sx, w = operands(m, n, k, "cuda", seed=m)
    ref_int = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TileConfig(16, 64, 256, 4))
    ref_bf = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.bfloat16, config=TileConfig(16, 64, 256, 4))
    cands = mma_reg_candidates(SPEC, m, n, k)
    assert cands
    for cfg in cands[:: max(1, len(cands) // 6)]:
        got = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=cfg)
        assert torch.equal(got, ref_int), cfg
        got = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.bfloat16, config=cfg)
        assert torch.equal(got, ref_bf), cfg


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [0, 1])
def test_gpu_bias_fp16_pdl_and_graph_replay(mode, pdl_restored):
    set_pdl(mode)
    n, k = 1000, 1024  # N not a multiple of any BN: masked rows
    x, sx, w = operands(5, n, k, "cuda", seed=3)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    cfg = TileConfig(8, 64, 256, 2, 4, 1, MMA_REG=1)
    ref = qlinear_triton(x, sx, w, bias, "w4a8_g128", torch.float16, config=TileConfig(16, 64, 256, 2))
    assert torch.equal(qlinear_triton(x, sx, w, bias, "w4a8_g128", torch.float16, config=cfg), ref)
    # four dependent launches in a graph (the split-K workspace and tickets reused each time)
    out = [None] * 4
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
def test_gpu_shipped_table_entries_run_exact():
    """Whatever the shipped table picks at decode sizes (MMA_REG on an H100) is exact."""
    for m in (2, 4, 8, 16):
        x, sx, w = operands(m, 4096, 4096, "cuda", seed=m)
        got = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32)
        ref = qlinear_triton(x, sx, w, None, "w4a8_g128", torch.int32, config=TileConfig(16, 64, 256, 4))
        assert torch.equal(got, ref)

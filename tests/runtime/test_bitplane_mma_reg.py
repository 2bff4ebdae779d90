"""The register-fragment bit-plane kernel through lowc's launcher (`TileConfig.MMA_REG` of the
unpack realization, codegen/gluon_bitplane.py).

CPU: configs are validated by name, the candidates fit the registers, and an MMA_REG config met off
the GPU runs the Triton unpack tile instead (the interpreter cannot run Gluon). GPU (`pytest -m gpu`):
the per-group INT32 accumulators equal the direct integer GEMM bit for bit on Llama-3-8B shapes for
2..7 planes (bit balance too), odd M, every candidate tile, both zero modes; float outputs match the
reference to float32 rounding (split-K adds float partial sums in any order); bias, fp16, rows not
a multiple of the tile, PDL on and off, a replayed CUDA graph.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from lowc.errors import KernelError  # noqa: E402
from lowc.quant import quantize_activation, quantize_weight  # noqa: E402
from lowc.runtime import bitplane_gemm as bg  # noqa: E402
from lowc.runtime.autotune import TileConfig  # noqa: E402
from lowc.runtime.pdl import set_pdl  # noqa: E402

FMT = "w2a8_g128_bp"


def spec(fmt=FMT, raw=False):
    return bg.kernel_spec(fmt, "unpack", raw=raw)


def operands(fmt, m, n, k, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * (1 + torch.rand(n, 1, generator=g))
    x = torch.randn(m, k, generator=g) * (1 + 3 * torch.rand(1, k, generator=g))
    packed = quantize_weight(w, fmt)
    xq, sx = quantize_activation(x, fmt)
    return packed, [t.to(device) for t in packed.tensors()], xq.to(device), sx.to(device)


@pytest.mark.parametrize("fmt,cfg,problem", [
    (FMT, TileConfig(8, 64, 256, 1, 4, 1, MMA_REG=1, W_AS_B=1), "no W_AS_B"),
    (FMT, TileConfig(8, 64, 256, 1, 4, 3, MMA_REG=1), "num_stages = 1"),
    (FMT, TileConfig(32, 64, 256, 1, 4, 1, MMA_REG=1), "BM in"),
    (FMT, TileConfig(8, 64, 1024, 1, 4, 1, MMA_REG=1), "BK in"),
    (FMT, TileConfig(8, 256, 256, 1, 4, 1, MMA_REG=1), "16 or 32 rows per warp"),
    ("w2a8_g64_bp", TileConfig(8, 64, 256, 1, 4, 1, MMA_REG=1), "groups of 128"),
    ("w8a4_g128_bp", TileConfig(8, 64, 256, 1, 4, 1, MMA_REG=1), "2..7 weight planes"),
])
def test_bad_configs_are_named(fmt, cfg, problem):
    with pytest.raises(KernelError, match=problem):
        bg.check_config(spec(fmt), "unpack", cfg)
    with pytest.raises(KernelError, match="tile of the unpack realization"):
        bg.check_config(bg.kernel_spec(FMT, "gemv"), "gemv", TileConfig(8, 64, 256, 1, 4, 1, MMA_REG=1))


def test_candidates_are_valid_fit_the_registers_and_join_the_unpack_space():
    for fmt in ("w2a8_g128_bp", "w3a8_g128_bp", "w6a6_g128_bp", "w7a8_g128_bp"):
        for m in (1, 4, 16):
            cands = bg.mma_reg_candidates(spec(fmt), m, 4096, 4096)
            assert cands, (fmt, m)
            for c in cands:
                assert bg.check_config(spec(fmt), "unpack", c).MMA_REG
                assert bg.mma_reg_fits_registers(bg.bitplane_spec(fmt).planes, c.BN, c.BM, c.BK // 128, c.num_warps)
            assert set(cands) <= set(bg.candidate_configs(spec(fmt), "unpack", m, 4096, 4096))
    assert bg.mma_reg_candidates(spec(), 17, 4096, 4096) == []  # decode sizes only
    assert bg.mma_reg_candidates(spec("w2a8_g64_bp"), 1, 4096, 4096) == []
    assert bg.mma_reg_candidates(spec("w8a4_g128_bp"), 1, 4096, 4096) == []
    # the register rule: what spilled in the sm_90 builds is left out
    assert not bg.mma_reg_fits_registers(2, 64, 16, 4, 4) and not bg.mma_reg_fits_registers(7, 128, 16, 2, 4)
    assert bg.mma_reg_fits_registers(2, 64, 8, 4, 4) and bg.mma_reg_fits_registers(6, 64, 16, 2, 4)


def test_off_the_gpu_a_stored_mma_reg_config_runs_the_unpack_tile():
    packed, w, x, sx = operands(FMT, 3, 40, 256, "cpu")
    cfg = TileConfig(8, 64, 256, 2, 4, 1, MMA_REG=1)
    got = bg.qlinear_bitplane(x, sx, w, None, FMT, torch.float32, realization="unpack", config=cfg, raw=True)
    assert torch.equal(got, packed.accumulators(x))


# -- GPU ---------------------------------------------------------------------------------------------

LLAMA = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["w2a8_g128_bp", "w3a8_g128_bp", "w6a6_g128_bp", "w2a8_g128_bb_bp", "w5a8_g128_bp",
                                 "w7a8_g128_bp", "w4a4_g128_bp"])
@pytest.mark.parametrize("m", [1, 3, 8, 13, 16])
def test_gpu_every_candidate_exact_on_a_llama_shape(fmt, m):
    n, k = LLAMA[m % 4]
    packed, w, x, sx = operands(fmt, m, n, k, "cuda", seed=m)
    ref = packed.accumulators(x.cpu())
    cands = bg.mma_reg_candidates(spec(fmt), m, n, k)
    assert cands
    for cfg in cands:
        acc = bg.qlinear_bitplane(x, sx, w, None, fmt, torch.float32, realization="unpack", config=cfg, raw=True)
        assert torch.equal(acc.cpu(), ref), cfg
    y_ref = packed.linear(x.cpu(), sx.cpu(), None, torch.float32)
    scale = y_ref.abs().max()
    for cfg in cands[:: max(1, len(cands) // 3)]:
        y = bg.qlinear_bitplane(x, sx, w, None, fmt, torch.float32, realization="unpack", config=cfg)
        assert ((y.cpu() - y_ref).abs().max() / scale).item() < 1e-5, cfg


@pytest.mark.gpu
@pytest.mark.parametrize("zero_mma", [True, False])
def test_gpu_both_zero_modes_exact(zero_mma, monkeypatch):
    from lowc.runtime import gemm_mma_reg

    monkeypatch.setattr(gemm_mma_reg, "BITPLANE_ZERO_MMA", zero_mma)
    for fmt in ("w2a8_g128_bp", "w6a6_g128_bp"):
        packed, w, x, sx = operands(fmt, 5, 4096, 4096, "cuda", seed=7)
        cfg = TileConfig(8, 64, 256, 4, 4, 1, MMA_REG=1)
        acc = bg.qlinear_bitplane(x, sx, w, None, fmt, torch.float32, realization="unpack", config=cfg, raw=True)
        assert torch.equal(acc.cpu(), packed.accumulators(x.cpu())), fmt


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [0, 1])
def test_gpu_bias_fp16_pdl_and_graph_replay(mode, pdl_restored):
    set_pdl(mode)
    n, k = 1000, 1024  # N not a multiple of any BN: masked rows
    packed, w, x, sx = operands("w3a8_g128_bp", 5, n, k, "cuda", seed=3)
    bias = torch.randn(n, device="cuda", dtype=torch.float16)
    cfg = TileConfig(8, 64, 256, 2, 4, 1, MMA_REG=1)
    ref = packed.linear(x.cpu(), sx.cpu(), bias.cpu(), torch.float32)
    first = bg.qlinear_bitplane(x, sx, w, bias, "w3a8_g128_bp", torch.float16, realization="unpack", config=cfg)
    torch.testing.assert_close(first.float().cpu(), ref, rtol=2e-3, atol=2e-3 * ref.abs().max().item())
    out = [None] * 4  # four launches in a graph (the split-K workspace and tickets reused each time)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(4):
            out[i] = bg.qlinear_bitplane(x, sx, w, bias, "w3a8_g128_bp", torch.float16, realization="unpack", config=cfg)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    for o in out:
        torch.testing.assert_close(o, first, rtol=1e-3, atol=1e-3 * first.abs().max().item())

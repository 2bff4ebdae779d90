"""Launching the register-fragment W4A8 g128 kernel (`TileConfig.MMA_REG`, codegen/gluon_w4a8_g128.py).

The kernel is Gluon, which has no interpreter: it runs only with a Triton that has Gluon, on the CUDA
devices the generated kernels support (`gemm.gpu_support`; `mma.sync` INT8 needs sm_80), with K a
whole number of its K tiles (no padding inside the packed weight) and activation rows readable as
4-byte words. Where a stored MMA_REG config meets anything else, `runtime/gemm.py` runs the default
config of the Triton templates.
"""

from __future__ import annotations

import functools

import torch

from lowc.errors import KernelError
from lowc.runtime.pdl import pdl_args


@functools.lru_cache(maxsize=None)
def has_gluon() -> bool:
    """Gluon (triton.experimental.gluon with the Ampere MMA) exists in this Triton (3.5 and later)."""
    try:
        from triton.experimental.gluon.language.nvidia.ampere import mma_v2
        del mma_v2
    except ImportError:
        return False
    return True


def mma_reg_fits(cfg, x2: torch.Tensor, k: int, kw: int) -> bool:
    """Whether `cfg` (an MMA_REG config, W4A8 or bit-plane) can run on this input: a CUDA device the
    generated kernels support (`gemm.gpu_support`), a Triton with Gluon, K a whole number of K tiles
    without padding, activation rows readable as 4-byte words."""
    from lowc.runtime.gemm import gpu_support

    return (
        x2.device.type == "cuda"
        and gpu_support(x2.device.index or 0)[0]
        and has_gluon()
        and k == kw
        and k % cfg.BK == 0
        and x2.stride(0) % 4 == 0
        and x2.data_ptr() % 4 == 0
    )


@functools.lru_cache(maxsize=None)
def _layouts(bn: int, bm: int, gpt: int, warps: int):
    from lowc.codegen.gluon_w4a8_g128 import layouts

    return layouts(bn, bm, gpt, warps)


def _launch_gluon(kernel_module, kernel_name: str, grid, spec, cfg, out, *args, **constexprs) -> None:
    """kernel_module.<kernel_name>[grid](*args, **constexprs) with cfg's warps and PDL mode 1; a
    compile error, out-of-resources or launch failure becomes a KernelError naming the kernel, the
    spec, the config and the kernel file."""
    try:
        getattr(kernel_module, kernel_name)[grid](*args, **constexprs, num_warps=cfg.num_warps,
                                                  **pdl_args(out.device, 1))
    except Exception as e:  # compile errors, out-of-resources, launch failures: name what failed
        raise KernelError(
            f"Gluon kernel {kernel_name} for {spec.name} failed with {cfg} ({type(e).__name__}: {e}); "
            f"kernel file: {kernel_module.__file__}"
        ) from e


def launch_mma_reg(cfg, spec, x2, sx, weight, bias_arg, has_bias, out, ws, tickets, m, n, kw) -> None:
    """out = the qlinear of x2 (INT32 accumulator when out is int32) through the Gluon kernel; ws and
    tickets: the split-K scratch for cdiv(N, BN) * cdiv(M, BM) output tiles (gemm._splitk_scratch)."""
    from lowc.codegen import gluon_w4a8_g128 as kernel_module

    grid = (-(-n // cfg.BN), cfg.SPLIT_K, -(-m // cfg.BM))
    w_l, x_l, o_l = _layouts(cfg.BN, cfg.BM, cfg.BK // 128, cfg.num_warps)
    _launch_gluon(
        kernel_module, "qlinear_mma_kernel", grid, spec, cfg, out,
        x2, sx, *weight, bias_arg, out, ws, tickets, m, n, kw, x2.stride(0), kw // 8,
        HAS_BIAS=has_bias, RAW=out.dtype == torch.int32, BN=cfg.BN, BM=cfg.BM, GPT=cfg.BK // 128,
        SPLIT_K=cfg.SPLIT_K, WARPS=cfg.num_warps, w_l=w_l, x_l=x_l, o_l=o_l,
    )


def wgmma_fits(cfg, x2: torch.Tensor, k: int, kw: int) -> bool:
    """Whether `cfg` (a WGMMA config) can run on this input: as `mma_reg_fits`, on an sm_90 device
    (wgmma is Hopper's), K a multiple of 512 (the group parameters are read four groups per word)."""
    return (mma_reg_fits(cfg, x2, k, kw) and k % 512 == 0
            and torch.cuda.get_device_capability(x2.device)[0] == 9)


@functools.lru_cache(maxsize=None)
def _wgmma_layouts(bn: int, bm: int, warps: int):
    from lowc.codegen.gluon_w4a8_wgmma import layouts

    return layouts(bn, bm, warps)


def launch_wgmma(cfg, spec, x2, sx, weight, bias_arg, has_bias, out, ws, tickets, m, n, kw) -> None:
    """out = the qlinear of x2 (INT32 accumulator when out is int32) through the warpgroup Gluon
    kernel (codegen/gluon_w4a8_wgmma.py); ws and tickets as for `launch_mma_reg`."""
    from lowc.codegen import gluon_w4a8_wgmma as kernel_module

    grid = (-(-n // cfg.BN), cfg.SPLIT_K, -(-m // cfg.BM))
    w_l, u_l, c_l, o_l = _wgmma_layouts(cfg.BN, cfg.BM, cfg.num_warps)
    _launch_gluon(
        kernel_module, "qlinear_wgmma_kernel", grid, spec, cfg, out,
        x2, sx, *weight, bias_arg, out, ws, tickets, m, n, kw, x2.stride(0), kw // 8,
        HAS_BIAS=has_bias, RAW=out.dtype == torch.int32, BN=cfg.BN, BM=cfg.BM, SPLIT_K=cfg.SPLIT_K,
        STAGES=cfg.num_stages, WARPS=cfg.num_warps, w_l=w_l, u_l=u_l, c_l=c_l, o_l=o_l,
    )


@functools.lru_cache(maxsize=None)
def _bitplane_layouts(bn: int, bm: int, gpt: int, warps: int, planes: int):
    from lowc.codegen.gluon_bitplane import layouts

    return layouts(bn, bm, gpt, warps, planes)


# The zero term on the tensor cores (a second MMA chain per group) rather than folded into the weight
# bytes: two integer operations fewer per four weights (codegen/gluon_bitplane.py).
BITPLANE_ZERO_MMA = True


def launch_bitplane_mma_reg(cfg, spec, x2, sx, weight, bias_arg, has_bias, out, ws, tickets, m, n, kw,
                            zero_mma: bool | None = None) -> None:
    """A bit-plane g128 qlinear (spec: its KernelSpec, w_bits planes) through the Gluon kernel: out is
    the float output, or with out int32 [M, KW / 128, N] the per-group INT32 accumulators; ws (float32)
    and tickets: the split-K scratch of the launcher (bitplane_gemm._launch); zero_mma: default
    BITPLANE_ZERO_MMA (read at each call, so a benchmark can compare the two)."""
    from lowc.codegen import gluon_bitplane as kernel_module

    if zero_mma is None:
        zero_mma = BITPLANE_ZERO_MMA

    planes = spec.w_bits
    grid = (-(-n // cfg.BN), cfg.SPLIT_K, -(-m // cfg.BM))
    w_l, x_l, o_l = _bitplane_layouts(cfg.BN, cfg.BM, cfg.BK // 128, cfg.num_warps, planes)
    _launch_gluon(
        kernel_module, "qlinear_bitplane_mma_kernel", grid, spec, cfg, out,
        x2, sx, *weight, bias_arg, out, ws, tickets, m, n, kw, x2.stride(0), n * (kw // 32),
        P=planes, PP=kernel_module.padded_planes(planes), HAS_BIAS=has_bias, RAW=out.dtype == torch.int32,
        BN=cfg.BN, BM=cfg.BM, GPT=cfg.BK // 128, SPLIT_K=cfg.SPLIT_K, WARPS=cfg.num_warps, ZERO_MMA=zero_mma,
        w_l=w_l, x_l=x_l, o_l=o_l,
    )

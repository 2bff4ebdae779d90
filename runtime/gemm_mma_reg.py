"""Launching the register-fragment W4A8 g128 kernel (`TileConfig.MMA_REG`, codegen/gluon_w4a8_g128.py).

The kernel is Gluon, which has no interpreter: it runs only with a Triton that has Gluon, on CUDA
devices of compute capability 8.0 or later (`mma.sync` INT8), with K a whole number of its K tiles
(no padding inside the packed weight) and activation rows readable as 4-byte words. Where a stored
MMA_REG config meets anything else, `runtime/gemm.py` runs the default config of the Triton templates.
"""

from __future__ import annotations

import functools

import torch

from lowc.errors import KernelError
from lowc.runtime.pdl import pdl_args


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


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
    """Whether `cfg` (an MMA_REG config) can run on this input (and this Triton)."""
    return (
        x2.device.type == "cuda"
        and has_gluon()
        and _capability(x2.device.index or 0) >= (8, 0)
        and k == kw
        and k % cfg.BK == 0
        and x2.stride(0) % 4 == 0
        and x2.data_ptr() % 4 == 0
    )


@functools.lru_cache(maxsize=None)
def _layouts(bn: int, bm: int, gpt: int, warps: int):
    from lowc.codegen.gluon_w4a8_g128 import layouts

    return layouts(bn, bm, gpt, warps)


def launch_mma_reg(cfg, spec, cache, x2, sx, weight, bias_arg, has_bias, out, m, n, kw) -> None:
    """out = the qlinear of x2 (INT32 accumulator when out is int32) through the Gluon kernel."""
    from lowc.codegen import gluon_w4a8_g128 as kernel_module

    grid = (-(-n // cfg.BN), cfg.SPLIT_K, -(-m // cfg.BM))
    if cfg.SPLIT_K > 1:
        ws = cache.scratch("splitk_partial_sums", out.device, torch.int32, m * n)
        tickets = cache.scratch("splitk_tickets", out.device, torch.int32, grid[0] * grid[2])
    else:
        ws = tickets = out  # never touched when SPLIT_K == 1
    w_l, x_l, o_l = _layouts(cfg.BN, cfg.BM, cfg.BK // 128, cfg.num_warps)
    try:
        kernel_module.qlinear_mma_kernel[grid](
            x2, sx, *weight, bias_arg, out, ws, tickets, m, n, kw, x2.stride(0), kw // 8,
            HAS_BIAS=has_bias, RAW=out.dtype == torch.int32, BN=cfg.BN, BM=cfg.BM, GPT=cfg.BK // 128,
            SPLIT_K=cfg.SPLIT_K, WARPS=cfg.num_warps, w_l=w_l, x_l=x_l, o_l=o_l,
            num_warps=cfg.num_warps, **pdl_args(out.device, 1),
        )
    except Exception as e:  # compile errors, out-of-resources, launch failures: name what failed
        raise KernelError(
            f"Gluon kernel qlinear_mma_kernel for {spec.name} failed with {cfg} ({type(e).__name__}: {e}); "
            f"kernel file: {kernel_module.__file__}"
        ) from e

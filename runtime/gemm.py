"""Launchers of the generated qlinear kernels, and their registration as `lowc::qlinear`'s CUDA kernel.

    qlinear_triton(x, x_scale, weight, bias, fmt, out_dtype, config=None) -> Tensor

runs the Triton kernel of `spec_for_qlinear(fmt, x.dtype, out_dtype)` on `x`'s device (a CUDA GPU,
or CPU tensors under TRITON_INTERPRET=1, which is how CI tests every kernel). The weight list is the
packed format's `tensors()` exactly as lowc.quant produces it: the kernels read the canonical
layouts, so nothing is repacked at compile time and there is no `prepack` step for the compiler to
call (docs/kernels.md explains why none is needed). `out_dtype=torch.int32` returns the raw INT32
accumulator for the integer families (a test and debugging aid, not an op-level dtype).

`register_cuda_kernels()` makes these the CUDA implementation of `lowc::qlinear`; the runtime calls
it once (never at `import lowc`). On a GPU older than compute capability 8.0 the registered function
runs the plain-torch reference instead, with a one-time warning; without a GPU registration is
skipped with the same warning.
"""

from __future__ import annotations

import functools
import warnings

import torch

from lowc.codegen.spec import KernelSpec, spec_for_qlinear
from lowc.errors import KernelError, QuantizationError
from lowc.runtime.autotune import Autotuner, TileConfig, default_config, default_tuner, device_slug
from lowc.runtime.gemm_mma_reg import launch_mma_reg, launch_wgmma, mma_reg_fits, wgmma_fits
from lowc.runtime.kernel_cache import KernelCache, LoadedKernel, default_cache
from lowc.runtime.pdl import pdl_args

MIN_CAPABILITY = (8, 0)


def _pdl_args(spec: KernelSpec, device: torch.device, gemv: bool) -> dict:
    """Programmatic dependent launch of the w4a8_g kernels (runtime/pdl.py): the GEMV from mode 1,
    the tensor-core kernel from mode 2; the other templates have no PDL parameter."""
    return pdl_args(device, 1 if gemv else 2) if spec.family == "w4a8_g" else {}


class ReferenceFallbackWarning(UserWarning):
    """lowc::qlinear runs the plain-torch reference because no suitable GPU kernel can run."""


def _weight_k(spec: KernelSpec, weight: list[torch.Tensor]) -> int:
    """The K extent the kernel loops over: the weight's stored (padded) K, normal channels for w4a4."""
    return weight[0].shape[1] if spec.w_bits == 8 else 2 * weight[0].shape[1]


def _expected_weight_k(spec: KernelSpec, k: int) -> int:
    if spec.family == "w8a8":
        return k
    if spec.family == "w4a8_pc":
        return k + k % 2
    normal = k - spec.n_outliers
    g = spec.group_size
    return -(-normal // g) * g


def _check_inputs(spec: KernelSpec, x, x_scale, weight, bias, k: int, kw: int) -> None:
    expected = _expected_weight_k(spec, k)
    if kw != expected:
        raise QuantizationError(
            f"{spec.fmt}: x has K={k} features, so the packed weight should span {expected} (padded) "
            f"columns, but it spans {kw}; was the weight packed for another in_features?"
        )
    if spec.a_bits != 16 and (x_scale is None or x_scale.dtype != torch.float32):
        raise QuantizationError(f"{spec.fmt}: x_scale must be the float32 scale tensor from lowc::quantize_act")
    devices = {t.device for t in (x, *weight) if t is not None} | ({bias.device} if bias is not None else set())
    if len(devices) != 1:
        raise KernelError(f"{spec.fmt}: x, weight and bias must be on one device, got {sorted(map(str, devices))}")


def _even_k(spec: KernelSpec, k: int, kw: int, bk: int) -> bool:
    """True when no K tile needs a mask (the kernel then drops every K bound check)."""
    real = k - spec.n_outliers
    return real % bk == 0 and kw == real


@functools.lru_cache(maxsize=None)
def _device_slug(index: int) -> str:
    return device_slug(torch.cuda.get_device_name(index))


def qlinear_triton(
    x: torch.Tensor,
    x_scale: torch.Tensor | None,
    weight: list[torch.Tensor],
    bias: torch.Tensor | None,
    fmt: str,
    out_dtype: torch.dtype,
    *,
    config: TileConfig | None = None,
    cache: KernelCache | None = None,
    tuner: Autotuner | None = None,
) -> torch.Tensor:
    """y = x @ W^T (+ bias) through the generated Triton kernel (see module docstring)."""
    spec = spec_for_qlinear(fmt, x.dtype, out_dtype)
    cache = cache or default_cache()
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], weight[0].shape[0]
    kw = _weight_k(spec, weight)
    _check_inputs(spec, x, x_scale, weight, bias, k, kw)
    out = torch.empty((m, n), dtype=out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out.reshape(*lead, n)
    loaded = cache.get(spec)
    sx = x_scale.reshape(m, -1).contiguous() if x_scale is not None else x2
    weight = [w.contiguous() for w in weight]
    if spec.family == "w4a4" and kw == 0:
        # Every input channel is an outlier: no group scales exist, but the kernel prefetches one.
        weight[1] = torch.zeros((n, 1), dtype=weight[1].dtype, device=weight[1].device)
    bias_arg = bias.contiguous() if bias is not None else out

    def launch(cfg: TileConfig) -> None:
        if cfg.GEMV and not _gemv_fits(x2, k):
            cfg = default_config(spec, m, n, k, allow_gemv=False)
        if (cfg.MMA_REG and not mma_reg_fits(cfg, x2, k, kw)) or (cfg.WGMMA and not wgmma_fits(cfg, x2, k, kw)):
            cfg = default_config(spec, m, n, k)
        if cfg.MMA_REG or cfg.WGMMA:
            scratch = _splitk_scratch(cache, cfg, spec, out, m, n, -(-n // cfg.BN) * -(-m // cfg.BM))
            launcher = launch_wgmma if cfg.WGMMA else launch_mma_reg
            launcher(cfg, spec, x2, sx, weight, bias_arg, bias is not None, out, *scratch, m, n, kw)
        elif cfg.GEMV:
            _launch_gemv(loaded, cfg, spec, cache, x2, sx, weight, bias_arg, bias is not None, out, m, n, k, kw)
        elif cfg.DEQUANT_FIRST:
            _launch_dequant_first(loaded, cfg, spec, cache, x2, sx, weight, bias_arg, bias is not None, out, m, n, k, kw)
        else:
            _launch(loaded, cfg, spec, cache, x2, sx, weight, bias_arg, bias is not None, out, m, n, k, kw)

    if config is None:
        on_gpu = x.device.type == "cuda"
        device = _device_slug(x.device.index if x.device.index is not None else 0) if on_gpu else "cpu"
        bench = _bencher(launch) if on_gpu else None
        config = (tuner or default_tuner()).config_for(spec, m, n, k, device, bench=bench)
    launch(config.check(spec))
    return out.reshape(*lead, n)


def _fast_dequant(spec: KernelSpec, device: torch.device, kw: int) -> bool:
    """The inline-PTX unpacking (GPU only) needs 16-bit aligned code words: rows of a multiple of 4 codes."""
    if device.type != "cuda" or spec.w_bits != 4 or kw % 4:
        return False
    return spec.a_bits != 16 or spec.x_dtype in ("bfloat16", "float16")


def _weight_row_words(spec: KernelSpec, kw: int) -> int:
    """Row length of the packed weight in the words its kernel loads: 32-bit words of eight codes for
    w4a8_g (nibble-split order), 16-bit words of four codes for the other 4-bit formats."""
    return kw // 8 if spec.family == "w4a8_g" else kw // 4


def _splitk_scratch(cache, cfg, spec, out, m, n, tiles):
    """(partial-sum workspace, tickets) of a split-K launch over `tiles` output tiles: zeroed once and
    left zeroed by every kernel's last program; `out` twice (never touched) when SPLIT_K == 1."""
    if cfg.SPLIT_K == 1:
        return out, out
    acc_dtype = torch.int32 if spec.family in ("w8a8", "w4a8_g", "w4a8_pc") else torch.float32
    return (cache.scratch("splitk_partial_sums", out.device, acc_dtype, m * n),
            cache.scratch("splitk_tickets", out.device, torch.int32, tiles))


def _launch(loaded: LoadedKernel, cfg, spec, cache, x2, sx, weight, bias_arg, has_bias, out, m, n, k, kw) -> None:
    grid = (-(-m // cfg.BM) * -(-n // cfg.BN), cfg.SPLIT_K)
    ws, tickets = _splitk_scratch(cache, cfg, spec, out, m, n, grid[0])
    try:
        loaded.kernel[grid](
            x2, sx, *weight, bias_arg, out, ws, tickets, m, n, k, kw, x2.stride(0), _weight_row_words(spec, kw),
            HAS_BIAS=has_bias, EVEN_K=_even_k(spec, k, kw, cfg.BK), INTERPRETED=out.device.type == "cpu",
            FAST_DEQUANT=_fast_dequant(spec, out.device, kw),
            BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, SPLIT_K=cfg.SPLIT_K, GROUP_M=cfg.GROUP_M,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **({"W_AS_B": True} if cfg.W_AS_B else {}),  # only the w4a8_g kernel has the parameter
            **_pdl_args(spec, out.device, gemv=False),
        )
    except Exception as e:  # compile errors, out-of-resources, launch failures: name what failed
        raise KernelError(
            f"Triton kernel {spec.name} failed with {cfg} ({type(e).__name__}: {e}); kernel file: {loaded.path}"
        ) from e


def _gemv_fits(x2: torch.Tensor, k: int) -> bool:
    """The GEMV kernel reads x as 8-byte words: K, the row stride and the address must allow it
    (a stored GEMV config for another shape may meet an x that does not; then the default runs)."""
    return k % 8 == 0 and x2.stride(0) % 8 == 0 and x2.data_ptr() % 8 == 0


def _launch_gemv(loaded, cfg, spec, cache, x2, sx, weight, bias_arg, has_bias, out, m, n, k, kw) -> None:
    """Decode on the CUDA cores (`gemv_kernel` of the w4a8_g template): grid and split-K as `_launch`."""
    grid = (-(-m // cfg.BM) * -(-n // cfg.BN), cfg.SPLIT_K)
    ws, tickets = _splitk_scratch(cache, cfg, spec, out, m, n, grid[0])
    try:
        loaded.module.gemv_kernel[grid](
            x2, sx, *weight, bias_arg, out, ws, tickets, m, n, kw, k // 8, x2.stride(0) // 8, kw // 8,
            HAS_BIAS=has_bias, EVEN_K=_even_k(spec, k, kw, cfg.BK), FAST=out.device.type == "cuda",
            BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, SPLIT_K=cfg.SPLIT_K,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, **_pdl_args(spec, out.device, gemv=True),
        )
    except Exception as e:
        raise KernelError(
            f"Triton kernel {spec.name} (gemv_kernel) failed with {cfg} ({type(e).__name__}: {e}); "
            f"kernel file: {loaded.path}"
        ) from e


DEQUANT_TILE = (64, 128)  # (BN, BK) of the dequantize pass: a memory-bound copy-like kernel


def _launch_dequant_first(loaded, cfg, spec, cache, x2, sx, weight, bias_arg, has_bias, out, m, n, k, kw) -> None:
    """Large M, w4a8: W -> INT8 once (dequant_kernel), then the W8A8 kernel on it.

    The INT8 weight costs N * Kp bytes written and read once per call; at M >= ~1024 that is a few
    per cent of the GEMM, which then runs as a pure INT8 GEMM with no unpacking in its inner loop.
    The W8A8 epilogue (acc * s_x * s) is the w4a8 one with s = s0 (grouped) or the channel scale.
    """
    w8 = torch.empty((n, kw), dtype=torch.int8, device=out.device)
    bn, bk = DEQUANT_TILE
    try:
        loaded.module.dequant_kernel[(-(-n // bn), -(-kw // bk))](*weight[:3], w8, n, kw, BN=bn, BK=bk)
    except Exception as e:
        raise KernelError(
            f"dequantize pass of {spec.name} failed ({type(e).__name__}: {e}); kernel file: {loaded.path}"
        ) from e
    spec8 = spec_for_qlinear("w8a8", torch.int8, out.dtype)
    scale = weight[3] if spec.family == "w4a8_g" else weight[1]
    plain = TileConfig(cfg.BM, cfg.BN, cfg.BK, cfg.SPLIT_K, cfg.num_warps, cfg.num_stages, cfg.GROUP_M)
    _launch(cache.get(spec8), plain, spec8, cache, x2, sx, [w8, scale], bias_arg, has_bias, out, m, n, k, kw)


def _bencher(launch):
    """config -> median seconds of one launch (the tuner's timing function)."""

    def bench(cfg: TileConfig) -> float:
        from triton.testing import do_bench

        return do_bench(lambda: launch(cfg), warmup=5, rep=25, return_mode="median") * 1e-3

    return bench


# -- registration as lowc::qlinear's CUDA kernel -------------------------------------------------------


@functools.lru_cache(maxsize=None)
def gpu_support(index: int) -> tuple[bool, str]:
    """(whether the generated kernels run on CUDA device `index`, a description for messages)."""
    capability = torch.cuda.get_device_capability(index)
    return capability >= MIN_CAPABILITY, f"{torch.cuda.get_device_name(index)} (compute capability {capability})"


def _reference(x, x_scale, weight, bias, fmt, out_dtype):
    from lowc.quant import weight_from_tensors

    return weight_from_tensors(fmt, weight, x.shape[-1]).linear(x, x_scale, bias, out_dtype)


def qlinear_cuda(x, x_scale, weight, bias, fmt, out_dtype):
    """The function registered for lowc::qlinear on CUDA: Triton kernel, or the reference on old GPUs."""
    supported, description = gpu_support(x.device.index or 0)
    if not supported:
        warnings.warn(
            f"lowc::qlinear: {description} is older than compute capability {MIN_CAPABILITY}; running the "
            "plain-torch reference (correct but slow). Use an Ampere or newer GPU for the Triton kernels.",
            ReferenceFallbackWarning,
            stacklevel=2,
        )
        return _reference(x, x_scale, weight, bias, fmt, out_dtype)
    return qlinear_triton(x, x_scale, weight, bias, fmt, out_dtype)


def register_cuda_kernels() -> bool:
    """Make the Triton kernels lowc::qlinear's CUDA implementation; True if GPU kernels are active.

    What is registered is the whole dispatcher (lowc.runtime.bitplane_gemm.qlinear_cuda: bit-plane
    formats there, every other format through qlinear_cuda here), so calling this after the bit-plane
    registration cannot take bit-plane formats away (it did: they then reached spec_for_qlinear and
    failed with KeyError 'bitplane')."""
    import lowc.ops  # noqa: F401  (defines lowc::qlinear)
    from lowc.runtime.bitplane_gemm import qlinear_cuda as dispatch_qlinear

    if not torch.cuda.is_available():
        warnings.warn(
            "lowc::qlinear: no CUDA GPU, so the plain-torch reference runs (correct but slow)",
            ReferenceFallbackWarning,
            stacklevel=2,
        )
        return False
    torch.library.register_kernel("lowc::qlinear", "cuda", dispatch_qlinear)
    return any(gpu_support(i)[0] for i in range(torch.cuda.device_count()))

"""Launcher of the bit-plane qlinear kernels, and the selector that picks their realization by measurement.

    qlinear_bitplane(x, x_scale, weight, bias, fmt, out_dtype, *, realization=None, config=None,
                     raw=False, cache=None, selector=None) -> Tensor

runs a `w{N}a{M}_..._bp` lowc::qlinear (lowc.quant.bitplane) through one of three generated kernels:
  "unpack"  (codegen/templates/qlinear_bitplane_unpack.py): planes -> INT8 in registers, INT8 tl.dot;
  "binary"  (codegen/templates/qlinear_bitplane_binary.py): AND + popcount over both operands' planes;
  "gemv"    (codegen/templates/qlinear_bitplane_gemv.py): decode (M <= GEMV_MAX_M) on the CUDA cores,
            plane bits as byte lanes, dp4a against x (no tensor cores, no recombined INT8 tile).
Each realization is its own KernelSpec (op `qlinear_unpack` / `qlinear_binary`), so each has its own
kernel file, cache entry and tuned configs. `raw=True` returns the exact per-group INT32 accumulators
[M, NG, N] instead of the output (the exactness test).

Which realization and tile a call uses is decided per (format, output dtype, M bucket, N, K, GPU) by
`RealizationSelector`, in this order: this process's memory; the user table
`<cache>/autotune/bitplane-<gpu>.json`; the shipped table `lowc/runtime/configs/bitplane-<gpu>.json`
(written by bench/gemm_bitplane.py, which times the realizations on the GPU); in each table the exact
(N, K) entry, else the same M bucket's nearest measured shape; on a GPU with policy "miss"
(LOWC_AUTOTUNE, default "off" as in lowc.runtime.autotune) every candidate of BOTH realizations is
timed and the winner is stored in the user table with the best time of each realization; otherwise
a rule (`default_realization`: the GEMV up to GEMV_DEFAULT_MAX_M tokens, unpack beyond).
So the realization choice is stored with the autotune results, per M bucket.

`register_cuda_kernels()` makes lowc::qlinear's CUDA kernel dispatch bit-plane formats here and every
other format to lowc.runtime.gemm's kernels.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Callable

import torch

from lowc.codegen.kernel_files import cache_dir
from lowc.codegen.spec import KernelSpec, dtype_name
from lowc.errors import KernelError, QuantizationError
from lowc.quant.bitplane import FAMILY_INT, FAMILY_PLANES, BitplaneSpec
from lowc.quant.spec import as_spec
from lowc.runtime.autotune import POLICIES, SHIPPED_DIR, ConfigTable, TileConfig, sm_count, m_bucket, split_factors
from lowc.runtime.kernel_cache import KernelCache, default_cache
from lowc.runtime.pdl import pdl_args

REALIZATIONS = ("unpack", "binary", "gemv")
TEMPLATES = {"unpack": "qlinear_bitplane_unpack", "binary": "qlinear_bitplane_binary", "gemv": "qlinear_bitplane_gemv"}
LAYOUT = "bitplane_u32[P,N,Kp/32]_lane_order_rotated"  # lowc.quant.bitplane.BIT_ORDER
DEFAULT_REALIZATION = "unpack"
# Without a measurement, M up to this runs the GEMV (it won every measured shape at M = 1-2 on an H200,
# 2026-11-21; at M = 4 it won 4 of 8 points, by at most 6%: docs/bitplane.md).
GEMV_DEFAULT_MAX_M = 2
# The binary kernel holds an [A planes (4 or 8), BN, BM, BK/32] popcount tile in registers.
BINARY_TILE_LIMIT = 8192
# The unpack kernel unrolls the groups of a K tile (every group's loads in flight before its dot).
UNPACK_MAX_GROUPS = 8
# The GEMV unrolls its tokens (each token's x registers are live beside the plane registers) and the
# slices of a K tile; a slice is one group, or PC_SLICE columns of the per-channel group.
GEMV_MAX_BM = 4
GEMV_MAX_M = 4  # the GEMV is a candidate up to this M (beyond, it re-reads the weight per 4 tokens)
GEMV_MAX_SLICES = 32  # a K tile may span all of K = 4096 at g128 (whole-K programs, no split-K)
GEMV_PC_SLICE = 128  # = PC_SLICE of the template
# The register-fragment Gluon kernel (TileConfig.MMA_REG of the unpack realization,
# codegen/gluon_bitplane.py): groups of 128 columns, 2..7 planes, decode-sized M.
MMA_REG_GROUP = 128
MMA_REG_MAX_PLANES = 7
MMA_REG_BM = (8, 16)
MMA_REG_BK = (128, 256, 512)
FLOAT_OUT = ("bfloat16", "float16", "float32")


def bitplane_spec(fmt) -> BitplaneSpec:
    """The parsed bit-plane format of a qlinear node; a named error for anything else."""
    spec = as_spec(fmt)
    if not isinstance(spec, BitplaneSpec):
        raise KernelError(f"{spec.name} is not a bit-plane format; its kernels are lowc.runtime.gemm's")
    if spec.family == FAMILY_INT:
        raise KernelError(
            f"{spec.name} is the direct integer form, which has no kernel; the bitplane pass rewrites it to "
            f"{spec.with_form('bp').name} (run the scheme's pipeline, which ends quantize -> bitplane)"
        )
    return spec


def kernel_spec(fmt, realization: str, out_dtype=torch.bfloat16, *, raw: bool = False) -> KernelSpec:
    """The KernelSpec of one realization of a bit-plane qlinear (w_bits = number of weight planes)."""
    spec = bitplane_spec(fmt)
    if realization not in REALIZATIONS:
        raise KernelError(f"unknown bit-plane realization {realization!r}; choose from {REALIZATIONS}")
    out = "int32" if raw else dtype_name(out_dtype)
    if out not in FLOAT_OUT + (("int32",) if raw else ()):
        raise KernelError(f"out_dtype must be one of {FLOAT_OUT}, got {out}")
    return KernelSpec(
        op=f"qlinear_{realization}", fmt=spec.name, family=FAMILY_PLANES, w_bits=spec.planes,
        a_bits=spec.act_bits, group_size=spec.group or 0, n_outliers=0, x_dtype="int8", out_dtype=out,
        layout=LAYOUT, template=TEMPLATES[realization],
    )


# -- tile configurations -------------------------------------------------------------------------------


def check_config(spec: KernelSpec, realization: str, cfg: TileConfig) -> TileConfig:
    """Raise KernelError if `cfg` cannot run this realization of `spec`; returns cfg."""
    problems = []
    for name in ("BM", "BN", "BK", "GROUP_M", "num_warps"):
        v = getattr(cfg, name)
        if v <= 0 or v & (v - 1):
            problems.append(f"{name}={v} is not a power of two")
    if cfg.BK < 32:
        problems.append("BK must be >= 32 (one plane word)")
    if spec.group_size and realization == "binary" and cfg.BK != spec.group_size:
        problems.append(f"a binary K tile is one group, so BK must equal the group ({spec.group_size})")
    if spec.group_size and realization == "unpack" and (cfg.BK < spec.group_size or cfg.BK > UNPACK_MAX_GROUPS * spec.group_size):
        problems.append(f"an unpack K tile is 1 to {UNPACK_MAX_GROUPS} whole groups, so BK must be a power-of-two "
                        f"multiple of the group ({spec.group_size}) up to {UNPACK_MAX_GROUPS * spec.group_size}")
    if realization == "gemv":
        slice_ = spec.group_size or GEMV_PC_SLICE
        if cfg.BM > GEMV_MAX_BM:
            problems.append(f"the GEMV unrolls its tokens: BM must be <= {GEMV_MAX_BM}")
        if cfg.BK < slice_ or cfg.BK > GEMV_MAX_SLICES * slice_:
            problems.append(f"a GEMV K tile is 1 to {GEMV_MAX_SLICES} slices of {slice_} columns (the group, or "
                            f"{GEMV_PC_SLICE} per channel), so BK must be a power-of-two multiple of {slice_} up to "
                            f"{GEMV_MAX_SLICES * slice_}")
    if cfg.MMA_REG:
        if realization != "unpack":
            problems.append("MMA_REG (the register-fragment kernel) is a tile of the unpack realization")
        if spec.group_size != MMA_REG_GROUP or not 2 <= spec.w_bits <= MMA_REG_MAX_PLANES:
            problems.append(f"MMA_REG takes groups of {MMA_REG_GROUP} and 2..{MMA_REG_MAX_PLANES} weight planes")
        if cfg.BM not in MMA_REG_BM or cfg.BK not in MMA_REG_BK:
            problems.append(f"MMA_REG takes BM in {MMA_REG_BM} tokens and BK in {MMA_REG_BK} (1, 2 or 4 groups)")
        if cfg.BN not in (16 * cfg.num_warps, 32 * cfg.num_warps):
            problems.append("MMA_REG takes BN = 16 or 32 rows per warp (BN = 16 or 32 * num_warps)")
        if cfg.W_AS_B or cfg.num_stages != 1:
            problems.append("MMA_REG is its own kernel: no W_AS_B, num_stages = 1 (it double-buffers in registers)")
    elif realization == "unpack" and (cfg.BM < 16 or cfg.BN < 16):
        problems.append("the unpack realization feeds tl.dot: BM and BN must be >= 16")
    if cfg.W_AS_B and realization != "unpack":
        problems.append("W_AS_B (tokens as the MMA's A operand) exists only for the unpack realization")
    if cfg.GEMV or cfg.DEQUANT_FIRST:
        problems.append("GEMV and DEQUANT_FIRST are W4A8 strategies; the bit-plane kernels have neither")
    if realization == "binary":
        planes = 4 if spec.a_bits == 4 else 8
        if planes * cfg.BN * cfg.BM * cfg.BK // 32 > BINARY_TILE_LIMIT:
            problems.append(f"binary popcount tile {planes}x{cfg.BN}x{cfg.BM}x{cfg.BK // 32} exceeds {BINARY_TILE_LIMIT}")
    if cfg.SPLIT_K < 1 or cfg.num_stages < 1:
        problems.append("SPLIT_K and num_stages must be >= 1")
    if problems:
        raise KernelError(f"tile config {cfg} is invalid for {spec.name}: " + "; ".join(problems))
    return cfg


def _split_for(tiles: int, k_tiles: int, per_sm: int = 2, min_k_tiles: int = 4, max_split: int = 16) -> int:
    """Smallest split-K giving >= per_sm programs per SM while each split keeps >= min_k_tiles K tiles."""
    split, sms = 1, sm_count()
    while tiles * split < per_sm * sms and k_tiles // (split * 2) >= min_k_tiles and split < max_split:
        split *= 2
    return split


def _bk(spec: KernelSpec, per_channel: int) -> int:
    return spec.group_size or per_channel


def gemv_config(spec: KernelSpec, m: int, n: int, k: int, bn: int = 16, slices: int = 16, warps: int = 4,
                warps_per_sm: int = 32, stages: int = 1) -> TileConfig:
    """A GEMV tile: BM = M's bucket (at most GEMV_MAX_BM) tokens, BN channels, BK = `slices` slices of
    K, `warps` warps that Triton spreads over the [BN, BK/32] plane words of a tile (16-byte pieces
    along K); the split-K (up to 32) that puts about `warps_per_sm` warps on every SM. The kernel
    waits on memory (Nsight Compute on an H200, 2026-11-21: long-scoreboard stalls dominate), so the
    default is the W4A8 GEMV's shape: few rows, long K tiles (each thread keeps 16 words of every
    plane in flight per tile), whole-K programs where the grid is large enough; BN 16 x BK 2048 won
    most M = 1 points of the H200 sweep (docs/bitplane.md, fifth round)."""
    bm = min(GEMV_MAX_BM, m_bucket(m))
    slice_ = spec.group_size or GEMV_PC_SLICE
    whole_k = 1 << max(0, (-(-k // slice_) - 1).bit_length())  # slices covering K, a power of two
    bk = slice_ * min(slices, GEMV_MAX_SLICES, whole_k)
    per_sm = max(1, warps_per_sm // warps)
    # A pipelined loop (stages > 1) needs that many K tiles per split to have loads to overlap.
    split = _split_for(-(-m // bm) * -(-n // bn), -(-k // bk), per_sm=per_sm, min_k_tiles=stages, max_split=32)
    return check_config(spec, "gemv", TileConfig(bm, bn, bk, split, warps, stages))


def gemv_words_per_thread(cfg: TileConfig) -> int:
    """Plane words of one plane each thread holds per K tile (BN x BK/32 spread over the threads)."""
    return max(1, cfg.BN * (cfg.BK // 32) // (32 * cfg.num_warps))


def gemv_fits_registers(cfg: TileConfig) -> bool:
    """Whether a GEMV tile stays within 255 registers (sm_90 builds of the lane-order kernel,
    2026-11-21: eight registers q_i per word plus the x words per token; 8 words x 1 token 64-72
    registers, 16 words x 1 token 128, 16 words x 4 tokens 130-186)."""
    words = gemv_words_per_thread(cfg)
    return words <= 16 and words * cfg.BM <= 64


def default_config(spec: KernelSpec, realization: str, m: int, n: int, k: int) -> TileConfig:
    """A rule of thumb when nothing was measured (docs/bitplane.md gives the reasoning)."""
    if realization == "gemv":
        return gemv_config(spec, m, n, k)
    if realization == "binary":
        bm = min(16, m_bucket(m))
        bk = _bk(spec, 128)
        bn = 64
        planes = 4 if spec.a_bits == 4 else 8
        while bn > 16 and planes * bn * bm * bk // 32 > BINARY_TILE_LIMIT:
            bn //= 2
        split = _split_for(-(-m // bm) * -(-n // bn), -(-k // bk))
        return check_config(spec, realization, TileConfig(bm, bn, bk, split, 4, 3))
    if m <= 16:
        bm, bn, bk, warps, stages = 16, 64, _bk(spec, 256), 4, 4
    elif m <= 64:
        bm, bn, bk, warps, stages = m_bucket(m), 128, _bk(spec, 128), 4, 4
    elif m <= 256:
        bm, bn, bk, warps, stages = 64, 128, _bk(spec, 128), 4, 3
    else:
        bm, bn, bk, warps, stages = 128, 128, _bk(spec, 128), 8, 3
    split = _split_for(-(-m // bm) * -(-n // bn), -(-k // bk)) if m <= 64 else 1
    return check_config(spec, realization, TileConfig(bm, bn, bk, split, warps, stages))


def candidate_configs(spec: KernelSpec, realization: str, m: int, n: int, k: int) -> list[TileConfig]:
    """The few tiles timed per (spec, realization, M bucket, N, K), the default first (at most 5;
    8 for grouped unpack at M <= 16 and 7 at M <= 64, where the multi-group and weight-as-B tiles join)."""
    bk = _bk(spec, 128)

    def split(bm, bn, kbk=bk):
        return _split_for(-(-m // bm) * -(-n // bn), -(-k // kbk))

    out = [default_config(spec, realization, m, n, k)]
    if realization == "gemv":
        if m > GEMV_MAX_M:
            return []
        # Few rows x long K tiles (the W4A8 GEMV's shape, whole K where the grid allows), many rows x
        # short K tiles (one row per thread), and software-pipelined long-K tiles (stages 3, K tiles
        # short enough that a program has several); 2-8 warps, 16-32 warps per SM; tiles that would
        # not fit the registers are left out. Slice counts are for 128-column slices.
        sl = max(1, 128 // (spec.group_size or GEMV_PC_SLICE))
        out += [gemv_config(spec, m, n, k, bn, slices * sl, warps, per_sm, stages)
                for bn, slices, warps, per_sm, stages in (
                    (16, 8, 4, 32, 1), (32, 8, 4, 32, 1), (8, 32, 8, 32, 1), (16, 32, 8, 32, 1), (128, 2, 4, 32, 1),
                    (256, 2, 8, 32, 1), (64, 2, 2, 32, 1), (16, 8, 4, 16, 1),
                    (16, 8, 4, 32, 3), (16, 4, 4, 32, 3), (32, 4, 4, 32, 3), (16, 4, 2, 32, 3))]
        return _valid(spec, realization, [c for c in out if gemv_fits_registers(c)], 13)
    if realization == "binary":
        bm = min(16, m_bucket(m))
        for tile_m in (bm, max(1, bm // 2)):
            for bn in (16, 32, 64):
                out.append(TileConfig(tile_m, bn, bk, split(tile_m, bn), 4, 3))
    elif m <= 16 and spec.group_size:
        # Decode: more bytes in flight per program (K tiles of 2-4 groups), more programs (split-K
        # down to 2 K tiles per split, 4 programs per SM), and the weight-as-B mapping (mma.sync).
        g = spec.group_size

        def wide(bn, gpt, w_as_b=0, stages=3):
            kbk = g * gpt
            s = _split_for(-(-m // 16) * -(-n // bn), -(-k // kbk), per_sm=4, min_k_tiles=2)
            return TileConfig(16, bn, kbk, s, 4, stages, W_AS_B=w_as_b)

        out += [wide(64, 2), wide(128, 2), wide(64, 4, stages=2), wide(64, 1, 1, 4), wide(64, 2, 1),
                wide(128, 2, 1), wide(32, 4, stages=2)]
        return _valid(spec, realization, out, 8) + mma_reg_candidates(spec, m, n, k)
    elif m <= 64:
        bm = max(16, m_bucket(m))
        s64, s128 = split(bm, 64, _bk(spec, 256) if m <= 16 else bk), split(bm, 128)
        out += [TileConfig(bm, 128, bk, s128, 4, 4), TileConfig(bm, 64, bk, max(1, s64 // 2), 4, 4),
                TileConfig(bm, 32, bk, split(bm, 32), 4, 4), TileConfig(bm, 64, bk, s64, 4, 3)]
        if spec.group_size:
            out += [TileConfig(bm, 64, 2 * bk, split(bm, 64, 2 * bk), 4, 3),
                    TileConfig(bm, 64, bk, s64, 4, 4, W_AS_B=1)]
        return _valid(spec, realization, out, 7)
    elif m <= 256:
        out += [TileConfig(128, 128, bk, 1, 8, 3), TileConfig(64, 64, bk, 1, 4, 4), TileConfig(64, 128, bk, 1, 4, 4)]
    else:
        # 256-wide tiles spill at 255 registers (float group sum + INT32 part): not candidates.
        out += [TileConfig(128, 128, bk, 1, 8, 4), TileConfig(64, 128, bk, 1, 4, 3), TileConfig(128, 64, bk, 1, 4, 3)]
    return _valid(spec, realization, out, 5)


def mma_reg_candidates(spec: KernelSpec, m: int, n: int, k: int) -> list[TileConfig]:
    """Unpack realization, g128, 2..7 planes, M <= 16: the register-fragment Gluon kernel (MMA_REG),
    4 warps of 16-32 rows, the two longest K tiles of 1-4 groups that fit the registers, split-K for
    1.5-6 programs per SM (where the W4A8 kernel's winners lie on an H100: docs/kernels.md)."""
    if spec.group_size != MMA_REG_GROUP or not 2 <= spec.w_bits <= MMA_REG_MAX_PLANES or m > 16 or k % MMA_REG_GROUP:
        return []
    bm = max(8, m_bucket(m))
    out = []
    for bn, warps in ((64, 4), (128, 4)):
        # the two longest K tiles that fit the registers (more bytes in flight per thread)
        bks = [bk for bk in MMA_REG_BK if mma_reg_fits_registers(spec.w_bits, bn, bm, bk // MMA_REG_GROUP, warps)]
        for bk in bks[-2:]:
            for split in split_factors(-(-n // bn) * -(-m // bm), k // bk, 1.5, 6):
                out.append(TileConfig(bm, bn, bk, split, warps, 1, MMA_REG=1))
    return _valid(spec, "unpack", out, 64)


def mma_reg_fits_registers(planes: int, bn: int, bm: int, gpt: int, warps: int) -> bool:
    """Whether an MMA_REG tile stays within 255 registers without spilling (sm_90 builds with Triton
    3.6, 2026-11-22, `python bench/sass_gluon_bitplane.py P,BN,BM,GPT,SPLIT_K`: each thread double-buffers GPT groups of 8 x-registers per 8 tokens and of
    plane words for 2 rows per row repeat; spills began at 8 x-groups (BM 16, GPT 4), 8 row-groups
    (2 repeats, GPT 4) and 32 plane words (7 planes, 2 repeats, GPT 2))."""
    from lowc.codegen.gluon_bitplane import padded_planes

    repeats = bn // (16 * warps)
    return gpt * bm // 8 <= 4 and repeats * gpt <= 4 and repeats * gpt * padded_planes(planes) <= 16


def _valid(spec: KernelSpec, realization: str, configs: list[TileConfig], limit: int) -> list[TileConfig]:
    """The distinct configs that can run, in order, at most `limit`."""
    valid = []
    for c in dict.fromkeys(configs):
        try:
            valid.append(check_config(spec, realization, c))
        except KernelError:
            pass
    return valid[:limit]


def _spec_named(fmt: str, realization: str, out: str) -> KernelSpec:
    """kernel_spec from an output dtype name ('int32' = the raw accumulators)."""
    return kernel_spec(fmt, realization, torch.float32 if out == "int32" else out, raw=out == "int32")


# -- the selector --------------------------------------------------------------------------------------


class RealizationSelector:
    """(realization, TileConfig) per (format, out dtype, M bucket, N, K, GPU); see module docstring."""

    def __init__(self, root: str | Path | None = None, policy: str | None = None, shipped_dir: Path = SHIPPED_DIR):
        policy = policy or os.environ.get("LOWC_AUTOTUNE", "off")  # as lowc.runtime.autotune: no implicit tuning
        if policy not in POLICIES:
            raise KernelError(f"autotune policy {policy!r} unknown; use one of {POLICIES} (LOWC_AUTOTUNE)")
        self.policy = policy
        self.root = Path(root) if root is not None else cache_dir()
        self.shipped_dir = Path(shipped_dir)
        self._memory: dict[tuple[str, str], tuple[str, TileConfig]] = {}

    @staticmethod
    def key(fmt: str, out: str, m: int, n: int, k: int) -> str:
        return f"{fmt}|o{out}|m{m_bucket(m)}|n{n}|k{k}"

    def user_table(self, device: str) -> ConfigTable:
        return ConfigTable(self.root / "autotune" / f"bitplane-{device}.json")

    def shipped_table(self, device: str) -> ConfigTable:
        return ConfigTable(self.shipped_dir / f"bitplane-{device}.json")

    def lookup(self, fmt: str, out: str, m: int, n: int, k: int, device: str) -> tuple[str, TileConfig] | None:
        key = self.key(fmt, out, m, n, k)
        hit = self._memory.get((device, key))
        if hit is not None:
            return hit
        for table in (self.user_table(device), self.shipped_table(device)):
            entries = table.load()
            raw = entries.get(key) or _nearest_shape(entries, fmt, out, m, n, k)
            try:
                hit = raw["realization"], TileConfig.from_dict(raw["config"])
                check_config(_spec_named(fmt, hit[0], out), *hit)
            except (KernelError, TypeError, ValueError, KeyError):
                continue  # absent, or a stale entry: fall through
            self._memory[(device, key)] = hit
            return hit
        return None

    def choose(
        self, fmt: str, out: str, m: int, n: int, k: int, device: str,
        bench: Callable[[str, TileConfig], float] | None = None,
    ) -> tuple[str, TileConfig]:
        hit = self.lookup(fmt, out, m, n, k, device)
        if hit is not None:
            return hit
        if self.policy == "miss" and bench is not None:
            return self.measure(fmt, out, m, n, k, device, bench)
        r = default_realization(m)
        return r, default_config(_spec_named(fmt, r, out), r, m, n, k)

    def measure(
        self, fmt: str, out: str, m: int, n: int, k: int, device: str, bench: Callable[[str, TileConfig], float],
    ) -> tuple[str, TileConfig]:
        """Time every candidate of every realization (bench: (realization, config) -> seconds); store the winner."""
        best: dict[str, tuple[float, TileConfig]] = {}
        for r in REALIZATIONS:
            for cfg in candidate_configs(_spec_named(fmt, r, out), r, m, n, k):
                try:
                    t = bench(r, cfg)
                except Exception:  # a config that does not compile or fit is no candidate
                    continue
                if r not in best or t < best[r][0]:
                    best[r] = (t, cfg)
        if not best:
            r = default_realization(m)
            return r, default_config(_spec_named(fmt, r, out), r, m, n, k)
        winner = min(best, key=lambda r: best[r][0])
        seconds, cfg = best[winner]
        key = self.key(fmt, out, m, n, k)
        self._memory[(device, key)] = (winner, cfg)
        entry = {"realization": winner, "config": cfg.to_dict(), "us": round(seconds * 1e6, 2),
                 "us_by_realization": {r: round(t * 1e6, 2) for r, (t, _) in best.items()}}
        self.user_table(device).update({key: entry}, device)
        return winner, cfg


def default_realization(m: int) -> str:
    """The rule when nothing was measured: the GEMV for decode, the INT8 tensor-core path otherwise."""
    return "gemv" if m <= GEMV_DEFAULT_MAX_M else DEFAULT_REALIZATION


def _nearest_shape(entries: dict, fmt: str, out: str, m: int, n: int, k: int) -> dict | None:
    """The stored entry of the same format, output dtype and M bucket whose (N, K) is nearest in
    log scale: a measured realization choice for a shape nobody timed beats a rule of thumb."""
    import math

    prefix = f"{fmt}|o{out}|m{m_bucket(m)}|"
    best, best_d = None, math.inf
    for key, raw in entries.items():
        if not key.startswith(prefix):
            continue
        try:
            kn, kk = (int(part[1:]) for part in key[len(prefix):].split("|"))
        except ValueError:
            continue
        d = abs(math.log(kn / n)) + abs(math.log(kk / k))
        if d < best_d:
            best, best_d = raw, d
    return best


@functools.lru_cache(maxsize=None)
def default_selector() -> RealizationSelector:
    return RealizationSelector()


# -- launch --------------------------------------------------------------------------------------------


def _check_inputs(spec: BitplaneSpec, x, x_scale, weight, bias) -> int:
    """Validate the operands; returns the padded K the planes span."""
    if len(weight) != 3:
        raise QuantizationError(f"{spec.name}: expected weight tensors [planes, scale, zero], got {len(weight)}")
    planes, scale, zero = weight
    k = x.shape[-1]
    kw = spec.padded_k(k)
    expect = (spec.planes, scale.shape[0], kw // 32)
    if planes.dtype != torch.uint32 or tuple(planes.shape) != expect:
        raise QuantizationError(
            f"{spec.name}: planes are {planes.dtype}{list(planes.shape)}, expected uint32{list(expect)} for "
            f"K={k}; was the weight packed for another in_features or format?"
        )
    if x.dtype != torch.int8 or x_scale is None or x_scale.dtype != torch.float32:
        raise QuantizationError(f"{spec.name}: x must be int8 and x_scale float32, both from lowc::quantize_act")
    devices = {t.device for t in (x, x_scale, *weight)} | ({bias.device} if bias is not None else set())
    if len(devices) != 1:
        raise KernelError(f"{spec.name}: x, weight and bias must be on one device, got {sorted(map(str, devices))}")
    return kw


@functools.lru_cache(maxsize=None)
def _device_slug(index: int) -> str:
    from lowc.runtime.autotune import device_slug

    return device_slug(torch.cuda.get_device_name(index))


def qlinear_bitplane(
    x: torch.Tensor,
    x_scale: torch.Tensor,
    weight: list[torch.Tensor],
    bias: torch.Tensor | None,
    fmt: str,
    out_dtype: torch.dtype,
    *,
    realization: str | None = None,
    config: TileConfig | None = None,
    raw: bool = False,
    cache: KernelCache | None = None,
    selector: RealizationSelector | None = None,
) -> torch.Tensor:
    """y = x @ W^T (+ bias) for a bit-plane format through a generated kernel (see module docstring)."""
    spec = bitplane_spec(fmt)
    kw = _check_inputs(spec, x, x_scale, weight, bias)
    cache = cache or default_cache()
    k = x.shape[-1]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, n = x2.shape[0], weight[1].shape[0]
    ng = kw // spec.group_len(k)
    out = torch.empty((m, ng, n) if raw else (m, n), dtype=torch.int32 if raw else out_dtype, device=x.device)
    if m == 0 or n == 0:
        return out if raw else out.reshape(*lead, n)
    sx = x_scale.reshape(m, -1).contiguous()
    weight = [w.contiguous() for w in weight]
    bias_arg = bias.contiguous() if bias is not None else out

    def launch(r: str, cfg: TileConfig) -> None:
        kspec = kernel_spec(spec, r, out_dtype, raw=raw)
        _launch(cache, kspec, check_config(kspec, r, cfg), x2, sx, weight, bias_arg, bias is not None, out, m, n, k, kw)

    if realization is None or config is None:
        on_gpu = x.device.type == "cuda"
        device = _device_slug(x.device.index or 0) if on_gpu else "cpu"
        out_name = "int32" if raw else dtype_name(out_dtype)
        chosen, cfg = (selector or default_selector()).choose(
            spec.name, out_name, m, n, k, device, bench=_bencher(launch) if on_gpu else None
        )
        if realization is None:
            realization = chosen
        if config is None:
            config = cfg if realization == chosen else default_config(
                kernel_spec(spec, realization, out_dtype, raw=raw), realization, m, n, k)
    launch(realization, config)
    return out if raw else out.reshape(*lead, n)


def _launch(cache: KernelCache, spec: KernelSpec, cfg: TileConfig, x2, sx, weight, bias_arg, has_bias, out,
            m: int, n: int, k: int, kw: int) -> None:
    if cfg.MMA_REG:
        from lowc.runtime.gemm_mma_reg import mma_reg_fits

        if not mma_reg_fits(cfg, x2, k, kw):
            cfg = default_config(spec, "unpack", m, n, k)  # the Triton tile: off the GPU, no Gluon, padded K
    grid = (-(-m // cfg.BM) * -(-n // cfg.BN), cfg.SPLIT_K)
    if cfg.SPLIT_K > 1:
        acc_dtype = torch.int32 if spec.group_size == 0 else torch.float32  # per channel reduces exact INT32
        ws = cache.scratch("splitk_partial_sums", out.device, acc_dtype, m * n)
        tickets = cache.scratch("splitk_tickets", out.device, torch.int32, grid[0])
    else:
        ws = tickets = out  # never touched when SPLIT_K == 1
    if cfg.MMA_REG:
        from lowc.runtime.gemm_mma_reg import launch_bitplane_mma_reg

        launch_bitplane_mma_reg(cfg, spec, x2, sx, weight, bias_arg, has_bias, out, ws, tickets, m, n, kw)
        return
    loaded = cache.get(spec)
    if spec.op == "qlinear_gemv":
        _launch_gemv(loaded, spec, cfg, grid, x2, sx, weight, bias_arg, has_bias, out, ws, tickets, m, n, k, kw)
        return
    try:
        loaded.kernel[grid](
            x2, sx, *weight, bias_arg, out, ws, tickets, m, n, k, kw, kw // 8, x2.stride(0),
            HAS_BIAS=has_bias, EVEN_K=(k % cfg.BK == 0 and kw == k), INTERPRETED=out.device.type == "cpu",
            BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, SPLIT_K=cfg.SPLIT_K, GROUP_M=cfg.GROUP_M,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **({"W_AS_B": True} if cfg.W_AS_B else {}),  # only when set: older kernel files lack it
        )
    except Exception as e:  # compile errors, out-of-resources, launch failures: name what failed
        raise KernelError(
            f"Triton kernel {spec.name} failed with {cfg} ({type(e).__name__}: {e}); kernel file: {loaded.path}"
        ) from e


def _launch_gemv(loaded, spec: KernelSpec, cfg: TileConfig, grid, x2, sx, weight, bias_arg, has_bias, out, ws, tickets,
                 m: int, n: int, k: int, kw: int) -> None:
    """The GEMV's arguments: the plane row length in words (kw // 32, so that Triton sees its
    divisibility and loads 16 bytes at a time) and whether x can be read as int64 words."""
    x_words = k % 8 == 0 and x2.stride(0) % 8 == 0 and x2.data_ptr() % 8 == 0
    try:
        loaded.kernel[grid](
            x2, sx, *weight, bias_arg, out, ws, tickets, m, n, k, kw, kw // 32, x2.stride(0),
            HAS_BIAS=has_bias, EVEN_K=(k % cfg.BK == 0 and kw == k), INTERPRETED=out.device.type == "cpu",
            X_WORDS=x_words, BM=cfg.BM, BN=cfg.BN, BK=cfg.BK, SPLIT_K=cfg.SPLIT_K,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            **({"STAGES": cfg.num_stages} if cfg.num_stages > 1 else {}),  # only when set: older kernel files lack it
            **pdl_args(out.device),  # PDL from mode 2 (runtime/pdl.py: +3% geomean at M = 1, mixed per shape)
        )
    except Exception as e:
        raise KernelError(
            f"Triton kernel {spec.name} failed with {cfg} ({type(e).__name__}: {e}); kernel file: {loaded.path}"
        ) from e


def _bencher(launch):
    """(realization, config) -> median seconds of one launch (the selector's timing function)."""

    def bench(realization: str, cfg: TileConfig) -> float:
        from triton.testing import do_bench

        return do_bench(lambda: launch(realization, cfg), warmup=5, rep=25, return_mode="median") * 1e-3

    return bench


# -- registration as lowc::qlinear's CUDA kernel -------------------------------------------------------


def is_bitplane_format(fmt: str) -> bool:
    try:
        return as_spec(fmt).family == FAMILY_PLANES
    except QuantizationError:
        return False


def qlinear_cuda(x, x_scale, weight, bias, fmt, out_dtype):
    """lowc::qlinear on CUDA: bit-plane formats here, every other format through lowc.runtime.gemm."""
    from lowc.runtime import gemm

    if not is_bitplane_format(fmt):
        return gemm.qlinear_cuda(x, x_scale, weight, bias, fmt, out_dtype)
    supported, _ = gemm.gpu_support(x.device.index or 0)
    if not supported:
        return gemm.qlinear_cuda(x, x_scale, weight, bias, fmt, out_dtype)  # the warning + reference path
    return qlinear_bitplane(x, x_scale, weight, bias, fmt, out_dtype)


def register_cuda_kernels() -> bool:
    """lowc.runtime.gemm's registration, which installs this module's dispatcher (qlinear_cuda) as
    lowc::qlinear's CUDA kernel; True if GPU kernels are active."""
    from lowc.runtime import gemm

    return gemm.register_cuda_kernels()

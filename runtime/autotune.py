"""Tile configurations for the qlinear kernels: lookup, defaults, and autotuning per GPU.

A `TileConfig` (BM tokens x BN output channels x BK reduction per program, split-K factor, warps,
pipeline stages) is chosen per (KernelSpec, M bucket, N, K). M is bucketed to the next power of two
(1, 2, 4, ... 8192), the quantity a config's best choice actually changes with. Lookup order:

1. the tuner's memory (this process);
2. the user table `<cache>/autotune/<gpu>.json` (results tuned on this machine, merged atomically);
3. the shipped table `lowc/runtime/configs/<gpu>.json` (tuned for the Llama-3-8B linear shapes,
   so first use does not spend minutes autotuning);
4. with policy "miss" on a GPU: tune now over `candidate_configs` and store the winner in (2);
5. the entry of tables (2)/(3) for the same spec and M bucket whose (N, K) is nearest in log scale
   (a tuned tile for 4096x4096 is a far better guess for 4096x11008 than any rule of thumb);
6. otherwise `default_config`, a rule of thumb.

`<gpu>` is a slug of the device name ("h100", "h200", else the lowercased name). The policy comes
from the `Autotuner` argument, or `LOWC_AUTOTUNE` = "off" (default: never tune implicitly, since
compiling the candidates of one point takes a minute or more) / "miss" for the default tuner;
`bench/gemm.py --tune` tunes a whole set of shapes with parallel compilation.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

from lowc.fileio import atomic_write_text
from lowc.codegen.kernel_files import cache_dir
from lowc.codegen.spec import KernelSpec
from lowc.errors import KernelError

SHIPPED_DIR = Path(__file__).parent / "configs"
TABLE_VERSION = 1
MAX_M_BUCKET = 8192
POLICIES = ("miss", "off")
GEMV_MAX_BM = 16  # the CUDA-core decode kernel unrolls its token loop: a few tokens per program
GEMV_MAX_BK = 16384  # codes per row and program in the decode kernel (whole-K tiles up to K = 16K)
MMA_REG_GROUP = 128  # the register-fragment kernel's K permutation is laid out for 128-code groups
GEMV_DEFAULT_MAX_M = 4  # without a table entry, M up to this runs the decode kernel


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration of a qlinear kernel (orientation: acc tile is [BN, BM])."""

    BM: int
    BN: int
    BK: int
    SPLIT_K: int = 1
    num_warps: int = 4
    num_stages: int = 3
    GROUP_M: int = 8
    DEQUANT_FIRST: int = 0  # w4a8 only: dequantize W to INT8 once, then the W8A8 kernel (large M)
    GEMV: int = 0  # w4a8_g only: the CUDA-core dp4a decode kernel (M <= 16); BM = tokens per program
    W_AS_B: int = 0  # w4a8_g only: tokens are the MMA's A operand, the dequantized weight its B (see below)
    MMA_REG: int = 0  # w4a8_g128 only: the Gluon kernel with weight fragments loaded into mma.sync registers
    # (codegen/gluon_w4a8_g128.py): BM tokens (8-64), BN = 16 * num_warps * (1 or 2), BK = 128 or 256
    WGMMA: int = 0  # w4a8_g128 only, sm_90: the Gluon kernel feeding unpacked weights to wgmma from registers
    # (codegen/gluon_w4a8_wgmma.py): BM tokens (16-128), BN = 16 * num_warps (1, 2 or 4 warpgroups), BK = 128,
    # num_stages ring stages of one group (copies num_stages - 1 groups ahead)

    def to_dict(self) -> dict:
        """The fields; W_AS_B, MMA_REG and WGMMA only when set, so tables written before them stay
        byte-identical."""
        d = dataclasses.asdict(self)
        for flag in ("W_AS_B", "MMA_REG", "WGMMA"):
            if not d[flag]:
                del d[flag]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TileConfig":
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise KernelError(f"tile config has unknown fields {sorted(unknown)}; known: {sorted(fields)}")
        return cls(**{k: int(v) for k, v in d.items()})

    def check(self, spec: KernelSpec) -> "TileConfig":
        """Raise KernelError if this config cannot run `spec`; returns self."""
        def pow2(v):
            return v > 0 and v & (v - 1) == 0

        problems = []
        for name in ("BM", "BN", "BK", "GROUP_M", "num_warps"):
            if not pow2(getattr(self, name)):
                problems.append(f"{name}={getattr(self, name)} is not a power of two")
        if self.WGMMA:
            if spec.family != "w4a8_g" or spec.group_size != MMA_REG_GROUP:
                problems.append(f"WGMMA exists only for w4a8_g{MMA_REG_GROUP}")
            if not 16 <= self.BM <= 128 or self.BK != MMA_REG_GROUP:
                problems.append(f"WGMMA takes BM = 16-128 tokens and BK = {MMA_REG_GROUP} (one group)")
            if self.num_warps not in (4, 8, 16) or self.BN != 16 * self.num_warps:
                problems.append("WGMMA takes 1, 2 or 4 warpgroups of 64 rows (BN = 16 * num_warps, 4, 8 or 16 warps)")
            elif self.num_warps == 16 and self.BM > 64:
                problems.append("WGMMA with 16 warps takes BM <= 64 (128 registers per thread)")
            if not 3 <= self.num_stages <= 8:
                problems.append("WGMMA takes num_stages = 3-8 (ring stages of one group)")
            if self.GEMV or self.W_AS_B or self.DEQUANT_FIRST or self.MMA_REG:
                problems.append("WGMMA is its own kernel: no GEMV, W_AS_B, DEQUANT_FIRST or MMA_REG")
        elif self.MMA_REG:
            if spec.family != "w4a8_g" or spec.group_size != MMA_REG_GROUP:
                problems.append(f"MMA_REG exists only for w4a8_g{MMA_REG_GROUP}")
            if self.BM not in (8, 16, 32, 64) or self.BK not in (128, 256):
                problems.append("MMA_REG takes BM = 8-64 tokens and BK = 128 or 256 (one or two groups)")
            if self.BN not in (16 * self.num_warps, 32 * self.num_warps):
                problems.append("MMA_REG takes BN = 16 or 32 rows per warp (BN = 16 or 32 * num_warps)")
            if self.GEMV or self.W_AS_B or self.DEQUANT_FIRST:
                problems.append("MMA_REG is its own kernel: no GEMV, W_AS_B or DEQUANT_FIRST")
        elif self.GEMV:
            if spec.family != "w4a8_g":
                problems.append("GEMV exists only for the w4a8_g family")
            if self.BM > GEMV_MAX_BM or self.DEQUANT_FIRST:
                problems.append(f"GEMV takes BM <= {GEMV_MAX_BM} tokens per program and no DEQUANT_FIRST")
            if spec.group_size and (spec.group_size % 8 or self.BK % spec.group_size):
                problems.append(f"GEMV needs BK a multiple of the group ({spec.group_size}), itself a multiple of 8")
        else:
            if self.BM < 16 or self.BN < 16:
                problems.append("BM and BN must be >= 16 (tensor-core tile)")
            if self.BK < 32:
                problems.append("BK must be >= 32 (one INT8 MMA K-step; 16 packed bytes)")
        if self.W_AS_B and (spec.family != "w4a8_g" or self.GEMV or self.DEQUANT_FIRST):
            problems.append("W_AS_B exists only for the fused w4a8_g tensor-core kernel")
        if spec.family == "w4a4" and self.BK != spec.group_size:
            problems.append(f"w4a4 scales each group's partial sum, so BK must equal the group ({spec.group_size})")
        if self.DEQUANT_FIRST and spec.family not in ("w4a8_g", "w4a8_pc"):
            problems.append("DEQUANT_FIRST exists only for the w4a8 families")
        if self.SPLIT_K < 1 or self.num_stages < 1:
            problems.append("SPLIT_K and num_stages must be >= 1")
        if problems:
            raise KernelError(f"tile config {self} is invalid for {spec.name}: " + "; ".join(problems))
        return self


def m_bucket(m: int) -> int:
    """Next power of two >= m, capped at MAX_M_BUCKET."""
    return min(MAX_M_BUCKET, 1 << max(0, int(m) - 1).bit_length())


def device_slug(name: str | None = None) -> str:
    """'h100' / 'h200' for those GPUs, else a file-name-safe lowercase device name ('cpu' without GPU)."""
    if name is None:
        import torch

        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    low = name.lower()
    for known in ("h200", "h100", "h20", "h800", "a100", "l40s"):
        if re.search(rf"\b{known}\b", low):
            return known
    return re.sub(r"[^a-z0-9]+", "_", low).strip("_") or "unknown"


def entry_key(spec: KernelSpec, m: int, n: int, k: int) -> str:
    return f"{spec.name}|m{m_bucket(m)}|n{n}|k{k}"


def sm_count() -> int:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count
    return 132  # an H100/H200, so CPU-side choices match what the GPU would get


def _split_for(tiles: int, k_tiles: int, sms: int) -> int:
    """Smallest split that gives >= 2 programs per SM, keeping >= 4 K tiles per split."""
    split = 1
    while tiles * split < 2 * sms and k_tiles // (split * 2) >= 4 and split < 16:
        split *= 2
    return split


def _gemv_split(tiles: int, k_tiles: int, sms: int) -> int:
    """Smallest split that puts >= 4 programs per SM in flight (the decode kernel is latency-bound
    per program: bytes in flight, not tiles, fill the memory pipe), at most one split per K tile."""
    split = 1
    while tiles * split < 4 * sms and split * 2 <= k_tiles:
        split *= 2
    return split


def gemv_config(spec: KernelSpec, m: int, n: int, k: int, bn: int = 32, bk: int = 512, warps: int = 4,
                stages: int = 1, split: int | None = None) -> TileConfig:
    """A config of the CUDA-core decode kernel (w4a8_g, M <= GEMV_MAX_BM): BM = M's bucket."""
    bm = min(GEMV_MAX_BM, m_bucket(m))
    bk = max(bk, spec.group_size)
    if split is None:
        split = _gemv_split(-(-m // bm) * -(-n // bn), -(-k // bk), sm_count())
    return TileConfig(bm, bn, bk, split, warps, stages, GEMV=1).check(spec)


def default_config(spec: KernelSpec, m: int, n: int, k: int, allow_gemv: bool = True) -> TileConfig:
    """A rule of thumb used when no table has an entry (see docs/kernels.md for the reasoning).
    allow_gemv=False: a tensor-core config even where the decode kernel would be the rule (the
    launcher's choice when x cannot be read as 8-byte words)."""
    if allow_gemv and spec.family == "w4a8_g" and m <= GEMV_DEFAULT_MAX_M:
        return gemv_config(spec, m, n, k)
    bk = 128 if spec.family != "w4a4" else spec.group_size
    if m <= 16:
        bm, bn, warps, stages = 16, 64, 4, 4
        bk = bk if spec.family == "w4a4" else 256
    elif m <= 64:
        bm, bn, warps, stages = max(16, m_bucket(m)), 128, 4, 4
    elif m <= 256:
        bm, bn, warps, stages = 64, 128, 4, 4
    else:
        bm, bn, warps, stages = 128, 128, 8, 3
    split = 1
    if m <= 64:
        tiles = -(-m // bm) * -(-n // bn)
        split = _split_for(tiles, -(-k // bk), sm_count())
    return TileConfig(bm, bn, bk, split, warps, stages).check(spec)


def candidate_configs(spec: KernelSpec, m: int, n: int, k: int) -> list[TileConfig]:
    """The small search space tuned per (spec, M bucket, N, K): a handful of tiles per regime.

    Decode (M <= 64): 16-64 tokens x 64/128 channels, BK 256 (bytes in flight), split-K around the
    value that gives two programs per SM. Middle: 64-128 x 128-256 tiles. Large M: 128-256 square-ish
    tiles with 8 warps, and for w4a8 the DEQUANT_FIRST two-pass strategy.
    """
    two_pass = spec.family in ("w4a8_g", "w4a8_pc")
    if spec.family == "w4a4":
        bk_decode, bk = (spec.group_size,), spec.group_size
    else:
        bk_decode, bk = (256, 512), (64 if spec.a_bits == 16 else 128)
    out: list[TileConfig] = []
    if m <= 64:
        bm = max(16, m_bucket(m))
        for bn, warps in ((64, 4), (128, 4), (128, 8)):
            for bk_d in bk_decode:
                tiles = -(-m // bm) * -(-n // bn)
                base = _split_for(tiles, -(-k // bk_d), sm_count())
                for split in sorted({1, max(1, base // 2), base, base * 2}):
                    out.append(TileConfig(bm, bn, bk_d, split, warps, 4 if bk_d <= 256 else 3))
                    if bk_d <= 256 and warps == 4:  # deeper pipeline: more bytes in flight per SM
                        out.append(TileConfig(bm, bn, bk_d, split, warps, 6))
    elif m <= 256:
        for bm, bn, warps in ((64, 128, 4), (128, 128, 8), (64, 256, 8), (256, 128, 8)):
            for stages in (3, 4):
                out.append(TileConfig(bm, bn, bk, 1, warps, stages))
    else:
        if spec.family == "w4a4":  # two float32 accumulators: 128x128 per 8 warps spills
            tiles = ((64, 128, 8), (128, 128, 8), (64, 256, 8))
        else:
            tiles = ((128, 128, 8), (128, 256, 8), (256, 128, 8))
        for bm, bn, warps in tiles:
            for stages in (3, 4):
                out.append(TileConfig(bm, bn, bk, 1, warps, stages))
    if spec.family == "w4a8_g" and m <= GEMV_MAX_BM:
        out += gemv_candidates(spec, m, n, k)
    if spec.family == "w4a8_g" and m <= 256:
        out += operand_candidates(spec, m, n, k)
    out += mma_reg_candidates(spec, m, n, k)
    out += wgmma_candidates(spec, m, n, k)
    if two_pass and m >= 128:
        out += [TileConfig(128, 128, 128, 1, 8, 3, DEQUANT_FIRST=1), TileConfig(128, 128, 128, 1, 8, 4, DEQUANT_FIRST=1),
                TileConfig(256, 128, 128, 1, 8, 3, DEQUANT_FIRST=1)]
        if m <= 256:
            out.append(TileConfig(64, 128, 128, 1, 4, 4, DEQUANT_FIRST=1))
    valid = []
    for c in dict.fromkeys(out):
        try:
            valid.append(c.check(spec))
        except KernelError:
            pass
    return valid


def mma_reg_candidates(spec: KernelSpec, m: int, n: int, k: int) -> list[TileConfig]:
    """w4a8_g128, M <= 64: the register-fragment Gluon kernel (MMA_REG), 2-4 warps of 16-32 rows,
    one or two groups per K tile, split-K so that the grid holds ~1-16 programs per SM (the space
    measured on an H100, docs/kernels.md)."""
    if spec.family != "w4a8_g" or spec.group_size != MMA_REG_GROUP or m > 64 or k % MMA_REG_GROUP:
        return []
    bm = max(8, m_bucket(m))
    out = []
    for bn, warps in ((32, 2), (64, 4), (128, 4)):
        if bm == 64 and bn == 128:  # the x fragments of 64 tokens leave no registers for 2 row repeats
            continue
        for bk in (128, 256):
            for split in split_factors(-(-n // bn) * -(-m // bm), k // bk, 0.75, 16):
                out.append(TileConfig(bm, bn, bk, split, warps, 1, MMA_REG=1))
    return out


def wgmma_candidates(spec: KernelSpec, m: int, n: int, k: int) -> list[TileConfig]:
    """w4a8_g128, M = 9-256, K a multiple of 512, on sm_90: the warpgroup Gluon kernel (WGMMA):
    1, 2 or 4 warpgroups of 64 rows sharing the activations (4 only up to 64 tokens: 128 registers
    per thread), 16-128 tokens per program, a ring of 4-8 groups (at most 160 KB of shared memory),
    split-K so that the grid holds ~1-8 programs per SM."""
    if (spec.family != "w4a8_g" or spec.group_size != MMA_REG_GROUP or not 8 < m <= 256 or k % (4 * MMA_REG_GROUP)
            or not _is_sm90()):
        return []
    bm = min(128, max(16, m_bucket(m)))
    out = []
    for bm_try in sorted({bm, min(bm, 64)}):
        for warps in (4, 8, 16) if bm_try <= 64 else (4, 8):
            bn = 16 * warps
            for stages in (4, 6, 8):
                if stages * (bm_try * MMA_REG_GROUP + bn * MMA_REG_GROUP // 2) > 160 * 1024:
                    continue
                for split in split_factors(-(-n // bn) * -(-m // bm_try), k // MMA_REG_GROUP, 0.75, 8):
                    out.append(TileConfig(bm_try, bn, MMA_REG_GROUP, split, warps, stages, WGMMA=1))
    return out


def _is_sm90() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


def split_factors(programs: int, k_tiles: int, low: float, high: float) -> list[int]:
    """The split-K factors 1, 2, 4, 8, 16 (at most one K tile per split) that put between `low` and
    `high` programs per SM on the grid of `programs` output tiles (the register-fragment tuners)."""
    sms = sm_count()
    return [s for s in (1, 2, 4, 8, 16) if s <= k_tiles and sms * low <= programs * s <= sms * high]


def operand_candidates(spec: KernelSpec, m: int, n: int, k: int) -> list[TileConfig]:
    """w4a8_g, M <= 256: tiles where the dequantized weight tile does not feed `wgmma` from registers.

    With the weight as wgmma's register A operand, Triton waits for every wgmma before the next
    tile's unpacking (the registers must stay live), so each program alternates unpacking and MMA.
    Two other mappings avoid it (docs/kernels.md, "Operand mapping"):
    - mma.sync (the Ampere MMA, still on Hopper): Triton takes it when the MMA's row side is under 64
      rows per warpgroup. Tokens as A (W_AS_B, BM = 16-32) or a 32-row weight tile as A (BN = 32):
      both operands come from registers, nothing waits but the data dependence, and the unpacked
      weight never goes through shared memory.
    - W_AS_B with >= 64 tokens: wgmma with x as A from shared memory and the unpacked weight stored
      to shared memory as B (N = 64-256 weights per instruction instead of 16-64 tokens).
    Split-K here goes past the rule of `_split_for` (down to one or two K tiles per split): at
    M = 4-64 the problem is bytes in flight, at 128-256 too few output tiles for 132 SMs."""
    if spec.family != "w4a8_g" or m > 256:
        return []
    sms = sm_count()
    out: list[TileConfig] = []

    def splits(bm, bn, bk, factors):
        tiles = -(-m // bm) * -(-n // bn)
        k_tiles = -(-k // bk)
        base = _split_for(tiles, k_tiles, sms)
        return sorted({min(max(1, base * f), k_tiles) for f in factors})

    if m <= 64:
        bm = max(16, m_bucket(m))
        if bm < 64:  # mma.sync with the tokens as A; the whole [BN, BK] operand lives in registers,
            # so BN * BK stays <= 32K codes per 4 warps (more spills: measured offline with ptxas)
            tiles = [(64, 256, 4, 4), (64, 512, 4, 3), (128, 256, 4, 4), (128, 256, 8, 4)]
            if bm == 16:  # the decode batch: narrower tiles, deeper pipelines, more splits, and
                # one- and two-warp programs (more of them in flight, as the GEMV does)
                tiles += [(32, 256, 4, 4), (32, 512, 4, 3), (64, 128, 4, 6), (64, 256, 4, 6),
                          (16, 256, 1, 4), (16, 512, 1, 3), (32, 256, 2, 4), (32, 512, 2, 3)]
            else:  # 32 tokens: two-warp programs too
                tiles += [(32, 256, 2, 4), (32, 512, 2, 3)]
            for bn, bk, warps, stages in tiles:
                for split in splits(bm, bn, bk, (1, 2, 4, 8) if bm == 16 else (1, 2, 4)):
                    out.append(TileConfig(bm, bn, bk, split, warps, stages, W_AS_B=1))
        else:  # 64 tokens: wgmma with the weight from shared memory, or two 32-token mma.sync tiles
            for bn, warps in ((64, 4), (128, 4), (128, 8)):
                for bk, stages in ((128, 4), (256, 3)):
                    for split in splits(bm, bn, bk, (1, 2, 4)):
                        out.append(TileConfig(bm, bn, bk, split, warps, stages, W_AS_B=1))
            for bn in (64, 128):
                for split in splits(32, bn, 256, (1, 2)):
                    out.append(TileConfig(32, bn, 256, split, 4, 4, W_AS_B=1))
            # (two-warp 64-token tiles, mma.sync with both operands in registers, lost on every
            # shape on an H200 in session 7, 18-42 us against the best 15-35; not candidates)
        if bm == 16:  # mma.sync with a 32-row weight tile as A (a 32+-token x operand spills)
            for bk, stages in ((256, 4), (512, 3)):
                for split in splits(bm, 32, bk, (1, 2)):
                    out.append(TileConfig(bm, 32, bk, split, 4, stages))
    else:
        # (128 x 256 with the weight as B spills under Triton 3.6: 592 bytes of stack)
        for bm, bn, warps in ((64, 128, 4), (128, 128, 8), (64, 256, 8)):
            for bk, stages in ((128, 3), (128, 4), (256, 3)):
                for split in splits(bm, bn, bk, (1, 2, 4)):
                    out.append(TileConfig(bm, bn, bk, split, warps, stages, W_AS_B=1))
        # The register-A kernel and the two-pass strategy, split: at M = 128-256 a 4096-channel
        # layer has only 32-64 output tiles of 128 x 64-128 for 132 SMs.
        for bm, bn, bk, warps, stages in ((64, 128, 128, 4, 4), (64, 128, 256, 4, 3), (128, 128, 128, 8, 4),
                                          (64, 64, 128, 4, 4)):
            for split in (2, 4, 8):
                out.append(TileConfig(bm, bn, bk, split, warps, stages))
        for bm, bn, warps, stages in ((64, 128, 4, 4), (128, 128, 8, 3)):
            for split in (2, 4):
                out.append(TileConfig(bm, bn, 128, split, warps, stages, DEQUANT_FIRST=1))
    return list(dict.fromkeys(out))


def gemv_candidates(spec: KernelSpec, m: int, n: int, k: int) -> list[TileConfig]:
    """The decode kernel's search space: channel x K tiles of 8-32 KB of codes, the split that gives
    four programs per SM and its neighbours, unpipelined (one or two tiles per program) or 3 stages."""
    out = []
    for bn, bk, warps in ((16, 1024, 4), (32, 512, 4), (32, 1024, 4), (64, 256, 4), (64, 512, 4), (64, 512, 8)):
        if bk < spec.group_size:
            continue
        base = gemv_config(spec, m, n, k, bn, bk, warps).SPLIT_K
        for split, stages in ((max(1, base // 2), 1), (base, 1), (base, 3), (min(base * 2, max(1, -(-k // bk))), 1)):
            out.append(gemv_config(spec, m, n, k, bn, bk, warps, stages, split))
    # Whole K (or half of it) per program, a few channels each: every load of the launch is issued
    # at once and no program waits on a second tile or (split 1) on the split-K tickets, which at
    # N*K = 16-25M codes cost more than the bytes. Capped at 32 code words per thread.
    k_pow2 = 1 << max(0, k - 1).bit_length()
    for split, bk in ((1, min(k_pow2, GEMV_MAX_BK)), (2, min(k_pow2 // 2, GEMV_MAX_BK))):
        if bk < max(spec.group_size, 1024):
            continue
        for bn, warps in ((2, 4), (4, 2), (4, 4), (4, 8), (8, 2), (8, 4), (8, 8), (16, 4), (16, 8), (32, 8)):
            if bn * bk // 8 <= 32 * 32 * warps:
                out.append(gemv_config(spec, m, n, k, bn, bk, warps, 1, split))
    return list(dict.fromkeys(out))


class ConfigTable:
    """One JSON table of tuned configs for one GPU: {"version", "device", "entries": {key: config}}."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != TABLE_VERSION:
            return {}
        entries = data.get("entries", {})
        return entries if isinstance(entries, dict) else {}

    def get(self, key: str) -> TileConfig | None:
        raw = self.load().get(key)
        if raw is None:
            return None
        try:
            return TileConfig.from_dict(raw["config"] if "config" in raw else raw)
        except (KernelError, TypeError, ValueError, KeyError):
            return None

    def update(self, new: dict[str, dict], device: str) -> None:
        """Merge entries under an exclusive lock, then publish atomically (concurrent tuners lose nothing)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            entries = self.load()
            entries.update(new)
            data = {"version": TABLE_VERSION, "device": device, "entries": dict(sorted(entries.items()))}
            atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True))


class Autotuner:
    """Chooses tile configs (see module docstring for the lookup order)."""

    def __init__(self, root: str | Path | None = None, policy: str | None = None, shipped_dir: Path = SHIPPED_DIR):
        policy = policy or os.environ.get("LOWC_AUTOTUNE", "off")
        if policy not in POLICIES:
            raise KernelError(f"autotune policy {policy!r} unknown; use one of {POLICIES} (LOWC_AUTOTUNE)")
        self.policy = policy
        self.root = Path(root) if root is not None else cache_dir()
        self.shipped_dir = Path(shipped_dir)
        self._memory: dict[tuple[str, str], TileConfig] = {}
        self.last_results: list[tuple[float, TileConfig]] = []

    def user_table(self, device: str) -> ConfigTable:
        return ConfigTable(self.root / "autotune" / f"{device}.json")

    def shipped_table(self, device: str) -> ConfigTable:
        return ConfigTable(self.shipped_dir / f"{device}.json")

    def lookup(self, spec: KernelSpec, m: int, n: int, k: int, device: str) -> TileConfig | None:
        """A stored config (memory, user table, shipped table), or None."""
        key = entry_key(spec, m, n, k)
        hit = self._memory.get((device, key))
        if hit is None:
            hit = self.user_table(device).get(key) or self.shipped_table(device).get(key)
            if hit is not None:
                self._memory[(device, key)] = hit
        return hit

    def config_for(
        self, spec: KernelSpec, m: int, n: int, k: int, device: str,
        bench: Callable[[TileConfig], float] | None = None,
    ) -> TileConfig:
        """The config to launch with; tunes with `bench` (config -> seconds) on a miss if allowed."""
        hit = self.lookup(spec, m, n, k, device)
        if hit is not None:
            try:
                return hit.check(spec)
            except KernelError:
                pass  # a stale table entry (older constraints): fall through to tuning / default
        if self.policy == "miss" and bench is not None:
            return self.tune(spec, m, n, k, device, bench)
        near = self.nearest(spec, m, n, k, device)
        if near is not None:
            self._memory[(device, entry_key(spec, m, n, k))] = near
            return near
        return default_config(spec, m, n, k)

    def nearest(self, spec: KernelSpec, m: int, n: int, k: int, device: str) -> TileConfig | None:
        """The stored config of the same spec and M bucket with the (N, K) nearest in log scale."""
        prefix = f"{spec.name}|m{m_bucket(m)}|"
        best, best_d = None, None
        for table in (self.user_table(device), self.shipped_table(device)):
            for key, raw in table.load().items():
                if not key.startswith(prefix):
                    continue
                try:
                    n2, k2 = (int(part[1:]) for part in key[len(prefix):].split("|"))
                    cfg = TileConfig.from_dict(raw["config"] if "config" in raw else raw).check(spec)
                except (KernelError, TypeError, ValueError, KeyError):
                    continue
                d = abs(math.log(n2 / n)) + abs(math.log(k2 / k))
                if best_d is None or d < best_d:
                    best, best_d = cfg, d
        return best

    def tune(
        self, spec: KernelSpec, m: int, n: int, k: int, device: str,
        bench: Callable[[TileConfig], float], candidates: Iterable[TileConfig] | None = None,
    ) -> TileConfig:
        """Time every candidate with `bench`, keep and store the fastest; failures are skipped."""
        results = []
        for cfg in candidates or candidate_configs(spec, m, n, k):
            try:
                results.append((bench(cfg), cfg))
            except Exception:  # a config that does not compile or fit (shared memory) is no candidate
                continue
        self.last_results = sorted(results, key=lambda r: r[0])  # (seconds, config): for tuning reports
        if not results:
            return default_config(spec, m, n, k)
        seconds, best = min(results, key=lambda r: r[0])
        key = entry_key(spec, m, n, k)
        self._memory[(device, key)] = best
        self.user_table(device).update({key: {"config": best.to_dict(), "us": round(seconds * 1e6, 2)}}, device)
        return best


@lru_cache(maxsize=None)
def default_tuner() -> Autotuner:
    """The process-wide tuner (root from LOWC_CACHE_DIR, policy from LOWC_AUTOTUNE, at first use)."""
    return Autotuner()

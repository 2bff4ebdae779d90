"""clip: per-group weight clipping search that minimises the output error on calibration data.

Contract. For every quantized linear with weight W and input Gram matrix H = X^T X / n, and each
candidate ratio r (1.0, 0.95, ... down to `clip_min`): the weight range of every (row, group) is
shrunk to r * [min(W_g, 0), max(W_g, 0)], the clamped weight is packed with the scheme's format
(its own round-to-nearest, so the grid is exactly the one the packer will produce) and the output
error of each (row, group) is measured on the calibration activations as d H_gg d^T, d = W_g - W'_g.
Each (row, group) keeps the ratio with the smallest error (r = 1, no clipping, is a candidate, so a
group never gets worse by this measure). The packed weight of the clamped W is planned for the
quantize pass (and is the fixed grid GPTQ then chooses codes on); the float weight in the graph is
unchanged.

Groups are the format's scale groups: G columns (w4a16_g, w4a8_g, the INT4 part of w4a4), the INT8
outlier tail of w4a4, or the whole row (w8a8, w4a8_pc). The error of a group is measured with the
other groups' columns exact (as AWQ's clip search does): cross-group terms of H are ignored.
For w4a8_g{G} a clipped group that held the row maximum also lowers the row's level-0 scale; that
coupling is not searched.

Position: after smooth/reorder (it reads their updated H), before gptq and quantize. Options:
`clip_min` (0.5), `clip_steps` (11 ratios from 1.0 to clip_min).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from lowc.errors import PassError
from lowc.passes.base import APPROXIMATE, PassContext, PassResult, register_pass
from lowc.passes.dataflow import weight_of
from lowc.passes.quantize import plan_weight, quantized_linears
from lowc.passes.stats import stats_of
from lowc.quant import parse_format, quantize_weight
from lowc.schemes import weight_format


def scale_groups(fmt: str, k: int) -> list[slice]:
    """The column ranges that share one scale in format `fmt` for K = k input channels."""
    spec = parse_format(fmt)
    if spec.group is None:
        return [slice(0, k)]
    normal = k - spec.outliers
    groups = [slice(s, min(s + spec.group, normal)) for s in range(0, normal, spec.group)]
    return groups + ([slice(normal, k)] if spec.outliers else [])


def clamp_groups(w: torch.Tensor, groups: list[slice], ratio: torch.Tensor) -> torch.Tensor:
    """W with each (row, group) range shrunk to ratio[n, g] * [min(W_g, 0), max(W_g, 0)]."""
    out = w.clone()
    for gi, sl in enumerate(groups):
        wg = w[:, sl]
        r = ratio[:, gi:gi + 1]
        lo, hi = wg.amin(1, keepdim=True).clamp(max=0) * r, wg.amax(1, keepdim=True).clamp(min=0) * r
        out[:, sl] = torch.minimum(torch.maximum(wg, lo), hi)
    return out


def group_errors(d: torch.Tensor, h: torch.Tensor, groups: list[slice]) -> torch.Tensor:
    """[N, n_groups]: d_g H_gg d_g^T per row and group."""
    return torch.stack([((d[:, sl] @ h[sl, sl]) * d[:, sl]).sum(1) for sl in groups], dim=1)


def clip_search(w: torch.Tensor, h: torch.Tensor, fmt: str, ratios: list[float]):
    """(packed weight of the best-clipped W, chosen ratio [N, n_groups]) for one linear."""
    w = w.detach().float()
    groups = scale_groups(fmt, w.shape[1])
    n = w.shape[0]
    best_err = torch.full((n, len(groups)), float("inf"), device=w.device)
    best_r = torch.ones(n, len(groups), device=w.device)
    for r in ratios:
        ratio = torch.full((n, len(groups)), float(r), device=w.device)
        wq = quantize_weight(clamp_groups(w, groups, ratio), fmt).dequantize()
        err = group_errors(wq - w, h, groups)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_r = torch.where(better, ratio, best_r)
    return quantize_weight(clamp_groups(w, groups, best_r), fmt), best_r


def clip_ratios(min_ratio: float, steps: int) -> list[float]:
    if not 0.0 < min_ratio <= 1.0 or steps < 1:
        raise PassError(f"clip needs 0 < clip_min <= 1 and clip_steps >= 1, got {min_ratio} and {steps}")
    return [1.0 - (1.0 - min_ratio) * i / max(steps - 1, 1) for i in range(steps)]


@register_pass("clip", numerics=APPROXIMATE)
def clip(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Per-group clipping ratios minimising calibration output error; planned packed weights."""
    fmt = weight_format(ctx.scheme)
    if fmt is None:
        return PassResult(gm, modified=False, info={"skipped": f"{ctx.scheme.name} has no dedicated format"})
    ratios = clip_ratios(float(ctx.options.get("clip_min", 0.5)), int(ctx.options.get("clip_steps", 11)))
    clipped, total = 0, 0
    for lin in quantized_linears(gm, ctx.scheme):
        stats = stats_of(lin)
        if stats.hessian_sum is None:
            raise PassError("clip needs the second-moment matrix H of every linear input; calibrate with hessian=True")
        w = weight_of(gm, lin)
        packed, r = clip_search(w, stats.hessian, fmt, ratios)
        plan_weight(lin, packed, w)
        clipped += int((r < 1).sum())
        total += r.numel()
    return PassResult(gm, modified=bool(total), info={"format": fmt, "ratios": len(ratios),
                                                      "clipped_fraction": round(clipped / max(total, 1), 4)})

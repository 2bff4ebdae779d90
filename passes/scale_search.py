"""scale_search: activation-aware per-channel weight scaling, its strength searched per group (AWQ).

Contract. For every group of linears that read one activation X and whose producer can absorb a
per-channel factor (the same groups and folds as `smooth`: RMSNorm weight -> q/k/v and gate/up,
v_proj rows -> o_proj, up_proj rows -> down_proj), and each candidate strength a in
{0, 1/n, ..., 1} (n = `scale_search_steps`):
    s_j = rms(X_j)^a, normalised so that max(s) * min(s) = 1 (rms over the calibration tokens)
    W'  = Q(W diag(s)) diag(1/s)          Q = round-to-nearest on the scheme's packed format
    err = tr((W - W') H (W - W')^T)       H = X^T X / n, summed over the group's linears
the group keeps the strength with the smallest error (a = 0, s = 1, is a candidate, so no group gets
worse by this measure) and folds it like `smooth` (producer channel j / s_j, consumer columns * s_j;
exact in full precision, statistics updated in place). Salient input channels — large activations —
get larger weight columns, whose relative rounding error is smaller, and a smaller activation range.

This is AWQ's search (Lin et al., 2024), with two departures: the error is the Hessian form on the
calibration statistics instead of re-running the block on cached inputs (the same quantity for a
single linear, computed without activations), and rms(X) stands in for AWQ's mean |X| (mean |X| is not
among lowc's statistics; both rank channels alike). Under the format's own grid (the QoQ progressive
grid for w4a8, the INT8 tail for w4a4) the search sees exactly what quantize will produce, before
clipping and GPTQ, which then run on the scaled weights.

Position: after smooth/reorder (it reads and updates their statistics), before clip, gptq and
quantize. Needs H (lowc.compile calibrates with the second-moment matrix for it). Options:
`scale_search_steps` (20).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from lowc.errors import PassError
from lowc.passes.base import EXACT, PassContext, PassResult, register_pass
from lowc.passes.dataflow import LinearGroup, linear_groups, weight_of
from lowc.passes.smooth import apply_channel_scale, slot_max
from lowc.passes.stats import stats_of
from lowc.quant import quantize_weight
from lowc.schemes import weight_format

MIN_RMS = 1e-8


def candidate_scales(rms: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = rms^alpha normalised to max(s) * min(s) = 1; channels that never fired keep s = 1."""
    live = rms > MIN_RMS
    s = torch.ones_like(rms, dtype=torch.float64)
    if alpha == 0.0 or not bool(live.any()):
        return s.float()
    s[live] = rms[live].double().pow(alpha)
    s[live] = s[live] / (s[live].max() * s[live].min()).sqrt()
    return s.float()


def scaled_error(weights: list[torch.Tensor], h: torch.Tensor, s: torch.Tensor, fmt: str) -> float:
    """sum over the group of tr((W - Q(W s)/s) H (W - Q(W s)/s)^T)."""
    total = 0.0
    for w in weights:
        w_q = quantize_weight(w * s[None, :], fmt).dequantize().float() / s[None, :]
        d = w - w_q
        total += float(((d @ h) * d).sum())
    return total


def search_group(gm: fx.GraphModule, group: LinearGroup, fmt: str, steps: int) -> tuple[float, float, float]:
    """Search and fold one group; returns (best alpha, error at alpha 0, best error)."""
    stats = stats_of(group.linears[0])
    if stats.hessian_sum is None:
        raise PassError("scale_search needs the second-moment matrix H of every linear input; calibrate with "
                        "hessian=True (lowc.compile does so when the pipeline contains scale_search)")
    h = stats.hessian.float()
    weights = [weight_of(gm, lin).detach().float() for lin in group.linears]
    n = group.producer.slots
    # Channels that share a producer slot (GQA's o_proj, a reorder gather) must share s: take the
    # slot's largest rms, as smooth takes the slot's largest absmax.
    slot_rms = slot_max(stats.mean_sq.clamp_min(0).sqrt(), group.slot, n)
    alphas = [i / steps for i in range(steps + 1)]  # alphas[0] = 0: no scaling, the baseline
    scales = [candidate_scales(slot_rms, a) for a in alphas]
    errors = [scaled_error(weights, h, s[group.slot], fmt) for s in scales]
    best = min(range(len(alphas)), key=errors.__getitem__)  # the first of equal errors: the smallest alpha
    if best > 0:
        apply_channel_scale(gm, group, scales[best])
    return alphas[best], errors[0], errors[best]


@register_pass("scale_search", numerics=EXACT)
def scale_search(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Per group, the activation-aware scaling strength with the least quantized output error, folded in."""
    fmt = weight_format(ctx.scheme)
    if fmt is None:
        return PassResult(gm, modified=False, info={"skipped": f"{ctx.scheme.name} has no dedicated format"})
    steps = int(ctx.options.get("scale_search_steps", 20))
    if steps < 1:
        raise PassError(f"scale_search_steps must be >= 1, got {steps}")
    alphas, ratios, skipped = {}, [], []
    # Reverse graph order, as smooth: o_proj's (down_proj's) fold rescales v_proj (up_proj) rows, so
    # those groups are searched first and q/k/v (gate/up) then see their final weights.
    for group in reversed(linear_groups(gm, include_head=not ctx.scheme.keep_lm_head)):
        if group.producer is None:
            skipped.append(group.name)
            continue
        alpha, base, err = search_group(gm, group, fmt, steps)
        alphas[group.name] = alpha
        ratios.append(err / base if base > 0 else 1.0)
        for lin in group.linears:
            lin.meta["lowc_scale_search"] = alpha
    return PassResult(gm, modified=any(a > 0 for a in alphas.values()), info={
        "format": fmt, "groups": len(alphas), "skipped": skipped,
        "mean_alpha": round(sum(alphas.values()) / max(len(alphas), 1), 3),
        "err_vs_unscaled": round(sum(ratios) / max(len(ratios), 1), 4)})

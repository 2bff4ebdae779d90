"""smooth: SmoothQuant per-channel smoothing, folded into the producer and the consumers' weights.

Contract. For every group of linears that read one activation X and whose producer can absorb a
per-channel factor (see lowc/passes/dataflow.py: the RMSNorm weight for q/k/v and gate/up, the
v_proj rows for o_proj, the up_proj rows for down_proj), with migration strength alpha:
    s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)      (max over the group's weights, column j)
    producer output channel j  /= s_j,   every consumer's weight column j  *= s_j
so X W^T = (X / s)(W s)^T: in full precision the graph computes the same logits (exact pass,
checked <= 1e-4 relative in the tests). The activation's calibration statistics are updated in
place (absmax / s, mean square / s^2, H / s s^T) so later passes see the smoothed activation.

Where the factor must be shared, it is: o_proj channels of query heads that read the same KV
head use one factor (computed from the max over those heads), because they come from one v_proj
row; a group read through a reorder gather maps each channel back to its producer channel.
Zero channels (all-zero activation or weight column) keep s = 1.

Position: after annotate and calibration, after smooth_attention and reorder (it reads their
updated statistics), before clip/gptq/quantize. Groups without a foldable producer are skipped and
listed in the pass info. Options: `ctx.options["smooth_alpha"]` overrides the scheme's alpha.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from lowc.passes.base import EXACT, PassContext, PassResult, register_pass
from lowc.passes.dataflow import LinearGroup, linear_groups, scale_columns, scale_producer, weight_of
from lowc.passes.stats import stats_of

MIN_SCALE = 1e-5


def slot_max(values: torch.Tensor, slot: torch.Tensor, n_slots: int) -> torch.Tensor:
    """max of values[j] over the channels j that share a producer slot -> [n_slots]."""
    out = torch.zeros(n_slots, dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, slot.to(values.device), values, reduce="amax", include_self=True)


def smoothing_factors(act_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's s = act_max^alpha / w_max^(1-alpha), 1 where either side is zero."""
    act_max, w_max = act_max.double(), w_max.double()
    s = act_max.pow(alpha) / w_max.pow(1 - alpha)
    ok = (act_max > 0) & (w_max > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp_min(MIN_SCALE).float()


def group_weight_absmax(gm: fx.GraphModule, group: LinearGroup) -> torch.Tensor:
    """max_i |W_ij| over every linear of the group -> [K]."""
    return torch.stack([weight_of(gm, lin).detach().float().abs().amax(dim=0) for lin in group.linears]).amax(0)


def apply_channel_scale(gm: fx.GraphModule, group: LinearGroup, slot_scale: torch.Tensor) -> None:
    """Fold x -> x / s into the group: producer slot i divided by slot_scale[i], columns times s."""
    s = slot_scale[group.slot]
    scale_producer(gm, group.producer, 1.0 / slot_scale)
    for lin in group.linears:
        scale_columns(gm, lin, s)
    stats_of(group.linears[0]).divide_channels(s)


def smooth_group(gm: fx.GraphModule, group: LinearGroup, alpha: float) -> torch.Tensor:
    """Smooth one group; returns the per-channel factor s [K] it applied."""
    stats = stats_of(group.linears[0])
    n = group.producer.slots
    act = slot_max(stats.absmax, group.slot, n)
    wmax = slot_max(group_weight_absmax(gm, group), group.slot, n)
    slot_scale = smoothing_factors(act, wmax, alpha)
    apply_channel_scale(gm, group, slot_scale)
    return slot_scale[group.slot]


@register_pass("smooth", numerics=EXACT)
def smooth(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """SmoothQuant smoothing of every linear group, folded into producer and consumer weights."""
    alpha = ctx.options.get("smooth_alpha", ctx.scheme.smooth_alpha)
    if alpha is None:
        return PassResult(gm, modified=False, info={"skipped": "scheme has no smooth_alpha"})
    if not 0.0 <= float(alpha) <= 1.0:
        from lowc.errors import SchemeError

        raise SchemeError(f"smooth alpha must lie in [0, 1], got {alpha}")
    smoothed, skipped = [], []
    # Reverse graph order: the fold for o_proj (down_proj) rescales v_proj (up_proj) rows, so those
    # groups go first and q/k/v (gate/up) are then balanced against their final weights.
    for group in reversed(linear_groups(gm, include_head=not ctx.scheme.keep_lm_head)):
        if group.producer is None:
            skipped.append(group.name)
            continue
        s = smooth_group(gm, group, float(alpha))
        for lin in group.linears:
            lin.meta["lowc_smooth"] = s
        smoothed.append(group.name)
    smoothed.reverse()
    return PassResult(gm, modified=bool(smoothed),
                      info={"alpha": alpha, "groups": len(smoothed), "skipped": skipped})

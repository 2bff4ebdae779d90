"""gptq: GPTQ error compensation on the format's own grid (Frantar et al., 2023).

Contract. For every quantized linear with calibration statistics H = X^T X / n of its input, the
weight's integer codes are chosen column by column; after each column the remaining columns absorb
its rounding error through the inverse Hessian, minimising ||X W^T - X W'^T||^2 on the calibration
activations instead of ||W - W'||. The scales and zeros are fixed before GPTQ starts (static groups):
they are those of the packed weight the clip pass planned, or of round-to-nearest when clip did not
run, so the weight is packed on exactly that grid (`weight_grid.with_codes`) and planned for the
quantize pass. The float weight in the graph is left as it is; the planned weight carries the
numbers, so the logits change only when quantize runs.

Details (and departures from the paper's reference code, see docs/passes.md): columns are visited
in decreasing H_jj (act-order); dampening adds 1% of mean(diag H) to the diagonal; channels that
never fired (H_jj = 0) are quantized as 0; linears that read the same activation (q/k/v, gate/up)
share one Cholesky factorisation; the w4a8_g{G} grid is the composed grid s0 * s1 with its int8
limit on the level-1 integer, rounded once, not the two roundings of round-to-nearest. The pass
info reports, per linear kind, the calibration output error of GPTQ relative to round-to-nearest
on the same grid.

Position: after smooth/reorder (it reads their updated H) and clip, before quantize.
Options: `gptq_damp` (0.01), `gptq_block` (128), `gptq_act_order` (True).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from lowc.errors import PassError
from lowc.passes.base import APPROXIMATE, PassContext, PassResult, register_pass
from lowc.passes.dataflow import linear_groups, weight_of
from lowc.passes.quantize import plan_weight, planned_weight
from lowc.passes.stats import stats_of
from lowc.passes.weight_grid import ElementGrid, element_grid, with_codes
from lowc.quant import quantize_weight
from lowc.schemes import weight_format


def inverse_hessian_factor(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + damp * mean(diag H) I)^-1, in float32 (computed in float64)."""
    h = h.double().clone()
    k = h.shape[0]
    h += torch.eye(k, dtype=h.dtype, device=h.device) * damp * float(torch.diagonal(h).mean())
    try:
        low = torch.linalg.cholesky(h)
    except torch.linalg.LinAlgError:
        h += torch.eye(k, dtype=h.dtype, device=h.device) * 0.1 * float(torch.diagonal(h).mean())
        low = torch.linalg.cholesky(h)
    return torch.linalg.cholesky(torch.cholesky_inverse(low), upper=True).float()


def gptq_codes(w: torch.Tensor, h: torch.Tensor, grid: ElementGrid, *, damp: float = 0.01, block: int = 128,
               act_order: bool = True) -> torch.Tensor:
    """GPTQ codes [N, K] (float32, integer-valued) of weight w [N, K] on `grid`, for input Gram H [K, K]."""
    w = w.detach().float().clone()
    h = h.detach().float().clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    k = w.shape[1]
    perm = torch.argsort(torch.diagonal(h), descending=True, stable=True) if act_order else torch.arange(k, device=h.device)
    w, h, grid = w[:, perm], h[perm][:, perm], grid.permute(perm)
    u = inverse_hessian_factor(h, damp)
    q = torch.zeros_like(w)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qi = grid.quantize(col[:, None], slice(i1 + i, i1 + i + 1))
            q[:, i1 + i] = qi[:, 0]
            e = (col - grid.dequantize(qi, slice(i1 + i, i1 + i + 1))[:, 0]) / u1[i, i]
            w1[:, i:] -= e[:, None] * u1[i, i:][None, :]
            err1[:, i] = e
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    out = torch.empty_like(q)
    out[:, perm] = q
    return out


def output_error(w: torch.Tensor, w_q: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W - W') H (W - W')^T): the summed squared output error per calibration token."""
    d = w.detach().float() - w_q.detach().float()
    return float(((d @ h) * d).sum())


def _stack(grids: list[ElementGrid]) -> ElementGrid:
    return ElementGrid(*(torch.cat([getattr(g, f) for g in grids]) for f in ("step", "zero", "qmin", "qmax")))


@register_pass("gptq", numerics=APPROXIMATE)
def gptq(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """GPTQ codes on the format's grid for every quantized linear; planned for quantize."""
    fmt = weight_format(ctx.scheme)
    if fmt is None:
        return PassResult(gm, modified=False, info={"skipped": f"{ctx.scheme.name} has no dedicated format"})
    opts = ctx.options
    damp, block = float(opts.get("gptq_damp", 0.01)), int(opts.get("gptq_block", 128))
    act_order = bool(opts.get("gptq_act_order", True))
    ratio: dict[str, list[float]] = {}
    for group in linear_groups(gm, include_head=not ctx.scheme.keep_lm_head):
        stats = stats_of(group.linears[0])
        if stats.hessian_sum is None:
            raise PassError("gptq needs the second-moment matrix H of every linear input; calibrate with hessian=True")
        h = stats.hessian
        weights = [weight_of(gm, lin) for lin in group.linears]
        bases = [planned_weight(gm, lin) or quantize_weight(w, fmt) for lin, w in zip(group.linears, weights)]
        grid = _stack([element_grid(p) for p in bases])
        w_all = torch.cat([w.float() for w in weights])
        q_all = gptq_codes(w_all, h, grid, damp=damp, block=block, act_order=act_order)
        rows = 0
        for lin, w, base in zip(group.linears, weights, bases):
            n = w.shape[0]
            packed = with_codes(base, q_all[rows:rows + n])
            rows += n
            before, after = output_error(w, base.dequantize(), h), output_error(w, packed.dequantize(), h)
            role = lin.meta.get("lowc_site", {}).get("role", "linear")
            ratio.setdefault(role, []).append(after / before if before > 0 else 1.0)
            plan_weight(lin, packed, w)
    info = {f"err_vs_rtn.{role}": round(sum(v) / len(v), 4) for role, v in ratio.items()}
    return PassResult(gm, modified=bool(ratio), info={"format": fmt, "act_order": act_order, **info})

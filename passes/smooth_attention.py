"""smooth_attention: QoQ's SmoothAttention, per key channel factors folded into q_proj and k_proj.

Contract. For each `lowc::attention` node with post-RoPE keys K [B, Hkv, T, D] and calibration
maxima m[h, i] = max |K[h, i]| (over tokens), with strength alpha:
    lambda[h, i] = max(m[h, i], m[h, i + D/2]) ^ alpha        for i < D/2, and lambda[h, i + D/2] = lambda[h, i]
    k_proj rows (h, i) /= lambda[h, i],   q_proj rows (h', i) *= lambda[h' // group, i]
Rotate-half RoPE (Llama, Qwen2, Mistral) mixes channel i only with channel i + D/2, with the same
cos/sin on both, so a factor shared by the pair commutes with it; every query head of a GQA group
uses its KV head's factor; q.k is unchanged, so in full precision the logits are unchanged (exact
pass). Keys become easier to quantize per token (the KV4 cache); queries are never quantized.
The key statistics are divided by lambda in place. Biases of q_proj/k_proj (Qwen2) are scaled too.

Position: after annotate and calibration, before kv_quant (which reads the smoothed keys) and
before quantize (which packs the folded q/k weights). A head_dim that is odd, or a path from k_proj
to the attention that holds another RMSNorm (q/k norms), is a SchemeError: the fold would not be
exact there. Options: `ctx.options["smooth_attention_alpha"]` overrides the scheme's alpha.
"""

from __future__ import annotations

import torch
import torch.fx as fx

import lowc.ops  # noqa: F401  (registers lowc::attention)
from lowc.errors import SchemeError
from lowc.passes.base import EXACT, PassContext, PassResult, register_pass
from lowc.passes.dataflow import Producer, scale_producer, upstream_linears, weight_of
from lowc.passes.stats import META_KEY_STATS

ATTENTION = torch.ops.lowc.attention.default


def rope_pair_max(m: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [..., D] with channels i and i + D/2 both set to the max of the pair."""
    d = m.shape[-1]
    if d % 2:
        raise SchemeError(
            f"SmoothAttention needs an even head_dim (RoPE pairs channel i with i + D/2), got {d}; "
            "use a scheme without smooth_attention_alpha for this model"
        )
    half = torch.maximum(m[..., : d // 2], m[..., d // 2:])
    return torch.cat((half, half), dim=-1)


def key_factors(absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """lambda [Hkv, D] from the key maxima: pair-shared, 1 where a channel never fired."""
    m = rope_pair_max(absmax.float())
    lam = m.double().pow(alpha).float()
    return torch.where(m > 0, lam, torch.ones_like(lam)).clamp_min(1e-5)


def _projection(attn: fx.Node, index: int, what: str) -> fx.Node:
    found = upstream_linears(attn.args[index])
    if len(found) != 1:
        raise SchemeError(
            f"SmoothAttention: layer {attn.args[4]}'s {what} does not come from exactly one linear "
            f"(found {len(found)}); this architecture's attention is not supported by smooth_attention"
        )
    lin = next(iter(found))
    _check_private_path(lin, attn, index, what)
    return lin


def _ancestors(node: fx.Node) -> set:
    seen, stack = set(), [node]
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.all_input_nodes)
    return seen


def _check_private_path(lin: fx.Node, attn: fx.Node, index: int, what: str) -> None:
    """Everything downstream of `lin` must lead only into this attention input (else scaling lin's
    rows changes another reader) and hold no normalisation (a per-head norm would undo the factor)."""
    region = _ancestors(attn.args[index])
    stack, seen = [lin], set()
    while stack:
        n = stack.pop()
        for u in n.users:
            if u is attn or u in seen:
                continue
            if u not in region:
                raise SchemeError(
                    f"SmoothAttention: layer {attn.args[4]}'s {what} projection also feeds %{u.name}; "
                    "folding a factor into it would change that reader"
                )
            if u.op == "call_function" and u.target is torch.ops.lowc.rms_norm.default:
                raise SchemeError(
                    f"SmoothAttention: layer {attn.args[4]} normalises its {what} per head (q/k norm) before "
                    "RoPE; folding a key factor through that norm is not exact. Use a scheme without "
                    "smooth_attention_alpha for this model"
                )
            seen.add(u)
            stack.append(u)


@register_pass("smooth_attention", numerics=EXACT)
def smooth_attention(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """SmoothAttention: per key channel factors (RoPE pairs shared, GQA aware) folded into q/k."""
    alpha = ctx.options.get("smooth_attention_alpha", ctx.scheme.smooth_attention_alpha)
    if alpha is None:
        return PassResult(gm, modified=False, info={"skipped": "scheme has no smooth_attention_alpha"})
    layers = 0
    for attn in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ATTENTION]:
        stats = attn.meta.get(META_KEY_STATS)
        if stats is None or stats.tokens == 0:
            from lowc.errors import PassError

            raise PassError(f"smooth_attention: layer {attn.args[4]} has no key statistics; calibrate first")
        q_lin, k_lin = _projection(attn, 0, "query"), _projection(attn, 1, "key")
        lam = key_factors(stats.absmax, float(alpha))  # [Hkv, D]
        hkv, d = lam.shape
        n_q = weight_of(gm, q_lin).shape[0] // d
        if n_q % hkv or weight_of(gm, k_lin).shape[0] != hkv * d:
            raise SchemeError(f"SmoothAttention: layer {attn.args[4]} has {n_q} query heads for {hkv} KV heads")
        scale_producer(gm, Producer("heads", k_lin, hkv * d), 1.0 / lam.reshape(-1))
        scale_producer(gm, Producer("heads", q_lin, n_q * d), lam.repeat_interleave(n_q // hkv, dim=0).reshape(-1))
        stats.divide_channels(lam)
        attn.meta["lowc_smooth_attention"] = lam
        layers += 1
    return PassResult(gm, modified=bool(layers), info={"alpha": alpha, "layers": layers})

"""`lowc::attention`: one causal attention call per decoder layer, as capture routes it.

Inputs are HF's post-RoPE tensors: q [B, H, Tq, D], k and v [B, Hkv, Tk, D] with H a multiple of Hkv
(grouped-query attention is kept: k and v are never repeated in the graph). The output is
[B, Tq, H, D], the layout transformers' attention interface returns. Queries are aligned to the end
of the keys (bottom-right causal), so the same op serves prefill and decode over a cache.

The reference below is the truth on every device until a kernel is registered for it.
"""

from __future__ import annotations

import torch

from lowc.errors import InputError


def attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, sliding_window: int = -1
) -> torch.Tensor:
    """Causal grouped-query attention in plain torch; returns [B, Tq, H, D]."""
    b, h, tq, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    if h % hkv:
        raise InputError(f"query heads ({h}) must be a multiple of key/value heads ({hkv})")
    group = h // hkv
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    q_pos = torch.arange(tk - tq, tk, device=q.device)[:, None]
    k_pos = torch.arange(tk, device=q.device)[None, :]
    allowed = k_pos <= q_pos
    if sliding_window > 0:
        allowed = allowed & (q_pos - k_pos < sliding_window)
    if tq == tk and sliding_window <= 0:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)
    return out.transpose(1, 2).contiguous()


@torch.library.custom_op("lowc::attention", mutates_args=())
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, layer_idx: int, sliding_window: int
) -> torch.Tensor:
    """Causal GQA attention of one layer (`layer_idx` names its KV cache slot row)."""
    return attention_reference(q, k, v, scale, sliding_window)


@attention.register_fake
def _(q, k, v, scale, layer_idx, sliding_window):
    b, h, tq, d = q.shape
    return q.new_empty((b, tq, h, v.shape[-1]))

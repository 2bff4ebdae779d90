"""`lowc::rms_norm`: RMSNorm as one node, so passes can fold scales into its weight and fuse it.

Numerics follow the Llama/Qwen2/Mistral modules exactly: the statistics in float32, the normalized
value cast back to the input dtype, then multiplied by the weight (dtype promotion as in those
modules).
"""

from __future__ import annotations

import torch


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.to(torch.float32)
    variance = x32.pow(2).mean(-1, keepdim=True)
    return weight * (x32 * torch.rsqrt(variance + eps)).to(x.dtype)


@torch.library.custom_op("lowc::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return rms_norm_reference(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):
    return torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)

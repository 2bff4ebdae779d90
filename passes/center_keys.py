"""center_keys: plan a per-channel key centre for each layer's quantized KV cache.

Contract. For each `lowc::attention` node with calibration key statistics (post-RoPE keys
K [B, Hkv, T, D]), the centre is the calibration mean c[h, i] = mean over tokens of K[h, i], taken
through the key rotation when the scheme rotates keys (the rotation is linear, so the mean of the
rotated keys is the rotated mean), in the keys' dtype. The pass only plans: it leaves c in
`node.meta[META_KEY_CENTER]`, and kv_cache makes the store write k - c (`lowc::rope_kv_store(...,
key_bias=c)`, or an explicit subtraction before `lowc::kv_store`). Attention reads the cache as is:
q.(k - c) differs from q.k by q.c, one number per query, which softmax removes, so the logits are
unchanged in full precision (the pass is exact; the store's rounding is the cache format's).

Why: a key channel with a large offset that every token shares (common after RoPE in the
low-frequency pairs, and spread over all channels by the rotation rather than removed) widens every
token's asymmetric 4-bit range; subtracting it leaves the grid for what varies between tokens. On
SmolLM2 with 16-bit weights (4,096 WikiText-2 tokens; `bench/kv4_keys.py`): rotated KV4 24.30,
rotated and centred 23.80, FP32 23.08.

Position: after smooth_attention (which rescales the key statistics) and before kv_cache. Only in
pipelines with a quantized cache (kv8/kv4): a 16-bit cache has nothing to gain.
"""

from __future__ import annotations

import torch
import torch.fx as fx

import lowc.ops  # noqa: F401  (registers lowc::attention)
from lowc.errors import PassError
from lowc.ops.kv_ops import hadamard_reference
from lowc.passes.base import EXACT, PassContext, PassResult, register_pass
from lowc.passes.stats import META_KEY_STATS

ATTENTION = torch.ops.lowc.attention.default
META_KEY_CENTER = "lowc_key_center"  # lowc::attention -> the key centre [Hkv, D] kv_cache subtracts


def check_rotation_dim(head_dim: int, pass_name: str) -> None:
    """The key rotation is a Walsh-Hadamard transform over head_dim: a PassError unless a power of two."""
    if head_dim & (head_dim - 1):
        raise PassError(f"{pass_name}: the key rotation (kv_rotation) is a Walsh-Hadamard transform over head_dim, "
                        f"which must be a power of two; this model's is {head_dim}. Use "
                        "scheme.replace(kv_rotation=False)")


def key_center(mean: torch.Tensor, rotate: bool, dtype: torch.dtype) -> torch.Tensor:
    """The centre [Hkv, D] of keys whose float32 mean is `mean`, as the cache sees them (rotated or not)."""
    c = mean.to(torch.float32)
    return (hadamard_reference(c) if rotate else c).to(dtype)


@register_pass("center_keys", numerics=EXACT)
def center_keys(gm: fx.GraphModule, ctx: PassContext) -> PassResult:
    """Plan the key centre of every attention layer from its calibration key means."""
    rotate = bool(ctx.scheme.kv_rotation)
    layers = 0
    for attn in [n for n in gm.graph.nodes if n.op == "call_function" and n.target is ATTENTION]:
        stats = attn.meta.get(META_KEY_STATS)
        if stats is None or stats.tokens == 0:
            raise PassError(f"center_keys: layer {attn.args[4]} has no key statistics; run lowc.calibrate.calibrate "
                            "first (lowc.compile does so when the pipeline contains center_keys)")
        val = attn.args[1].meta.get("val") if isinstance(attn.args[1], fx.Node) else None
        dtype = val.dtype if isinstance(val, torch.Tensor) else torch.float32
        mean = stats.mean
        if rotate:
            check_rotation_dim(mean.shape[-1], "center_keys")
        attn.meta[META_KEY_CENTER] = key_center(mean, rotate, dtype)
        layers += 1
    return PassResult(gm, modified=False, info={"layers": layers, "rotated": rotate})

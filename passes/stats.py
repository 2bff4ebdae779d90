"""Calibration statistics as the passes read them, and how exact rewrites transform them.

`lowc.calibrate` runs the captured graph over calibration text and stores, in `node.meta`:
- on every `aten.linear` node, `META_STATS`: the `InputStats` of the activation it reads (linears
  that read the same activation, e.g. q/k/v, share one object): per-channel absmax and mean square,
  and, when asked for, the second-moment matrix H = X^T X / n that clipping and GPTQ use;
- on every `lowc::attention` node, `META_KEY_STATS`: the `KeyStats` of its post-RoPE keys (per
  channel absmax and sum).

An exact rewrite changes the activation a linear reads in a known way (smoothing divides channel j
by s_j, reordering permutes channels), so the pass updates the statistics itself with
`InputStats.divide_channels` / `permute` instead of running the calibration forward again. The
updates are exact algebra: stats of x / s are absmax / s, mean square / s^2, H / (s s^T).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowc.errors import PassError

META_STATS = "lowc_stats"  # aten.linear -> InputStats of its input activation
META_KEY_STATS = "lowc_key_stats"  # lowc::attention -> KeyStats of its post-RoPE keys


@dataclass(eq=False)
class InputStats:
    """Per-channel statistics of one activation [tokens, K], accumulated over calibration."""

    absmax: torch.Tensor  # float32 [K], max |x_j| over tokens
    sum_sq: torch.Tensor  # float64 [K], sum of x_j^2 over tokens
    tokens: int
    hessian_sum: torch.Tensor | None = None  # float32 [K, K], sum of x x^T over tokens (or None)

    @classmethod
    def empty(cls, k: int, with_hessian: bool, device=None) -> "InputStats":
        """Zeroed statistics on `device` (the model's: passes combine them with its weights)."""
        h = torch.zeros(k, k, dtype=torch.float32, device=device) if with_hessian else None
        return cls(torch.zeros(k, device=device), torch.zeros(k, dtype=torch.float64, device=device), 0, h)

    @property
    def channels(self) -> int:
        return self.absmax.numel()

    @property
    def mean_sq(self) -> torch.Tensor:
        """float32 [K]: mean of x_j^2 over the calibration tokens."""
        return (self.sum_sq / max(self.tokens, 1)).float()

    @property
    def hessian(self) -> torch.Tensor:
        """float32 [K, K]: H = X^T X / n (what GPTQ and the clip search minimise against)."""
        if self.hessian_sum is None:
            raise ValueError("these statistics were gathered without the second-moment matrix")
        return self.hessian_sum / max(self.tokens, 1)

    def update(self, x: torch.Tensor) -> None:
        """Accumulate a batch of activations x [..., K] (any float dtype)."""
        x2 = x.detach().reshape(-1, x.shape[-1]).to(self.absmax.device, torch.float32)
        self.absmax = torch.maximum(self.absmax, x2.abs().amax(dim=0))
        self.sum_sq += x2.double().square().sum(dim=0)
        if self.hessian_sum is not None:
            self.hessian_sum += x2.T @ x2
        self.tokens += x2.shape[0]

    def divide_channels(self, s: torch.Tensor) -> None:
        """The activation became x / s (s [K] > 0): update in place."""
        s = s.to(torch.float32)
        self.absmax = self.absmax / s
        self.sum_sq = self.sum_sq / s.double().square()
        if self.hessian_sum is not None:
            self.hessian_sum = self.hessian_sum / s[:, None] / s[None, :]

    def permute(self, perm: torch.Tensor) -> None:
        """The activation became x[..., perm]: update in place."""
        self.absmax = self.absmax[perm]
        self.sum_sq = self.sum_sq[perm]
        if self.hessian_sum is not None:
            self.hessian_sum = self.hessian_sum[perm][:, perm]


@dataclass(eq=False)
class KeyStats:
    """Per-channel statistics of one layer's post-RoPE keys, [kv_heads, head_dim]: the absmax
    (SmoothAttention) and the sum (the mean that center_keys subtracts)."""

    absmax: torch.Tensor
    tokens: int = 0
    sum: torch.Tensor | None = None  # float64 [Hkv, D], sum of k over tokens

    @property
    def mean(self) -> torch.Tensor:
        """float32 [Hkv, D]: mean of each key channel over the calibration tokens."""
        if self.sum is None or self.tokens == 0:
            raise ValueError("these key statistics saw no tokens")
        return (self.sum / self.tokens).float()

    def update(self, k: torch.Tensor) -> None:
        """Accumulate keys k [B, Hkv, T, D]."""
        k32 = k.detach().to(torch.float32)
        m = k32.abs().amax(dim=(0, 2))
        s = k32.double().sum(dim=(0, 2))
        first = self.tokens == 0
        self.absmax = m if first else torch.maximum(self.absmax, m)
        self.sum = s if first or self.sum is None else self.sum + s
        self.tokens += k.shape[0] * k.shape[2]

    def divide_channels(self, lam: torch.Tensor) -> None:
        """The keys became k / lam (lam [Hkv, D] > 0): update in place."""
        self.absmax = self.absmax / lam
        if self.sum is not None:
            self.sum = self.sum / lam.double()


def stats_of(node) -> InputStats:
    """The InputStats of a linear node; PassError naming the node when calibration did not run."""
    try:
        return node.meta[META_STATS]
    except KeyError:
        raise PassError(
            f"linear %{node.name} has no calibration statistics; run lowc.calibrate.calibrate(gm, tokens) "
            "before this pass (lowc.compile does so when the pipeline contains a pass that needs it)"
        ) from None

"""stats: accumulation and the exact updates that passes apply."""

import torch

from lowc.passes.stats import InputStats, KeyStats


def test_updates_equal_statistics_of_the_transformed_activation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 50, 6, generator=g)
    s, perm = torch.rand(6, generator=g) + 0.5, torch.randperm(6, generator=g)
    a, b = InputStats.empty(6, True), InputStats.empty(6, True)
    for chunk in x:
        a.update(chunk)
        b.update((chunk / s)[:, perm])
    a.divide_channels(s)
    a.permute(perm)
    torch.testing.assert_close(a.absmax, b.absmax)
    torch.testing.assert_close(a.mean_sq, b.mean_sq)
    torch.testing.assert_close(a.hessian, b.hessian, rtol=1e-5, atol=1e-6)
    flat = (x.reshape(-1, 6) / s)[:, perm]
    torch.testing.assert_close(b.hessian, flat.T @ flat / 150, rtol=1e-5, atol=1e-6)
    assert b.tokens == 150


def test_key_stats_take_the_max_over_batch_and_time():
    k = torch.randn(2, 3, 5, 4)
    ks = KeyStats(torch.zeros(0))
    ks.update(k[:1])
    ks.update(k[1:])
    torch.testing.assert_close(ks.absmax, k.abs().amax(dim=(0, 2)))
    assert ks.tokens == 10


def test_key_stats_mean_is_over_every_token_and_follows_a_channel_division():
    k = torch.randn(2, 3, 5, 4) + torch.arange(4.0)  # channel j has mean about j
    ks = KeyStats(torch.zeros(0))
    ks.update(k[:1])
    ks.update(k[1:])
    torch.testing.assert_close(ks.mean, k.mean(dim=(0, 2)))
    lam = torch.rand(3, 4) + 0.5
    ks.divide_channels(lam)
    torch.testing.assert_close(ks.mean, (k / lam[None, :, None, :]).mean(dim=(0, 2)))
    torch.testing.assert_close(ks.absmax, (k / lam[None, :, None, :]).abs().amax(dim=(0, 2)))


def test_key_stats_without_tokens_have_no_mean():
    import pytest

    with pytest.raises(ValueError, match="no tokens"):
        KeyStats(torch.zeros(0)).mean

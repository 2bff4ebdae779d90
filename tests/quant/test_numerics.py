"""Shared numerics: exact integer matmul, fp16 scale rounding, padding rules, SQNR."""

import math

import pytest
import torch

from lowc.errors import QuantizationError
from lowc.quant.numerics import FP16_TINY, exact_int_matmul, padded_k, sqnr_db, to_fp16_scale


@pytest.mark.parametrize("k", [1, 1024, 2500, 4096])
def test_exact_int_matmul_equals_int64_matmul(k):
    g = torch.Generator().manual_seed(k)
    # Extreme values: with K > 1024 one float32 GEMM would round (128*128*K > 2**24); chunks do not.
    a = torch.randint(-128, 128, (5, k), generator=g, dtype=torch.int8)
    b = torch.randint(-128, 128, (3, k), generator=g, dtype=torch.int8)
    a[0], b[0] = -128, -128
    got = exact_int_matmul(a, b)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), a.long() @ b.long().T)
    assert got[0, 0] == 128 * 128 * k


def test_exact_int_matmul_refuses_int32_overflow():
    a = torch.full((1, 2**17), 127, dtype=torch.int8)
    with pytest.raises(QuantizationError, match="may overflow int32"):
        exact_int_matmul(a, a)


def test_fp16_scales_round_up_and_never_reach_zero():
    s = torch.tensor([0.0, 1e-12, 1.0 / 3.0, 1000.1, 0.5, 3e-6, 65504.0])
    got = to_fp16_scale(s, "t")
    assert got.dtype == torch.float16
    assert got[0] == got[1] == FP16_TINY
    up = got[2:].float()
    assert bool((up >= s[2:]).all())
    # ... and it is the smallest fp16 >= s: the fp16 just below is < s.
    below = (got[2:].view(torch.int16) - 1).view(torch.float16).float()
    assert bool((below < s[2:]).all())
    assert got[4] == 0.5 and got[6] == 65504.0  # exactly representable values stay
    with pytest.raises(QuantizationError, match="fp16 maximum"):
        to_fp16_scale(torch.tensor([1e6]), "t")


def test_padding_rule():
    assert padded_k(576, 128, True, "x") == 640
    assert padded_k(512, 128, False, "x") == 512
    with pytest.raises(QuantizationError, match="not a multiple of the group size 128 and padding is disabled"):
        padded_k(576, 128, False, "x")


def test_sqnr_definition():
    x = torch.tensor([3.0, 4.0])
    assert sqnr_db(x, x) == math.inf
    assert sqnr_db(x, x + torch.tensor([0.05, 0.0])) == pytest.approx(20 * math.log10(5 / 0.05))

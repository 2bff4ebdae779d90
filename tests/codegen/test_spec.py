"""KernelSpec and spec_for_qlinear: every format maps to one template, bad inputs are KernelErrors."""

import json

import pytest
import torch

from lowc.codegen.spec import TEMPLATES, KernelSpec, spec_for_qlinear
from lowc.errors import KernelError

FORMATS = [
    ("w4a8_g128", torch.int8, 4, 8, 128, 0),
    ("w4a8_g64", torch.int8, 4, 8, 64, 0),
    ("w4a8_pc", torch.int8, 4, 8, 0, 0),
    ("w8a8", torch.int8, 8, 8, 0, 0),
    ("w4a16_g128", torch.bfloat16, 4, 16, 128, 0),
    ("w4a4_g128_o128", torch.int8, 4, 4, 128, 128),
]


@pytest.mark.parametrize("fmt,x_dtype,w_bits,a_bits,group,outliers", FORMATS)
def test_spec_fields_follow_the_format(fmt, x_dtype, w_bits, a_bits, group, outliers):
    spec = spec_for_qlinear(fmt, x_dtype, torch.bfloat16)
    assert (spec.w_bits, spec.a_bits, spec.group_size, spec.n_outliers) == (w_bits, a_bits, group, outliers)
    assert spec.template == TEMPLATES[spec.family]
    assert spec.x_dtype == str(x_dtype).removeprefix("torch.")
    assert spec.out_dtype == "bfloat16"
    assert fmt in spec.name and spec.name.isidentifier()


def test_key_is_canonical_and_distinguishes_every_field():
    a = spec_for_qlinear("w4a8_g128", torch.int8, torch.float16)
    assert a.key() == spec_for_qlinear("w4a8_g128", "int8", "torch.float16").key()
    assert KernelSpec(**json.loads(a.key())) == a
    others = [
        spec_for_qlinear("w4a8_g64", torch.int8, torch.float16),
        spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16),
        spec_for_qlinear("w4a8_g128", torch.int8, torch.int32),
    ]
    assert len({a.key(), *(o.key() for o in others)}) == 4


def test_constants_carry_bits_group_and_dot_dtype():
    c = spec_for_qlinear("w4a16_g64", torch.float16, torch.float16).constants()
    assert c["GROUP_SIZE"] == "64" and c["W_BITS"] == "4" and c["A_BITS"] == "16"
    assert c["DOT_DTYPE"] == "tl.float16" and c["RAW_ACCUMULATOR"] == "False"
    assert spec_for_qlinear("w8a8", torch.int8, torch.int32).constants()["RAW_ACCUMULATOR"] == "True"


@pytest.mark.parametrize(
    "fmt,x_dtype,out_dtype,needle",
    [
        ("w4a8_g128", torch.bfloat16, torch.bfloat16, "int8 output of quantize_act"),
        ("w4a16_g128", torch.int8, torch.bfloat16, "weight-only"),
        ("w4a4_g128_o128", torch.int8, torch.int32, "no single INT32 accumulator"),
        ("w8a8", torch.int8, torch.int64, "out_dtype"),
        ("w5a8_g128", torch.int8, torch.bfloat16, "no kernel for format"),
        ("w8a8", "notadtype", torch.bfloat16, "not a torch dtype"),
    ],
)
def test_bad_requests_name_the_problem(fmt, x_dtype, out_dtype, needle):
    with pytest.raises(KernelError, match=needle):
        spec_for_qlinear(fmt, x_dtype, out_dtype)

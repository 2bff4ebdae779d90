"""Format-name parsing: every family, parameterized groups/outliers, and malformed names."""

import pytest

from lowc.errors import QuantizationError
from lowc.quant.spec import ACT_FLOAT, ACT_INT4_GROUP_INT8_TAIL, ACT_INT8_TOKEN, parse_format


@pytest.mark.parametrize(
    "name, family, wbits, abits, group, outliers, act_kind",
    [
        ("w4a8_g128", "w4a8_g", 4, 8, 128, 0, ACT_INT8_TOKEN),
        ("w4a8_g32", "w4a8_g", 4, 8, 32, 0, ACT_INT8_TOKEN),
        ("w4a8_pc", "w4a8_pc", 4, 8, None, 0, ACT_INT8_TOKEN),
        ("w8a8", "w8a8", 8, 8, None, 0, ACT_INT8_TOKEN),
        ("w4a16_g64", "w4a16_g", 4, 16, 64, 0, ACT_FLOAT),
        ("w4a4_g128_o128", "w4a4", 4, 4, 128, 128, ACT_INT4_GROUP_INT8_TAIL),
        ("w4a4_g64_o0", "w4a4", 4, 4, 64, 0, ACT_INT4_GROUP_INT8_TAIL),
    ],
)
def test_names_parse(name, family, wbits, abits, group, outliers, act_kind):
    spec = parse_format(name)
    assert (spec.name, spec.family, spec.weight_bits, spec.act_bits) == (name, family, wbits, abits)
    assert (spec.group, spec.outliers, spec.act_kind) == (group, outliers, act_kind)
    assert parse_format(name) is spec  # cached: one object per name


def test_activation_scale_group_counts():
    assert parse_format("w4a8_g128").act_scale_groups(576) == 1
    assert parse_format("w4a4_g128_o128").act_scale_groups(576) == 5  # 448 = 3.5 -> 4 groups, + outlier
    assert parse_format("w4a4_g128_o64").act_scale_groups(576) == 5  # 512 = 4 groups, + outlier
    assert parse_format("w4a4_g128_o0").act_scale_groups(576) == 5  # 4.5 -> 5 groups, no outlier scale
    assert parse_format("w4a4_g128_o128").act_scale_groups(128) == 1  # outliers only
    with pytest.raises(QuantizationError, match="floating point"):
        parse_format("w4a16_g128").act_scale_groups(576)


@pytest.mark.parametrize("name", ["w4a8", "w4a8_g", "w3a8_g128", "W4A8_G128", "w4a8_g128 ", "w4a4_g128", "int4"])
def test_unknown_names_list_the_valid_forms(name):
    with pytest.raises(QuantizationError, match="valid forms"):
        parse_format(name)


@pytest.mark.parametrize("name", ["w4a8_g100", "w4a16_g0", "w4a4_g1_o8"])
def test_group_must_be_a_power_of_two(name):
    with pytest.raises(QuantizationError, match="power of two"):
        parse_format(name)


def test_non_string_name():
    with pytest.raises(QuantizationError, match="must be a str"):
        parse_format(128)


@pytest.mark.parametrize("name", ["w4a8_g2", "w4a8_g4"])
def test_w4a8_group_must_fill_whole_code_words(name):
    with pytest.raises(QuantizationError, match="below 8"):
        parse_format(name)

import json

import pytest
from hypothesis import given, strategies as st

from lowc.errors import SchemeError
from lowc.schemes import ACT_BITS, KV_BITS, PRESETS, WEIGHT_BITS, Scheme, default_pipeline, parse_scheme


def test_presets_exist_and_are_frozen():
    for name in ("w16a16", "w8a8", "w4a16", "w4a8kv4", "w4a4"):
        s = parse_scheme(name)
        assert s.name == name
        with pytest.raises(Exception):
            s.w_bits = 3  # frozen dataclass


def test_w4a8kv4_is_the_qoq_recipe():
    s = parse_scheme("w4a8kv4")
    assert (s.w_bits, s.a_bits, s.kv_bits, s.group_size) == (4, 8, 4, 128)
    assert s.kv_rotation and s.smooth_attention_alpha is None and s.route == "dedicated"  # rotation, not SmoothAttention
    assert s.passes[0] == "annotate" and s.passes[-1] == "eliminate_dead_code"
    assert s.passes.index("smooth") < s.passes.index("quantize")


def test_scheme_json_round_trips_its_fields():
    s = parse_scheme("w4a4")
    d = json.loads(s.to_json())
    assert d["n_outliers"] == 128 and d["version"] == s.version and d["passes"] == list(s.passes)


@given(st.sampled_from(WEIGHT_BITS), st.sampled_from(ACT_BITS), st.sampled_from(KV_BITS + (None,)),
       st.sampled_from((None, 32, 64, 128, 256)))
def test_generic_form_parses(w, a, kv, g):
    name = f"w{w}a{a}" + (f"kv{kv}" if kv else "") + (f"-g{g}" if g else "")
    s = parse_scheme(name)
    preset = PRESETS.get(name)  # a bare "w4a4" is the Atom preset, which quantizes the KV cache too
    assert (s.w_bits, s.a_bits, s.kv_bits) == (w, a, preset.kv_bits if preset else (kv or 16))
    assert s.group_size == (preset.group_size if preset else (g or 128))  # the w8a8 preset is per channel
    assert s.kv_rotation == (s.kv_bits == 4)
    assert s.kv_key_groups == (PRESETS["w4a8kv4"].kv_key_groups if (w, a, s.kv_bits) == (4, 8, 4) else 1)  # lowc's KV4 recipe rotates keys; other caches do not
    assert s.route == ("dedicated" if (w, a) in {(16, 16), (8, 8), (4, 16), (4, 8), (4, 4)} else "bitplane")
    assert ("bitplane" in s.passes) == (s.route == "bitplane")


def test_generic_name_inherits_preset_recipe():
    s = parse_scheme("w4a8kv4-g64")
    base = PRESETS["w4a8kv4"]
    assert s.group_size == 64 and s.smooth_alpha == base.smooth_alpha and s.gptq == base.gptq
    assert parse_scheme("w4a8").smooth_attention_alpha is None  # no KV quantization, no SmoothAttention


@pytest.mark.parametrize("bad", ["int4", "w4", "w4a8kv3", "w1a8", "w4a2", "w4a8-g100", "w4a8-g", "", "W4A8KV4X"])
def test_invalid_names_fail_with_the_valid_list(bad):
    with pytest.raises(SchemeError) as e:
        parse_scheme(bad)
    assert "w4a8kv4" in str(e.value) or "must be" in str(e.value) or "unsupported" in str(e.value)


def test_case_and_space_insensitive():
    assert parse_scheme("  W4A8KV4 ") is PRESETS["w4a8kv4"]


def test_non_string_scheme_rejected():
    with pytest.raises(SchemeError):
        parse_scheme(4)


def test_pipeline_derivation():
    assert default_pipeline(Scheme(name="x")) == ("annotate", "kv_cache", "fuse_glue", "eliminate_dead_code")
    p = default_pipeline(Scheme(name="y", w_bits=3, a_bits=8))
    assert p.index("quantize") < p.index("bitplane")

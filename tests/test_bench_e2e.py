"""bench/e2e.py stays runnable: its main on a tiny random Llama on the CPU, two decode steps (not a timing)."""

import importlib.util
import json
from pathlib import Path

import pytest

from lowc.compiler import NEEDS_CALIBRATION
from lowc.schemes import parse_scheme, weight_format

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "e2e.py"


@pytest.fixture(scope="module")
def e2e():
    spec = importlib.util.spec_from_file_location("bench_e2e", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["w4a8kv4", "w8a8", "w4a16"])
def test_rtn_scheme_keeps_formats_and_needs_no_calibration(e2e, name):
    rtn, preset = e2e.rtn_scheme(name), parse_scheme(name)
    assert weight_format(rtn) == weight_format(preset) and rtn.kv_bits == preset.kv_bits
    assert not set(rtn.passes) & NEEDS_CALIBRATION
    assert "quantize" in rtn.passes and "fuse_glue" in rtn.passes


def test_main_runs_on_a_tiny_model(e2e, tmp_path):
    out = tmp_path / "e2e.json"
    res = e2e.main(["--device", "cpu", "--tiny", "--layers", "1", "--batches", "1,3", "--prompt", "5", "--gen", "3",
                    "--baselines", "eager", "--schemes", "w4a8kv4", "--out", str(out)])
    assert res["errors"] == [] and res["skipped"] == []
    rows = {(r["variant"], r["batch"]): r for r in res["rows"]}
    assert set(rows) == {(v, b) for v in ("lowc:w4a8kv4", "hf_eager") for b in (1, 3)}
    for r in rows.values():
        assert r["steps"] == 2 and r["step_ms"] > 0 and r["prefill_s"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * r["steps"] / r["decode_s"])
    assert rows[("lowc:w4a8kv4", 3)]["kv_cache_gb"] < rows[("hf_eager", 3)]["kv_cache_gb"]  # KV4 vs BF16
    assert json.loads(out.read_text())["rows"] == res["rows"]


def test_budget_skips_rows_instead_of_running_them(e2e):
    res = e2e.main(["--device", "cpu", "--tiny", "--layers", "1", "--batches", "1", "--prompt", "4", "--gen", "2",
                    "--baselines", "eager", "--schemes", "", "--budget-s", "0"])
    assert res["rows"] == [] and res["skipped"] == ["hf_eager B=1: time budget"]

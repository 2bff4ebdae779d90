"""IR dumps and the IR text form: what a person reads must be there."""

import json

import pytest
import torch

import lowc
from lowc.cli import main as cli_main
from lowc.ir import format_graph, graph_diff, summarize
from lowc.tiny_models import tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen2", layers=2)


def test_dump_contents(model, tmp_path):
    q = lowc.compile(model, "w16a16", dump_ir=tmp_path, progress=False)
    assert json.loads((tmp_path / "scheme.json").read_text())["name"] == "w16a16"
    for i, name in enumerate(q.scheme.passes, start=1):
        folder = tmp_path / f"{i:02d}_{name}"
        assert {p.name for p in folder.iterdir()} == {"before.txt", "after.txt", "diff.txt", "summary.json"}
    final = (tmp_path / "final.txt").read_text()
    assert final.count("lowc.attention_kv.default(") == 2 and final.count("format=kv16") >= 4
    assert "site=model.layers.1.self_attn.q_proj" in final  # annotate's provenance, per node
    assert "pass=capture" in final
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["lowc_ops"]["lowc.attention_kv.default"] == 2
    norms = {k: v for k, v in summary["lowc_ops"].items() if "rms_norm" in k}
    assert sum(norms.values()) == 5  # 2 per layer + final, some fused with the residual add
    assert summary["nodes"] == len(q.graph_module.graph.nodes)
    assert "nodes:" in (tmp_path / "summary.txt").read_text()
    assert "def forward(self, input_ids, position_ids, kv_slot_ids" in (tmp_path / "final_code.py").read_text()


def test_env_var_enables_dump(model, tmp_path, monkeypatch):
    monkeypatch.setenv("LOWC_DUMP_IR", str(tmp_path / "env"))
    lowc.compile(model, "w16a16", progress=False)
    assert (tmp_path / "env" / "final.txt").exists()


def test_summary_counts_weights(model):
    q = lowc.compile(model, "w16a16", progress=False)
    s = summarize(q.graph_module)
    n_params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in q.graph_module.buffers())
    assert s["weights"]["float32"]["elements"] == n_params
    assert s["weight_bytes"] == 4 * n_params


def test_format_graph_shows_shapes_and_diff(model):
    q = lowc.compile(model, "w16a16", progress=False)
    text = format_graph(q.graph_module)
    line = next(ln for ln in text.splitlines() if "lowc.attention_kv.default(" in ln)
    assert ":: [" in line and "float32" in line
    assert graph_diff(text, text) == ""
    assert "-%a" in graph_diff("%a\n", "%b\n")


def test_cli_ir(capsys, tmp_path):
    assert cli_main(["ir", "--model", "tiny-mistral", "--scheme", "w16a16", "--dump", str(tmp_path), "--graph"]) == 0
    out = capsys.readouterr().out
    assert "lowc.attention_kv.default" in out and "annotate" in out and "IR dump written" in out


def test_cli_reports_lowc_errors(capsys):
    assert cli_main(["ir", "--model", "tiny-llama", "--scheme", "int4"]) == 2
    assert "unknown scheme" in capsys.readouterr().err

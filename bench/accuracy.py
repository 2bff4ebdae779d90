"""Accuracy of lowc's schemes on SmolLM2-135M-Instruct: round-to-nearest versus each pass added.

    python bench/accuracy.py                       # every row, writes docs/accuracy.md
    python bench/accuracy.py --rows w8a8 --tokens 4096 --out /tmp/acc.md   # a quick subset

For each scheme a ladder of rows, each adding one lever to the one before (round-to-nearest first,
the scheme's full preset last), compiled with `lowc.compile` (default calibration: 128 x 512 tokens
of lowc's shipped calibration text, seed 0) and scored with `lowc.eval.perplexity` on
- WikiText-2 test, first `--tokens` tokens (20,480), windows of 1024 (FP32 = 23.475), and
- the held-out text (lowc/data/heldout, As You Like It), first `--heldout-tokens` tokens,
so a gain tuned on one corpus would show on the other. Each finished row is appended to the JSON
results file at once (`--json`), and a rerun skips rows already there with the same settings, so
the table can be built over several runs.

Engine. The compiled graph's `lowc::qlinear` reference computes the integer GEMM exactly in float64
on CPU, which makes a 20k-token perplexity slow on a small CPU. With `--engine simulated` (the
default on CPU) the qlinear nodes run as one float32 GEMM of the dequantized activation and weight,
the same numbers up to float32 summation order; every other node (quantize_act, KV cache, attention)
is lowc's own. The script checks this on every row: the logits of both engines on the first 256
tokens must agree (max |difference| is stored with the row). `--engine reference` runs the
reference op for the whole perplexity.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

FP32_NAME = "fp32"


@dataclass(frozen=True)
class Row:
    key: str  # unique name in the table and the results file
    scheme: str  # the preset it starts from
    label: str  # what the row adds, in words
    changes: dict = field(default_factory=dict)  # Scheme fields changed from the preset


def ladder() -> list[Row]:
    """The table's rows: per scheme, round-to-nearest first, one lever added per row."""
    off = {"smooth_alpha": None, "smooth_attention_alpha": None, "clip_search": False, "gptq": False,
           "kv_rotation": False, "kv_key_center": False, "scale_search": False}
    return [
        Row("w8a8/rtn", "w8a8", "round-to-nearest", off),
        Row("w8a8/full", "w8a8", "+ smooth (SmoothQuant; the preset)"),
        Row("w4a16/rtn", "w4a16", "round-to-nearest", off),
        Row("w4a16/clip", "w4a16", "+ clip", {**off, "clip_search": True}),
        Row("w4a16/gptq", "w4a16", "+ GPTQ", {"scale_search": False}),
        Row("w4a16/full", "w4a16", "+ scale search (preset)"),
        Row("w4a8/rtn", "w4a8kv4", "round-to-nearest, KV16", {**off, "kv_bits": 16}),
        Row("w4a8/full", "w4a8kv4", "preset passes, KV16", {"kv_bits": 16, "kv_rotation": False,
                                                             "kv_key_center": False}),
        Row("w4a8kv4/rtn", "w4a8kv4", "round-to-nearest", off),
        Row("w4a8kv4/qoq", "w4a8kv4", "+ smooth + SmoothAttention (QoQ)",
            {**off, "smooth_alpha": "preset", "smooth_attention_alpha": 0.5}),
        Row("w4a8kv4/rotate", "w4a8kv4", "+ smooth + key rotation (no SmoothAttention)",
            {**off, "smooth_alpha": "preset", "kv_rotation": True}),
        Row("w4a8kv4/center", "w4a8kv4", "+ key centre", {**off, "smooth_alpha": "preset", "kv_rotation": True,
                                                           "kv_key_center": True}),
        Row("w4a8kv4/gptq", "w4a8kv4", "+ clip + GPTQ", {"scale_search": False}),
        Row("w4a8kv4/full", "w4a8kv4", "+ scale search (preset)"),
        Row("w4a8kv4/nosmooth", "w4a8kv4", "preset without SmoothQuant (tried, not kept)", {"smooth_alpha": None}),
        Row("w4a4/rtn", "w4a4", "round-to-nearest, no outliers", {**off, "n_outliers": 0}),
        Row("w4a4/reorder", "w4a4", "+ reorder (128 INT8 outliers)", off),
        Row("w4a4/smooth", "w4a4", "+ smooth + key rotation + key centre",
            {**off, "smooth_alpha": "preset", "kv_rotation": True, "kv_key_center": True}),
        Row("w4a4/full", "w4a4", "+ scale search + clip + GPTQ (preset)"),
    ]


def row_scheme(row: Row):
    from lowc.schemes import parse_scheme

    base = parse_scheme(row.scheme)
    changes = {k: getattr(base, k) if v == "preset" else v for k, v in row.changes.items()}
    if changes.get("kv_bits", base.kv_bits) != 4:
        changes["kv_key_groups"] = 1  # key groups are a kv4 layout
    return base.replace(name=f"{row.scheme}[{row.key.split('/')[1]}]", **changes) if changes else base


# ------------------------------------------------------------------------------------ engines
_DEQUANTIZED: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(first weight part) -> (it, float weight)


def simulated_qlinear(x, x_scale, weight, bias, fmt, out_dtype):
    """qlinear as a float32 GEMM of dequantized operands (each weight dequantized once). A plain
    function, because FX's code generation names call targets by their __name__."""
    from lowc.quant import dequantize_activation, weight_from_tensors

    key = id(weight[0])
    if key not in _DEQUANTIZED:  # the tensor is kept beside its id, so the id cannot be reused
        _DEQUANTIZED[key] = (weight[0], weight_from_tensors(fmt, weight, x.shape[-1]).dequantize())
    w = _DEQUANTIZED[key][1]
    xf = x.to(torch.float32) if x_scale is None else dequantize_activation(x, x_scale, fmt)
    y = xf @ w.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype)


def set_engine(compiled, engine: str):
    """Point every qlinear node of the compiled graph at the reference op or the simulation."""
    gm = compiled.graph_module
    ref = torch.ops.lowc.qlinear.default
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in (ref, simulated_qlinear):
            n.target = simulated_qlinear if engine == "simulated" else ref
    gm.recompile()


def engine_gap(compiled, ids: torch.Tensor) -> float:
    """max |logits(reference) - logits(simulated)| on `ids` [1, T]."""
    with torch.no_grad():
        set_engine(compiled, "reference")
        a = compiled(ids)
        set_engine(compiled, "simulated")
        b = compiled(ids)
    return float((a - b).abs().max())


# ----------------------------------------------------------------------------------- the table
def settings_of(args) -> dict:
    return {"tokens": args.tokens, "heldout_tokens": args.heldout_tokens, "window": args.window,
            "calibration_samples": args.calibration_samples, "engine": args.engine}


def load_results(path: Path) -> list[dict]:
    return json.loads(path.read_text()) if path.is_file() else []


def save_results(path: Path, results: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def markdown(results: list[dict], settings: dict) -> str:
    by_key = {r["key"]: r for r in results}
    fp = by_key.get(FP32_NAME)
    lines = [
        f"WikiText-2 test: first {settings['tokens']:,} tokens; held-out: first {settings['heldout_tokens']:,} "
        f"tokens of lowc/data/heldout; windows of {settings['window']}; calibration "
        f"{settings['calibration_samples']} x 512 tokens of lowc's calibration text; engine {settings['engine']}.",
        "",
        "| scheme | row | WikiText-2 | vs FP32 | held-out | vs FP32 | compile s | passes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def rel(v, ref):
        return f"{100 * (v / ref - 1):+.1f}%" if ref else ""

    for r in results:
        wiki, held = r["wikitext2"], r["heldout"]
        n_calib = (r.get("scheme_config") or {}).get("calibration_samples")
        label = r["label"] + (f" (calibration {n_calib} x 512)" if n_calib and n_calib != settings["calibration_samples"]
                              else "")
        lines.append(
            f"| {r['scheme']} | {label} | {wiki:.3f} | {rel(wiki, fp and fp['wikitext2'])} | {held:.3f} | "
            f"{rel(held, fp and fp['heldout'])} | {r['compile_seconds']:.0f} | {' '.join(r['passes'])} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="*", help="row keys or scheme prefixes (default: all), e.g. w8a8 w4a4/full")
    p.add_argument("--tokens", type=int, default=20480)
    p.add_argument("--heldout-tokens", type=int, default=20480)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--calibration-samples", type=int, default=128,
                   help="512-token windows for every row; at the default 128, a scheme that asks for more "
                        "(Scheme.calibration_samples, e.g. w4a8kv4's 256) gets what it asks for")
    p.add_argument("--engine", choices=("simulated", "reference"), default="simulated")
    p.add_argument("--json", default="bench/results/accuracy.json")
    p.add_argument("--out", default="docs/accuracy.md", help="markdown table (between the table markers)")
    args = p.parse_args(argv)

    import lowc
    from lowc.eval import calibration_batches, heldout_text, perplexity, tokenize, wikitext2_test_text
    from lowc.models import smollm2

    settings = settings_of(args)
    path = Path(args.json)
    results = [r for r in load_results(path) if r.get("settings") == settings]
    done = {r["key"] for r in results}
    model, tok = smollm2()
    texts = {"wikitext2": (tokenize(tok, wikitext2_test_text()), args.tokens),
             "heldout": (tokenize(tok, heldout_text()), args.heldout_tokens)}
    batches = {}

    def calibration_for(scheme) -> torch.Tensor:
        n = scheme.calibration_samples if args.calibration_samples == 128 and scheme.calibration_samples else \
            args.calibration_samples
        if n not in batches:
            batches[n] = calibration_batches(tok, n_samples=n, seq_len=512)
        return batches[n]

    rows = [Row(FP32_NAME, "fp32", "FP32 (eager)")] + ladder()
    if args.rows:
        rows = [r for r in rows if r.key == FP32_NAME or any(r.key == s or r.key.startswith(s + "/") for s in args.rows)]
    for row in rows:
        if row.key in done:
            continue
        t0 = time.perf_counter()
        gap = 0.0
        if row.key == FP32_NAME:
            target, passes, scheme_json = model, [], None
        else:
            scheme = row_scheme(row)
            calibration = calibration_for(scheme)
            target = lowc.compile(model, scheme, calibration=calibration, progress=False)
            passes = [r.name for r in target.pass_records if r.name not in ("annotate", "eliminate_dead_code")]
            scheme_json = scheme.to_dict()
            gap = engine_gap(target, texts["wikitext2"][0][:256].unsqueeze(0))
            set_engine(target, args.engine)
        compile_s = time.perf_counter() - t0
        scores = {name: perplexity(target, ids, tokens=n, window=args.window, progress=False).perplexity
                  for name, (ids, n) in texts.items()}
        _DEQUANTIZED.clear()
        results.append({"key": row.key, "scheme": row.scheme, "label": row.label, **scores,
                        "compile_seconds": compile_s, "passes": passes, "engine_gap": gap,
                        "scheme_config": scheme_json, "settings": settings})
        save_results(path, results)
        print(f"{row.key:16s} wikitext2 {scores['wikitext2']:.3f}  heldout {scores['heldout']:.3f}  "
              f"compile {compile_s:.0f}s  engine gap {gap:.2e}", flush=True)
    order = {r.key: i for i, r in enumerate([Row(FP32_NAME, "", "")] + ladder())}
    results.sort(key=lambda r: order.get(r["key"], 1e9))
    table = markdown(results, settings)
    if args.out:
        write_table(Path(args.out), table)
    print(table)
    return 0


BEGIN, END = "<!-- accuracy table: bench/accuracy.py -->", "<!-- end of accuracy table -->"


def write_table(path: Path, table: str) -> None:
    """Replace the text between the table markers of `path` (or write a file holding only the table)."""
    text = path.read_text() if path.is_file() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())

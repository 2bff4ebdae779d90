"""Accuracy of the bit-plane schemes (ABQ-LLM route) on SmolLM2-135M-Instruct, WikiText-2 test.

    python bench/accuracy_bitplane.py                      # every row, full protocol (slow on CPU)
    python bench/accuracy_bitplane.py --rows w2a8,w2a8-bb --tokens 4096 --json /tmp/bp.json

Protocol (as docs/accuracy.md): the first 20,480 tokens of WikiText-2 test, windows of 1024 with
stride 1024, FP32 reference 23.475; calibration = lowc's shipped calibration text (32 windows of
512 tokens, `lowc.eval.calibration_batches`), never the test text. Each row is a lowc scheme; "rtn"
rows switch off every calibration pass (plain round-to-nearest on the bit-plane grid), the others
keep the preset's passes (clip search + GPTQ, and SmoothQuant for w6a6).

CPU time: the reference lowc::qlinear of a bit-plane format unpacks the planes and builds its
float operands on every call, several times the cost of its GEMMs, so 20 windows would take hours on
this shared 2-core machine. This script therefore registers, for its own process only, a CPU kernel
that does the reference's arithmetic with the weight operand (v - zero, per group, float32) built
once per weight and cached: the same batched per-group GEMMs and the same float32 scaling order as
`BitplaneWeight.linear`. The first window is scored both ways and the relative difference of its
loss is recorded (`check_rel_diff`; 0 when the shortcut reproduces the reference bit for bit).
Rows are written to the JSON file as they finish.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

FP32_PPL = 23.475


def rows():
    """label -> (scheme, what the row shows). Built lazily: importing lowc is not free."""
    from lowc.schemes import parse_scheme

    def rtn(name, **kw):
        return parse_scheme(name).replace(name=f"{name}-rtn", clip_search=False, gptq=False, smooth_alpha=None, **kw)

    def full(name, **kw):
        return parse_scheme(name).replace(name=name, **kw)

    return {
        "w2a8-rtn": (rtn("w2a8"), "2-bit g128, round-to-nearest"),
        "w2a8": (full("w2a8"), "2-bit g128, clip search + GPTQ"),
        "w2a8-bb-rtn": (rtn("w2a8", bit_balance=True), "W2* (five levels, 3 planes), round-to-nearest"),
        "w2a8-bb": (full("w2a8", bit_balance=True), "W2* (five levels, 3 planes), clip search + GPTQ"),
        "w2a8-g64": (full("w2a8", group_size=64), "2-bit g64, clip search + GPTQ"),
        "w3a8-rtn": (rtn("w3a8"), "3-bit g128, round-to-nearest"),
        "w3a8": (full("w3a8"), "3-bit g128, clip search + GPTQ"),
        "w6a6-rtn": (rtn("w6a6"), "6-bit g128 weights, INT6 per-token activations, round-to-nearest"),
        "w6a6-smooth": (full("w6a6", clip_search=False, gptq=False), "w6a6 + SmoothQuant alpha 0.5"),
        "w6a6": (full("w6a6"), "w6a6 + SmoothQuant 0.5 + clip search + GPTQ"),
    }


class CachedWeightOperands:
    """lowc::qlinear on CPU for bit-plane formats with cached weight operands (module docstring);
    every other format, and `exact=True`, runs the op's reference."""

    def __init__(self):
        import torch

        from lowc.quant import weight_from_tensors
        from lowc.quant.base import finish_linear
        from lowc.quant.bitplane import scale_accumulators
        from lowc.quant.numerics import pad_last_dim
        from lowc.runtime.bitplane_gemm import is_bitplane_format

        self.exact = False
        self._operands: dict[int, tuple] = {}

        def operand(packed, planes):
            hit = self._operands.get(planes.data_ptr())
            if hit is None or hit[0] is not planes:
                gl = packed.spec.group_len(packed.in_features)
                ftype = torch.float32 if 128.0 * 255.0 * gl < 2.0**24 else torch.float64  # as group_dots
                v = packed.codes().to(ftype)
                ng = v.shape[1] // gl
                vz = (v.reshape(-1, ng, gl) - packed.zero.to(ftype)[:, :, None]).permute(1, 2, 0)
                hit = self._operands[planes.data_ptr()] = (planes, vz, gl)
            return hit[1], hit[2]

        def qlinear_cpu(x, x_scale, weight, bias, fmt, out_dtype):
            packed = weight_from_tensors(fmt, weight, x.shape[-1])
            if self.exact or not is_bitplane_format(fmt):
                return packed.linear(x, x_scale, bias, out_dtype)
            vz, gl = operand(packed, weight[0])
            x2 = pad_last_dim(x.reshape(-1, x.shape[-1]), vz.shape[0] * gl).to(vz.dtype)
            dots = torch.bmm(x2.reshape(x2.shape[0], -1, gl).transpose(0, 1), vz)
            y = scale_accumulators(dots, packed.scale, x_scale)
            return finish_linear(y, bias, out_dtype, x.shape[:-1], packed.spec)

        import lowc.ops  # noqa: F401  (defines lowc::qlinear)

        torch.library.register_kernel("lowc::qlinear", "cpu", qlinear_cpu)


def _checked_perplexity(compiled, ids, fast: CachedWeightOperands, window: int, tokens: int):
    """Perplexity with the shortcut, plus the first window scored exactly for comparison."""
    from lowc.eval import perplexity

    fast.exact = True
    exact = perplexity(compiled, ids, tokens=window, window=window, progress=False)
    fast.exact = False
    first = perplexity(compiled, ids, tokens=window, window=window, progress=False)
    full = perplexity(compiled, ids, tokens=tokens, window=window, progress=False)
    return full, abs(first.nll - exact.nll) / exact.nll


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="all", help="comma-separated row labels, or 'all'")
    p.add_argument("--tokens", type=int, default=20480)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--calibration-samples", type=int, default=32)
    p.add_argument("--json", default="bench/results/accuracy_bitplane.json")
    args = p.parse_args(argv)

    import torch

    import lowc
    from lowc.eval import calibration_batches, tokenize, wikitext2_test_text
    from lowc.models import smollm2

    table = rows()
    labels = list(table) if args.rows == "all" else args.rows.split(",")
    unknown = [label for label in labels if label not in table]
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; choose from {list(table)}")
    torch.manual_seed(0)
    model, tokenizer = smollm2()
    ids = tokenize(tokenizer, wikitext2_test_text())
    calibration = calibration_batches(tokenizer, args.calibration_samples, seq_len=512)
    fast = CachedWeightOperands()
    out_path = Path(args.json)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    for label in labels:
        scheme, what = table[label]
        t0 = time.perf_counter()
        compiled = lowc.compile(model, scheme, calibration=calibration, progress=False)
        compile_s = time.perf_counter() - t0
        r, check = _checked_perplexity(compiled, ids, fast, args.window, args.tokens)
        results[label] = {
            "scheme": scheme.to_dict(), "what": what, "perplexity": r.perplexity,
            "vs_fp32": r.perplexity / FP32_PPL - 1, "tokens": args.tokens, "window": args.window,
            "compile_seconds": round(compile_s, 1), "eval_seconds": round(r.seconds, 1),
            "check_rel_diff": check,
        }
        print(f"{label:14s} ppl {r.perplexity:9.3f} ({100 * (r.perplexity / FP32_PPL - 1):+7.1f}%)  "
              f"compile {compile_s:6.1f}s  eval {r.seconds:6.1f}s  check {check:.1e}", flush=True)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    print("\n| row | scheme | perplexity | vs FP32 |\n|---|---|---|---|")
    for label in labels:
        r = results[label]
        print(f"| {label} | {r['what']} | {r['perplexity']:.2f} | {100 * r['vs_fp32']:+.1f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

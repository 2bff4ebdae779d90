"""`python -m lowc`: the command line.

    python -m lowc run     [--scheme S] [--tokens N] [--window W]   compile SmolLM2, print IR summary + perplexity
    python -m lowc ir      [--model M] [--scheme S] [--dump DIR] [--graph]   the IR of a model under a scheme
    python -m lowc eval    [--scheme S] [--tokens N] [--window W] [--text FILE]   perplexity only
    python -m lowc schemes                                           the scheme presets and their pipelines
"""

from __future__ import annotations

import argparse
import logging
import sys

DEFAULT_SCHEME = "w16a16"  # the main job: about a minute on 2 cores; --scheme w4a8kv4 adds calibration and GPTQ (minutes)


def _load(model: str, dtype: str):
    import torch

    dt = getattr(torch, dtype)
    if model.startswith("tiny-"):
        from lowc.tiny_models import tiny_model

        return tiny_model(model.removeprefix("tiny-"), dtype=dt), None
    from lowc.models import load

    return load(model, dtype=dt)


def cmd_run(args) -> int:
    import lowc
    from lowc.eval import perplexity, wikitext2_test_text

    model, tok = _load(args.model, args.dtype)
    qmodel = lowc.compile(model, args.scheme, dump_ir=args.dump)
    print(f"== {qmodel!r}")
    print(qmodel.summary_text())
    print("passes: " + ", ".join(f"{r.name} ({r.seconds:.2f}s)" for r in qmodel.pass_records))
    print(f"compile time: {qmodel.compile_seconds:.1f}s")
    result = perplexity(qmodel, tok, wikitext2_test_text(), tokens=args.tokens, window=args.window)
    print(result)
    print(f"perplexity: {result.perplexity:.4f}")
    return 0


def cmd_ir(args) -> int:
    import lowc

    model, _ = _load(args.model, args.dtype)
    qmodel = lowc.compile(model, args.scheme, dump_ir=args.dump, progress=False)
    if args.graph:
        print(qmodel.ir())
    print(qmodel.summary_text())
    for r in qmodel.pass_records:
        print(f"  {r!r}  {r.info if r.info else ''}")
    if args.dump:
        print(f"IR dump written to {args.dump}")
    return 0


def cmd_schemes(args) -> int:
    from lowc.passes import REGISTRY
    from lowc.schemes import PRESETS

    for name, s in PRESETS.items():
        ready = all(p in REGISTRY for p in s.passes)
        print(f"{name:10s} w{s.w_bits} a{s.a_bits} kv{s.kv_bits} g{s.group_size}  "
              f"{'ready' if ready else 'not implemented yet'}  passes: {' -> '.join(s.passes)}")
    print("generic form: w{N}a{M}[kv{K}][-g{G}]")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "eval":
        from lowc.eval import eval_main

        return eval_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m lowc", description="lowc: low-bit LLM compiler")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="cmd", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="smollm2", help="smollm2 or tiny-llama/tiny-qwen2/tiny-mistral")
    common.add_argument("--scheme", default=DEFAULT_SCHEME)
    common.add_argument("--dtype", default="float32")
    common.add_argument("--dump", default=None, help="directory for per-pass IR dumps")
    r = sub.add_parser("run", parents=[common], help="compile SmolLM2 and print IR summary and perplexity")
    r.add_argument("--tokens", type=int, default=20480)
    r.add_argument("--window", type=int, default=1024)
    r.set_defaults(fn=cmd_run)
    i = sub.add_parser("ir", parents=[common], help="print the IR of a model under a scheme")
    i.add_argument("--graph", action="store_true", help="print the whole graph, one node a line")
    i.set_defaults(fn=cmd_ir)
    sub.add_parser("eval", help="perplexity (see python -m lowc eval --help)")
    sub.add_parser("schemes", help="list scheme presets").set_defaults(fn=cmd_schemes)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    from lowc.errors import LowcError

    try:
        return args.fn(args)
    except LowcError as e:
        print(f"lowc: error: {e}", file=sys.stderr)
        return 2

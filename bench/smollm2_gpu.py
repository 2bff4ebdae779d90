"""SmolLM2 on the GPU: perplexity through lowc's CUDA kernels vs the reference path, and decode speed.

For each scheme: compile the real model on the GPU (fp32 weights, so calibration matches the CPU
reference), score WikiText-2 with the Triton kernels, then move the same compiled model to the CPU
and score it again with the plain-torch references: the two must agree within 0.5%. Then time one
decode step (eager and CUDA-graph replay) at a few batch sizes.

    python bench/smollm2_gpu.py --gguf PATH --schemes w4a8kv4,w4a16 --tokens 20480 --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def load(gguf: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    return model, tok


def decode_timing(qmodel, batches, context_len: int = 512, steps: int = 20) -> list[dict]:
    from lowc.runtime.context import ForwardContext
    from lowc.runtime.cuda_graphs import DecodeGraphs

    rows = []
    for b in batches:
        cache = qmodel.new_cache(b + 1, context_len + 2 * steps + 8)  # warm-up + graphed + eager steps
        slots = cache.allocate(b)
        ids = torch.randint(0, qmodel.vocab_size, (b, context_len), device="cuda")
        with torch.no_grad():
            qmodel(ids, context=ForwardContext(cache, slots, [context_len] * b, context_len))
        graphs = DecodeGraphs(qmodel, cache, max_batch=b, buckets=(b,))
        tok = torch.randint(0, qmodel.vocab_size, (b, 1), device="cuda")
        with torch.no_grad():
            for _ in range(3):  # warm-up (counted in the cache size above with the eager steps)
                graphs.step(tok, slots)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(steps):
                graphs.step(tok, slots)
            torch.cuda.synchronize()
            graphed = (time.perf_counter() - t0) / steps
            t0 = time.perf_counter()
            for _ in range(steps // 2):
                qmodel(tok, context=ForwardContext(cache, slots, [1] * b, 1))
            torch.cuda.synchronize()
            eager = (time.perf_counter() - t0) / (steps // 2)
        graphs.close()
        rows.append({"batch": b, "graphed_ms": graphed * 1e3, "eager_ms": eager * 1e3,
                     "tokens_per_s_graphed": b / graphed})
        del cache
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--gguf", type=Path, required=True)
    p.add_argument("--schemes", default="w4a8kv4")
    p.add_argument("--tokens", type=int, default=20480)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--decode-batches", default="1,16,64")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()

    import lowc
    from lowc.eval import calibration_batches, perplexity, wikitext2_test_text

    model, tok = load(args.gguf)
    text = wikitext2_test_text()
    results = {"gpu": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "tokens": args.tokens,
               "window": args.window, "torch": torch.__version__, "schemes": {}}
    calib = calibration_batches(tok)
    for name in args.schemes.split(","):
        t0 = time.perf_counter()
        where = "cuda"
        try:
            qmodel = lowc.compile(model.cuda(), name, calibration=calib, progress=False)
        except Exception as e:  # report, then take the other supported flow: compile on CPU, move
            print(f"{name}: compiling on the GPU failed ({type(e).__name__}: {e}); compiling on the CPU", flush=True)
            where = "cpu->cuda"
            qmodel = lowc.compile(model.cpu(), name, calibration=calib, progress=False).cuda()
        compile_s = time.perf_counter() - t0
        gpu = perplexity(qmodel, tok, text, tokens=args.tokens, window=args.window, progress=False)
        print(f"{name}: ppl with the GPU kernels {gpu.perplexity:.4f} ({gpu.seconds:.1f}s)", flush=True)
        try:
            timing = decode_timing(qmodel, [int(b) for b in args.decode_batches.split(",")])
        except Exception as e:  # keep the perplexity cross-check even if timing fails
            print(f"{name}: decode timing failed: {type(e).__name__}: {e}", flush=True)
            timing = []
        ref = perplexity(qmodel.cpu(), tok, text, tokens=args.tokens, window=args.window, progress=False)
        rel = abs(gpu.perplexity - ref.perplexity) / ref.perplexity
        results["schemes"][name] = {"ppl_gpu_kernels": gpu.perplexity, "ppl_reference_cpu": ref.perplexity,
                                    "rel_diff": rel, "compile_s": compile_s, "compiled_on": where, "gpu_eval_s": gpu.seconds,
                                    "decode": timing}
        print(f"{name}: ppl GPU kernels {gpu.perplexity:.4f}  reference {ref.perplexity:.4f}  "
              f"diff {rel * 100:.3f}%  ({'OK' if rel <= 0.005 else 'MISMATCH'})", flush=True)
        model.cpu()
        del qmodel
        torch.cuda.empty_cache()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(f"\n{'scheme':10s} {'ppl gpu':>9s} {'ppl ref':>9s} {'diff%':>7s}  decode ms/step graphed (eager) by batch")
    for name, r in results["schemes"].items():
        dec = "  ".join(f"B{d['batch']}: {d['graphed_ms']:.2f} ({d['eager_ms']:.1f})" for d in r["decode"])
        print(f"{name:10s} {r['ppl_gpu_kernels']:9.4f} {r['ppl_reference_cpu']:9.4f} {r['rel_diff'] * 100:7.3f}  {dec}")


if __name__ == "__main__":
    main()

"""End-to-end decode throughput: lowc schemes against Hugging Face BF16 baselines, in one run.

A Llama-3-8B-shaped model (random init, bf16; `--layers` sets the depth) is given random prompts of
`--prompt` tokens and then decodes `--gen` tokens greedily, for every batch of the sweep and every
variant:

    hf_eager        transformers' forward over a StaticCache, one eager call per step
    hf_compiled     the same step under torch.compile(mode="reduce-overhead") (Inductor + CUDA graphs)
    lowc:<scheme>   lowc.compile(model, <scheme> with RTN weights), decode by lowc's CUDA-graph runner
    lowc+inductor:<scheme>  the same compiled graph wrapped in torch.compile (Inductor) before lowc's
                    runner captures it (only with --inductor-batches, run last: on the H200 it did not
                    finish compiling + capturing B=64 within ~465 s; docs/benchmarks.md has the decision)

Weights are rounded to nearest (no smoothing, clipping or GPTQ: they need calibration statistics and
do not change the packed formats or kernels, hence not the speed). Per (variant, batch): prefill time
(chunked so activations stay bounded; HF keeps only the last position's logits), decode time over
`gen - 1` steps (the prefill yields the first token), time per step, tokens/s = batch / step time,
peak memory over the whole request and over the decode phase alone (torch.cuda.max_memory_allocated,
reset per variant and batch), and the memory already resident (weights). For lowc also the host time
of one decode step (the runner's Python + metadata copy, measured with the GPU idle) against the GPU
time of one graphed step (sum of its kernels, torch.profiler), and at `--profile-batches` a breakdown
of one step by kernel and by lowc op. A batch that runs out of memory ends that variant's sweep.

    python bench/e2e.py --layers 8 --batches 1,16,64,256,1024 --out OUT/e2e.json      # on the GPU
    python bench/e2e.py --device cpu --tiny --batches 1,2 --prompt 8 --gen 3 --baselines eager

Results are written to `--out` after every row, so a run stopped by its time limit keeps what it
measured; `--budget-s` stops starting new rows after that many seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import time
import traceback
from pathlib import Path

import torch

LLAMA3_8B = dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, rope_theta=500000.0, max_position_embeddings=8192,
                 rms_norm_eps=1e-5, tie_word_embeddings=False)
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, rope_theta=500000.0, max_position_embeddings=1024, rms_norm_eps=1e-5,
            tie_word_embeddings=False)
GB = 1e9


# ---------------------------------------------------------------------------------------- helpers
class Clock:
    """Wall time with the device drained at both ends; memory statistics where the device has them."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float | None:
        return torch.cuda.max_memory_allocated() / GB if self.cuda else None

    def resident_gb(self) -> float | None:
        return torch.cuda.memory_allocated() / GB if self.cuda else None


def tensor_gb(module: torch.nn.Module) -> float:
    """Bytes of a module's parameters and buffers (what its weights occupy on the device)."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()]) / GB


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_model(layers: int, tiny: bool, device: torch.device, seed: int = 0):
    """A random-init LlamaForCausalLM in bf16, built directly on `device` (transformers' own init)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**(TINY if tiny else LLAMA3_8B), num_hidden_layers=layers)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


def rtn_scheme(name: str):
    """The preset's formats and kernels with round-to-nearest weights (no calibration passes; the key
    centre, a calibration mean, is off too: it costs the RoPE/store kernel one [Hkv, D] load)."""
    from lowc.schemes import parse_scheme

    s = parse_scheme(name)
    return s.replace(name=f"{s.name}-rtn", smooth_alpha=None, smooth_attention_alpha=None, clip_search=False,
                     gptq=False, kv_key_center=False, scale_search=False)


def prompts(batch: int, length: int, vocab: int, device, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + batch)
    return torch.randint(0, vocab, (batch, length), generator=g).to(device)


def kernel_profile(step, n: int) -> dict:
    """GPU time per call of `step` (kernels summed, CUDA graphs included) and its split by kernel name."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    by_name: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            by_name[e.name] = by_name.get(e.name, 0.0) + e.device_time_total / n  # µs
    total = sum(by_name.values()) or None  # None: the profiler saw no kernels (no CUPTI graph tracing)
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:25]
    return {"gpu_us_per_step": total, "kernels_us": {k[:120]: round(v, 2) for k, v in top}}


def op_profile(step) -> dict:
    """One eager step: device µs per lowc op (by input shapes) and per aten op at the top level."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        step()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages(group_by_input_shape=True):
        if e.key.startswith("lowc::") or e.key in ("aten::linear", "aten::embedding", "aten::argmax", "aten::mm"):
            shapes = str(e.input_shapes)[:100]
            rows.append({"op": e.key, "shapes": shapes, "calls": e.count, "device_us": round(e.device_time_total, 1)})
    return {"ops": sorted(rows, key=lambda r: -r["device_us"])}


# ---------------------------------------------------------------------------------------- HF BF16
def hf_row(model, batch: int, args, clock: Clock, compiled) -> dict:
    """Prefill + greedy decode with a StaticCache; `compiled` is the torch.compile'd step or None."""
    from transformers import StaticCache

    device = next(model.parameters()).device
    ids = prompts(batch, args.prompt, model.config.vocab_size, device)
    resident = clock.resident_gb()
    clock.reset_peak()
    weights = tensor_gb(model)
    cache = StaticCache(config=model.config, max_cache_len=args.prompt + args.gen + 8)
    chunk = max(1, min(args.prompt, args.prefill_tokens // batch))  # positions per prefill call
    t0 = clock.now()
    with torch.no_grad():
        for s in range(0, args.prompt, chunk):
            e = min(args.prompt, s + chunk)
            out = model(input_ids=ids[:, s:e], past_key_values=cache, use_cache=True, logits_to_keep=1,
                        cache_position=torch.arange(s, e, device=device))
        tok = out.logits[:, -1].argmax(-1, keepdim=True)
        del out
        prefill_s = clock.now() - t0
        prefill_peak = clock.peak_gb()
        positions = torch.arange(args.prompt, args.prompt + args.gen + 8, device=device)

        def eager(tok, i):
            logits = model(input_ids=tok, past_key_values=cache, cache_position=positions[i:i + 1], use_cache=True).logits
            return logits[:, -1].argmax(-1, keepdim=True)

        def graphed(tok, i):
            torch.compiler.cudagraph_mark_step_begin()
            return compiled(model, tok, cache, positions[i:i + 1]).clone()  # the graph's output is reused

        step = graphed if compiled is not None else eager
        t0 = clock.now()
        for i in range(3):  # warm-up (compiles and records the graph); the timed loop rewrites these positions
            step(tok, i)
        warmup_s = clock.now() - t0
        clock.reset_peak()
        steps = args.gen - 1
        t0 = clock.now()
        for i in range(steps):
            tok = step(tok, i)
        decode_s = clock.now() - t0
        row = {"batch": batch, "prefill_s": prefill_s, "decode_s": decode_s, "steps": steps,
               "step_ms": decode_s / steps * 1e3, "tokens_per_s": batch * steps / decode_s,
               "warmup_s": warmup_s, "weights_gb": weights, "resident_gb": resident,
               "decode_peak_gb": clock.peak_gb(),
               "peak_gb": max(prefill_peak or 0, clock.peak_gb() or 0) if clock.cuda else None,
               "kv_cache_gb": sum(t.numel() * t.element_size() for layer in cache.layers
                                  for t in (getattr(layer, "keys", None), getattr(layer, "values", None))
                                  if isinstance(t, torch.Tensor)) / GB}
        if clock.cuda and batch in args.profile_batches:
            row["profile"] = kernel_profile(lambda: step(tok, steps), 3)
    del cache
    return row


def hf_compiled_step():
    def decode_step(model, tok, cache, cache_position):
        out = model(input_ids=tok, past_key_values=cache, cache_position=cache_position, use_cache=True)
        return out.logits[:, -1].argmax(-1, keepdim=True)

    return torch.compile(decode_step, mode="reduce-overhead", fullgraph=True)


# ---------------------------------------------------------------------------------------- lowc
class InductorWrapped:
    """Stands in for a CompiledModel inside lowc's DecodeGraphs: the same graph, compiled by Inductor.

    The runner only calls `graph_module` (the batch always has its own bucket here)."""

    def __init__(self, qmodel):
        self.graph_module = torch.compile(qmodel.graph_module, dynamic=False, fullgraph=True)
        self.kv_spec = qmodel.kv_spec


def lowc_row(qmodel, batch: int, args, clock: Clock, runner_model=None) -> dict:
    """Chunked prefill, then decode: CUDA-graph replay on a GPU (eager steps on the CPU)."""
    from lowc.runtime.context import ForwardContext

    device = next(qmodel.graph_module.parameters()).device
    ids = prompts(batch, args.prompt, qmodel.vocab_size, device)
    resident = clock.resident_gb()
    clock.reset_peak()
    extra_steps = 16  # host-time and profiling steps after the timed loop
    cache = qmodel.new_cache(batch + (1 if clock.cuda else 0), args.prompt + args.gen + extra_steps)
    slots = cache.allocate(batch)
    rows_per_chunk = max(1, args.prefill_tokens // args.prompt)
    t0 = clock.now()
    with torch.no_grad():
        firsts = []
        for i in range(0, batch, rows_per_chunk):
            part = slots[i:i + rows_per_chunk]
            logits = qmodel(ids[i:i + len(part)], context=ForwardContext(cache, part, [args.prompt] * len(part), args.prompt))
            firsts.append(logits[:, -1].argmax(-1))
            del logits
        tok = torch.cat(firsts).view(batch, 1)
        prefill_s = clock.now() - t0
        prefill_peak = clock.peak_gb()
        row = {"batch": batch, "prefill_s": prefill_s, "weights_gb": tensor_gb(qmodel), "resident_gb": resident,
               "kv_cache_gb": cache.nbytes / GB}
        graphs = None
        if clock.cuda:
            from lowc.runtime.cuda_graphs import DecodeGraphs

            t0 = time.perf_counter()
            graphs = DecodeGraphs(runner_model or qmodel, cache, max_batch=batch, buckets=(batch,))
            row["capture_s"] = time.perf_counter() - t0

            def step(tok):
                return graphs.step(tok, slots).argmax(-1, keepdim=True)
        else:
            def step(tok):
                return qmodel(tok, context=ForwardContext(cache, slots, [1] * batch, 1))[:, -1].argmax(-1, keepdim=True)

        clock.reset_peak()
        steps = args.gen - 1
        t0 = clock.now()
        for _ in range(steps):
            tok = step(tok)
        decode_s = clock.now() - t0
        row.update({"decode_s": decode_s, "steps": steps, "step_ms": decode_s / steps * 1e3,
                    "tokens_per_s": batch * steps / decode_s, "decode_peak_gb": clock.peak_gb(),
                    "peak_gb": max(prefill_peak or 0, clock.peak_gb() or 0) if clock.cuda else None})
        if not torch.isfinite(qmodel(tok, context=ForwardContext(cache, slots, [1] * batch, 1))).all():
            raise FloatingPointError(f"non-finite logits after decoding (batch {batch})")
        if clock.cuda:
            # Host cost of one graphed step (Python, the context, the metadata copy, the replay launch),
            # measured with the GPU idle, so no waiting is counted in it.
            host = []
            for _ in range(5):
                clock.sync()
                t0 = time.perf_counter()
                step(tok)
                host.append(time.perf_counter() - t0)
            row["host_ms"] = sorted(host)[len(host) // 2] * 1e3
            prof = kernel_profile(lambda: step(tok), 3)
            row["gpu_ms"] = prof["gpu_us_per_step"] / 1e3 if prof["gpu_us_per_step"] else None
            if batch in args.profile_batches:
                row["profile"] = prof
                if runner_model is None:
                    row["op_profile"] = op_profile(
                        lambda: qmodel(tok, context=ForwardContext(cache, slots, [1] * batch, 1)))
    if graphs is not None:
        graphs.close()
    del cache, graphs
    return row


# ---------------------------------------------------------------------------------------- driver
class Run:
    """The results file, written after every row; the time budget; the order of variants."""

    def __init__(self, args, device):
        self.args, self.device, self.t0 = args, device, time.perf_counter()
        self.clock = Clock(device)
        self.results = {"model": f"Llama-3-8B shape, {args.layers} layers, random init, bf16" if not args.tiny
                        else f"tiny Llama, {args.layers} layers, random init, bf16",
                        "prompt": args.prompt, "gen": args.gen, "batches": args.batches, "date": time.strftime("%Y-%m-%d"),
                        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
                        "torch": torch.__version__, "python": platform.python_version(), "rows": [], "compile": {},
                        "errors": [], "skipped": []}
        try:
            import transformers
            import triton

            self.results.update(transformers=transformers.__version__, triton=triton.__version__)
        except ImportError:
            pass

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def out_of_time(self) -> bool:
        return self.elapsed() > self.args.budget_s

    def save(self) -> None:
        if self.args.out:
            path = Path(self.args.out)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.results, indent=1))
            os.replace(tmp, path)

    def sweep(self, variant: str, fn, batches) -> None:
        """Run `fn(batch)` for each batch; an OOM ends the sweep, any other error too (it is recorded)."""
        for b in batches:
            if self.out_of_time():
                self.results["skipped"].append(f"{variant} B={b}: time budget")
                continue
            try:
                row = fn(b)
            except torch.cuda.OutOfMemoryError:
                self.results["rows"].append({"variant": variant, "batch": b, "error": "out of memory"})
                print(f"{variant:24s} B={b:5d}  out of memory", flush=True)
                free_memory()
                break
            except Exception as e:  # record, go on with the next variant
                self.results["errors"].append(f"{variant} B={b}: {type(e).__name__}: {e}\n{traceback.format_exc()[-1500:]}")
                print(f"{variant} B={b}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                if self.args.stop_on_error and variant.startswith("lowc:"):
                    self.save()  # a broken lowc path makes the rest of the run pointless: stop, keep the device time
                    raise SystemExit(f"stopping: {variant} failed (--stop-on-error)") from e
                free_memory()
                break
            row["variant"] = variant
            if row.get("decode_peak_gb") is not None:  # this variant alone: its weights + what decode adds
                row["memory_gb"] = row["weights_gb"] + row["decode_peak_gb"] - row["resident_gb"]
            self.results["rows"].append(row)
            self.save()
            print(f"{variant:24s} B={b:5d}  step {row['step_ms']:8.3f} ms  {row['tokens_per_s']:10.1f} tok/s  "
                  f"prefill {row['prefill_s']:6.2f} s  peak {fmt(row.get('peak_gb'))} GB  memory "
                  f"{fmt(row.get('memory_gb'))} GB  host {fmt(row.get('host_ms'), 3)} ms  gpu "
                  f"{fmt(row.get('gpu_ms'), 3)} ms  [{self.elapsed():.0f}s]", flush=True)
            free_memory()


PDL_SETTINGS = {"": (None, None), "@attention_pdl": (None, 1), "@pdl2": (2, None)}  # label: (mode, attention level)


@contextlib.contextmanager
def pdl_setting(mode, attention_level):
    """Run with PDL `mode` (None: as shipped) and the Gluon decode attention's PDL level (None: as shipped)."""
    from lowc.runtime import attention_gluon, pdl

    saved = pdl.pdl_mode(), attention_gluon.PDL_LEVEL
    try:
        if mode is not None:
            pdl.set_pdl(mode)
        if attention_level is not None:
            attention_gluon.PDL_LEVEL = attention_level
        yield
    finally:
        pdl.set_pdl(saved[0])
        attention_gluon.PDL_LEVEL = saved[1]


def fmt(v, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def compile_lowc(run: Run, model, scheme: str):
    import lowc

    t0 = time.perf_counter()
    # A copy: the compiled graph shares the model's unquantized parameters (embeddings, norms, lm_head)
    # as the same Parameter objects, and parking it on the host must not move the baseline's. (Autograd
    # history in the compiled buffers is prevented by lowc itself: passes run under no_grad.)
    source = copy.deepcopy(model)
    q = lowc.compile(source, rtn_scheme(scheme), progress=False)
    del source
    run.results["compile"][scheme] = time.perf_counter() - t0
    print(f"compiled {scheme} (RTN) in {run.results['compile'][scheme]:.1f}s: {q!r}", flush=True)
    return q.cpu() if run.device.type == "cuda" else q  # parked on the host until its sweep


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--tiny", action="store_true", help="a tiny Llama (smoke test) instead of the 8B shape")
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,16,64,256,1024")
    p.add_argument("--prompt", type=int, default=1024)
    p.add_argument("--gen", type=int, default=512)
    p.add_argument("--schemes", default="w4a8kv4,w8a8,w4a16")
    p.add_argument("--baselines", default="compiled,eager", help="any of compiled, eager")
    p.add_argument("--eager-batches", default="", help="batches for hf_eager (default: --batches)")
    p.add_argument("--inductor-batches", default="",
                   help="batches for lowc+inductor (first scheme), run last; default none (see docs/benchmarks.md)")
    p.add_argument("--profile-batches", default="64,256")
    p.add_argument("--prefill-tokens", type=int, default=16384, help="tokens per prefill call (activation bound)")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no new row after this many seconds")
    p.add_argument("--stop-on-error", action="store_true", help="end the run when a lowc variant fails (not on OOM)")
    p.add_argument("--pdl-ab", action="store_true",
                   help="the first scheme under three PDL settings, interleaved per batch: the shipped mode, "
                        "that mode with the Gluon decode attention launched with PDL, and mode 2 (every kernel)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    args.batches, args.profile_batches = ints(args.batches), ints(args.profile_batches)
    args.inductor_batches, args.eager_batches = ints(args.inductor_batches), ints(args.eager_batches)
    schemes = [s for s in args.schemes.split(",") if s]
    baselines = [s for s in args.baselines.split(",") if s]
    if args.gen < 2:
        p.error("--gen must be at least 2 (the prefill makes the first token, decode steps the rest)")
    device = torch.device(args.device)
    run = Run(args, device)
    clock = run.clock
    host = torch.device("cpu")

    t0 = time.perf_counter()
    model = build_model(args.layers, args.tiny, device)
    run.results["build_s"] = time.perf_counter() - t0
    run.results["bf16_weights_gb"] = sum(t.numel() * t.element_size() for t in model.parameters()) / GB
    # Compile the first scheme now (lowc compiles on the model's device; the others after the baselines).
    compiled = {}
    first = schemes[0] if schemes else None
    if first:
        compiled[first] = compile_lowc(run, model, first)

    def lowc_sweep(name, pdl_ab=False):
        q = compiled[name].to(device)
        if pdl_ab:
            for b in args.batches:
                for label, setting in PDL_SETTINGS.items():
                    with pdl_setting(*setting):
                        run.sweep(f"lowc:{name}{label}", lambda b: lowc_row(q, b, args, clock), [b])
        else:
            run.sweep(f"lowc:{name}", lambda b: lowc_row(q, b, args, clock), args.batches)
        compiled[name] = q.to(host) if device.type == "cuda" else q
        free_memory()

    if first:  # the headline variant first, with the BF16 model parked on the host
        model.to(host)
        free_memory()
        lowc_sweep(first, args.pdl_ab)
        model.to(device)
    if "compiled" in baselines and device.type == "cuda":
        step = hf_compiled_step()
        run.sweep("hf_compiled", lambda b: hf_row(model, b, args, clock, step), args.batches)
        run.results["inductor_counters"] = {k: dict(v) for k, v in torch._dynamo.utils.counters.items()
                                            if k in ("inductor", "stats", "unimplemented")}
        torch._dynamo.reset()
        free_memory()
    if "eager" in baselines:
        run.sweep("hf_eager", lambda b: hf_row(model, b, args, clock, None), args.eager_batches or args.batches)
    for name in schemes[1:]:
        if not run.out_of_time():
            compiled[name] = compile_lowc(run, model, name)
    model.to(host)
    free_memory()
    for name in schemes[1:]:
        if name in compiled:
            lowc_sweep(name)
    if first and args.inductor_batches and device.type == "cuda":  # last: it is the slowest to compile
        q = compiled[first].to(device)
        try:
            wrapped = InductorWrapped(q)
            run.sweep(f"lowc+inductor:{first}", lambda b: lowc_row(q, b, args, clock, runner_model=wrapped),
                      args.inductor_batches)
        finally:
            torch._dynamo.reset()
            compiled[first] = q.to(host)
    run.results["elapsed_s"] = run.elapsed()
    run.save()
    print_summary(run.results)
    return run.results


def print_summary(res: dict) -> None:
    rows = [r for r in res["rows"] if "error" not in r]
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    print(f"\n{res['model']} on {res['device']}; prompt {res['prompt']}, gen {res['gen']}")
    print("memory = the variant's weights + what its decode adds (cache, workspace): peak over decode minus what")
    print("was resident before, plus the weights; peak = max allocated over prefill + decode (includes residents)")
    print(f"{'variant':24s} {'B':>5s} {'ms/step':>9s} {'tok/s':>9s} {'prefill s':>9s} {'peak GB':>8s} {'mem GB':>7s} "
          f"{'host ms':>8s} {'gpu ms':>7s}")
    for r in rows:
        print(f"{r['variant']:24s} {r['batch']:5d} {r['step_ms']:9.3f} {r['tokens_per_s']:9.1f} {r['prefill_s']:9.2f} "
              f"{fmt(r.get('peak_gb')):>8s} {fmt(r.get('memory_gb')):>7s} {fmt(r.get('host_ms'), 3):>8s} "
              f"{fmt(r.get('gpu_ms'), 3):>7s}")
    best = {v: max((r for r in rows if r["variant"] == v), key=lambda r: r["tokens_per_s"]) for v in variants}
    base = [v for v in ("hf_compiled", "hf_eager") if v in best]
    if not base:
        return
    top = max(base, key=lambda v: best[v]["tokens_per_s"])
    print(f"\nbest BF16 baseline: {top} {best[top]['tokens_per_s']:.0f} tok/s at B={best[top]['batch']}")
    for v in variants:
        if v.startswith("lowc"):
            same = {r["batch"]: r for r in rows if r["variant"] == top}
            mem = [f"B={r['batch']}: {r['memory_gb'] / same[r['batch']]['memory_gb']:.2f}"
                   for r in rows if r["variant"] == v and r["batch"] in same and r.get("memory_gb")]
            print(f"{v:24s} max {best[v]['tokens_per_s']:9.0f} tok/s at B={best[v]['batch']:4d} = "
                  f"{best[v]['tokens_per_s'] / best[top]['tokens_per_s']:.2f}x; decode memory vs {top}: {', '.join(mem)}")


if __name__ == "__main__":
    main()

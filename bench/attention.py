"""Decode attention over the KV cache on one GPU: lowc KV4 and KV8 against SDPA over a BF16 cache.

    python bench/attention.py [--json OUT] [--quick] [--launches]
    python bench/attention.py --warps --precompile 12 [--compile-only] [--rep MS] --json OUT   # 1-2 warp programs
    python bench/attention.py --markdown RESULTS.json     # the docs/benchmarks.md "Attention" section

Shapes: Llama-3-8B attention (32 query heads, 8 KV heads, head_dim 128, bf16 queries), one new token
per sequence, B in {16, 64} sequences each holding S in {1024, 4096, 16384} tokens (the whole cache
is read). Both sides are timed in the same run by CUDA-graph replay (triton.testing.do_bench_cudagraph,
median), each over enough copies of its cache that one replay never finds the data in L2. SDPA is
torch.nn.functional.scaled_dot_product_attention(q [B, 32, 1, 128], k/v [B, 8, S, 128], enable_gqa=True)
on a BF16 cache; lowc reads its own cache layout (lowc.ops.kv_ops) through lowc.runtime.attention.

The floor of each side is the bytes it must read (K and V data, scales and zeros, q, and the output
written) over the device-to-device copy bandwidth measured in the same run (bytes read + written per
second): `floor %` = floor time / measured time. For lowc the table gives the default launch
configuration, the previous default, and the best of a small sweep (BLOCK_N x warps x stages x splits
x MMA rows x register cap x K/V staged through shared memory). With --launches it also counts the CUDA kernels one decoder layer launches
in a decode step of a compiled w4a8kv4 model (profiled difference between a 2-layer and a 1-layer
model), with and without the fuse_glue pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch

HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
BATCHES = (16, 64)
LENGTHS = (1024, 4096, 16384)
L2_FLUSH_BYTES = 256 * 2**20  # rotate over copies until one pass of the graph reads this much
CONFIG_SWEEP = [  # (BLOCK_N, warps, stages, split multiplier, unpack_asm, block_h, maxnreg, stage_k, stage_v[, q_int8]); first = default
    (128, 4, None, 1, True, 8, 128, False, False),  # stages None: the format's default (DEFAULT_STAGES)
    (128, 4, 2, 1, True, 8, 128, False, True), (128, 4, 3, 1, True, 8, 128, False, True),
    (128, 4, 2, 1, True, 8, 128, True, True), (128, 4, 2, 1, True, 16, 128, True, True),
    (128, 4, 3, 1, True, 16, 128, True, True), (256, 8, 2, 1, True, 8, 128, False, True),
    (128, 4, 2, 2, True, 8, 128, False, True), (64, 4, 3, 1, True, 8, 128, False, True),
]
BEFORE = 0  # index of the previous default in CONFIG_SWEEP (the default did not change in the last run)
# --warps: programs of one or two warps (issue 6, third round), each warp owning its whole token tile, with
# more sequence splits to keep the GPU full. The register cap per (BLOCK_N, warps) is the smallest that
# ptxas fits without spilling more than a few words (AOT compile for sm_90a, docs/kernels-attention.md).
SMALL_PROGRAM_CAPS = {(32, 1): 168, (64, 1): None, (32, 2): 128, (64, 2): 168, (128, 2): 192}
WARP_SWEEP = [(bn, warps, stages, mult, True, 8, cap, False, False)
              for (bn, warps), cap in SMALL_PROGRAM_CAPS.items() for stages in (2, 3) for mult in (1, 2, 4)]
# --int8: q . k on the INT8 MMA (DecodeConfig.q_int8, opt-in) under several launch choices, the default first.
INT8_SWEEP = [(128, 4, None, 1, True, 8, 128, False, False),
              (128, 4, None, 1, True, 8, 128, False, False, True), (128, 4, 2, 1, True, 8, 128, False, False, True),
              (128, 4, 2, 1, True, 8, 128, False, True, True), (128, 4, 3, 1, True, 8, 128, False, True, True),
              (128, 4, None, 2, True, 8, 128, False, False, True), (64, 4, 3, 1, True, 8, 128, False, False, True),
              (128, 4, None, 1, True, 16, 128, False, False, True)]
SHORT_TOP = 4  # --warps: at S < 4096 only the default and the SHORT_TOP best configurations of the longer rows


def padded(entry) -> tuple:
    """A sweep entry with its optional last field (q_int8, default False) filled in."""
    return tuple(entry) + (False,) * (10 - len(entry))


def cache_bytes(fmt: str, b: int, s: int) -> int:
    """Bytes read for one decode step: K and V (data + scales + zeros), q, and the output."""
    per_token = {"bf16": 2 * HEAD_DIM, "kv8": HEAD_DIM + 2, "kv4": HEAD_DIM // 2 + 4,
                 "kv4k2": HEAD_DIM // 2 + 6}[fmt]  # kv4k2: keys 8 bytes of scale/zero, values 4 (mean 6)
    return 2 * b * KV_HEADS * s * per_token + 2 * (2 * b * HEADS * HEAD_DIM)


def bandwidths() -> tuple[float, float]:
    """(read, copy) bandwidth in bytes/s, graphed like the rest: a 4 GiB bf16 sum (bytes read) and a
    2 GiB device-to-device copy (bytes read + written). Attention only reads, so the floor uses the read figure."""
    from triton.testing import do_bench_cudagraph

    x = torch.randn(2**31, device="cuda", dtype=torch.bfloat16)
    read_ms = do_bench_cudagraph(lambda: x.sum(dtype=torch.float32), rep=100, return_mode="median")
    del x
    src = torch.randn(2**29, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    copy_ms = do_bench_cudagraph(lambda: dst.copy_(src), rep=100, return_mode="median")
    return 2**31 * 2 / (read_ms * 1e-3), 2 * src.numel() * 4 / (copy_ms * 1e-3)


def rotating(fns):
    """One callable that runs the next of `fns` at each call (each call records a different copy)."""
    state = {"i": 0}

    def run():
        fns[state["i"] % len(fns)]()
        state["i"] += 1

    return run


def copies_for(nbytes: int) -> int:
    return max(1, min(16, math.ceil(L2_FLUSH_BYTES / nbytes)))


def sdpa_case(b: int, s: int):
    q = torch.randn(b, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    n = copies_for(cache_bytes("bf16", b, s))
    kvs = [(torch.randn(b, KV_HEADS, s, HEAD_DIM, device="cuda", dtype=torch.bfloat16),
            torch.randn(b, KV_HEADS, s, HEAD_DIM, device="cuda", dtype=torch.bfloat16)) for _ in range(n)]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    fns = [lambda k=k, v=v: sdpa(q, k, v, scale=HEAD_DIM**-0.5, enable_gqa=True) for k, v in kvs]
    return rotating(fns), q, kvs[0]


def cache_format(label: str) -> tuple[str, int]:
    """(KV format, key groups) of a bench label: "kv4k2" is kv4 with two key scale/zero pairs (w4a8kv4)."""
    return ("kv4", 2) if label == "kv4k2" else (label, 1)


def random_cache(label: str, b: int, s: int, seed: int) -> list[torch.Tensor]:
    """One layer's K and V parts filled with random (valid) codes and scales, never zeros."""
    from lowc.ops.kv_ops import KVCacheSpec

    fmt, key_groups = cache_format(label)
    spec = KVCacheSpec(fmt, 1, KV_HEADS, HEAD_DIM, torch.bfloat16, key_groups=key_groups)
    g = torch.Generator(device="cuda").manual_seed(seed)
    parts = spec.allocate(b, s, "cuda")
    for i, t in enumerate(parts):
        name = spec.parts[i % len(spec.parts)]
        if name == "data":  # every code of the format: uint8 bytes (two nibbles) or int8 -127..127
            lo, hi = (0, 256) if t.dtype == torch.uint8 else (-127, 128)
            t.copy_(torch.randint(lo, hi, t.shape, device="cuda", generator=g, dtype=torch.int32).to(t.dtype))
        elif name == "scale":
            t.copy_(torch.rand(t.shape, device="cuda", generator=g) * 0.05 + 0.01)
        else:  # zero: a (fractional) zero point in 0..15
            t.copy_(torch.rand(t.shape, device="cuda", generator=g) * 15)
    return parts


def lowc_case(label: str, b: int, s: int, q: torch.Tensor):
    from lowc.runtime.attention import DecodeConfig, attention_kv_triton

    n = copies_for(cache_bytes(label, b, s))
    caches = [random_cache(label, b, s, seed) for seed in range(n)]
    fmt = cache_format(label)[0]
    half = len(caches[0]) // 2
    slot_ids = torch.arange(b, device="cuda")
    cache_lens = torch.full((b,), s - 1, device="cuda")
    new_lens = torch.ones(b, dtype=torch.int64, device="cuda")

    def make(cfg: DecodeConfig):
        fns = [lambda c=c: attention_kv_triton(q, c[:half], c[half:], slot_ids, cache_lens, new_lens, HEAD_DIM**-0.5,
                                               -1, fmt, decode=cfg) for c in caches]
        return rotating(fns)

    reference = {}

    def check(cfg: DecodeConfig) -> float:
        """Relative error against lowc::attention_kv's reference on the first copy."""
        from lowc.ops.kv_ops import attention_kv_reference

        c = caches[0]
        out = attention_kv_triton(q, c[:half], c[half:], slot_ids, cache_lens, new_lens, HEAD_DIM**-0.5, -1, fmt,
                                  decode=cfg)
        if "out" not in reference:
            reference["out"] = attention_kv_reference(q, c[:half], c[half:], slot_ids, cache_lens, new_lens,
                                                      HEAD_DIM**-0.5, -1, fmt).float()
        ref = reference["out"]
        return float((out.float() - ref).norm() / ref.norm())

    return make, check


def bench_ms(fn, rep: int = 40) -> float:
    from triton.testing import do_bench_cudagraph

    fn()  # compile, allocate workspaces, before capture
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=rep, return_mode="median")


def _compile_one(job) -> str:
    """Compile (and run once, tiny) one decode configuration so Triton's disk cache holds it; the split count
    is a run-time argument, so one split and two cover every split count of the sweep."""
    fmt, cfg_tuple = job
    from lowc.runtime.attention import DecodeConfig, attention_kv_triton

    bn, warps, stages, _mult, asm, block_h, maxnreg, stage_k, stage_v, q_int8 = padded(cfg_tuple)
    b, s = 1, 256
    q = torch.randn(b, HEADS, 1, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    parts = random_cache(fmt, b, s, 0)
    half = len(parts) // 2
    lens = torch.full((b,), s - 1, device="cuda")
    for splits in (1, 2):
        cfg = DecodeConfig(gluon=False, BLOCK_N=bn, num_splits=splits, num_warps=warps, num_stages=stages, unpack_asm=asm,
                           block_h=block_h, maxnreg=maxnreg, stage_k=stage_k, stage_v=stage_v, q_int8=q_int8)
        try:
            attention_kv_triton(q, parts[:half], parts[half:], torch.arange(b, device="cuda"), lens,
                                torch.ones(b, dtype=torch.int64, device="cuda"), HEAD_DIM**-0.5, -1,
                                cache_format(fmt)[0], decode=cfg)
        except Exception as e:  # reported again, with the configuration, by the timed sweep
            return f"{fmt} {cfg_tuple}: {type(e).__name__}"
    torch.cuda.synchronize()
    return ""


def precompile(sweep, workers: int, formats=("kv4", "kv8")) -> None:
    """Compile every (format, configuration) of the sweep in `workers` processes at once (the device
    machine has many cores; one compile is ~3 s of one core), filling Triton's on-disk cache."""
    import concurrent.futures
    import multiprocessing

    t0 = time.time()
    jobs = [(fmt, padded(c)) for c in sweep for fmt in formats]
    jobs = list(dict.fromkeys((f, c[:3] + (1,) + c[4:]) for f, c in jobs))  # the multiplier compiles nothing
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        failed = [r for r in pool.map(_compile_one, jobs) if r]
    print(f"precompiled {len(jobs)} configurations in {time.time() - t0:.0f} s; failed: {failed}", flush=True)


def run_attention(quick: bool, sweep_all=None, rep: int = 40, partial_json: str | None = None,
                  formats=("kv4", "kv8")) -> dict:
    from lowc.runtime.attention import DEFAULT_STAGES, DecodeConfig, default_splits

    bw, copy_bw = bandwidths()
    print(f"read bandwidth {bw / 1e12:.2f} TB/s, copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    rows = []
    sweep_all = sweep_all or CONFIG_SWEEP
    # Longest rows first when sweeping small programs, so the short rows can time only the winners.
    lengths = sorted(LENGTHS, reverse=True) if sweep_all is not CONFIG_SWEEP else LENGTHS
    score: dict = {}  # config tuple -> summed speed-up over SDPA at S >= 4096 (both formats)
    for b in BATCHES:
        for s in lengths:
            row = {"B": b, "S": s}
            fn, q, _ = sdpa_case(b, s)
            ms = bench_ms(fn, rep)
            row["sdpa_bf16"] = {"us": ms * 1e3, "bytes": cache_bytes("bf16", b, s),
                                "floor_pct": 100 * cache_bytes("bf16", b, s) / bw / (ms * 1e-3),
                                "tb_per_s": cache_bytes("bf16", b, s) / (ms * 1e-3) / 1e12}
            del fn
            torch.cuda.empty_cache()
            auto = default_splits(b * KV_HEADS, s, q.device, 64)
            for fmt in formats:
                make, check = lowc_case(fmt, b, s, q)
                sweep = sweep_all[:BEFORE + 1] if quick else sweep_all
                if sweep_all is not CONFIG_SWEEP and s < 4096 and score:
                    top = sorted(score, key=score.get, reverse=True)[:SHORT_TOP]
                    sweep = [c for i, c in enumerate(sweep_all) if i == BEFORE or tuple(c) in top]
                results = []
                for entry in sweep:
                    bn, warps, stages, mult, asm, block_h, maxnreg, stage_k, stage_v, q_int8 = padded(entry)
                    if not fmt.startswith("kv4") and not asm:
                        continue  # the unpacking choice only exists for kv4
                    splits = max(1, default_splits(b * KV_HEADS, s, q.device, bn) * mult)
                    cfg = DecodeConfig(gluon=False, BLOCK_N=bn, num_splits=splits, num_warps=warps, num_stages=stages, unpack_asm=asm,
                                       block_h=block_h, maxnreg=maxnreg, stage_k=stage_k, stage_v=stage_v,
                                       q_int8=q_int8)
                    try:
                        t = bench_ms(make(cfg), rep)
                        err = check(cfg) if s <= 4096 else None
                    except Exception as e:  # a config that does not compile or fit: record and go on
                        print(f"  {fmt} {cfg}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                        continue
                    results.append({"config": [bn, warps, stages or DEFAULT_STAGES[cache_format(fmt)[0]], splits, asm, block_h, maxnreg,
                                               stage_k, stage_v, q_int8],
                                    "entry": list(entry), "us": t * 1e3,
                                    "rel_err": err})
                    if s >= 4096:
                        score[tuple(entry)] = score.get(tuple(entry), 0.0) + row["sdpa_bf16"]["us"] / (t * 1e3)
                best = min((r for r in results if r["rel_err"] is None or r["rel_err"] < 2e-2), key=lambda r: r["us"])
                nbytes = cache_bytes(fmt, b, s)
                row[fmt] = {
                    "bytes": nbytes, "default_us": results[0]["us"], "best_us": best["us"], "best_config": best["config"],
                    "floor_pct_default": 100 * nbytes / bw / (results[0]["us"] * 1e-6),
                    "floor_pct_best": 100 * nbytes / bw / (best["us"] * 1e-6),
                    "speedup_default": row["sdpa_bf16"]["us"] / results[0]["us"],
                    "speedup_best": row["sdpa_bf16"]["us"] / best["us"], "rel_err": results[0]["rel_err"], "sweep": results,
                    "before_us": results[BEFORE]["us"], "speedup_before": row["sdpa_bf16"]["us"] / results[BEFORE]["us"],
                    "default_splits": auto,
                }
                del make, check
                torch.cuda.empty_cache()
            rows.append(row)
            if partial_json:  # what a run cut short by its time limit still leaves
                with open(partial_json, "w") as f:
                    json.dump({"read_bw_bytes_per_s": bw, "copy_bw_bytes_per_s": copy_bw, "rows": rows}, f, indent=1)
            print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "sweep"})
                              for k, v in row.items()}), flush=True)
    rows.sort(key=lambda r: (r["B"], r["S"]))
    return {"read_bw_bytes_per_s": bw, "copy_bw_bytes_per_s": copy_bw, "rows": rows}


def count_launches() -> dict:
    """CUDA kernels launched by one decoder layer in a w4a8kv4 decode step, with and without fuse_glue."""
    import lowc
    from lowc.passes import after
    from lowc.runtime import attention, fused, gemm
    from lowc.runtime.context import ForwardContext
    from lowc.schemes import parse_scheme
    from lowc.tiny_models import tiny_model

    import lowc.passes.fuse_glue  # noqa: F401

    for module in (gemm, attention, fused):
        module.register_cuda_kernels()
    scheme = parse_scheme("w4a8kv4").replace(clip_search=False, gptq=False, smooth_alpha=None,
                                             smooth_attention_alpha=None, kv_key_center=False,  # no calibration
                                             scale_search=False)
    counts = {}
    for fuse in (False, True):
        per_depth = {}
        for layers in (1, 2):
            model = tiny_model("llama", layers=layers, hidden=512, heads=8, kv_heads=2, dtype=torch.bfloat16).cuda()
            extra = [after("kv_cache", "fuse_glue")] if fuse else []
            compiled = lowc.compile(model, scheme=scheme, progress=False, passes=extra)
            kv = compiled.new_cache(4, 64)
            slots = kv.allocate(4)
            ids = torch.randint(0, 256, (4, 8), device="cuda")
            compiled(ids, context=ForwardContext(kv, slots, [8] * 4, 8))
            tok = ids[:, -1:]
            compiled(tok, context=ForwardContext(kv, slots, [1] * 4, 1))  # warm: compile every kernel
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                compiled(tok, context=ForwardContext(kv, slots, [1] * 4, 1))
                torch.cuda.synchronize()
            names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            per_depth[layers] = names
        one, two = per_depth[1], per_depth[2]
        counts["fused" if fuse else "unfused"] = {"per_layer": len(two) - len(one), "total_1_layer": len(one),
                                                  "total_2_layers": len(two), "kernels_2_layers": two}
        print(f"launches per decoder layer ({'fused' if fuse else 'unfused'}): {len(two) - len(one)}", flush=True)
    return counts


def table(result: dict) -> str:
    bw = result["read_bw_bytes_per_s"] / 1e12
    lines = [
        f"Device: {result.get('device', '?')}; torch {result.get('torch', '?')}, Triton {result.get('triton', '?')}; "
        f"read bandwidth {bw:.2f} TB/s (4 GiB sum), copy {result['copy_bw_bytes_per_s'] / 1e12:.2f} TB/s (read + write). "
        "Times in µs (CUDA-graph replay, median); floor % = (bytes read / read bandwidth) / time; speed-up = SDPA "
        "time / lowc time; before = the previous default launch (CONFIG_SWEEP[BEFORE]) in the same run; "
        "config = [BLOCK_N, warps, stages, splits, inline-PTX unpack, block_h, maxnreg, stage_k, stage_v, q_int8].",
        "",
    ]
    fmts = [f for f in ("kv4", "kv4k2", "kv8") if result["rows"] and f in result["rows"][0]]
    head = ["B", "S", "SDPA BF16 µs (floor %)"]
    for f in fmts:
        n = f.upper()
        head += [f"{n} before µs (×SDPA)", f"{n} default µs (floor %, ×SDPA)", f"{n} best µs (floor %, ×SDPA) [config]"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in result["rows"]:
        sd = r["sdpa_bf16"]
        cells = [str(r["B"]), str(r["S"]), f"{sd['us']:.1f} ({sd['floor_pct']:.0f}%)"]
        for fmt in fmts:
            x = r[fmt]
            cells.append(f"{x['before_us']:.1f} ({x['speedup_before']:.2f}×)" if "before_us" in x else "–")
            cells.append(f"{x['default_us']:.1f} ({x['floor_pct_default']:.0f}%, {x['speedup_default']:.2f}×)")
            cells.append(f"{x['best_us']:.1f} ({x['floor_pct_best']:.0f}%, {x['speedup_best']:.2f}×) {x['best_config']}")
        lines.append("| " + " | ".join(cells) + " |")
    if "launches" in result:
        la = result["launches"]
        lines += ["", f"Kernel launches per decoder layer, w4a8kv4 decode step (profiled): unfused "
                      f"{la['unfused']['per_layer']}, with fuse_glue {la['fused']['per_layer']}."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the results here")
    p.add_argument("--quick", action="store_true", help="default configuration only, no sweep")
    p.add_argument("--launches", action="store_true", help="also count kernel launches per decoder layer")
    p.add_argument("--markdown", help="print the markdown table of a results JSON and exit")
    p.add_argument("--warps", action="store_true",
                   help="sweep the default against one- and two-warp programs (WARP_SWEEP) instead of CONFIG_SWEEP")
    p.add_argument("--int8", action="store_true",
                   help="sweep the default against INT8 q . k (DecodeConfig.q_int8, INT8_SWEEP) instead of CONFIG_SWEEP")
    p.add_argument("--rep", type=int, default=40, help="milliseconds of graph replay per timing")
    p.add_argument("--precompile", type=int, default=0, metavar="N", help="compile the sweep in N processes first")
    p.add_argument("--compile-only", action="store_true", help="with --precompile: stop after compiling")
    p.add_argument("--formats", default="kv4,kv8",
                   help="lowc caches to time: kv4, kv4k2 (kv4 with two key scale/zero pairs, w4a8kv4's), kv8")
    args = p.parse_args()
    if args.markdown:
        with open(args.markdown) as f:
            print(table(json.load(f)))
        return
    if not torch.cuda.is_available():
        sys.exit("bench/attention.py needs a CUDA GPU")
    import triton

    t0 = time.time()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__}
    if args.launches:
        try:
            result["launches"] = count_launches()
        except Exception as e:  # the launch count needs every op's kernel; report what broke
            print(f"launch count failed: {type(e).__name__}: {e}", flush=True)
    sweep = CONFIG_SWEEP[:BEFORE + 1] + WARP_SWEEP if args.warps else INT8_SWEEP if args.int8 else CONFIG_SWEEP
    if args.precompile:
        precompile(sweep[:BEFORE + 1] if args.quick else sweep, args.precompile, tuple(args.formats.split(",")))
        if args.compile_only:
            return
    result.update(run_attention(args.quick, sweep, args.rep, args.json and args.json + ".partial",
                                tuple(args.formats.split(","))))
    result["seconds"] = time.time() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    print(table(result))


if __name__ == "__main__":
    main()

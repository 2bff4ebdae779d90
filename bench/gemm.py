"""GEMM benchmark: lowc's qlinear kernels against cuBLAS BF16, torch._int_mm and FP8 _scaled_mm.

One run on one GPU measures, for the Llama-3-8B linear shapes (N x K = 4096x4096, 6144x4096,
28672x4096, 4096x14336) and M in {1, 16, 32, 64, 128, 256, 1024, 4096}:
  - the ceilings: device-to-device copy bandwidth (bytes read + written), INT8 `torch._int_mm`,
    BF16 matmul and FP8 `_scaled_mm` rates at 8192^3;
  - every lowc format (w4a8_g128, w4a8_pc, w8a8, w4a16_g128, w4a4_g128_o128) and the three torch
    baselines, each timed by CUDA-graph replay (triton.testing.do_bench_cudagraph, median) and eagerly
    (do_bench, median); weights are rotated among copies totalling >= 4x L2 so no side is timed out
    of cache; data is random, never zeros; each side is warmed up first;
  - ratios against BF16 (and INT8 / FP8), and the fraction of the floor: bytes / copy bandwidth at
    small M, 2MNK / measured INT8 peak (BF16 peak for w4a16) at large M.
With --tune it first autotunes every (format, shape, M bucket) over `candidate_configs` (after
compiling all candidates in parallel processes) and writes the tuned table (the format of
lowc/runtime/configs/<gpu>.json). Results: --out JSON, a short table printed last, --plot PNG.

    python bench/gemm.py --tune --out $OUT/gemm.json --table-out $OUT/h100.json --plot $OUT/gemm.png
    python bench/gemm.py --plot-only docs/gemm.json --plot docs/gemm.png     # plot from a JSON here
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import functools
import json
import math
import multiprocessing as mp
import os
import shutil
import sys
import time

FORMATS = ["w4a8_g128", "w4a8_pc", "w8a8", "w4a16_g128", "w4a4_g128_o128"]
SHAPES = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]
MS = [1, 16, 32, 64, 128, 256, 1024, 4096]


def x_dtype_of(fmt):
    import torch

    return torch.bfloat16 if fmt.startswith("w4a16") else torch.int8


def make_weight(fmt, n, k, seed):
    """Packed weight tensors of a random Gaussian [N, K] weight, quantized on the GPU."""
    import torch

    from lowc.quant import quantize_weight

    g = torch.Generator(device="cuda").manual_seed(seed)
    w = torch.randn(n, k, device="cuda", generator=g) * 0.02
    return quantize_weight(w, fmt).tensors()


def make_x(fmt, m, k, seed):
    import torch

    from lowc.quant import quantize_activation

    g = torch.Generator(device="cuda").manual_seed(seed + 1)
    x = torch.randn(m, k, device="cuda", generator=g)
    if fmt.startswith("w4a16"):
        return x.to(torch.bfloat16), None
    return quantize_activation(x, fmt)


def copies_for(nbytes, l2_bytes):
    """How many copies of the operands keep the rotation >= 4x L2 (at most 8)."""
    return max(1, min(8, math.ceil(4 * l2_bytes / max(1, nbytes))))


def weight_copies(w0, l2_bytes):
    """`w0` (a packed weight's tensors) and enough clones of it for copies_for's rotation past L2."""
    return [w0] + [[t.clone() for t in w0] for _ in range(copies_for(sum(t.nbytes for t in w0), l2_bytes) - 1)]


class Rotating:
    """A callable that runs `call(*inputs[i])` on the next of several input sets each time."""

    def __init__(self, call, input_sets):
        self.call, self.sets, self.i = call, input_sets, 0

    def __call__(self):
        self.i = (self.i + 1) % len(self.sets)
        return self.call(*self.sets[self.i])


def timed(fn, graphed_rep=20, eager_rep=60):
    """(graph-replay median us, eager median us); fn is warmed up by do_bench_cudagraph itself."""
    from triton.testing import do_bench, do_bench_cudagraph

    g = do_bench_cudagraph(fn, rep=graphed_rep, return_mode="median") * 1e3
    e = do_bench(fn, warmup=10, rep=eager_rep, return_mode="median") * 1e3 if eager_rep else None
    return g, e


def ceilings():
    """Measured copy bandwidth and matrix rates on this GPU."""
    import torch
    from triton.testing import do_bench

    out = {}
    src = torch.randn(1 << 28, device="cuda")  # 1 GiB
    dst = torch.empty_like(src)
    t = do_bench(lambda: dst.copy_(src), rep=200, return_mode="median") * 1e-3
    out["copy_bw_Bps"] = 2 * src.numel() * 4 / t
    del src, dst
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    out["bf16_flops"] = 2 * n**3 / (do_bench(lambda: a @ b, rep=200, return_mode="median") * 1e-3)
    a8 = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    b8 = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    out["int8_ops"] = 2 * n**3 / (do_bench(lambda: torch._int_mm(a8, b8.t()), rep=200, return_mode="median") * 1e-3)
    try:
        af, bf = a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn)
        one = torch.tensor(1.0, device="cuda")
        fn = lambda: torch._scaled_mm(af, bf.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)  # noqa: E731
        out["fp8_flops"] = 2 * n**3 / (do_bench(fn, rep=200, return_mode="median") * 1e-3)
    except Exception as e:  # not every build has FP8 GEMMs
        out["fp8_flops"] = None
        out["fp8_error"] = repr(e)
    return out


# -- compiling candidates in parallel -------------------------------------------------------------


def _warm(jobs):
    """Worker: launch each (fmt, config dict, m) once on a small problem with the same specialization
    (M == 1 or a multiple of 16; N, K multiples of 256), filling Triton's on-disk cache."""
    import torch

    from lowc.runtime.autotune import TileConfig
    from lowc.runtime.gemm import qlinear_triton

    failed = 0
    for fmt, cfg, m in jobs:
        try:
            k = 1024 + (128 if fmt.startswith("w4a4") else 0)
            w = make_weight(fmt, 256, k, 0)
            x, sx = make_x(fmt, m, k, 0)
            qlinear_triton(x, sx, w, None, fmt, torch.bfloat16, config=TileConfig.from_dict(cfg))
        except Exception:
            failed += 1
    torch.cuda.synchronize()
    return failed


def precompile(jobs, workers):
    if not jobs:
        return 0
    chunks = [jobs[i::workers] for i in range(workers)]
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        return sum(pool.map(_warm, [c for c in chunks if c]))


# -- the benchmark -----------------------------------------------------------------------------------


def spec_of(fmt):
    import torch

    from lowc.codegen.spec import spec_for_qlinear

    return spec_for_qlinear(fmt, x_dtype_of(fmt), torch.bfloat16)


SHIPPED_SUFFIX = "@shipped"  # "w4a8_g128@shipped": the same format with the shipped table's configs only


def base_format(fmt):
    return fmt[: -len(SHIPPED_SUFFIX)] if fmt.endswith(SHIPPED_SUFFIX) else fmt


@functools.lru_cache(maxsize=None)
def shipped_tuner():
    """A tuner that sees only the shipped table (its user table lives in an empty directory), so
    "FMT@shipped" rows time the configs as committed, beside the ones tuned in this run."""
    import tempfile

    from lowc.runtime.autotune import Autotuner

    return Autotuner(root=tempfile.mkdtemp(prefix="lowc-shipped-"), policy="off")


def tuner_for(fmt):
    from lowc.runtime.autotune import default_tuner

    return shipped_tuner() if fmt.endswith(SHIPPED_SUFFIX) else default_tuner()


def lowc_callable(fmt, weights, x, sx):
    import torch

    from lowc.runtime.gemm import qlinear_triton

    tuner = tuner_for(fmt)
    return Rotating(lambda w: qlinear_triton(x, sx, w, None, base_format(fmt), torch.bfloat16, tuner=tuner),
                    [(w,) for w in weights])


def check_exact(fmt, cfg, x, sx, w):
    """The tuned config's raw INT32 accumulator against lowc.quant's exact integer GEMM (integer
    formats): a config that is fast but wrong must never reach a table."""
    import torch

    from lowc.codegen.spec import spec_for_qlinear
    from lowc.runtime.gemm import default_cache, qlinear_triton

    acc = qlinear_triton(x, sx, w, None, fmt, torch.int32, config=cfg)
    raw = default_cache().get(spec_for_qlinear(fmt, torch.int8, torch.int32))
    return torch.equal(acc, raw.reference(x, sx, w, None, torch.int32))


def config_label(c):
    """'16x64x256 s4 w4 st4 B' (BM x BN x BK, split, warps, stages; B = W_AS_B, 2p = two-pass, GEMV)."""
    tags = [t for t, on in (("B", c.W_AS_B), ("2p", c.DEQUANT_FIRST), ("GEMV", c.GEMV)) if on]
    return " ".join([f"{c.BM}x{c.BN}x{c.BK} s{c.SPLIT_K} w{c.num_warps} st{c.num_stages}"] + tags)


def tune(args, l2, slug, deadline, log):
    """Autotune every (format, shape, M); returns the number of entries tuned. `log` receives every
    candidate's time per point ({"fmt NxK M=m": [[us, config], ...]}, fastest first)."""
    import torch

    from lowc.runtime.autotune import candidate_configs, default_tuner, gemv_candidates, operand_candidates
    from lowc.runtime.gemm import qlinear_triton

    def candidates(fmt, m, n, k):
        """All candidates; or, against the stored choice, only the decode kernel's space
        (--tune-gemv-only) or only the operand-mapping tiles (--tune-operand-only)."""
        spec = spec_of(fmt)
        if not (args.tune_gemv_only or args.tune_operand_only):
            return candidate_configs(spec, m, n, k)
        stored = shipped_tuner().lookup(spec, m, n, k, slug)
        space = gemv_candidates if args.tune_gemv_only else operand_candidates
        return ([stored] if stored else []) + space(spec, m, n, k)

    def m_class(m):
        """The M specialization Triton compiles for (== 1, multiple of 16, other)."""
        return 1 if m == 1 else 16 if m % 16 == 0 else 8

    jobs = []
    for fmt in args.tune_formats:
        for n, k in args.shapes:
            for m in args.tune_ms:
                for c in candidates(fmt, m, n, k):
                    jobs.append((fmt, c.to_dict(), m_class(m)))
    jobs = list({json.dumps(j, sort_keys=True): j for j in jobs}.values())
    t0 = time.time()
    failed = precompile(jobs, args.workers)
    print(f"precompiled {len(jobs)} (format, config, M class) in {time.time() - t0:.0f}s, {failed} failed", flush=True)
    tuner = default_tuner()
    tuned = 0
    for fmt in args.tune_formats:
        spec = spec_of(fmt)
        for n, k in args.shapes:
            w0 = make_weight(fmt, n, k, 1)
            weights = weight_copies(w0, l2)
            for m in args.tune_ms:
                if time.time() > deadline:
                    print(f"tuning stopped at the time budget ({fmt} {n}x{k} M={m})", flush=True)
                    return tuned
                x, sx = make_x(fmt, m, k, 2)

                def bench(cfg, x=x, sx=sx):
                    from triton.testing import do_bench_cudagraph

                    fn = Rotating(lambda w: qlinear_triton(x, sx, w, None, fmt, torch.bfloat16, config=cfg),
                                  [(w,) for w in weights])
                    return do_bench_cudagraph(fn, rep=10, return_mode="median") * 1e-3

                best = tuner.tune(spec, m, n, k, slug, bench, candidates=candidates(fmt, m, n, k))
                tuned += 1
                timed_all = [(round(sec * 1e6, 2), cfg) for sec, cfg in tuner.last_results]
                log[f"{fmt} {n}x{k} M={m}"] = [[us, cfg.to_dict()] for us, cfg in timed_all]
                firsts = {}
                for us, cfg in timed_all:  # the fastest of each kind, to see what each mapping gives
                    firsts.setdefault("B" if cfg.W_AS_B else "2p" if cfg.DEQUANT_FIRST else "A", (us, cfg))
                print(f"  {n}x{k} M={m}: " + " | ".join(f"{kind} {us:.1f}us {config_label(cfg)}"
                                                      for kind, (us, cfg) in sorted(firsts.items())), flush=True)
                exact = check_exact(fmt, best, x, sx, weights[0]) if spec.w_bits and spec.a_bits == 8 else None
                print(f"tuned {fmt} {n}x{k} M={m}: {best}" + ("" if exact is None else f" exact={exact}"), flush=True)
                if exact is False:
                    raise SystemExit(f"tuned config {best} is not exact for {fmt} {n}x{k} M={m}")
            del weights
            torch.cuda.empty_cache()
    return tuned


def measure(args, ceil, l2):
    import torch

    rows = []
    for n, k in args.shapes:
        wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        r16 = copies_for(wb.nbytes, l2)
        wbs = [wb] + [wb.clone() for _ in range(r16 - 1)]
        w8s = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8) for _ in range(copies_for(n * k, l2))]
        wf8s = [w.to(torch.float8_e4m3fn) for w in wbs[: copies_for(n * k, l2)]]
        one = torch.tensor(1.0, device="cuda")
        packed = {}
        for fmt in args.formats:
            if base_format(fmt) != fmt and base_format(fmt) in packed:
                packed[fmt] = packed[base_format(fmt)]
                continue
            w0 = make_weight(base_format(fmt), n, k, 3)
            packed[fmt] = weight_copies(w0, l2)
        for m in args.ms:
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x8 = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
            xf8 = xb.to(torch.float8_e4m3fn)
            row = {"N": n, "K": k, "M": m, "baselines": {}, "lowc": {}}
            base = {
                "bf16": Rotating(lambda w: torch.matmul(xb, w.t()), [(w,) for w in wbs]),
                "int8": Rotating(lambda w: torch._int_mm(x8, w.t()), [(w,) for w in w8s]) if m > 16 else None,
                "fp8": Rotating(
                    lambda w: torch._scaled_mm(xf8, w.t(), scale_a=one, scale_b=one,
                                               out_dtype=torch.bfloat16), [(w,) for w in wf8s]),
            }
            for name, fn in base.items():
                try:
                    g, e = timed(fn) if fn is not None else (None, None)
                except Exception as ex:  # e.g. FP8 GEMM shape limits at tiny M
                    g, e = None, None
                    row["baselines"][name + "_error"] = repr(ex)[:200]
                row["baselines"][name] = {"graph_us": g, "eager_us": e}
            for fmt in args.formats:
                x, sx = make_x(base_format(fmt), m, k, 4)
                fn = lowc_callable(fmt, packed[fmt], x, sx)
                g, e = timed(fn)
                w0 = packed[fmt][0]
                nbytes = sum(t.nbytes for t in w0) + x.nbytes + (sx.nbytes if sx is not None else 0) + m * n * 2
                floor_mem = nbytes / ceil["copy_bw_Bps"] * 1e6
                peak = ceil["bf16_flops"] if fmt.startswith("w4a16") else ceil["int8_ops"]
                floor_ops = 2 * m * n * k / peak * 1e6
                cfg = tuner_for(fmt).config_for(spec_of(base_format(fmt)), m, n, k, args.slug)
                row["lowc"][fmt] = {
                    "graph_us": g, "eager_us": e, "bytes": nbytes,
                    "mem_floor_fraction": floor_mem / g, "peak_fraction": floor_ops / g,
                    "config": cfg.to_dict() if cfg else None,
                }
                for name in ("bf16", "int8", "fp8"):
                    b = row["baselines"][name]["graph_us"]
                    row["lowc"][fmt][f"x_vs_{name}"] = (b / g) if b else None
            rows.append(row)
            print(f"{n}x{k} M={m}: bf16 {row['baselines']['bf16']['graph_us']:.1f}us | " + " ".join(
                f"{f} {row['lowc'][f]['graph_us']:.1f}us ({row['lowc'][f]['x_vs_bf16']:.2f}x)" for f in args.formats), flush=True)
        del wbs, w8s, wf8s, packed
        torch.cuda.empty_cache()
    return rows


def gemlite_rows(args, l2):
    """gemlite's W4A16 g128 (A16W4_HQQ_INT, fp16, its GEMV/split-K kernels with the configs it ships
    tuned for the H100, so it does not autotune here) against cuBLAS BF16 on the same shapes, timed
    like every other side. The peer point for "how fast does a Triton kernel stream 4-bit weights at
    decode": gemlite has no grouped INT8-activation path for W4 (its A8W4 needs per-channel weights)."""
    import torch

    try:
        import gemlite
        from gemlite.core import GemLiteLinear
        from gemlite.helper import A16W4_HQQ_INT

        cfg = os.path.join(os.path.dirname(gemlite.__file__), "configs", "h100.json")
        GemLiteLinear.load_config(cfg)
    except Exception as e:
        return {"error": f"gemlite import failed: {e!r}"[:300]}
    out = {"version": getattr(gemlite, "__version__", "?"), "configs": "shipped h100.json", "rows": []}
    for n, k in args.shapes:
        try:
            layers = []
            for i in range(copies_for(n * k // 2, l2)):
                g = torch.Generator(device="cuda").manual_seed(20 + i)
                w_q = torch.randint(0, 16, (n, k), device="cuda", dtype=torch.uint8, generator=g)
                scales = (torch.rand(n, k // 128, device="cuda", generator=g) * 0.01 + 0.001).half()
                zeros = torch.full((n, k // 128), 8.0, device="cuda").half()
                if i == 0:  # HQQ convention: W = (W_q - zeros) * scales, per group of 128 along K
                    w_ref = ((w_q.float().view(n, k // 128, 128) - zeros.float()[..., None])
                             * scales.float()[..., None]).view(n, k)
                layers.append(A16W4_HQQ_INT(device="cuda", dtype=torch.float16).from_weights(w_q, scales, zeros))
            wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
            wbs = [wb] + [wb.clone() for _ in range(copies_for(wb.nbytes, l2) - 1)]
        except Exception as e:
            out["rows"].append({"N": n, "K": k, "error": repr(e)[:300]})
            continue
        for m in args.gemlite_ms:
            row = {"N": n, "K": k, "M": m}
            try:
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                xb = x.to(torch.bfloat16)
                ref = x.float() @ w_ref.t()
                y = layers[0](x)
                row["rel_err_vs_dequantized"] = ((y.float() - ref).norm() / ref.norm()).item()
                g, e = timed(Rotating(lambda layer: layer(x), [(layer,) for layer in layers]))
                b, _ = timed(Rotating(lambda w: torch.matmul(xb, w.t()), [(w,) for w in wbs]), eager_rep=0)
                row.update(graph_us=g, eager_us=e, bf16_graph_us=b, x_vs_bf16=b / g)
            except Exception as ex:
                row["error"] = repr(ex)[:300]
            out["rows"].append(row)
            print(f"gemlite A16W4 {n}x{k} M={m}: " + (f"{row['graph_us']:.1f}us ({row['x_vs_bf16']:.2f}x bf16)"
                  if "graph_us" in row else row["error"]), flush=True)
        del layers, wbs, w_ref
        torch.cuda.empty_cache()
    return out


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summary(result):
    """Geomean over shapes of each format's speed-up vs BF16 (graphed), per M; plus floor fractions."""
    rows, out = result["rows"], {}
    for fmt in result["formats"]:
        out[fmt] = {}
        for m in sorted({r["M"] for r in rows}):
            sel = [r for r in rows if r["M"] == m]
            out[fmt][m] = {
                "x_vs_bf16": geomean([r["lowc"][fmt]["x_vs_bf16"] for r in sel]),
                "x_vs_int8": geomean([r["lowc"][fmt]["x_vs_int8"] for r in sel]),
                "x_vs_fp8": geomean([r["lowc"][fmt]["x_vs_fp8"] for r in sel]),
                "mem_floor_fraction": geomean([r["lowc"][fmt]["mem_floor_fraction"] for r in sel]),
                "peak_fraction": geomean([r["lowc"][fmt]["peak_fraction"] for r in sel]),
            }
    return out


def print_table(result):
    s = result["summary"]
    ms = sorted({r["M"] for r in result["rows"]})
    print(f"\n{result['device']}: geomean over shapes, speed-up vs cuBLAS BF16 (CUDA-graph replay)")
    print("format".ljust(16) + "".join(f"M={m}".rjust(8) for m in ms))
    for fmt, per_m in s.items():
        print(fmt.ljust(16) + "".join(f"{per_m[m]['x_vs_bf16']:8.2f}" if per_m[m]["x_vs_bf16"] else "     n/a" for m in ms))
    print("fraction of floor (memory at M<=64, INT8/BF16 peak at M>=256)")
    for fmt, per_m in s.items():
        print(fmt.ljust(16) + "".join(
            f"{(per_m[m]['mem_floor_fraction'] if m <= 64 else per_m[m]['peak_fraction']):8.2f}" for m in ms))


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for fmt, per_m in s.items():
        ms = sorted(int(m) for m in per_m)
        ax.plot(ms, [per_m[m if m in per_m else str(m)]["x_vs_bf16"] for m in ms], marker="o", label=fmt)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("M (tokens)")
    ax.set_ylabel("speed-up vs cuBLAS BF16 (geomean of 4 shapes)")
    ax.set_title(f"lowc qlinear on {result['device']} (CUDA-graph replay)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", nargs="*", default=FORMATS)
    p.add_argument("--shapes", nargs="*", default=[f"{n}x{k}" for n, k in SHAPES])
    p.add_argument("--ms", nargs="*", type=int, default=MS)
    p.add_argument("--tune", action="store_true", help="autotune every point first (parallel precompile)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--tune-budget-s", type=float, default=300.0)
    p.add_argument("--out", help="results JSON")
    p.add_argument("--table-out", help="copy of the tuned config table (lowc/runtime/configs format)")
    p.add_argument("--plot", help="PNG path")
    p.add_argument("--plot-only", help="read this results JSON and only plot it")
    p.add_argument("--bitplane", action="store_true", help="also run bench/gemm_bitplane.py's rows in this run")
    p.add_argument("--tune-formats", nargs="*", help="formats to tune (default: --formats)")
    p.add_argument("--tune-ms", nargs="*", type=int, help="M values to tune (default: --ms)")
    p.add_argument("--tune-gemv-only", action="store_true",
                   help="tune w4a8_g's decode-kernel configs against the stored choice only (M <= 16)")
    p.add_argument("--tune-operand-only", action="store_true",
                   help="tune w4a8_g's operand-mapping tiles (autotune.operand_candidates) against the shipped choice only")
    p.add_argument("--gemlite", action="store_true", help="also time gemlite's W4A16 g128 (peer kernel, if importable)")
    p.add_argument("--gemlite-ms", nargs="*", type=int, default=[1, 16])
    args = p.parse_args(argv)
    if args.plot_only:
        result = json.load(open(args.plot_only))
        plot(result, args.plot)
        return 0
    import torch
    import triton

    from lowc.runtime.autotune import default_tuner, device_slug

    args.shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    args.tune_formats = args.tune_formats if args.tune_formats is not None else args.formats
    args.tune_ms = args.tune_ms if args.tune_ms is not None else args.ms
    args.slug = device_slug()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    t_start = time.time()
    ceil = ceilings()
    print(f"{props.name}: copy {ceil['copy_bw_Bps'] / 1e12:.2f} TB/s, BF16 {ceil['bf16_flops'] / 1e12:.0f} TFLOP/s, "
          f"INT8 {ceil['int8_ops'] / 1e12:.0f} TOPS, FP8 {(ceil['fp8_flops'] or 0) / 1e12:.0f} TFLOP/s", flush=True)
    tune_log = {}
    tuned = tune(args, l2, args.slug, t_start + args.tune_budget_s, tune_log) if args.tune else 0
    rows = measure(args, ceil, l2)
    result = {
        "device": props.name, "slug": args.slug, "sm_count": props.multi_processor_count, "l2_bytes": l2,
        "torch": torch.__version__, "triton": triton.__version__, "ceilings": ceil, "tuned_entries": tuned,
        "formats": args.formats, "rows": rows, "seconds": time.time() - t_start, "tuning": tune_log,
    }
    result["summary"] = summary(result)
    if args.gemlite:
        result["gemlite"] = gemlite_rows(args, l2)
    if args.bitplane:  # bit-plane formats (bench/gemm_bitplane.py): same shapes, M sweep, ceilings, baselines
        import gemm_bitplane

        gemm_bitplane.prepare(args.shapes, args.ms, gemm_bitplane.FORMATS, args.workers)
        bp_rows = gemm_bitplane.bitplane_rows(args.shapes, args.ms, gemm_bitplane.FORMATS, ceil, l2, args.slug,
                                              time.time() + args.tune_budget_s)
        result["bitplane"] = {"rows": bp_rows, "summary": gemm_bitplane.summary(bp_rows, gemm_bitplane.FORMATS)}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    if args.table_out:
        table = default_tuner().user_table(args.slug).path
        if table.exists():
            shutil.copy(table, args.table_out)
    if args.plot:
        try:
            plot(result, args.plot)
        except ImportError:
            print("matplotlib missing: plot later with --plot-only", file=sys.stderr)
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

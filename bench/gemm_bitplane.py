"""Bit-plane GEMM benchmark (ABQ-LLM route): w2a8, w3a8, w6a6 against cuBLAS BF16, lowc W4A8 and W8A8.

One run on one GPU, the shapes and M sweep of bench/gemm.py (Llama-3-8B linears N x K = 4096x4096,
6144x4096, 28672x4096, 4096x14336; M in 1 .. 4096), every side timed by CUDA-graph replay
(do_bench_cudagraph, median) with weights rotated over >= 4x L2 (bench/gemm.py's helpers), random
data. For each bit-plane format and M it times the candidate tiles of the realizations (`unpack`:
planes -> INT8 + tl.dot; `binary`: AND + popcount, at M <= 32 where it can compete; `gemv`: the
CUDA-core decode kernel, at M <= 4), keeps the fastest of each, and stores the winner per (format,
M bucket, N, K) in the selector's table (the autotune results:
lowc.runtime.bitplane_gemm.RealizationSelector), copied to --table-out for
lowc/runtime/configs/bitplane-<gpu>.json. The shipped table's unpack config is always timed too
("shipped"); with --realizations not naming unpack it stands in as unpack's candidate, so a sweep of
only the GEMV still compares it with the current choice. `bitplane_rows` is the function bench/gemm.py can call
to add these rows to its own run.

    python bench/gemm_bitplane.py --out $OUT/gemm_bitplane.json --table-out $OUT/bitplane-h100.json
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gemm as base  # noqa: E402  (bench/gemm.py: ceilings, timed, Rotating, copies_for, make_weight/make_x)

FORMATS = ["w2a8_g128_bp", "w3a8_g128_bp", "w6a6_g128_bp"]
BASELINE_FORMATS = ["w4a8_g128", "w8a8"]  # lowc's dedicated kernels, same run
BINARY_MAX_M = 32


def candidates(fmt, realization, m, n, k):
    """The selector's candidate tiles for (realization, M, N, K)."""
    from lowc.runtime import bitplane_gemm as bg

    return bg.candidate_configs(bg.kernel_spec(fmt, realization), realization, m, n, k)


def m_class(m):
    """A token count with M's Triton specialization (1, a multiple of 16, or neither), for warming."""
    return 1 if m == 1 else 16 if m % 16 == 0 else 3


def _warm(jobs):
    """Worker: run each (fmt, realization, config, M class) once on a small problem with the same
    Triton specialization, filling Triton's on-disk cache; returns the number that failed."""
    import torch

    from lowc.runtime import bitplane_gemm as bg
    from lowc.runtime.autotune import TileConfig

    failed = 0
    for fmt, r, cfg, m in jobs:
        try:
            w = base.make_weight(fmt, 256, 1024, 0)
            x, sx = base.make_x(fmt, m, 1024, 0)
            bg.qlinear_bitplane(x, sx, w, None, fmt, torch.bfloat16, realization=r, config=TileConfig.from_dict(cfg))
        except Exception:
            failed += 1
    torch.cuda.synchronize()
    return failed


def precompile(jobs, workers):
    jobs = list({json.dumps(j, sort_keys=True): j for j in jobs}.values())
    if not jobs:
        return 0, 0
    chunks = [c for c in (jobs[i::workers] for i in range(workers)) if c]
    with cf.ProcessPoolExecutor(len(chunks), mp_context=mp.get_context("spawn")) as pool:
        return len(jobs), sum(pool.map(_warm, chunks))


def prepare(shapes, ms, formats, workers, realizations=None):
    """Compile every candidate kernel of the sweep in parallel processes (Triton's disk cache)."""
    from lowc.runtime import bitplane_gemm as bg

    jobs = []
    for fmt in formats:
        for n, k in shapes:
            for m in ms:
                for r in realizations or bg.REALIZATIONS:
                    if r == "binary" and m > BINARY_MAX_M:
                        continue
                    jobs += [(fmt, r, c.to_dict(), m_class(m)) for c in candidates(fmt, r, m, n, k)]
    compiled, failed = precompile(jobs, workers)
    print(f"precompiled {compiled} bit-plane (format, realization, config, M class), {failed} failed", flush=True)


def shipped_entry(fmt, m, n, k, slug, nearest=True):
    """The shipped table's entry (as checked out) for this point; with nearest, else the nearest
    shape's; or None."""
    from lowc.runtime import bitplane_gemm as bg

    sel = bg.RealizationSelector(policy="off")
    entries = sel.shipped_table(slug).load()
    raw = entries.get(sel.key(fmt, "bfloat16", m, n, k))
    if not raw and nearest:
        raw = bg._nearest_shape(entries, fmt, "bfloat16", m, n, k)
    return raw or None


def shipped_config(fmt, m, n, k, slug):
    """The unpack config the shipped table (as checked out) gives this point, else the rule of thumb."""
    from lowc.runtime import bitplane_gemm as bg
    from lowc.runtime.autotune import TileConfig

    raw = shipped_entry(fmt, m, n, k, slug)
    if raw and raw.get("realization") == "unpack":
        return TileConfig.from_dict(raw["config"])
    return bg.default_config(bg.kernel_spec(fmt, "unpack"), "unpack", m, n, k)


def shipped_gemv_config(fmt, m, n, k, slug):
    """The GEMV config the shipped table (as checked out) holds for this exact point, or None."""
    from lowc.runtime.autotune import TileConfig

    raw = shipped_entry(fmt, m, n, k, slug, nearest=False)
    return TileConfig.from_dict(raw["config"]) if raw and raw.get("realization") == "gemv" else None


def template_launcher(template, fmt, cfg, x, sx, m, n, k, realization="unpack"):
    """w -> a launch of one realization's kernel rendered from another template file (e.g. the
    previous version, copied beside the current one) with the same arguments: the same-run comparison."""
    import dataclasses

    import torch

    from lowc.runtime import bitplane_gemm as bg
    from lowc.runtime.kernel_cache import default_cache

    spec = dataclasses.replace(bg.kernel_spec(fmt, realization), template=template)
    kw = bg.bitplane_spec(fmt).padded_k(k)
    out = torch.empty(m, n, dtype=torch.bfloat16, device=x.device)

    def run(w):
        bg._launch(default_cache(), spec, cfg, x, sx, w, out, False, out, m, n, k, kw)
        return out

    return run


def bitplane_rows(shapes, ms, formats, ceil, l2, slug, deadline, selector=None, log=print, realizations=None,
                  old_template=None, old_gemv_template=None):
    """Measure every (shape, M): BF16, lowc W4A8/W8A8 and each bit-plane format's realizations; with
    old_template, also the shipped config on that template ("old") and on the current one; with
    old_gemv_template, the shipped GEMV config (where the table holds one) on that template and on
    the current GEMV template."""
    import torch

    from lowc.runtime import bitplane_gemm as bg
    from lowc.runtime.gemm import qlinear_triton

    selector = selector or bg.default_selector()
    rows = []
    for n, k in shapes:
        wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
        wbs = [wb] + [wb.clone() for _ in range(base.copies_for(wb.nbytes, l2) - 1)]
        packed = {}
        for fmt in formats + BASELINE_FORMATS:
            w0 = base.make_weight(fmt, n, k, 3)
            packed[fmt] = base.weight_copies(w0, l2)
        for m in ms:
            if time.time() > deadline:
                log(f"stopped at the time budget before {n}x{k} M={m}")
                return rows
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"N": n, "K": k, "M": m, "bf16_us": base.timed(
                base.Rotating(lambda w: torch.matmul(xb, w.t()), [(w,) for w in wbs]), eager_rep=0)[0]}
            for fmt in BASELINE_FORMATS:
                x, sx = base.make_x(fmt, m, k, 4)
                fn = base.Rotating(lambda w, x=x, sx=sx, fmt=fmt: qlinear_triton(x, sx, w, None, fmt, torch.bfloat16),
                                   [(w,) for w in packed[fmt]])
                row[f"{fmt}_us"] = base.timed(fn, eager_rep=0)[0]
            row["bitplane"] = {}
            for fmt in formats:
                x, sx = base.make_x(fmt, m, k, 4)
                times = {}
                old = {}
                cfg_old = shipped_config(fmt, m, n, k, slug)
                w_list = [(w,) for w in packed[fmt]]
                try:
                    old["shipped_config_new_kernel_us"] = base.timed(base.Rotating(
                        lambda w, cfg_old=cfg_old: bg.qlinear_bitplane(x, sx, w, None, fmt, torch.bfloat16,
                                                                        realization="unpack", config=cfg_old),
                        w_list), graphed_rep=10, eager_rep=0)[0]
                    if old_template:
                        old["old_kernel_us"] = base.timed(base.Rotating(
                            template_launcher(old_template, fmt, cfg_old, x, sx, m, n, k), w_list),
                            graphed_rep=10, eager_rep=0)[0]
                except Exception as e:
                    log(f"  {fmt} shipped config {cfg_old}: failed ({type(e).__name__}: {str(e)[:160]})")
                cfg_gemv = shipped_gemv_config(fmt, m, n, k, slug) if old_gemv_template else None
                if cfg_gemv is not None:
                    try:
                        old["shipped_gemv_config"] = cfg_gemv.to_dict()
                        old["old_gemv_kernel_us"] = base.timed(base.Rotating(
                            template_launcher(old_gemv_template, fmt, cfg_gemv, x, sx, m, n, k, "gemv"), w_list),
                            graphed_rep=10, eager_rep=0)[0]
                        old["shipped_gemv_config_new_kernel_us"] = base.timed(base.Rotating(
                            lambda w: bg.qlinear_bitplane(x, sx, w, None, fmt, torch.bfloat16, realization="gemv",
                                                          config=cfg_gemv), w_list), graphed_rep=10, eager_rep=0)[0]
                    except Exception as e:
                        log(f"  {fmt} shipped GEMV config {cfg_gemv}: failed ({type(e).__name__}: {str(e)[:160]})")
                if "shipped_config_new_kernel_us" in old and "unpack" not in (realizations or bg.REALIZATIONS):
                    # Not swept: the shipped unpack config is the unpack realization's candidate, so the
                    # table keeps it wherever it still beats the swept realizations.
                    times["unpack"] = (old["shipped_config_new_kernel_us"], cfg_old)
                for r in realizations or bg.REALIZATIONS:
                    if r == "binary" and m > BINARY_MAX_M:
                        continue
                    for cfg in candidates(fmt, r, m, n, k):
                        fn = base.Rotating(
                            lambda w, r=r, cfg=cfg: bg.qlinear_bitplane(x, sx, w, None, fmt, torch.bfloat16,
                                                                        realization=r, config=cfg),
                            [(w,) for w in packed[fmt]])
                        try:
                            t = base.timed(fn, graphed_rep=10, eager_rep=0)[0]
                        except Exception as e:
                            log(f"  {fmt} {r} {cfg}: failed ({type(e).__name__}: {str(e)[:160]})")
                            continue
                        if r not in times or t < times[r][0]:
                            times[r] = (t, cfg)
                if not times:
                    continue
                winner = min(times, key=lambda r: times[r][0])
                us, cfg = times[winner]
                key = selector.key(fmt, "bfloat16", m, n, k)
                selector.user_table(slug).update({key: {
                    "realization": winner, "config": cfg.to_dict(), "us": round(us, 2),
                    "us_by_realization": {r: round(t, 2) for r, (t, _) in times.items()}}}, slug)
                w0 = packed[fmt][0]
                nbytes = sum(t.nbytes for t in w0) + x.nbytes + sx.nbytes + m * n * 2
                row["bitplane"][fmt] = {
                    "us": us, "realization": winner, "config": cfg.to_dict(),
                    "us_by_realization": {r: t for r, (t, _) in times.items()}, "bytes": nbytes,
                    "mem_floor_fraction": nbytes / ceil["copy_bw_Bps"] * 1e6 / us,
                    "int8_peak_fraction": 2 * m * n * k / ceil["int8_ops"] * 1e6 / us,
                    "x_vs_bf16": row["bf16_us"] / us,
                    **{f"x_vs_{b}": row[f"{b}_us"] / us for b in BASELINE_FORMATS},
                    "shipped_config": cfg_old.to_dict(), **old,
                }
                if "gemv" in times:
                    g_us = times["gemv"][0]
                    row["bitplane"][fmt].update({
                        "gemv_us": g_us, "gemv_config": times["gemv"][1].to_dict(),
                        "gemv_x_vs_bf16": row["bf16_us"] / g_us, "gemv_x_vs_w4a8_g128": row["w4a8_g128_us"] / g_us,
                        "gemv_mem_floor_fraction": nbytes / ceil["copy_bw_Bps"] * 1e6 / g_us})
                if "shipped_config_new_kernel_us" in old:
                    s_us = old["shipped_config_new_kernel_us"]
                    row["bitplane"][fmt].update({
                        "shipped_x_vs_bf16": row["bf16_us"] / s_us, "shipped_x_vs_w4a8_g128": row["w4a8_g128_us"] / s_us,
                        "shipped_mem_floor_fraction": nbytes / ceil["copy_bw_Bps"] * 1e6 / s_us})
                if "old_gemv_kernel_us" in old:
                    row["bitplane"][fmt].update({
                        "old_gemv_x_vs_bf16": row["bf16_us"] / old["old_gemv_kernel_us"],
                        "old_gemv_x_vs_w4a8_g128": row["w4a8_g128_us"] / old["old_gemv_kernel_us"]})
                if "old_kernel_us" in old:
                    row["bitplane"][fmt].update({
                        "old_x_vs_bf16": row["bf16_us"] / old["old_kernel_us"],
                        "old_x_vs_w4a8_g128": row["w4a8_g128_us"] / old["old_kernel_us"]})
            rows.append(row)
            log(f"{n}x{k} M={m}: bf16 {row['bf16_us']:.1f}us w4a8 {row['w4a8_g128_us']:.1f} w8a8 {row['w8a8_us']:.1f} | "
                + " ".join(f"{f.split('_')[0]} {v['us']:.1f}({v['realization'][0]}, {v['x_vs_bf16']:.2f}x; old "
                           f"{v.get('old_kernel_us', float('nan')):.1f}, shipped cfg {v.get('shipped_config_new_kernel_us', float('nan')):.1f}"
                           + (f"; old gemv {v['old_gemv_kernel_us']:.1f}, shipped gemv cfg "
                              f"{v.get('shipped_gemv_config_new_kernel_us', float('nan')):.1f}" if 'old_gemv_kernel_us' in v else "") + ")"
                           for f, v in row["bitplane"].items()))
        del wbs, packed
        torch.cuda.empty_cache()
    return rows


def geomean(values):
    values = [v for v in values if v]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summary(rows, formats):
    """Per format and M: geomean over shapes of the speed-up vs BF16, W4A8, W8A8, and the choices."""
    out = {}
    for fmt in formats:
        out[fmt] = {}
        for m in sorted({r["M"] for r in rows}):
            sel = [r["bitplane"][fmt] for r in rows if r["M"] == m and fmt in r["bitplane"]]
            if not sel:
                continue
            out[fmt][m] = {
                "x_vs_bf16": geomean([s["x_vs_bf16"] for s in sel]),
                "x_vs_w4a8_g128": geomean([s["x_vs_w4a8_g128"] for s in sel]),
                "x_vs_w8a8": geomean([s["x_vs_w8a8"] for s in sel]),
                "mem_floor_fraction": geomean([s["mem_floor_fraction"] for s in sel]),
                **({"old_x_vs_bf16": geomean([s["old_x_vs_bf16"] for s in sel]),
                    "old_x_vs_w4a8_g128": geomean([s["old_x_vs_w4a8_g128"] for s in sel])}
                   if all("old_x_vs_bf16" in s for s in sel) else {}),
                # "shipped": the unpack kernel with the shipped table's config; "gemv": the best GEMV tile.
                **{f"{side}_{what}": geomean([s[f"{side}_{what}"] for s in sel])
                   for side in ("shipped", "gemv", "old_gemv") for what in ("x_vs_bf16", "x_vs_w4a8_g128", "mem_floor_fraction")
                   if all(f"{side}_{what}" in s for s in sel)},
                "w4a8_g128_x_vs_bf16": geomean([r["bf16_us"] / r["w4a8_g128_us"] for r in rows
                                               if r["M"] == m and fmt in r["bitplane"]]),
                "realizations": sorted({s["realization"] for s in sel}),
            }
    return out


def print_table(result):
    s = result["summary"]
    for what in ("x_vs_bf16", "x_vs_w4a8_g128", "x_vs_w8a8", "old_x_vs_bf16", "old_x_vs_w4a8_g128",
                 "shipped_x_vs_bf16", "shipped_x_vs_w4a8_g128", "gemv_x_vs_bf16", "gemv_x_vs_w4a8_g128",
                 "old_gemv_x_vs_bf16", "old_gemv_x_vs_w4a8_g128",
                 "mem_floor_fraction", "shipped_mem_floor_fraction", "gemv_mem_floor_fraction", "w4a8_g128_x_vs_bf16"):
        if not any(what in per[m] for per in s.values() for m in per):
            continue
        ms = sorted({int(m) for per in s.values() for m in per})
        print(f"\n{result['device']}: geomean over shapes, {what} (CUDA-graph replay)")
        print("format".ljust(14) + "".join(f"M={m}".rjust(9) for m in ms))
        for fmt, per_m in s.items():
            print(fmt.ljust(14) + "".join(f"{per_m[m][what]:9.2f}" if what in per_m.get(m, {}) else "      n/a" for m in ms))
    print("\nchosen realization (u = unpack, b = binary, g = gemv), per M over shapes")
    for fmt, per_m in s.items():
        print(fmt.ljust(14) + "".join(("/".join(r[0] for r in per_m[m]["realizations"])).rjust(9) for m in sorted(per_m)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--formats", nargs="*", default=FORMATS)
    p.add_argument("--shapes", nargs="*", default=[f"{n}x{k}" for n, k in base.SHAPES])
    p.add_argument("--ms", nargs="*", type=int, default=base.MS)
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--budget-s", type=float, default=240.0, help="stop measuring new points after this")
    p.add_argument("--realizations", nargs="*", default=None, help="default: both")
    p.add_argument("--old-template", help="also time the shipped config on this template (a copy of the "
                                          "previous qlinear_bitplane_unpack.py in codegen/templates)")
    p.add_argument("--old-gemv-template", help="also time the shipped GEMV config on this template (a copy "
                                               "of the previous qlinear_bitplane_gemv.py in codegen/templates)")
    p.add_argument("--out", help="results JSON")
    p.add_argument("--table-out", help="copy of the realization table (lowc/runtime/configs/bitplane-<gpu>.json)")
    args = p.parse_args(argv)
    import torch
    import triton

    from lowc.runtime import bitplane_gemm as bg
    from lowc.runtime.autotune import device_slug

    t0 = time.time()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    slug = device_slug()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 * 2**20)
    prepare(shapes, args.ms, args.formats, args.workers, args.realizations)
    print(f"({time.time() - t0:.0f}s)", flush=True)
    from lowc.runtime.autotune import default_tuner

    base_jobs = [(fmt, default_tuner().config_for(base.spec_of(fmt), m, n, k, slug).to_dict(), m_class(m))
                 for fmt in BASELINE_FORMATS for n, k in shapes for m in args.ms]
    base_jobs = list({json.dumps(j, sort_keys=True): j for j in base_jobs}.values())
    failed = base.precompile(base_jobs, args.workers)
    print(f"precompiled {len(base_jobs)} W4A8/W8A8 configs, {failed} failed ({time.time() - t0:.0f}s)", flush=True)
    ceil = base.ceilings()
    print(f"{props.name}: copy {ceil['copy_bw_Bps'] / 1e12:.2f} TB/s, INT8 {ceil['int8_ops'] / 1e12:.0f} TOPS", flush=True)
    rows = bitplane_rows(shapes, args.ms, args.formats, ceil, l2, slug, t0 + args.budget_s, log=lambda s: print(s, flush=True),
                         realizations=args.realizations, old_template=args.old_template,
                         old_gemv_template=args.old_gemv_template)
    result = {"device": props.name, "slug": slug, "torch": torch.__version__, "triton": triton.__version__,
              "ceilings": ceil, "formats": args.formats, "rows": rows, "seconds": time.time() - t0}
    result["summary"] = summary(rows, args.formats)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    if args.table_out:
        table = bg.default_selector().user_table(slug).path
        if table.exists():
            Path(args.table_out).write_text(table.read_text())
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

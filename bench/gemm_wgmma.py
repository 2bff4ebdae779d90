"""Tuning A/B of the warpgroup W4A8 g128 kernel (WGMMA, codegen/gluon_w4a8_wgmma.py) at M = 16-256.

    MS=16,32,64,128,256 python bench/gemm_wgmma.py     (on an sm_90 GPU; JSON to $OUT/wgmma_ab.json)
    python bench/gemm_wgmma.py --merge RESULT.json runtime/configs/h100.json     (no GPU)

Per Llama-3-8B shape and M: every WGMMA candidate of the tuner's space (autotune.wgmma_candidates,
compiled first in parallel) is checked bit for bit (INT32 accumulator and BF16 output against a tile
of the Triton template) and timed by CUDA-graph replay; the fastest is then timed again beside cuBLAS
BF16, `torch._int_mm`, FP8 `torch._scaled_mm` and the shipped table's config (`w4a8_g128@shipped`),
all on rotating weight copies (>= 4x L2), eager times beside the graphed ones. Prints a table last.

--merge writes a run's WGMMA winners into a shipped config table where they beat the table's own
config by >= 2% in that run (the rule the other tuning A/Bs use), and prints the geomeans the merged
table gives in that run.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import gemm as G  # noqa: E402

from lowc.runtime.autotune import TileConfig, wgmma_candidates  # noqa: E402
from lowc.runtime.gemm import qlinear_triton  # noqa: E402

SHAPES = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]
MS = [int(v) for v in os.environ.get("MS", "16,32,64,128,256").split(",")]
FMT = "w4a8_g128"
TEMPLATE_CONFIG = TileConfig(64, 64, 256, 2)  # a tensor-core tile of the w4a8_g template


def run(x, sx, w, out_dtype, cfg):
    return qlinear_triton(x, sx, w, None, FMT, out_dtype, config=cfg)


def merge(result_path: str, table_path: str) -> int:
    from lowc.runtime.autotune import m_bucket

    res = json.load(open(result_path))
    table = json.load(open(table_path))
    spec = G.spec_of(FMT)
    merged = {}
    for r in res["rows"]:
        if "wgmma_us" in r and r["wgmma_us"] < 0.98 * r["shipped_us"]:
            key = f"{spec.name}|m{m_bucket(r['m'])}|n{r['n']}|k{r['k']}"
            cfg = {k: v for k, v in sorted(r["wgmma_cfg"].items())}
            table["entries"][key] = {"config": cfg, "us": round(r["wgmma_us"], 2)}
        merged[(r["n"], r["k"], r["m"])] = min(r["shipped_us"], r.get("wgmma_us") or r["shipped_us"])
    table["note"] += (f" w4a8_g128 WGMMA entries (M = 32-256) from bench/gemm_wgmma.py on {res['device']}, "
                      f"{res['date']} ({os.path.basename(result_path)}).")
    tmp = table_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, table_path)
    print("M | shipped x BF16 | merged table x BF16 (same run)")
    for m in sorted({r["m"] for r in res["rows"]}):
        rows = [r for r in res["rows"] if r["m"] == m]
        s = G.geomean([r["bf16_us"] / r["shipped_us"] for r in rows])
        g = G.geomean([r["bf16_us"] / merged[(r["n"], r["k"], m)] for r in rows])
        print(f"{m} | {s:.2f} | {g:.2f}")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["--merge"]:
        return merge(*sys.argv[2:4])
    t0 = time.time()
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    out_path = os.path.join(os.environ.get("OUT", "/tmp"), "wgmma_ab.json")
    res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "rows": [],
           "torch": torch.__version__}
    spec = G.spec_of(FMT)
    jobs = {(FMT, tuple(sorted(c.to_dict().items())), m) for (n, k) in SHAPES for m in MS
            for c in wgmma_candidates(spec, m, n, k)}
    failed = G.precompile([(f, dict(c), m) for f, c, m in sorted(jobs)], workers=12)
    print(f"precompiled {len(jobs)} candidates ({failed} failed) in {time.time() - t0:.0f}s", flush=True)
    bad = []
    for (n, k) in SHAPES:
        w0 = G.make_weight(FMT, n, k, 0)
        ws_list = G.weight_copies(w0, l2)
        wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(G.copies_for(n * k * 2, l2))]
        w8 = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8) for _ in range(G.copies_for(n * k, l2))]
        wf8 = [w.to(torch.float8_e4m3fn) for w in wb[: G.copies_for(n * k, l2)]]
        one = torch.tensor(1.0, device="cuda")
        for m in MS:
            x, sx = G.make_x(FMT, m, k, m)
            ref_int = run(x, sx, w0, torch.int32, TEMPLATE_CONFIG)
            ref_bf = run(x, sx, w0, torch.bfloat16, TEMPLATE_CONFIG)
            best, tried = None, []
            for cfg in wgmma_candidates(spec, m, n, k):
                try:
                    o32, obf = run(x, sx, w0, torch.int32, cfg), run(x, sx, w0, torch.bfloat16, cfg)
                except Exception as e:  # a candidate that does not compile or launch: named, not fatal
                    bad.append((n, k, m, str(cfg), repr(e)[:200]))
                    continue
                if not (torch.equal(o32, ref_int) and torch.equal(obf, ref_bf)):
                    bad.append((n, k, m, str(cfg), (o32 != ref_int).sum().item(), (obf != ref_bf).sum().item()))
                    continue
                fn = G.Rotating(lambda w, cfg=cfg: run(x, sx, w, torch.bfloat16, cfg), [(w,) for w in ws_list])
                g, _ = G.timed(fn, graphed_rep=10, eager_rep=0)
                tried.append((g, cfg.to_dict()))
                if best is None or g < best[0]:
                    best = (g, cfg)
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            x8 = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
            xf8 = xb.to(torch.float8_e4m3fn)
            row = dict(n=n, k=k, m=m, candidates=sorted(tried, key=lambda t: t[0])[:8])
            sides = {
                "bf16": G.Rotating(lambda w: torch.matmul(xb, w.t()), [(w,) for w in wb]),
                # _int_mm needs M > 16
                "int8": G.Rotating(lambda w: torch._int_mm(x8, w.t()), [(w,) for w in w8]) if m > 16 else None,
                "fp8": G.Rotating(lambda w: torch._scaled_mm(xf8, w.t(), scale_a=one, scale_b=one,
                                                             out_dtype=torch.bfloat16), [(w,) for w in wf8]),
                "shipped": G.lowc_callable(FMT + "@shipped", ws_list, x, sx),
            }
            if best:
                cfg = best[1]
                sides["wgmma"] = G.Rotating(lambda w: run(x, sx, w, torch.bfloat16, cfg), [(w,) for w in ws_list])
                row["wgmma_cfg"] = cfg.to_dict()
            for name, fn in sides.items():
                row[f"{name}_us"], row[f"{name}_eager_us"] = G.timed(fn, graphed_rep=30) if fn else (None, None)
            res["rows"].append(row)
            print(f"{n}x{k} M={m}: bf16 {row['bf16_us']:.2f} int8 {row['int8_us'] or float('nan'):.2f} fp8 {row['fp8_us']:.2f} "
                  f"shipped {row['shipped_us']:.2f} wgmma {row.get('wgmma_us', float('nan')):.2f} "
                  f"{row.get('wgmma_cfg')} t={time.time() - t0:.0f}s", flush=True)
            with open(out_path, "w") as f:
                json.dump(res, f, indent=1)
        del wb, w8, wf8, ws_list, w0

    res["wrong"] = [str(b) for b in bad]
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)
    print("WRONG or failed:", len(bad), bad[:5])
    print("\nM | shipped x BF16 | wgmma x BF16 | wgmma / shipped | wgmma / _int_mm | wgmma / FP8")
    for m in MS:
        rows = [r for r in res["rows"] if r["m"] == m and "wgmma_us" in r]
        if not rows:
            continue
        s = G.geomean([r["bf16_us"] / r["shipped_us"] for r in rows])
        g = G.geomean([r["bf16_us"] / r["wgmma_us"] for r in rows])
        i8 = G.geomean([r["int8_us"] / r["wgmma_us"] for r in rows]) if m > 16 else float("nan")
        f8 = G.geomean([r["fp8_us"] / r["wgmma_us"] for r in rows])
        print(f"{m} | {s:.2f} | {g:.2f} | {g / s:.2f} | {i8:.2f} | {f8:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Tuning A/B of the register-fragment bit-plane kernel (MMA_REG of the unpack realization,
codegen/gluon_bitplane.py).

    MS=1,4,16 python bench/gemm_bitplane_mma_reg.py     (on the GPU; JSON to $OUT/bitplane_mma_ab.json)

Per format (FORMATS, default w2a8 / w3a8 / w6a6 g128), Llama-3-8B shape and M: every MMA_REG candidate
(bitplane_gemm.mma_reg_candidates) is checked bit for bit (per-group INT32 accumulators against the
direct integer GEMM) and timed by CUDA-graph replay with PDL (mode 1); the fastest is timed again
with the zero folded into the weight bytes instead of the second MMA chain, and beside cuBLAS BF16,
lowc's W4A8 g128 (its shipped table) and the bit-plane GEMV's and Triton unpack tile's default configs.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import gemm as G  # noqa: E402

from lowc.runtime import bitplane_gemm as bg  # noqa: E402
from lowc.runtime import gemm_mma_reg  # noqa: E402
from lowc.runtime.pdl import set_pdl  # noqa: E402

SHAPES = [(4096, 4096), (6144, 4096), (28672, 4096), (4096, 14336)]
MS = [int(v) for v in os.environ.get("MS", "1,4,16").split(",")]
FORMATS = os.environ.get("FORMATS", "w2a8_g128_bp,w3a8_g128_bp,w6a6_g128_bp").split(",")
t0 = time.time()
l2 = torch.cuda.get_device_properties(0).L2_cache_size
out_dir = os.environ.get("OUT", "/tmp")
res = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "rows": []}
set_pdl(1)


def run(fmt, x, sx, w, realization, cfg, raw=False):
    return bg.qlinear_bitplane(x, sx, w, None, fmt, torch.int32 if raw else torch.bfloat16,
                               realization=realization, config=cfg, raw=raw)


def graphed(fn, ws_list, rep=10):
    return G.timed(G.Rotating(fn, [(w,) for w in ws_list]), graphed_rep=rep, eager_rep=0)[0]


bad = []
for (n, k) in SHAPES:
    wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(G.copies_for(n * k * 2, l2))]
    w4 = G.weight_copies(G.make_weight("w4a8_g128", n, k, 0), l2)
    for fmt in FORMATS:
        w0 = G.make_weight(fmt, n, k, 0)
        ws_list = G.weight_copies(w0, l2)
        for m in MS:
            x, sx = G.make_x(fmt, m, k, m)
            ref = bg.qlinear_bitplane(x, sx, w0, None, fmt, torch.float32, realization="unpack",
                                      config=bg.default_config(bg.kernel_spec(fmt, "unpack", raw=True), "unpack", m, n, k),
                                      raw=True)
            best = None
            for cfg in bg.mma_reg_candidates(bg.kernel_spec(fmt, "unpack"), m, n, k):
                acc = run(fmt, x, sx, w0, "unpack", cfg, raw=True)
                if not torch.equal(acc, ref):
                    bad.append((fmt, n, k, m, str(cfg), int((acc != ref).sum())))
                    continue
                t = graphed(lambda w, cfg=cfg: run(fmt, x, sx, w, "unpack", cfg), ws_list)
                if best is None or t < best[0]:
                    best = (t, cfg)
            row = dict(fmt=fmt, n=n, k=k, m=m)
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row["bf16_us"] = graphed(lambda w: torch.matmul(xb, w.t()), wb, 30)
            x4, sx4 = G.make_x("w4a8_g128", m, k, m)
            row["w4a8_us"] = G.timed(G.lowc_callable("w4a8_g128@shipped", w4, x4, sx4), graphed_rep=30, eager_rep=0)[0]
            for r in ("unpack", "gemv"):
                if r == "gemv" and m > bg.GEMV_MAX_M:
                    continue
                cfg = bg.default_config(bg.kernel_spec(fmt, r), r, m, n, k)
                row[f"{r}_default_us"] = graphed(lambda w, r=r, cfg=cfg: run(fmt, x, sx, w, r, cfg), ws_list, 30)
            if best:
                cfg = best[1]
                row["mma_cfg"] = cfg.to_dict()
                row["mma_us"] = graphed(lambda w: run(fmt, x, sx, w, "unpack", cfg), ws_list, 30)
                gemm_mma_reg.BITPLANE_ZERO_MMA = False
                row["mma_fold_us"] = graphed(lambda w: run(fmt, x, sx, w, "unpack", cfg), ws_list, 30)
                gemm_mma_reg.BITPLANE_ZERO_MMA = True
            res["rows"].append(row)
            print(f"{fmt} {n}x{k} M={m}: bf16 {row['bf16_us']:.2f} w4a8 {row['w4a8_us']:.2f} "
                  f"gemv {row.get('gemv_default_us', float('nan')):.2f} unpack {row['unpack_default_us']:.2f} "
                  f"mma {row.get('mma_us', float('nan')):.2f} fold {row.get('mma_fold_us', float('nan')):.2f} "
                  f"{row.get('mma_cfg')} t={time.time() - t0:.0f}s", flush=True)
            with open(os.path.join(out_dir, "bitplane_mma_ab.json"), "w") as f:
                json.dump(res, f, indent=1)
        del ws_list, w0
    del wb, w4

res["wrong"] = [str(b) for b in bad]
print("WRONG:", len(bad), bad[:5])
print("\nformat M | mma x BF16 | mma x W4A8 | fold x BF16 | gemv-default x BF16 | unpack-default x BF16 | W4A8 x BF16")
for fmt in FORMATS:
    for m in MS:
        rows = [r for r in res["rows"] if r["m"] == m and r["fmt"] == fmt and "mma_us" in r]

        def gm(key, rows=rows):
            vals = [r["bf16_us"] / r[key] for r in rows if key in r]
            return G.geomean(vals) or float("nan")
        w4x = G.geomean([r["w4a8_us"] / r["mma_us"] for r in rows]) or float("nan")
        print(f"{fmt} {m} | {gm('mma_us'):.2f} | {w4x:.2f} | {gm('mma_fold_us'):.2f} | {gm('gemv_default_us'):.2f} | "
              f"{gm('unpack_default_us'):.2f} | {gm('w4a8_us'):.2f}")
with open(os.path.join(out_dir, "bitplane_mma_ab.json"), "w") as f:
    json.dump(res, f, indent=1)

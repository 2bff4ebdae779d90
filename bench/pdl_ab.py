"""Programmatic dependent launch (PDL) of the W4A8 g128 decode GEMMs: same-run A/B against no PDL.

    python bench/pdl_ab.py --ms 1 2 4 8 16 32 64 --json OUT/pdl.json

Each point (Llama-3-8B linear shape, M) is timed by CUDA-graph replay (do_bench_cudagraph, median) of
a chain of launches of the same GEMM on rotating weight copies (>= 4x L2), as bench/gemm.py times it:
cuBLAS BF16 (`torch.matmul`), then lowc's w4a8_g128 with the shipped tile table and PDL mode 0 (off),
1 (the decode GEMV lets the next kernel launch and waits for the previous one at its start) and 2
(the tensor-core kernel too); lowc.runtime.pdl.set_pdl(). What PDL can hide is
the gap between dependent kernels (launch latency, the ramp before the first loads), which a decode
step, a chain of such kernels in one graph, pays once per kernel. Every mode's output must equal mode
0's bit for bit (checked; same integer accumulation, only the launch differs).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODES = (0, 1, 2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ms", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--format", default="w4a8_g128")
    ap.add_argument("--rep", type=int, default=20, help="milliseconds of graph replay per timing")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from triton.testing import do_bench_cudagraph

    import lowc.runtime.gemm as gemm
    from lowc.runtime.pdl import set_pdl
    from gemm import SHAPES, Rotating, copies_for, geomean, make_x, make_weight, weight_copies

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    rows = []
    for n, k in SHAPES:
        w0 = make_weight(args.format, n, k, 1)
        weights = weight_copies(w0, l2)
        wb = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
        wbs = [wb] + [wb.clone() for _ in range(copies_for(wb.nbytes, l2) - 1)]
        for m in args.ms:
            x, sx = make_x(args.format, m, k, 2)
            xb = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = {"N": n, "K": k, "M": m}
            row["bf16_us"] = do_bench_cudagraph(Rotating(lambda w: xb @ w.T, [(w,) for w in wbs]), rep=args.rep,
                                                return_mode="median") * 1e3
            outs = {}
            for mode in MODES:
                set_pdl(mode)
                fn = Rotating(lambda w: gemm.qlinear_triton(x, sx, w, None, args.format, torch.bfloat16),
                              [(w,) for w in weights])
                outs[mode] = gemm.qlinear_triton(x, sx, weights[0], None, args.format, torch.bfloat16)
                row[f"pdl{mode}_us"] = do_bench_cudagraph(fn, rep=args.rep, return_mode="median") * 1e3
            set_pdl(1)  # the default
            row["exact"] = all(torch.equal(outs[0], outs[mode]) for mode in MODES)
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"device": torch.cuda.get_device_name(), "date": time.strftime("%Y-%m-%d"), "format": args.format,
              "torch": torch.__version__, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    print(f"\n{result['device']}, {args.format}, CUDA-graph replay median, µs (x cuBLAS BF16)")
    print("| N x K | M | BF16 | no PDL | PDL 1 | PDL 2 | exact |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cells = [f"{r[f'pdl{mode}_us']:.2f} ({r['bf16_us'] / r[f'pdl{mode}_us']:.2f}x)" for mode in MODES]
        print(f"| {r['N']}x{r['K']} | {r['M']} | {r['bf16_us']:.2f} | " + " | ".join(cells) + f" | {r['exact']} |")
    for mode in MODES:
        for m in args.ms:
            geo = geomean([r["bf16_us"] / r[f"pdl{mode}_us"] for r in rows if r["M"] == m])
            print(f"PDL {mode} M={m}: geomean x BF16 {geo:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Same-run, timing-only A/B of kernel templates: the shipped codegen/templates against copies of it
with one change each (a directory per arm holding common.py and the template files that differ).

For each point (shape, M) of a candidates file, every arm times each candidate tile by CUDA-graph
replay on the same packed weights (rotated past L2) and keeps its best. The data is packed for the
shipped templates, so an arm that reads the codes in another order computes wrong numbers at the
same cost: this measures speed only. Check a winning arm's exactness after adopting it
(`pytest -m gpu`).

    python bench/template_ab.py --arm evenodd=DIR --arm pairs16=DIR2 --candidates C.json --json OUT/ab.json
C.json: {"4096x4096 16": [TileConfig dict, ...], ...}. `--row-words ARM=4` passes KW // 4 as the
weight row stride to that arm (templates that read 16-bit words; the shipped w4a8_g reads 32-bit).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--arm", action="append", default=[], help="NAME=DIR of an alternative template directory")
    ap.add_argument("--row-words", action="append", default=[], help="ARM=DIV: pass KW // DIV as the row stride")
    ap.add_argument("--candidates", required=True)
    ap.add_argument("--format", default="w4a8_g128")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch
    from triton.testing import do_bench_cudagraph

    import lowc.codegen.render as render
    import lowc.runtime.gemm as gemm
    from gemm import Rotating, make_weight, make_x, weight_copies
    from lowc.runtime.autotune import TileConfig

    arms = {"shipped": render.TEMPLATE_DIR}
    arms.update({a.split("=", 1)[0]: Path(a.split("=", 1)[1]).resolve() for a in args.arm})
    divisors = {a.split("=")[0]: int(a.split("=")[1]) for a in args.row_words}
    row_words = gemm._weight_row_words

    def use(arm):
        render.TEMPLATE_DIR = arms[arm]
        render._read_template.cache_clear()
        render._templates_hash.cache_clear()
        gemm.default_cache().clear_memory()  # its keys hold the template hash
        div = divisors.get(arm)
        gemm._weight_row_words = (lambda spec, kw: kw // div) if div else row_words

    points = json.loads(Path(args.candidates).read_text())
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), format=args.format,
                  arms={a: str(d) for a, d in arms.items()}, points={})
    t0 = time.time()
    for shape in sorted({p.split()[0] for p in points}):
        n, k = map(int, shape.split("x"))
        w0 = make_weight(args.format, n, k, 1)
        weights = weight_copies(w0, l2)
        for key in [p for p in points if p.split()[0] == shape]:
            m = int(key.split()[1])
            x, sx = make_x(args.format, m, k, 2)
            row = {}
            for arm in arms:
                use(arm)
                best = None
                for c in points[key]:
                    cfg = TileConfig(**c)
                    fn = Rotating(lambda w: gemm.qlinear_triton(x, sx, w, None, args.format, torch.bfloat16, config=cfg),
                                  [(w,) for w in weights])
                    try:
                        t = do_bench_cudagraph(fn, rep=20, return_mode="median") * 1e3
                    except Exception as e:  # an arm may not compile every tile
                        print(f"  {arm} {key} {c}: {type(e).__name__}", flush=True)
                        continue
                    if best is None or t < best[0]:
                        best = (t, c)
                row[arm] = best
            result["points"][key] = row
            print(f"{key}: " + "  ".join(f"{a} {row[a][0]:.2f}" for a in arms if row[a]) + f"  [{time.time() - t0:.0f}s]",
                  flush=True)
        del weights
        torch.cuda.empty_cache()
    use("shipped")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

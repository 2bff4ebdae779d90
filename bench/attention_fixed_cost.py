"""Where the KV4 decode attention's time goes besides reading the cache: a sweep over the sequence
length at fixed batch, fitted as time = fixed + per_token * S, for the Gluon kernel's default launch
(and, with --before NAME=FILE, other versions of codegen/gluon_attention_kv4.py in the same run).

    python bench/attention_fixed_cost.py --json OUT [--before NAME=FILE ...] [--batches 16 64] [--lengths ...]

Same data and method as bench/attention.py (Llama-3-8B heads, bf16 queries, kv4 with one key pair,
CUDA-graph replay, median, L2-defeating cache copies). Besides the default split count it times
forced split counts at each batch's S = 4096 (what the merge costs) and the default launch with
PDL (LOWC_PDL=2: the next launch, and the current kernel's prologue and first tile, overlap the
previous kernel's tail). per_token is turned
into the fraction of the read bandwidth measured in the run; fixed is what a launch costs beyond the
bytes (launch gap, the prologue's dependent loads, the first tile's latency, the merge).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention import bandwidths, bench_ms, cache_bytes, lowc_case, sdpa_case  # noqa: E402


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (fixed µs, µs per token) of time against S."""
    n = len(points)
    sx = sum(s for s, _ in points)
    sy = sum(t for _, t in points)
    sxx = sum(s * s for s, _ in points)
    sxy = sum(s * t for s, t in points)
    slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
    return (sy - slope * sx) / n, slope


def load_before(name: str, path: str):
    spec = importlib.util.spec_from_file_location(f"gluon_attention_kv4_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    from lowc.codegen import gluon_attention_kv4 as current
    from lowc.runtime import pdl
    from lowc.runtime.attention import DecodeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--before", nargs="*", default=[],
                    help="NAME=FILE: other versions of codegen/gluon_attention_kv4.py to time beside the current one")
    ap.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--lengths", type=int, nargs="+", default=[256, 1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--splits", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--rep", type=int, default=30)
    args = ap.parse_args()

    kernels = {"now": current.decode_kv4_kernel}
    for item in args.before:
        name, _, path = item.partition("=")
        kernels[name] = load_before(name, path).decode_kv4_kernel
    read_bw, copy_bw = bandwidths()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "read_bandwidth": read_bw, "copy_bandwidth": copy_bw, "rows": [], "fits": {}}

    @contextlib.contextmanager
    def launching(kernel, pdl_mode=1):
        """The launcher runs `kernel` (it looks the kernel up at call time) under PDL mode `pdl_mode`."""
        saved = current.decode_kv4_kernel
        current.decode_kv4_kernel = kernel
        pdl.set_pdl(pdl_mode)
        try:
            yield
        finally:
            current.decode_kv4_kernel = saved
            pdl.set_pdl(1)

    def timed(make, cfg, kernel, pdl_mode=1):
        with launching(kernel, pdl_mode):
            return bench_ms(make(cfg), args.rep) * 1e3

    for b in args.batches:
        for s in args.lengths:
            sdpa, q, _ = sdpa_case(b, s)
            row = {"B": b, "S": s, "sdpa_us": bench_ms(sdpa, args.rep) * 1e3, "bytes": cache_bytes("kv4", b, s)}
            del sdpa
            make, check = lowc_case("kv4", b, s, q)
            cfg = DecodeConfig(gluon=True)
            for name, kernel in kernels.items():
                with launching(kernel):
                    row[f"{name}_err"] = check(cfg)
                row[name] = timed(make, cfg, kernel)
            for name, kernel in kernels.items():
                row[f"{name}_pdl"] = timed(make, cfg, kernel, pdl_mode=2)
            if s == 4096:
                for sp in args.splits:
                    for name, kernel in kernels.items():
                        row[f"{name}_splits{sp}"] = timed(make, DecodeConfig(gluon=True, num_splits=sp), kernel)
            torch.cuda.empty_cache()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    for b in args.batches:
        rows = [r for r in result["rows"] if r["B"] == b]
        for name in list(kernels) + [f"{k}_pdl" for k in kernels]:
            fixed, per_token = fit([(r["S"], r[name]) for r in rows])
            bytes_per_token = rows[0]["bytes"] / rows[0]["S"]
            result["fits"][f"B{b}_{name}"] = {"fixed_us": fixed, "us_per_token": per_token,
                                              "bandwidth_fraction": bytes_per_token / read_bw / (per_token * 1e-6)}
    with open(args.json, "w") as f:
        json.dump(result, f, indent=1)

    print(f"\n{result['device']}, read {read_bw / 1e12:.2f} TB/s; kv4 decode attention, µs (x SDPA)")
    names = list(kernels) + [f"{k}_pdl" for k in kernels]
    print(f"{'B':>3} {'S':>6} {'SDPA':>8} " + " ".join(f"{n:>16}" for n in names))
    for r in result["rows"]:
        print(f"{r['B']:3d} {r['S']:6d} {r['sdpa_us']:8.1f} "
              + " ".join(f"{r[n]:8.1f} ({r['sdpa_us'] / r[n]:4.2f}x)" for n in names))
    for r in result["rows"]:
        if r["S"] == 4096:
            print(f"B={r['B']} S=4096 forced splits: " + ", ".join(
                f"{sp}: " + "/".join(f"{r[f'{n}_splits{sp}']:.1f}" for n in kernels) for sp in args.splits))
    for key, f in result["fits"].items():
        print(f"{key:14s} fixed {f['fixed_us']:6.2f} µs, {1e3 * f['us_per_token']:7.3f} ns/token "
              f"({100 * f['bandwidth_fraction']:.0f}% of read bandwidth)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

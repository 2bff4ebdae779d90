"""KV4 decode attention: the register-fragment Gluon kernel against the Triton kernel and SDPA.

    python bench/attention_gluon.py [--quick] [--rep MS] --json OUT

Same shapes, data and method as bench/attention.py (Llama-3-8B heads: 32 query / 8 KV heads,
head_dim 128, bf16 queries; B in {16, 64}, S in {1024, 4096, 16384}; CUDA-graph replay, median, over
enough cache copies to defeat L2; SDPA over a BF16 cache with enable_gqa), all sides in one run:
SDPA, the Triton kernel's default launch (`DecodeConfig(gluon=False)`) and the Gluon kernel
(`DecodeConfig(gluon=True, ...)`) over a small sweep of token tile x programs per multiprocessor,
for kv4 with one key scale/zero pair and with two (w4a8kv4's cache). Every lowc launch is checked
against the reference first (relative error in the table). Floor % = bytes read / the read bandwidth
measured in the run / time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention import BATCHES, LENGTHS, bandwidths, bench_ms, cache_bytes, lowc_case, sdpa_case  # noqa: E402

GLUON_SWEEP = [(32, 16), (32, 8), (64, 8), (32, 32), (64, 16), (16, 32)]  # (gluon_block_n, programs per SM)


def main() -> int:
    from lowc.runtime.attention import DecodeConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="B=64 only, first two sweep entries")
    ap.add_argument("--rep", type=int, default=30)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    sweep = GLUON_SWEEP[:2] if args.quick else GLUON_SWEEP
    read_bw, copy_bw = bandwidths()
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
              "read_bandwidth": read_bw, "copy_bandwidth": copy_bw, "rows": []}
    for b in (64,) if args.quick else BATCHES:
        for s in LENGTHS:
            sdpa, q, _ = sdpa_case(b, s)
            row = {"B": b, "S": s, "sdpa_us": bench_ms(sdpa, args.rep) * 1e3}
            row["sdpa_floor"] = cache_bytes("bf16", b, s) / read_bw / (row["sdpa_us"] * 1e-6)
            del sdpa
            for label in ("kv4", "kv4k2"):
                make, check = lowc_case(label, b, s, q)
                floor_s = cache_bytes(label, b, s) / read_bw
                cfgs = [("triton", DecodeConfig(gluon=False))] + [
                    (f"gluon_{bn}_{pps}", DecodeConfig(gluon=True, gluon_block_n=bn, gluon_programs_per_sm=pps))
                    for bn, pps in sweep]
                for name, cfg in cfgs:
                    err = check(cfg)
                    us = bench_ms(make(cfg), args.rep) * 1e3
                    row[f"{label}_{name}"] = {"us": us, "x_sdpa": row["sdpa_us"] / us, "floor": floor_s / (us * 1e-6),
                                              "rel_err": err}
                torch.cuda.empty_cache()
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.json, "w") as f:
                json.dump(result, f, indent=1)
    print(f"\n{result['device']}, read {read_bw / 1e12:.2f} TB/s; us (x SDPA, floor %, rel err)")
    for row in result["rows"]:
        for label in ("kv4", "kv4k2"):
            keys = [k for k in row if k.startswith(label + "_") and (label == "kv4k2" or not k.startswith("kv4k2"))]
            best = min((k for k in keys if "gluon" in k), key=lambda k: row[k]["us"])
            tri = row[f"{label}_triton"]
            g = row[best]
            print(f"B={row['B']:3d} S={row['S']:6d} {label:5s} SDPA {row['sdpa_us']:7.1f} | triton {tri['us']:7.1f} "
                  f"({tri['x_sdpa']:.2f}x) | {best[len(label) + 1:]:14s} {g['us']:7.1f} ({g['x_sdpa']:.2f}x, "
                  f"{100 * g['floor']:.0f}%, {g['rel_err']:.1e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

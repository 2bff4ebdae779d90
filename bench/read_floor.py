"""The achievable floor of a decode GEMM: how long a kernel that only *reads* the packed weight takes.

The issue targets compare lowc's GEMMs against cuBLAS at "bytes / bandwidth". At decode sizes a
kernel is a few microseconds, and a fixed part of that (the launch inside a CUDA graph, the ramp of
the first DRAM round trip, the tail of the last wave) is paid by any kernel, however it computes.
This measures it: a Triton kernel that streams N*K/2 bytes (the W4A8 weight of each Llama-3-8B
shape) in 16-byte loads and writes one int32 per program, over a sweep of program sizes, and an
empty kernel, all by CUDA-graph replay like bench/gemm.py. No lowc code is involved.

    python bench/read_floor.py --json OUT/read_floor.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm import SHAPES, Rotating, copies_for, timed  # noqa: E402  (the Llama-3-8B shapes bench/gemm.py times)


@triton.jit
def read_kernel(src_ptr, out_ptr, n_words, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
    """Program p sums words [p * BLOCK * UNROLL, (p + 1) * BLOCK * UNROLL) of an int32 buffer."""
    base = tl.program_id(0) * BLOCK * UNROLL
    acc = tl.zeros((BLOCK,), dtype=tl.int32)
    for u in tl.static_range(UNROLL):
        offs = base + u * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(src_ptr + offs, mask=offs < n_words, other=0)
    tl.store(out_ptr + tl.program_id(0), tl.sum(acc))


@triton.jit
def empty_kernel(out_ptr):
    tl.store(out_ptr + tl.program_id(0), 0)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    out = torch.empty(1 << 20, dtype=torch.int32, device="cuda")
    result = dict(device=torch.cuda.get_device_name(), date=time.strftime("%Y-%m-%d"), rows=[])
    empty = timed(lambda: empty_kernel[(132,)](out), eager_rep=0)[0]
    result["empty_kernel_us"] = empty
    print(f"empty kernel (132 programs), graphed: {empty:.2f} us", flush=True)
    for n, k in SHAPES:
        nbytes = n * k // 2
        words = nbytes // 4
        bufs = [torch.randint(-2**31, 2**31 - 1, (words,), dtype=torch.int32, device="cuda")
                for _ in range(copies_for(nbytes, l2))]
        times = {}
        for block, unroll, warps in ((1024, 1, 4), (2048, 1, 4), (2048, 2, 4), (4096, 1, 8), (4096, 2, 8),
                                     (4096, 4, 8), (8192, 2, 8), (1024, 4, 4), (512, 8, 2)):
            grid = (triton.cdiv(words, block * unroll),)
            fn = Rotating(lambda b: read_kernel[grid](b, out, words, BLOCK=block, UNROLL=unroll, num_warps=warps),
                          [(b,) for b in bufs])
            times[f"{block}x{unroll} w{warps}"] = timed(fn, eager_rep=0)[0]
        best = min(times, key=times.get)
        t = times[best]
        row = dict(n=n, k=k, bytes=nbytes, best_us=t, best=best, tbps=nbytes / t / 1e6, all=times)
        result["rows"].append(row)
        print(f"{n}x{k}: {nbytes / 1e6:.1f} MB read in {t:.2f} us ({row['tbps']:.2f} TB/s) [{best}]", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

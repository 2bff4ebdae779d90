"""Run one lowc kernel once inside a profiler range, for Nsight Compute.

Each case builds random inputs of a real shape, warms the kernel up (compile, shipped config), then
launches it once between cudaProfilerStart/Stop, so

    ncu --profile-from-start off --clock-control none --section WarpStateStats ... \
        python bench/profile_kernels.py --case w2a8_gemv_28672

profiles exactly the shipped kernel of that case and nothing else. `--list` names the cases.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention as attn  # noqa: E402  (bench/attention.py: random caches, Llama-3-8B heads)
import gemm as base  # noqa: E402  (bench/gemm.py: make_weight / make_x)


CONFIG: dict = {}  # --config / --realization: a tile other than the shipped one


def _qlinear(fmt: str, m: int, n: int, k: int):
    from lowc.runtime.autotune import TileConfig
    from lowc.runtime.bitplane_gemm import is_bitplane_format, qlinear_bitplane
    from lowc.runtime.gemm import qlinear_triton

    w = base.make_weight(fmt, n, k, 0)
    x, sx = base.make_x(fmt, m, k, 0)
    kwargs = {}
    if "config" in CONFIG:
        kwargs["config"] = TileConfig.from_dict(CONFIG["config"])
    if is_bitplane_format(fmt):
        if "realization" in CONFIG:
            kwargs["realization"] = CONFIG["realization"]
        return lambda: qlinear_bitplane(x, sx, w, None, fmt, torch.bfloat16, **kwargs)
    return lambda: qlinear_triton(x, sx, w, None, fmt, torch.bfloat16, **kwargs)


def _attention(label: str, b: int, s: int):
    q = torch.randn(b, attn.HEADS, 1, attn.HEAD_DIM, device="cuda", dtype=torch.bfloat16)
    make, _ = attn.lowc_case(label, b, s, q)
    from lowc.runtime.attention import DecodeConfig

    return make(DecodeConfig())


CASES = {
    "w2a8_gemv_28672": lambda: _qlinear("w2a8_g128_bp", 1, 28672, 4096),
    "w3a8_gemv_28672": lambda: _qlinear("w3a8_g128_bp", 1, 28672, 4096),
    "w2a8_gemv_4096": lambda: _qlinear("w2a8_g128_bp", 1, 4096, 4096),
    "w4a8_gemv_28672": lambda: _qlinear("w4a8_g128", 1, 28672, 4096),
    "w4a8_gemv_4096": lambda: _qlinear("w4a8_g128", 1, 4096, 4096),
    "w4a8_m16_28672": lambda: _qlinear("w4a8_g128", 16, 28672, 4096),
    "w4a8_m16_4096": lambda: _qlinear("w4a8_g128", 16, 4096, 4096),
    "w4a8_m64_28672": lambda: _qlinear("w4a8_g128", 64, 28672, 4096),
    "w4a8_m64_4096": lambda: _qlinear("w4a8_g128", 64, 4096, 4096),
    "w4a8_m256_28672": lambda: _qlinear("w4a8_g128", 256, 28672, 4096),
    "w6a6_m1_4096": lambda: _qlinear("w6a6_g128_bp", 1, 4096, 4096),
    "kv4_b64_s4096": lambda: _attention("kv4k2", 64, 4096),
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=sorted(CASES))
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    ap.add_argument("--config", help="a qlinear tile as JSON (TileConfig fields) instead of the shipped one")
    ap.add_argument("--realization", help="bit-plane realization to force (unpack, binary, gemv)")
    args = ap.parse_args(argv)
    if args.config:
        CONFIG["config"] = json.loads(args.config)
    if args.realization:
        CONFIG["realization"] = args.realization
    if args.list or not args.case:
        print("\n".join(sorted(CASES)))
        return
    run = CASES[args.case]()
    for _ in range(5):
        run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()
    print(f"profiled {args.case}")


if __name__ == "__main__":
    main()

"""Registers and SASS instruction mix of the warpgroup W4A8 kernel (codegen/gluon_w4a8_wgmma.py),
built ahead of time for sm_90 (no GPU needed).

    python bench/sass_gluon_wgmma.py 64,8,4,8 [...]

Each argument is BM,WARPS,STAGES,SPLIT_K (BN = 16 * WARPS, bias, BF16 output, PDL on). The kernel is
compiled by Gluon for GPUTarget("cuda", 90, 32), disassembled with the nvdisasm that ships with
Triton (bench/sass_gemv.py's `disassemble`), and the instructions of the K loop counted (with Triton
3.6, the device's, on the PYTHONPATH; another Triton may give other counts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sass_gemv import disassemble, loop_mix  # noqa: E402

POINTER_TYPES = {"x_ptr": "*i8", "sx_ptr": "*fp32", "qw_ptr": "*u8", "s1_ptr": "*u8", "zs1_ptr": "*u8",
                 "s0_ptr": "*fp16", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*i32", "cnt_ptr": "*i32"}


def compile_tile(bm: int, warps: int, stages: int, split: int):
    from lowc.codegen import gluon_w4a8_wgmma as m
    from lowc.runtime.aot_compile import compile_for_target

    bn = 16 * warps
    w_l, u_l, c_l, o_l = m.layouts(bn, bm, warps)
    fn = m.qlinear_wgmma_kernel
    const = dict(HAS_BIAS=True, RAW=False, BN=bn, BM=bm, SPLIT_K=split, STAGES=stages, WARPS=warps,
                 w_l=w_l, u_l=u_l, c_l=c_l, o_l=o_l, PDL=True)
    divisible = {name for name in fn.arg_names if name not in const and name not in ("M", "N")}
    return compile_for_target(fn, const, POINTER_TYPES, divisible=divisible, num_warps=warps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tiles", nargs="+")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the module must be compiled, not interpreted
    with tempfile.TemporaryDirectory() as d:
        for tile in args.tiles:
            bm, warps, stages, split = (int(v) for v in tile.split(","))
            compiled = compile_tile(bm, warps, stages, split)
            sass, registers, stack = disassemble(compiled, d)
            mix = loop_mix(sass)
            print(f"{tile}: {registers} registers, stack {stack}, shared {compiled.metadata.shared} B, "
                  f"K loop {sum(mix.values())} instructions: "
                  + ", ".join(f"{op} {n}" for op, n in mix.most_common(12)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

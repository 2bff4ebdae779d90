"""Registers and SASS instruction mix of the register-fragment bit-plane kernel
(codegen/gluon_bitplane.py), built ahead of time for sm_90 (no GPU needed).

    python bench/sass_gluon_bitplane.py 2,64,8,2,8 [--fold] [...]

Each argument is planes,BN,BM,GPT,SPLIT_K (4 warps, bias, BF16 output, PDL on); --fold builds the
zero folded into the weight bytes instead of the second MMA chain. The kernel is compiled by Gluon for
GPUTarget("cuda", 90, 32), disassembled with the nvdisasm that ships with Triton (bench/sass_gemv.py's
`disassemble`), and the instructions of the K loop counted: what docs/bitplane.md quotes (with Triton
3.6, the device's, on the PYTHONPATH; another Triton may give other counts).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sass_gemv import disassemble, loop_mix  # noqa: E402

POINTER_TYPES = {"x_ptr": "*i8", "sx_ptr": "*fp32", "planes_ptr": "*u32", "scale_ptr": "*fp16", "zero_ptr": "*i8",
                 "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}


def compile_tile(planes: int, bn: int, bm: int, gpt: int, split: int, zero_mma: bool, warps: int = 4):
    from lowc.codegen import gluon_bitplane as m
    from lowc.runtime.aot_compile import compile_for_target

    w_l, x_l, o_l = m.layouts(bn, bm, gpt, warps, planes)
    fn = m.qlinear_bitplane_mma_kernel
    const = dict(P=planes, PP=m.padded_planes(planes), HAS_BIAS=True, RAW=False, BN=bn, BM=bm, GPT=gpt,
                 SPLIT_K=split, WARPS=warps, ZERO_MMA=zero_mma, w_l=w_l, x_l=x_l, o_l=o_l, PDL=True)
    divisible = {name for name in fn.arg_names if name not in const and name not in ("M", "N")}
    return compile_for_target(fn, const, POINTER_TYPES, divisible=divisible, num_warps=warps)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tiles", nargs="+")
    ap.add_argument("--fold", action="store_true", help="zero folded into the bytes (ZERO_MMA off)")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the module must be compiled, not interpreted
    with tempfile.TemporaryDirectory() as d:
        for tile in args.tiles:
            planes, bn, bm, gpt, split = (int(v) for v in tile.split(","))
            sass, registers, stack = disassemble(compile_tile(planes, bn, bm, gpt, split, not args.fold), d)
            mix = loop_mix(sass)
            print(f"{tile}: {registers} registers, stack {stack}, K loop {sum(mix.values())} instructions: "
                  + ", ".join(f"{op} {n}" for op, n in mix.most_common(10)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

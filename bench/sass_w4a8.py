"""Registers and shared-memory traffic of the W4A8 g128 tensor-core kernel, built for sm_90 without a GPU.

    python bench/sass_w4a8.py 64,64,512,2,0,4,3 16,32,512,2,1,4,3 [--templates DIR]

Each argument is BM,BN,BK,SPLIT_K,W_AS_B,num_warps,num_stages. The qlinear kernel of w4a8_g128 is
rendered by lowc's codegen (from codegen/templates, or from DIR: a copy holding common.py and
qlinear_w4a8_group.py, e.g. the files at an older commit), compiled with runtime/aot_compile.py,
disassembled with the nvdisasm that ships with Triton; printed: registers, the TTGIR's shared-memory
buffers (`local_alloc`), and the instruction count and shared-memory opcodes of the whole kernel and
of its K loop. This is
where docs/kernels.md's "STS + LDSM" figures for the nibble-split join come from.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_gemv import disassemble, loop_mix, opcode_counts  # noqa: E402

POINTER_TYPES = {"x_ptr": "*i8", "sx_ptr": "*fp32", "qw_ptr": "*u8", "s1_ptr": "*u8", "zs1_ptr": "*u8",
                 "s0_ptr": "*fp16", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*i32", "cnt_ptr": "*i32"}
SHARED_OPS = ("LDS", "STS", "LDSM", "LDGSTS", "BAR", "IGMMA", "IMMA")


def compile_tile(tile: str, cache_dir: str):
    import torch

    from lowc.codegen.spec import spec_for_qlinear
    from lowc.runtime.aot_compile import compile_for_target
    from lowc.runtime.kernel_cache import KernelCache

    bm, bn, bk, split, w_as_b, warps, stages = (int(v) for v in tile.split(","))
    module = KernelCache(cache_dir).get(spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16),
                                        capability="sm_90").module
    constexprs = dict(HAS_BIAS=False, EVEN_K=True, INTERPRETED=False, FAST_DEQUANT=True, BM=bm, BN=bn, BK=bk,
                      SPLIT_K=split, GROUP_M=8, W_AS_B=bool(w_as_b))
    # (stride_w16: the row-stride argument's name in the even/odd templates before session 7)
    divisible = set(POINTER_TYPES) | {"N", "K", "KW", "stride_xm", "stride_w32", "stride_w16"}
    return compile_for_target(module.qlinear_kernel, constexprs, POINTER_TYPES, divisible=divisible,
                              num_warps=warps, num_stages=stages)


def report(compiled, cache_dir: str) -> str:
    sass, regs, _ = disassemble(compiled, cache_dir)
    whole = opcode_counts(sass.splitlines())
    loop = loop_mix(sass)
    allocs = compiled.asm["ttgir"].count("local_alloc")
    fmt = lambda c: " ".join(f"{op} {c[op]}" for op in SHARED_OPS)  # noqa: E731
    return (f"{regs} registers, {allocs} local_alloc; kernel {sum(whole.values())} instructions: {fmt(whole)}; "
            f"K loop {sum(loop.values())}: {fmt(loop)}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tiles", nargs="+")
    ap.add_argument("--templates", help="a directory holding common.py and qlinear_w4a8_group.py to use instead")
    args = ap.parse_args(argv)
    if args.templates:
        import lowc.codegen.render as render

        render.TEMPLATE_DIR = Path(args.templates).resolve()
    os.environ.pop("TRITON_INTERPRET", None)  # the module must be compiled, not interpreted
    with tempfile.TemporaryDirectory() as d:
        for tile in args.tiles:
            print(f"{tile}: {report(compile_tile(tile, d), d)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Registers, spills and the per-tile SASS of the KV decode attention kernel, built for sm_90 without a GPU.

    python bench/sass_attention.py kv4,128,4,3,2 kv4,128,4,3,2,q8 kv8,128,4,2,1,q8

Each argument is fmt,BLOCK_N,num_warps,num_stages,key_groups[,q8][,sv][,h16] (q8: DecodeConfig.q_int8,
sv: stage_v, h16: block_h 16); bf16 queries, Llama-3-8B heads (group 4 padded to 8 MMA rows, or 16,
head_dim 128), the default register cap of 128, several splits. The kernel is rendered by lowc's codegen, compiled with
runtime/aot_compile.py and disassembled with the nvdisasm that ships with Triton. Printed: registers,
stack (spill) bytes, and the instructions of the token loop per warp, per token-head (all warps of a
program together, divided by BLOCK_N), and the most frequent opcodes. docs/kernels-attention.md's
static counts come from here; run it with the device's Triton (3.6) on the path to match them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sass_gemv import disassemble, loop_mix  # noqa: E402

POINTER_TYPES = {"q_ptr": "*bf16", "kd_ptr": "*u8", "ks_ptr": "*fp16", "kz_ptr": "*fp16", "vd_ptr": "*u8",
                 "vs_ptr": "*fp16", "vz_ptr": "*fp16", "slot_ptr": "*i64", "clen_ptr": "*i64", "nlen_ptr": "*i64",
                 "out_ptr": "*bf16", "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "ticket_ptr": "*i32",
                 "sm_scale": "fp32"}


def compile_decode(arg: str, cache_dir: str):
    import torch

    from lowc.runtime.aot_compile import compile_for_target
    from lowc.runtime.attention import spec_for_attention
    from lowc.runtime.kernel_cache import KernelCache

    fmt, block_n, warps, stages, key_groups, *flags = arg.split(",")
    types = dict(POINTER_TYPES)
    if fmt == "kv8":
        types.update(kd_ptr="*i8", vd_ptr="*i8")
    module = KernelCache(cache_dir).get(spec_for_attention(fmt, torch.bfloat16), capability="sm_90").module
    constexprs = dict(GROUP=4, HEAD_DIM=128, D_LOAD=64 if fmt == "kv4" else 128,
                      BLOCK_H=16 if "h16" in flags else 8, BLOCK_N=int(block_n),
                      SPLIT=True, PRECISION=None, UNPACK_ASM=True, INTERPRETED=False, STAGE_K=False,
                      STAGE_V="sv" in flags, K_GROUPS=int(key_groups), Q_INT8="q8" in flags)
    divisible = {n for n in types if n.endswith("_ptr")} | {"stride_qb", "stride_qh", "MAX_TOKENS"}
    return compile_for_target(module.decode_kernel, constexprs, types, divisible=divisible, num_warps=int(warps),
                              num_stages=int(stages), maxnreg=128)


def report(arg: str, compiled, cache_dir: str) -> str:
    sass, regs, stack = disassemble(compiled, cache_dir)
    loop = loop_mix(sass)
    _, block_n, warps, *_ = arg.split(",")
    total = sum(loop.values())
    per_token_head = total * int(warps) / int(block_n)
    top = " ".join(f"{op} {n}" for op, n in loop.most_common(12))
    return (f"{regs} registers, stack {stack} B; loop {total} per warp per tile, {per_token_head:.1f} per "
            f"token-head; {top}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+")
    args = ap.parse_args(argv)
    os.environ.pop("TRITON_INTERPRET", None)  # the module must be compiled, not interpreted
    with tempfile.TemporaryDirectory() as d:
        for arg in args.configs:
            print(f"{arg}: {report(arg, compile_decode(arg, d), d)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

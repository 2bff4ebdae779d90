"""Registers and SASS instruction mix of the bit-plane GEMV, built ahead of time for sm_90 (no GPU needed).

    python bench/sass_gemv.py w2a8_g128_bp,1,16,2048,1,4,1 [...]

Each argument is format,BM,BN,BK,SPLIT_K,num_warps,num_stages. The kernel is rendered by lowc's
codegen into a temporary cache, compiled by Triton for GPUTarget("cuda", 90, 32), disassembled with
the nvdisasm that ships with Triton, and the instructions of the K loop (the body of the backward
branch) are counted: what docs/bitplane.md quotes. Triton on this machine may differ in version from
the device's.
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile


def compile_gemv(fmt: str, bm: int, bn: int, bk: int, split: int, warps: int, stages: int, cache_dir: str) -> dict:
    import triton

    from lowc.runtime.aot_compile import compile_for_target
    from lowc.runtime.bitplane_gemm import kernel_spec
    from lowc.runtime.kernel_cache import KernelCache

    fn = KernelCache(cache_dir).get(kernel_spec(fmt, "gemv"), capability="sm_90").kernel
    types = {"x_ptr": "*i8", "sx_ptr": "*fp32", "planes_ptr": "*u32", "scale_ptr": "*fp16", "zero_ptr": "*i8",
             "bias_ptr": "*fp32", "out_ptr": "*bf16", "ws_ptr": "*fp32", "cnt_ptr": "*i32"}
    constexprs = dict(HAS_BIAS=False, EVEN_K=True, INTERPRETED=False, X_WORDS=True, BM=bm, BN=bn, BK=bk,
                      SPLIT_K=split, STAGES=stages)
    divisible = set(types) | {"N", "K", "KW", "KW32", "stride_xm"}
    compiled = compile_for_target(fn, constexprs, types, divisible=divisible, num_warps=warps, num_stages=stages)
    sass, registers, stack = disassemble(compiled, cache_dir)
    return {"registers": registers, "stack": stack, "loop": loop_mix(sass)}


def disassemble(compiled, cache_dir: str) -> tuple[str, int, int]:
    """(SASS, registers, stack bytes) of a compiled kernel, from the nvdisasm and cuobjdump that ship
    with Triton."""
    import triton

    tools = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin")
    cubin = os.path.join(cache_dir, "kernel.cubin")
    with open(cubin, "wb") as f:
        f.write(compiled.asm["cubin"])
    sass = subprocess.run([f"{tools}/nvdisasm", "-c", cubin], capture_output=True, text=True, check=True).stdout
    usage = subprocess.run([f"{tools}/cuobjdump", "--dump-resource-usage", cubin], capture_output=True, text=True).stdout
    return sass, int(re.search(r"REG:(\d+)", usage).group(1)), int(re.search(r"STACK:(\d+)", usage).group(1))


def opcode_counts(lines) -> collections.Counter:
    """Opcode (without modifiers) counts of SASS lines, predicated or not."""
    ops = collections.Counter()
    for line in lines:
        m = re.search(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T\d]\s+)?([A-Z0-9_]+)", line)
        if m:
            ops[m.group(1).split(".")[0]] += 1
    return ops


def loop_mix(sass: str) -> collections.Counter:
    """Opcode counts of the longest loop: the lines between a label and a branch back to it."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := re.match(r"(\.L_x_\d+):", l))}
    best: list[str] = []
    for i, l in enumerate(lines):
        m = re.search(r"BRA `\((\.L_x_\d+)\)", l)
        if m and m.group(1) in labels and labels[m.group(1)] < i and i - labels[m.group(1)] > len(best):
            best = lines[labels[m.group(1)]:i + 1]
    return opcode_counts(best)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    with tempfile.TemporaryDirectory() as d:
        for a in argv:
            fmt, *nums = a.split(",")
            bm, bn, bk, split, warps, stages = (int(v) for v in nums)
            r = compile_gemv(fmt, bm, bn, bk, split, warps, stages, d)
            weights = bn * bk // (32 * warps)  # weights per thread per K tile (one token)
            total = sum(r["loop"].values())
            print(f"{a}: {r['registers']} registers, stack {r['stack']}; K loop {total} instructions per thread "
                  f"for {weights} weights ({total / weights:.2f} per weight): {dict(r['loop'].most_common(8))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

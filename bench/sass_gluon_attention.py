"""Registers and SASS instruction mix of the register-fragment KV4 decode attention kernel
(codegen/gluon_attention_kv4.py), built ahead of time for sm_90 (no GPU needed).

    PYTHONPATH=<triton 3.6> python bench/sass_gluon_attention.py 64,128,1 [32,128,2 ...]

Each argument is BLOCK_N,head_dim,key_groups (GQA group 4 on N = 8, bf16 queries, split on, PDL on).
The loop's instructions are counted as bench/sass_gemv.py's `loop_mix` counts them (static: the lazy
rescale's branch counts once): what docs/kernels-attention.md (fifth round) quotes, with Triton 3.6,
the device's; another Triton may give other counts.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from sass_gemv import disassemble, loop_mix  # noqa: E402

POINTER_TYPES = {"q_ptr": "*bf16", "kd_ptr": "*u8", "ks_ptr": "*fp16", "kz_ptr": "*fp16", "vd_ptr": "*u8",
                 "vs_ptr": "*fp16", "vz_ptr": "*fp16", "slot_ptr": "*i64", "clen_ptr": "*i64", "nlen_ptr": "*i64",
                 "out_ptr": "*bf16", "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "ticket_ptr": "*i32",
                 "sm_scale": "fp32"}


def compile_tile(block_n: int, head_dim: int, key_groups: int):
    """The decode kernel built for sm_90 as the docstring says (what tests/codegen/test_gluon_attention.py
    checks too)."""
    from lowc.codegen import gluon_attention_kv4 as m
    from lowc.runtime.aot_compile import compile_for_target

    k_l, v_l, ks_l, vs_l = m.layouts(block_n, head_dim, key_groups)
    fn = m.decode_kv4_kernel
    const = dict(GROUP=4, HEAD_DIM=head_dim, NH=8, BLOCK_N=block_n, K_GROUPS=key_groups, SPLIT=True, BF16=True,
                 k_l=k_l, v_l=v_l, ks_l=ks_l, vs_l=vs_l, PDL=True)
    divisible = {n for n in fn.arg_names if n not in const and n not in ("window", "num_splits", "sm_scale")}
    return compile_for_target(fn, const, POINTER_TYPES, divisible=divisible, num_warps=1)


def main(argv=None) -> int:
    os.environ.pop("TRITON_INTERPRET", None)  # the module must be compiled, not interpreted
    for spec in (argv if argv is not None else sys.argv[1:]):
        block_n, head_dim, key_groups = (int(v) for v in spec.split(","))
        with tempfile.TemporaryDirectory() as d:
            sass, registers, stack = disassemble(compile_tile(block_n, head_dim, key_groups), d)
        mix = loop_mix(sass)
        total = sum(mix.values())
        print(f"{spec}: {registers} registers, stack {stack}, loop {total} instructions "
              f"({total / block_n:.1f} per token and KV head): "
              + ", ".join(f"{op} {n}" for op, n in mix.most_common(12)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

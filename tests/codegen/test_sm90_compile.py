"""The w4a8_g kernels compile for Hopper (sm_90) on a machine without a GPU.

The interpreter runs Python semantics, so code the GPU compiler rejects (a module global that is not
a `tl.constexpr`, a layout Triton cannot lower) passes every interpreter test. This builds each
kernel of the w4a8_g128 module ahead of time for GPUTarget("cuda", 90) (ptxas ships with Triton),
so such a template fails in CI rather than on the device."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lowc.codegen.spec import spec_for_qlinear
from lowc.runtime.aot_compile import compile_for_target
from lowc.runtime.kernel_cache import KernelCache

POINTER_TYPES = {"x_ptr": "*i8", "sx_ptr": "*fp32", "qw_ptr": "*u8", "s1_ptr": "*u8", "zs1_ptr": "*u8",
                 "s0_ptr": "*fp16", "bias_ptr": "*bf16", "out_ptr": "*bf16", "ws_ptr": "*i32", "cnt_ptr": "*i32",
                 "w8_ptr": "*i8"}

KERNELS = {
    "qlinear_kernel": dict(HAS_BIAS=False, EVEN_K=True, INTERPRETED=False, FAST_DEQUANT=True, BM=16, BN=64,
                           BK=256, SPLIT_K=2, GROUP_M=8, W_AS_B=True, PDL=False),
    "gemv_kernel": dict(HAS_BIAS=False, EVEN_K=True, FAST=True, BM=1, BN=16, BK=1024, SPLIT_K=1, PDL=False),
    "dequant_kernel": dict(BN=64, BK=128),
}
KERNELS["qlinear_kernel+pdl"] = dict(KERNELS["qlinear_kernel"], PDL=True)
KERNELS["gemv_kernel+pdl"] = dict(KERNELS["gemv_kernel"], PDL=True)


def compile_all(cache_dir: str) -> dict:
    """{kernel: (cubin size, whether its PTX waits for griddepcontrol)} for every entry of KERNELS, and
    for "attention" (the PDL wait, the INT8 MMA) of the KV4 decode kernel."""
    module = KernelCache(cache_dir).get(spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16),
                                        capability="sm_90").module
    out = {}
    for kernel, const in KERNELS.items():
        compiled = compile_for_target(getattr(module, kernel.split("+")[0]), const, POINTER_TYPES, num_stages=3)
        out[kernel] = (len(compiled.asm["cubin"]), "griddepcontrol.wait" in compiled.asm["ptx"])
    # The Triton KV4 decode kernel with its launch options of session 8 (PDL, INT8 q . k).
    from lowc.runtime.attention import spec_for_attention

    module = KernelCache(cache_dir).get(spec_for_attention("kv4", torch.bfloat16), capability="sm_90").module
    types = {"q_ptr": "*bf16", "kd_ptr": "*u8", "ks_ptr": "*fp16", "kz_ptr": "*fp16", "vd_ptr": "*u8",
             "vs_ptr": "*fp16", "vz_ptr": "*fp16", "slot_ptr": "*i64", "clen_ptr": "*i64", "nlen_ptr": "*i64",
             "out_ptr": "*bf16", "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "ticket_ptr": "*i32", "sm_scale": "fp32"}
    constexprs = dict(GROUP=4, HEAD_DIM=128, D_LOAD=64, BLOCK_H=8, BLOCK_N=128, SPLIT=True, PRECISION=None,
                      UNPACK_ASM=True, INTERPRETED=False, K_GROUPS=2, Q_INT8=True, PDL=True)
    compiled = compile_for_target(module.decode_kernel, constexprs, types,
                                  divisible={n for n in types if n.endswith("_ptr")}, num_stages=3, maxnreg=128)
    ptx = compiled.asm["ptx"]
    out["attention"] = ("griddepcontrol.wait" in ptx, "mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32" in ptx)
    return out


@pytest.fixture(scope="module")
def compiled_kernels(tmp_path_factory):
    """The kernels built in a fresh Python process without TRITON_INTERPRET: once the CPU suite has
    set it (test modules do, at collection), Triton's own library functions in this process are
    interpreted ones, and the GPU compile of these Triton kernels in the suite's process failed
    whenever Triton's disk cache missed, even after runtime/aot_compile.py's restore of what the
    interpreter leaves patched (which is enough for the Gluon kernels)."""
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import test_sm90_compile as t; "
            "print(json.dumps(t.compile_all(sys.argv[2])))")
    run = subprocess.run([sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)),
                          str(tmp_path_factory.mktemp("kernels"))], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_w4a8_group_kernels_compile_for_sm90(kernel, compiled_kernels):
    cubin_bytes, waits = compiled_kernels[kernel]
    assert cubin_bytes > 0  # ptxas accepted the kernel
    # Programmatic dependent launch (runtime/pdl.py): the wait is there exactly when asked for.
    assert waits == kernel.endswith("+pdl")


def test_decode_attention_with_pdl_and_int8_queries_compiles_for_sm90(compiled_kernels):
    """The KV4 decode kernel with its launch options of session 8 (PDL, INT8 q . k) lowers for sm_90."""
    assert compiled_kernels["attention"] == [True, True]

"""The w4a8_g kernels compile for Hopper (sm_90) on a machine without a GPU.

The interpreter runs Python semantics, so code the GPU compiler rejects (a module global that is not
a `tl.constexpr`, a layout Triton cannot lower) passes every interpreter test. This builds each
kernel of the w4a8_g128 module ahead of time for GPUTarget("cuda", 90) (ptxas ships with Triton),
so such a template fails in CI rather than on the device."""

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


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_w4a8_group_kernels_compile_for_sm90(kernel, tmp_path, monkeypatch):
    pytest.importorskip("triton.backends.nvidia")
    # The CPU suite runs Triton's interpreter, under which @triton.jit yields interpreted functions
    # that cannot be compiled; the module imported here (fresh cache) is decorated without it.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    module = KernelCache(tmp_path).get(spec_for_qlinear("w4a8_g128", torch.int8, torch.bfloat16), capability="sm_90").module
    compiled = compile_for_target(getattr(module, kernel.split("+")[0]), KERNELS[kernel], POINTER_TYPES, num_stages=3)
    assert compiled.asm["cubin"]  # ptxas accepted the kernel
    # Programmatic dependent launch (runtime/pdl.py): the wait is there exactly when asked for.
    assert ("griddepcontrol.wait" in compiled.asm["ptx"]) == kernel.endswith("+pdl")


def test_decode_attention_with_pdl_and_int8_queries_compiles_for_sm90(tmp_path, monkeypatch):
    """The KV4 decode kernel with its launch options of session 8 (PDL, INT8 q . k) lowers for sm_90."""
    pytest.importorskip("triton.backends.nvidia")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from lowc.runtime.attention import spec_for_attention

    module = KernelCache(tmp_path).get(spec_for_attention("kv4", torch.bfloat16), capability="sm_90").module
    types = {"q_ptr": "*bf16", "kd_ptr": "*u8", "ks_ptr": "*fp16", "kz_ptr": "*fp16", "vd_ptr": "*u8",
             "vs_ptr": "*fp16", "vz_ptr": "*fp16", "slot_ptr": "*i64", "clen_ptr": "*i64", "nlen_ptr": "*i64",
             "out_ptr": "*bf16", "ws_acc_ptr": "*fp32", "ws_ml_ptr": "*fp32", "ticket_ptr": "*i32", "sm_scale": "fp32"}
    constexprs = dict(GROUP=4, HEAD_DIM=128, D_LOAD=64, BLOCK_H=8, BLOCK_N=128, SPLIT=True, PRECISION=None,
                      UNPACK_ASM=True, INTERPRETED=False, K_GROUPS=2, Q_INT8=True, PDL=True)
    compiled = compile_for_target(module.decode_kernel, constexprs, types, divisible={n for n in types if n.endswith("_ptr")},
                                  num_stages=3, maxnreg=128)
    assert "griddepcontrol.wait" in compiled.asm["ptx"] and "mma.sync.aligned.m16n8k32.row.col.satfinite.s32.s8.s8.s32" in compiled.asm["ptx"]

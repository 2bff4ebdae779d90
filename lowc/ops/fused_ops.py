"""Fused glue ops: what sits between the GEMMs and attention of a decoder layer, one op per launch.

    lowc::rms_norm_quant(Tensor x, Tensor weight, float eps, str fmt) -> (Tensor q, Tensor scale)
    lowc::add_rms_norm_quant(Tensor x, Tensor residual, Tensor weight, float eps, str fmt)
        -> (Tensor q, Tensor scale, Tensor sum)
    lowc::add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor out, Tensor sum)
    lowc::silu_mul_quant(Tensor gate, Tensor up, str fmt) -> (Tensor q, Tensor scale)
    lowc::rope_qkv_store(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor(a!)[] k_cache,
                         Tensor(b!)[] v_cache, Tensor slot_ids, Tensor cache_lens, Tensor new_lens,
                         str fmt, bool rotate=False, Tensor? key_bias=None) -> Tensor q_rotated

Each is, by definition, the composition of unfused ops it replaces, and its reference below is
literally that composition (the truth and the test oracle):
- `*_quant` end in `lowc::quantize_act(., fmt)` (per-token activation quantization, lowc.quant.activations);
- `rms_norm` is `lowc::rms_norm`'s reference; `sum = x + residual` is the residual stream's
  `aten.add`, returned because the next residual add reads it;
- `silu_mul` is `aten.silu(gate) * up` (SwiGLU, rounded to the input dtype after each op, as eager);
- `rope_qkv_store` rotates q (returned) and k with Llama's rotate-half RoPE and stores k and v into
  the layer's cache exactly as `lowc::rope_kv_store(k)` then `lowc::kv_store(v)` do (lowc.ops.kv_ops);
  with `rotate`, q and k also go through the key rotation (`lowc::hadamard`) after RoPE; with
  `key_bias`, the stored keys are centred (k - key_bias; lowc.ops.kv_ops explains why that is exact).
The pass `fuse_glue` (lowc.passes.fuse_glue) introduces them; lowc.runtime.fused registers the
Triton kernels as their CUDA implementation. Core module: imports torch and lowc's core only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowc.errors import QuantizationError
from lowc.ops.kv_ops import (_check_cache, _check_context, check_key_bias, hadamard_reference, kv_store_reference,
                             rotate_half_rope, stored_key)
from lowc.ops.norm import rms_norm_reference
from lowc.quant.activations import quantize_activation
from lowc.quant.spec import parse_format

# ------------------------------------------------------------------------------ references


def add_reference(x: Tensor, residual: Tensor) -> Tensor:
    """The residual stream's add, as the captured graph computes it."""
    return x + residual


def silu_mul_reference(gate: Tensor, up: Tensor) -> Tensor:
    """SwiGLU's elementwise part: silu(gate) * up, each op rounded to the input dtype (eager order)."""
    return torch.nn.functional.silu(gate) * up


def rms_norm_quant_reference(x: Tensor, weight: Tensor, eps: float, fmt: str) -> tuple[Tensor, Tensor]:
    return quantize_activation(rms_norm_reference(x, weight, eps), fmt)


def add_rms_norm_quant_reference(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                                 fmt: str) -> tuple[Tensor, Tensor, Tensor]:
    s = add_reference(x, residual)
    q, scale = quantize_activation(rms_norm_reference(s, weight, eps), fmt)
    return q, scale, s


def add_rms_norm_reference(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    s = add_reference(x, residual)
    return rms_norm_reference(s, weight, eps), s


def silu_mul_quant_reference(gate: Tensor, up: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    return quantize_activation(silu_mul_reference(gate, up), fmt)


def rope_qkv_store_reference(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, k_cache: list[Tensor],
                             v_cache: list[Tensor], slot_ids: Tensor, cache_lens: Tensor, new_lens: Tensor,
                             fmt: str, rotate: bool = False, key_bias: Tensor | None = None) -> Tensor:
    k = stored_key(rotate_half_rope(k, cos, sin), rotate, key_bias)
    kv_store_reference(k, k_cache, slot_ids, cache_lens, new_lens, fmt)
    kv_store_reference(v, v_cache, slot_ids, cache_lens, new_lens, fmt)
    q = rotate_half_rope(q, cos, sin)
    return (hadamard_reference(q) if rotate else q).contiguous()  # [B, H, T, D] row-major, as the kernel writes it


# ----------------------------------------------------------------------------- fake checks


def _fake_quant(x: Tensor, fmt: str, op: str) -> tuple[Tensor, Tensor]:
    spec = parse_format(fmt)
    if not x.is_floating_point():
        raise QuantizationError(f"{op}: input has dtype {x.dtype}; expected a floating dtype")
    q = x.new_empty(x.shape, dtype=torch.int8)
    scale = x.new_empty((*x.shape[:-1], spec.act_scale_groups(x.shape[-1])), dtype=torch.float32)
    return q, scale


def _check_same(a: Tensor, b: Tensor, op: str, names: str) -> None:
    if a.shape != b.shape or a.dtype != b.dtype:
        raise QuantizationError(
            f"{op}: {names} must have one shape and dtype, got {a.dtype}{list(a.shape)} and "
            f"{b.dtype}{list(b.shape)}; fuse_glue only fuses adds without broadcasting or promotion"
        )


def _norm_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, weight.dtype)


# ---------------------------------------------------------------------------------------- ops


@torch.library.custom_op("lowc::rms_norm_quant", mutates_args=())
def rms_norm_quant(x: Tensor, weight: Tensor, eps: float, fmt: str) -> tuple[Tensor, Tensor]:
    """quantize_act(rms_norm(x, weight, eps), fmt) in one op."""
    return rms_norm_quant_reference(x, weight, eps, fmt)


@rms_norm_quant.register_fake
def _rms_norm_quant_fake(x, weight, eps, fmt):
    return _fake_quant(x.new_empty(x.shape, dtype=_norm_dtype(x, weight)), fmt, "lowc::rms_norm_quant")


@torch.library.custom_op("lowc::add_rms_norm_quant", mutates_args=())
def add_rms_norm_quant(x: Tensor, residual: Tensor, weight: Tensor, eps: float,
                       fmt: str) -> tuple[Tensor, Tensor, Tensor]:
    """s = x + residual; (quantize_act(rms_norm(s, weight, eps), fmt), s) in one op."""
    _check_same(x, residual, "lowc::add_rms_norm_quant", "x and residual")
    return add_rms_norm_quant_reference(x, residual, weight, eps, fmt)


@add_rms_norm_quant.register_fake
def _add_rms_norm_quant_fake(x, residual, weight, eps, fmt):
    _check_same(x, residual, "lowc::add_rms_norm_quant", "x and residual")
    q, scale = _fake_quant(x.new_empty(x.shape, dtype=_norm_dtype(x, weight)), fmt, "lowc::add_rms_norm_quant")
    return q, scale, torch.empty_like(x)


@torch.library.custom_op("lowc::add_rms_norm", mutates_args=())
def add_rms_norm(x: Tensor, residual: Tensor, weight: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """s = x + residual; (rms_norm(s, weight, eps), s) in one op (float-activation schemes)."""
    _check_same(x, residual, "lowc::add_rms_norm", "x and residual")
    return add_rms_norm_reference(x, residual, weight, eps)


@add_rms_norm.register_fake
def _add_rms_norm_fake(x, residual, weight, eps):
    _check_same(x, residual, "lowc::add_rms_norm", "x and residual")
    return x.new_empty(x.shape, dtype=_norm_dtype(x, weight)), torch.empty_like(x)


@torch.library.custom_op("lowc::silu_mul_quant", mutates_args=())
def silu_mul_quant(gate: Tensor, up: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    """quantize_act(silu(gate) * up, fmt) in one op (down_proj's input)."""
    _check_same(gate, up, "lowc::silu_mul_quant", "gate and up")
    return silu_mul_quant_reference(gate, up, fmt)


@silu_mul_quant.register_fake
def _silu_mul_quant_fake(gate, up, fmt):
    _check_same(gate, up, "lowc::silu_mul_quant", "gate and up")
    return _fake_quant(gate, fmt, "lowc::silu_mul_quant")


def _check_rope_qkv(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt,
                    rotate: bool = False, key_bias=None) -> None:
    op = "lowc::rope_qkv_store"
    if q.dim() != 4 or k.dim() != 4 or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:]:
        raise QuantizationError(
            f"{op}: expected q [B, H, T, D] and k, v [B, Hkv, T, D], got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    _check_same(k, v, op, "k and v")
    if q.dtype != k.dtype:
        raise QuantizationError(f"{op}: q and k must share a dtype, got {q.dtype} and {k.dtype}")
    if q.shape[-1] % 2:
        raise QuantizationError(f"{op}: rotate-half RoPE needs an even head_dim, got {q.shape[-1]}")
    if rotate and q.shape[-1] & (q.shape[-1] - 1):
        raise QuantizationError(f"{op}: the key rotation (Walsh-Hadamard) needs a power-of-two head_dim, "
                                f"got {q.shape[-1]}; compile with kv_rotation=False")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 4 or t.shape[1] != 1 or t.shape[-1] != q.shape[-1]:
            raise QuantizationError(f"{op}: {name} must be [B, 1, T, D] (broadcast over heads), got {tuple(t.shape)}")
    check_key_bias(k, key_bias, op)
    _check_cache(k, k_cache, fmt, op)
    _check_cache(v, v_cache, fmt, op)
    _check_context(k.shape[0], slot_ids, cache_lens, new_lens, op)


@torch.library.custom_op("lowc::rope_qkv_store", mutates_args=("k_cache", "v_cache"))
def rope_qkv_store(q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor, k_cache: list[Tensor],
                   v_cache: list[Tensor], slot_ids: Tensor, cache_lens: Tensor, new_lens: Tensor,
                   fmt: str, rotate: bool = False, key_bias: Tensor | None = None) -> Tensor:
    """RoPE on q (returned) and k, then k and v quantized into the layer's cache: one op per layer."""
    _check_rope_qkv(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate, key_bias)
    return rope_qkv_store_reference(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate,
                                    key_bias)


@rope_qkv_store.register_fake
def _rope_qkv_store_fake(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate=False,
                         key_bias=None):
    _check_rope_qkv(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate, key_bias)
    return torch.empty_like(q, memory_format=torch.contiguous_format)

"""Capture a Hugging Face causal LM as a plain `torch.fx.GraphModule`.

`torch.export.export(strict=False)` with `use_cache=False` and dynamic batch and sequence dims, then
unlifted to a GraphModule whose weights are `get_attr` nodes named as in the model's state dict.
Before export, each layer's attention is routed through transformers' AttentionInterface to the
`lowc::attention` op (one node per layer, post-RoPE q/k/v, GQA kept), and each known RMSNorm module
to `lowc::rms_norm`. The resulting graph takes `(input_ids, position_ids)` and returns logits; the
same graph serves prefill and one-token decode.

The user's model is never changed: the attention implementation and the norm forwards are swapped
only for the duration of the export and restored in a `finally`, and passes never write into the
weight tensors the graph shares with the model.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback

import torch
import torch.fx as fx

import lowc.ops  # noqa: F401  (registers the lowc ops used below)
from lowc.errors import CaptureError

log = logging.getLogger("lowc.capture")

ATTN_IMPL = "lowc"
# RMSNorm classes whose forward is exactly lowc::rms_norm's reference (checked in the tests).
RMSNORM_CLASSES = {"LlamaRMSNorm", "Qwen2RMSNorm", "MistralRMSNorm", "Qwen3RMSNorm", "Phi3RMSNorm"}
SUPPORTED_ARCHS = {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM", "Qwen3ForCausalLM"}


def _lowc_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The AttentionInterface entry: HF hands post-RoPE q [B,H,T,D], k/v [B,Hkv,T,D]."""
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None) or -1
    scale = float(scaling) if scaling is not None else float(query.shape[-1]) ** -0.5
    out = torch.ops.lowc.attention(query, key, value, scale, int(module.layer_idx), int(window))
    return out, None


def _no_mask(*args, **kwargs):
    # lowc::attention is causal by construction; padding and cache lengths come from the runtime's
    # forward context, so the graph needs no materialized mask.
    return None


def _register_interfaces() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPL, _lowc_attention)
    AttentionMaskInterface.register(ATTN_IMPL, _no_mask)


def _rmsnorm_forward(module):
    eps = float(getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6)))

    def forward(hidden_states):
        return torch.ops.lowc.rms_norm(hidden_states, module.weight, eps)

    return forward


@contextlib.contextmanager
def routed_to_lowc_ops(model: torch.nn.Module):
    """Temporarily route attention and RMSNorms of `model` to lowc ops; always restored."""
    _register_interfaces()
    configs = {id(c): c for c in _all_configs(model)}.values()
    saved_impl = [(c, c._attn_implementation) for c in configs]
    patched = []
    try:
        for c in configs:
            c._attn_implementation = ATTN_IMPL
        for m in model.modules():
            if type(m).__name__ in RMSNORM_CLASSES and getattr(m, "weight", None) is not None:
                m.forward = _rmsnorm_forward(m)
                patched.append(m)
        yield
    finally:
        for c, impl in saved_impl:
            c._attn_implementation = impl
        for m in patched:
            del m.forward


def _all_configs(model):
    seen = []
    for m in model.modules():
        c = getattr(m, "config", None)
        if c is not None and hasattr(c, "_attn_implementation"):
            seen.append(c)
    return seen


def check_causal_lm(model) -> None:
    """Raise CaptureError unless `model` is a transformers causal LM lowc can capture."""
    try:
        from transformers import PreTrainedModel
    except ImportError as e:  # pragma: no cover
        raise CaptureError("transformers is required to capture a model: pip install transformers") from e
    if not isinstance(model, PreTrainedModel):
        raise CaptureError(
            f"lowc.compile expects a transformers causal LM (e.g. LlamaForCausalLM), got "
            f"{type(model).__name__}. Load one with AutoModelForCausalLM.from_pretrained(...)."
        )
    name = type(model).__name__
    if not name.endswith("ForCausalLM") or not hasattr(model, "get_output_embeddings"):
        raise CaptureError(
            f"{name} is not a causal language model; lowc compiles *ForCausalLM models "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHS))})."
        )
    if name not in SUPPORTED_ARCHS:
        log.warning("%s is not in the tested architectures (%s); capturing anyway", name, SUPPORTED_ARCHS)


def _where_it_failed(exc: BaseException, model: torch.nn.Module) -> str:
    """The innermost submodule of `model` whose code was running when export failed."""
    names = {id(m): n for n, m in model.named_modules()}
    where = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if id(owner) in names:
            code = tb.tb_frame.f_code
            where = f"{names[id(owner)] or '<root>'} ({type(owner).__name__}.{code.co_name}, " \
                    f"{code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno})"
        tb = tb.tb_next
    return where or "?"


def capture(model, *, max_batch: int = 4096, max_seq: int | None = None) -> fx.GraphModule:
    """Export `model` to a GraphModule `(input_ids, position_ids) -> logits` with dynamic B and T."""
    check_causal_lm(model)
    cfg = model.config
    max_seq = max_seq or int(getattr(cfg, "max_position_embeddings", 8192))
    device = next(model.parameters()).device
    ids = torch.randint(0, int(cfg.vocab_size), (2, 8), device=device)
    pos = torch.arange(8, device=device).expand(2, 8)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    seq = torch.export.Dim("seq", min=1, max=max_seq)
    shapes = {"input_ids": {0: batch, 1: seq}, "position_ids": {0: batch, 1: seq}, "use_cache": None}
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    try:
        with routed_to_lowc_ops(model), torch.no_grad():
            ep = torch.export.export(
                model, (), {"input_ids": ids, "position_ids": pos, "use_cache": False},
                dynamic_shapes=shapes, strict=False,
            )
    except Exception as e:
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__} (failed in {_where_it_failed(e, model)}): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. lowc captures "
            f"{', '.join(sorted(SUPPORTED_ARCHS))}; other architectures may need their attention to go "
            "through transformers' AttentionInterface."
        ) from e
    finally:
        model.train(was_training)
    gm = _to_plain_graph(ep.module())
    for node in gm.graph.nodes:
        node.meta["lowc_pass"] = "capture"
    log.info("captured %s: %d nodes in %.1fs", type(model).__name__, len(gm.graph.nodes), time.perf_counter() - t0)
    return gm


def _to_plain_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """Drop the pytree calling convention and export's input hooks: (input_ids, position_ids) -> logits."""
    graph = gm.graph
    out = graph.output_node()
    flat = out.args[0]
    flat = list(flat) if isinstance(flat, (list, tuple)) else [flat]
    logits = next((n for n in flat if isinstance(n, fx.Node)), None)
    if logits is None:
        raise CaptureError("the captured graph returns no tensor; expected logits")
    out.args = (logits,)
    _drop_guard_modules(gm)
    for ph in [n for n in graph.nodes if n.op == "placeholder"]:
        if ph.target == "use_cache":
            if ph.users:
                raise CaptureError("the captured graph depends on use_cache; expected it constant False")
            graph.erase_node(ph)
    graph._codegen = fx.graph.CodeGen()
    _make_device_agnostic(graph)
    graph.eliminate_dead_code()
    # A fresh GraphModule shares the weight tensors but none of the exported module's hooks.
    return fx.GraphModule(gm, graph, class_name="CapturedLM")


def _make_device_agnostic(graph: fx.Graph) -> None:
    """Remove the capture device from the graph, so a graph captured on the CPU runs on a GPU.

    Export records the device it traced on in `_assert_tensor_metadata` checks and `aten.to.device`
    casts (RoPE's `inv_freq.to(x.device)`); a compiled model moved with `.cuda()` would trip on them.
    The checks go, `to.device` becomes `to.dtype` (every tensor of the graph lives on one device),
    and a factory op's `device=` is read from `input_ids` at run time.
    """
    ids = next(n for n in graph.nodes if n.op == "placeholder")
    device_of_ids = None
    for node in list(graph.nodes):
        if node.target is torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
        elif node.target is torch.ops.aten.to.device:
            x, _device, dtype, *rest = node.args
            node.target = torch.ops.aten.to.dtype
            node.args = (x, dtype, *rest)
        elif node.op == "call_function" and isinstance(node.kwargs.get("device"), torch.device):
            if device_of_ids is None:
                first_op = next(n for n in graph.nodes if n.op != "placeholder")
                with graph.inserting_before(first_op):
                    device_of_ids = graph.call_function(getattr, (ids, "device"))
            node.kwargs = {**node.kwargs, "device": device_of_ids}


def _drop_guard_modules(gm: fx.GraphModule) -> None:
    """Remove export's input-guard call (it checks the pytree spec we just removed)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            gm.graph.erase_node(node)
    for name in [n for n, _ in gm.named_children() if n.startswith("_guards")]:
        delattr(gm, name)

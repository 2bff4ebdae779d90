"""`lowc.compile`: capture, calibrate, run the scheme's passes, hand back a CompiledModel.

```python
qmodel = lowc.compile(model, scheme="w4a8kv4", dump_ir="ir/")
logits = qmodel(input_ids)
```
The user's model is left exactly as it was (weights and attention implementation); the compiled
graph shares its unchanged weights and owns every tensor a pass created.
"""

from __future__ import annotations

import logging
import os
import time

import torch
import torch.fx as fx
from tqdm.auto import tqdm

from lowc.capture import capture
from lowc.errors import CacheError, InputError, NotImplementedYet
from lowc.ir import format_graph, summarize, summary_text
from lowc.passes import REGISTRY, PassContext, build_pipeline, run_pipeline
from lowc.schemes import Scheme, parse_scheme

log = logging.getLogger("lowc")

DUMP_ENV = "LOWC_DUMP_IR"
# Passes that read calibration statistics; a pipeline containing any of them triggers calibration.
NEEDS_CALIBRATION = {"smooth", "smooth_attention", "reorder", "scale_search", "clip", "gptq", "center_keys"}
NEEDS_HESSIAN = {"scale_search", "clip", "gptq"}  # these also need H = X^T X / n of every linear's input


class CompiledModel(torch.nn.Module):
    """A captured, rewritten causal LM: `forward(input_ids, position_ids=None) -> logits`."""

    def __init__(self, graph_module: fx.GraphModule, scheme: Scheme, config, records, compile_seconds: float,
                 arch: str = "?"):
        super().__init__()
        self.arch = arch
        self.graph_module = graph_module
        self.scheme = scheme
        self.config = config
        self.pass_records = list(records)
        self.compile_seconds = compile_seconds

    def _apply(self, fn, *args, **kwargs):
        # .cuda() / .to("cuda") of a model compiled on the CPU: its ops must find their CUDA kernels.
        out = super()._apply(fn, *args, **kwargs)
        if _graph_device(self.graph_module).type == "cuda":
            from lowc.runtime import register_cuda_kernels

            register_cuda_kernels()
        return out

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def kv_spec(self):
        """The KV cache layout the kv_cache pass gave the graph (None if the pipeline skipped it)."""
        return self.graph_module.meta.get("lowc_kv_cache")

    def new_cache(self, slots: int, max_tokens: int, device=None):
        """A KV cache of `slots` sequences x `max_tokens` tokens for this model (lowc.runtime.KVCache)."""
        from lowc.runtime.kv_cache import KVCache

        if self.kv_spec is None:
            raise InputError("this model was compiled without the kv_cache pass; it has no KV cache to create")
        device = device if device is not None else _graph_device(self.graph_module)
        return KVCache(self.kv_spec, slots, max_tokens, device)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None, *,
                context=None) -> torch.Tensor:
        """Logits [B, T, V]. `context` (lowc.runtime.ForwardContext) places the rows in a KV cache;
        without one, a transient cache sized to the input is used (a plain full-sequence forward)."""
        input_ids = check_input_ids(input_ids, self.vocab_size)
        b, t = input_ids.shape
        spec = self.kv_spec
        if spec is None:
            if context is not None:
                raise InputError("this model was compiled without the kv_cache pass; it takes no forward context")
            if position_ids is None:
                position_ids = torch.arange(t, device=input_ids.device).expand(b, t)
            self._check_positions(position_ids, input_ids)
            return self.graph_module(input_ids, position_ids)
        from lowc.runtime.context import ForwardContext

        if context is None:
            context = ForwardContext.transient(spec, b, t, input_ids.device)
        elif not isinstance(context, ForwardContext):
            raise InputError(f"context must be a lowc.runtime.ForwardContext, got {type(context).__name__}")
        elif context.cache.spec != spec:
            raise CacheError(f"the context's cache was made for {context.cache.spec}, but this model needs {spec}; "
                             "create it with model.new_cache(...)")
        elif (context.batch, context.seq_len) != (b, t):
            raise InputError(f"input_ids is [{b}, {t}] but the context describes [{context.batch}, {context.seq_len}]")
        elif context.cache.device != input_ids.device:
            raise CacheError(f"the KV cache is on {context.cache.device} but input_ids are on {input_ids.device}")
        if position_ids is None:
            position_ids = context.position_ids()
        self._check_positions(position_ids, input_ids)
        logits = self.graph_module(input_ids, position_ids, *context.graph_inputs())
        context.commit()
        return logits

    @staticmethod
    def _check_positions(position_ids, input_ids) -> None:
        if not isinstance(position_ids, torch.Tensor) or position_ids.shape != input_ids.shape:
            shape = tuple(position_ids.shape) if isinstance(position_ids, torch.Tensor) else type(position_ids).__name__
            raise InputError(f"position_ids shape {shape} must equal input_ids shape {tuple(input_ids.shape)}")

    def ir(self) -> str:
        """The final graph, one node a line, with the pass that created each node."""
        return format_graph(self.graph_module)

    def summary(self) -> dict:
        return summarize(self.graph_module)

    def summary_text(self) -> str:
        return summary_text(self.summary())

    def generate(self, input_ids, max_new_tokens: int = 32, **kwargs):
        """Prefill then batched decode over lowc's KV cache; see lowc.runtime.generation."""
        from lowc.runtime.generation import generate

        return generate(self, input_ids, max_new_tokens=max_new_tokens, **kwargs)

    def __repr__(self) -> str:
        s = self.summary()
        ops = ", ".join(f"{k.split('.')[1]} x{v}" for k, v in sorted(s["lowc_ops"].items()))
        return (f"CompiledModel(scheme={self.scheme.name}, arch={self.arch}, nodes={s['nodes']}, "
                f"lowc ops: {ops}, weights={s['weight_bytes'] / 2**20:.1f} MiB)")


def _graph_device(gm: torch.nn.Module) -> torch.device:
    for t in gm.parameters():
        return t.device
    for t in gm.buffers():
        return t.device
    return torch.device("cpu")


def check_input_ids(input_ids, vocab_size: int) -> torch.Tensor:
    """Validate token ids: an integer tensor [batch, seq] with ids in [0, vocab)."""
    if not isinstance(input_ids, torch.Tensor):
        raise InputError(f"input_ids must be a torch.Tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dtype.is_floating_point or input_ids.dtype in (torch.bool, torch.complex64, torch.complex128):
        raise InputError(f"input_ids must be an integer tensor (torch.long), got {input_ids.dtype}; "
                         "pass token ids from the tokenizer, not embeddings or logits")
    if input_ids.dim() != 2:
        hint = " (use input_ids.unsqueeze(0) for a single sequence)" if input_ids.dim() == 1 else ""
        raise InputError(f"input_ids must have shape [batch, seq], got {tuple(input_ids.shape)}{hint}")
    if input_ids.numel() == 0:
        raise InputError(f"input_ids is empty (shape {tuple(input_ids.shape)}); give at least one token")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise InputError(f"token ids must lie in [0, {vocab_size}); got values in [{lo}, {hi}]")
    return input_ids.long()


def compile(
    model,
    scheme: str | Scheme = "w4a8kv4",
    *,
    passes=(),
    calibration=None,
    tokenizer=None,
    dump_ir: str | os.PathLike | None = None,
    debug: bool = False,
    progress: bool = True,
    options: dict | None = None,
) -> CompiledModel:
    """Compile a transformers causal LM for a quantization scheme.

    Args:
        model: a `*ForCausalLM` from transformers (Llama, Qwen2, Mistral families). Never modified.
        scheme: a preset name (`lowc.schemes.list_schemes()`), a generic `w{N}a{M}[kv{K}][-g{G}]`
            string, or a `lowc.Scheme`.
        passes: extra passes: callables `(gm, ctx) -> PassResult` (run after the scheme's own, before
            dead-code elimination) or `lowc.passes.before/after(name, pass)` placements.
        calibration: token ids [n, seq], a text (needs `tokenizer`), or None for lowc's shipped
            calibration text (needs `tokenizer`); only read when the scheme's passes need statistics.
        tokenizer: the model's tokenizer, to read calibration text.
        dump_ir: a directory for per-pass IR dumps (also `LOWC_DUMP_IR`).
        debug: after every pass, run the graph on a sample and check its numerics.
    """
    t0 = time.perf_counter()
    scheme = parse_scheme(scheme)
    missing = [p for p in scheme.passes if p not in REGISTRY]
    if missing:
        raise NotImplementedYet(
            f"scheme {scheme.name!r} needs passes that this lowc does not implement yet: {missing}. "
            f"Schemes that work now: {', '.join(_working_presets())}."
        )
    steps = build_pipeline(scheme, passes)
    names = {s.name for s in steps}
    tokens = None
    if names & NEEDS_CALIBRATION:  # resolve calibration data before the (slower) capture
        from lowc.calibrate import calibration_tokens

        tokens = calibration_tokens(calibration, tokenizer, int(model.config.vocab_size), scheme.calibration_samples)
    gm = capture(model)
    sample = _sample_inputs(model) if debug else None
    ctx = PassContext(scheme=scheme, model_config=model.config, sample_inputs=sample, debug=debug,
                      progress=progress, options=dict(options or {}))
    if tokens is not None:
        from lowc.calibrate import calibrate

        hessian = bool(names & NEEDS_HESSIAN)
        ctx.calibration = calibrate(gm, tokens, progress=progress, hessian=hessian)
        ctx.recalibrate = lambda g: calibrate(g, tokens, progress=progress, hessian=hessian)
    dump_dir = dump_ir or os.environ.get(DUMP_ENV) or None
    bar = tqdm(total=len(steps), desc=f"lowc {scheme.name}", disable=not progress, leave=False)
    try:
        link = _link_kernels if (dump_dir or _graph_device(gm).type == "cuda") else None
        gm, records = run_pipeline(gm, ctx, steps, dump_dir, on_step=lambda name: _advance(bar, name), finalize=link)
    finally:
        bar.close()
    compiled = CompiledModel(gm, scheme, model.config, records, time.perf_counter() - t0, type(model).__name__)
    if _graph_device(gm).type == "cuda":
        from lowc.runtime import register_cuda_kernels

        register_cuda_kernels()  # the generated Triton kernels become the ops' CUDA implementation
    log.info("compiled %s with %s in %.1fs", type(model).__name__, scheme.name, compiled.compile_seconds)
    return compiled


def _link_kernels(gm: fx.GraphModule) -> None:
    from lowc.kernel_links import link_kernel_files

    link_kernel_files(gm)


def _advance(bar, name: str) -> None:
    bar.set_postfix_str(name)
    bar.update(1)


def _working_presets() -> list[str]:
    from lowc.schemes import PRESETS

    return [n for n, s in PRESETS.items() if all(p in REGISTRY for p in s.passes)]


def _sample_inputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config.vocab_size), (2, 16), generator=g).to(device)
    return ids, torch.arange(16, device=device).expand(2, 16)


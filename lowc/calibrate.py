"""Calibration: run the captured graph over calibration tokens and record per-channel statistics.

    tokens = calibration_tokens(None, tokenizer, model.config.vocab_size)   # lowc's shipped text
    data = calibrate(gm, tokens, hessian=True)

For every activation that a linear reads, `calibrate` stores an `InputStats` (per-channel absmax,
mean square, optionally H = X^T X / n) in `node.meta["lowc_stats"]` of each linear reading it; for
every `lowc::attention` node, a `KeyStats` (per KV head and channel absmax and sum of the post-RoPE keys) in
`node.meta["lowc_key_stats"]`. See lowc/passes/stats.py for what each field means.

The default calibration set is `lowc.eval.calibration_batches`: 128 windows of 512 tokens drawn with
seed 0 from three public-domain books shipped in lowc/data/calibration (never WikiText-2, the text
perplexity is reported on). A user passes token ids [n, seq] or a text (then a tokenizer too).

The run is deterministic (same tokens, same statistics): batches go in a fixed order, and each
batch's contribution is summed in float32/float64 in that order. The logits are never computed
when the head's output is the graph's output (nothing reads them; that is a fifth of the cost).
Non-finite values in an activation stop calibration with a CalibrationError naming the layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.fx as fx

from lowc.errors import CalibrationError
from lowc.passes.annotate import site_from_weight
from lowc.passes.dataflow import head_linear, is_linear
from lowc.passes.weights import attr_tensor
from lowc.passes.stats import META_KEY_STATS, META_STATS, InputStats, KeyStats

MIN_TOKENS = 256  # below this, channel maxima and H are too noisy to fold into weights
DEFAULT_SAMPLES = 128  # 65,536 tokens; 32 gave GPTQ noisier Hessians (SmolLM2 w4a16: 28.32 -> 27.82)
DEFAULT_SEQ_LEN = 512


@dataclass
class CalibrationData:
    """What a calibration run saw; the statistics themselves live in node.meta."""

    tokens: int
    rows: int
    seq_len: int
    seconds: float
    hessian: bool
    inputs: dict[str, InputStats] = field(default_factory=dict)  # linear site name -> its input stats
    keys: dict[int, KeyStats] = field(default_factory=dict)  # layer -> key stats

    def __repr__(self) -> str:
        return (f"CalibrationData({self.rows} x {self.seq_len} tokens, {len(self.inputs)} linears, "
                f"{len(self.keys)} attention layers, hessian={self.hessian}, {self.seconds:.1f}s)")


def default_calibration(tokenizer, n_samples: int = DEFAULT_SAMPLES, seq_len: int = DEFAULT_SEQ_LEN,
                        seed: int = 0) -> torch.Tensor:
    """lowc's default calibration batch: LongTensor [n_samples, seq_len] from the shipped text."""
    from lowc.eval import calibration_batches

    return calibration_batches(tokenizer, n_samples=n_samples, seq_len=seq_len, seed=seed)


def calibration_tokens(calibration, tokenizer, vocab_size: int, n_samples: int | None = None) -> torch.Tensor:
    """Resolve `lowc.compile(calibration=...)`: None (shipped text, `n_samples` windows of 512 tokens,
    default DEFAULT_SAMPLES), a str, or token ids -> [n, seq]."""
    if calibration is None or isinstance(calibration, str):
        if tokenizer is None:
            raise CalibrationError(
                "this scheme needs calibration data, and there is no tokenizer to read text with: pass "
                "lowc.compile(model, scheme, tokenizer=tok) to use lowc's shipped calibration text (or "
                "your own text via calibration='...'), or pass calibration=LongTensor[n, seq] of token ids"
            )
        if calibration is None:
            return check_tokens(default_calibration(tokenizer, n_samples or DEFAULT_SAMPLES), vocab_size)
        return check_tokens(_text_rows(calibration, tokenizer), vocab_size)
    return check_tokens(calibration, vocab_size)


def _text_rows(text: str, tokenizer) -> torch.Tensor:
    from lowc.eval import calibration_batches, tokenize

    n = tokenize(tokenizer, text).numel() if text.strip() else 0
    if n < MIN_TOKENS:
        raise CalibrationError(
            f"the calibration text is {n} tokens long; calibration needs at least {MIN_TOKENS} "
            "(a few paragraphs); pass a longer text or calibration=None for lowc's shipped text"
        )
    seq = min(DEFAULT_SEQ_LEN, n)
    return calibration_batches(tokenizer, n_samples=min(DEFAULT_SAMPLES, n // seq), seq_len=seq, text=text)


def check_tokens(tokens, vocab_size: int) -> torch.Tensor:
    """Validate calibration token ids; returns a LongTensor [n, seq]."""
    if not isinstance(tokens, torch.Tensor):
        raise CalibrationError(
            f"calibration must be None, a text, or a LongTensor [n, seq] of token ids; got {type(tokens).__name__}"
        )
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise CalibrationError(f"calibration token ids must be an integer tensor, got {tokens.dtype}")
    if tokens.dim() == 1:
        tokens = tokens.unsqueeze(0)
    if tokens.dim() != 2:
        raise CalibrationError(f"calibration token ids must have shape [n, seq], got {tuple(tokens.shape)}")
    if tokens.numel() < MIN_TOKENS or tokens.shape[1] < 2:
        raise CalibrationError(
            f"calibration has {tokens.numel()} tokens (shape {tuple(tokens.shape)}); at least {MIN_TOKENS} "
            "tokens in rows of 2 or more are needed for usable statistics (lowc's default is 128 x 512)"
        )
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise CalibrationError(f"calibration token ids must lie in [0, {vocab_size}), got values in [{lo}, {hi}]")
    return tokens.long()


class _Recorder(fx.Interpreter):
    """Runs the graph and accumulates statistics at the watched nodes."""

    def __init__(self, gm: fx.GraphModule, watch: dict, attention: dict, skip: set):
        super().__init__(gm, garbage_collect_values=True)
        self.watch, self.attention, self.skip = watch, attention, skip

    def run_node(self, n: fx.Node):
        if n in self.skip:
            return None
        if n in self.attention:
            self._check(self.env[n.args[1]], f"the keys of layer {n.args[4]}'s attention")
            self.attention[n].update(self.env[n.args[1]])
        out = super().run_node(n)
        if n in self.watch:
            stats, readers = self.watch[n]
            self._check(out, f"the input of {readers}")
            stats.update(out)
        return out

    @staticmethod
    def _check(t: torch.Tensor, what: str) -> None:
        if not bool(torch.isfinite(t).all()):
            raise CalibrationError(
                f"NaN/Inf in {what} during calibration; the model overflows on the calibration text in its "
                "current dtype: calibrate in float32 (model.float()) or check the weights of that layer"
            )


def _site(n: fx.Node) -> str:
    """The module name of a linear (annotate may not have run yet: derive it from the weight)."""
    if "lowc_site" in n.meta:
        return n.meta["lowc_site"]["name"]
    return site_from_weight(str(n.args[1].target))["name"]


def calibrate(gm: fx.GraphModule, tokens: torch.Tensor, *, progress: bool = True, hessian: bool = False,
              batch_rows: int = 4) -> CalibrationData:
    """Run `gm` over `tokens` [n, seq]; store statistics in node.meta and return a summary."""
    from tqdm.auto import tqdm

    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise CalibrationError("calibrate() takes token ids [n, seq]; use calibration_tokens() to build them")
    t0 = time.perf_counter()
    head = head_linear(gm)
    out_node = gm.graph.output_node()
    skip = {head} if head is not None and list(head.users) == [out_node] else set()
    watch, data = {}, CalibrationData(0, tokens.shape[0], tokens.shape[1], 0.0, hessian)
    device = _graph_device(gm)
    for n in gm.graph.nodes:
        if is_linear(n):
            x = n.args[0]
            if x not in watch:
                k = int(attr_tensor(gm, n.args[1]).shape[1])
                watch[x] = (InputStats.empty(k, hessian, device), [])
            stats, readers = watch[x]
            readers.append(_site(n))
            n.meta[META_STATS] = stats
            data.inputs[_site(n)] = stats
    attention = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target is torch.ops.lowc.attention.default:
            ks = KeyStats(torch.zeros(0, device=device))
            attention[n] = n.meta[META_KEY_STATS] = data.keys[int(n.args[4])] = ks
    watch = {x: (s, ", ".join(r)) for x, (s, r) in watch.items()}
    recorder = _Recorder(gm, watch, attention, skip)
    rows = list(torch.split(tokens, batch_rows))
    with torch.no_grad():
        for ids in tqdm(rows, desc="lowc calibrate", disable=not progress, leave=False):
            ids = ids.to(device)
            pos = torch.arange(ids.shape[1], device=device).expand_as(ids)
            recorder.run(ids, pos)
    data.tokens = int(tokens.numel())
    data.seconds = time.perf_counter() - t0
    return data


def _graph_device(gm: fx.GraphModule) -> torch.device:
    for t in list(gm.parameters()) + list(gm.buffers()):
        return t.device
    return torch.device("cpu")

"""Perplexity, the texts lowc is measured on, and the body of `python -m lowc eval`.

Three shipped texts (see `lowc/data/*/README.md` for sources and licences):
- WikiText-2 raw test, the text lowc reports perplexity on, joined the way the Hugging Face
  `wikitext-2-raw-v1` test rows are joined;
- the default calibration text: three public-domain English texts of different kinds, none of them
  WikiText, from which `calibration_batches` draws its windows;
- a held-out English text (neither of the above) to check that a quantization gain is not an
  artefact of the evaluation or the calibration text.

Perplexity protocol: the text is tokenized once with the tokenizer's defaults (SmolLM2's tokenizer
adds no BOS), the first `tokens` tokens are cut into non-overlapping windows of `window` tokens
(stride = window), each window is one independent forward pass, and every position of a window but
its first is scored against the next token. So a full window of W tokens scores W - 1 tokens, and
perplexity = exp(sum of NLL / number of scored tokens). With this convention eager FP32 SmolLM2
gives 23.4754 on the first 20,480 tokens at window 1024 (20 windows, 20,460 scored tokens), the
reference 23.475; dividing the same NLL by all 20,480 tokens instead would give 23.403.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from lowc.errors import CalibrationError, InputError, LowcError
from lowc.fileio import atomic_write_json

WIKITEXT2_TEST = "wikitext-2-raw/wiki.test.raw"
CALIBRATION_FILES = ("calibration/alice29.txt", "calibration/lcet10.txt", "calibration/plrabn12.txt")
HELDOUT_FILES = ("heldout/asyoulik.txt",)


# ----------------------------------------------------------------------------------------- texts
def _data_file(relpath: str):
    return resources.files("lowc").joinpath("data", *relpath.split("/"))


def _read_plain_text(relpath: str) -> str:
    """A shipped plain-text file with its DOS dress removed: CRLF -> LF (universal newlines), no
    0x1A end-of-file byte, no trailing spaces on a line, no blank lines at either end."""
    with _data_file(relpath).open("r", encoding="utf-8") as f:
        raw = f.read()
    lines = [line.rstrip() for line in raw.replace("\x1a", "").split("\n")]
    return "\n".join(lines).strip("\n")


def wikitext2_test_rows() -> list[str]:
    """The rows of WikiText-2 raw test as Hugging Face's `wikitext-2-raw-v1` has them: one row per
    line of wiki.test.raw with its trailing newline, and a line holding only whitespace as ""."""
    with _data_file(WIKITEXT2_TEST).open("r", encoding="utf-8") as f:
        return [line if line.strip() else "" for line in f]


def wikitext2_test_text() -> str:
    """WikiText-2 raw test joined as the usual perplexity protocol does: "\\n\\n".join(rows)."""
    return "\n\n".join(wikitext2_test_rows())


def calibration_text() -> str:
    """lowc's default calibration text (253,439 SmolLM2 tokens; not WikiText)."""
    return "\n\n".join(_read_plain_text(p) for p in CALIBRATION_FILES)


def heldout_text() -> str:
    """A held-out English text, in neither the evaluation nor the calibration set."""
    return "\n\n".join(_read_plain_text(p) for p in HELDOUT_FILES)


TEXTS = {"wikitext2": wikitext2_test_text, "heldout": heldout_text, "calibration": calibration_text}


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """Token ids [N] (int64) of `text`, tokenized once with the tokenizer's default special tokens."""
    encoded = tokenizer(text, return_attention_mask=False, verbose=False)
    ids = encoded["input_ids"]
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def calibration_batches(
    tokenizer, n_samples: int = 128, seq_len: int = 512, seed: int = 0, text: str | None = None
) -> torch.Tensor:
    """`n_samples` non-overlapping windows of `seq_len` tokens drawn from the calibration text
    (or `text`), as a LongTensor [n_samples, seq_len]; the same seed always gives the same batch."""
    if n_samples < 1 or seq_len < 1:
        raise CalibrationError(f"n_samples and seq_len must be positive, got {n_samples} and {seq_len}.")
    ids = tokenize(tokenizer, calibration_text() if text is None else text)
    available = ids.numel() // seq_len
    if available < n_samples:
        raise CalibrationError(
            f"Calibration needs {n_samples * seq_len} tokens ({n_samples} samples of {seq_len}) but the "
            f"text has {ids.numel()} tokens; pass a longer text or fewer/shorter samples."
        )
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(available, generator=generator)[:n_samples]
    return ids[: available * seq_len].view(available, seq_len)[pick].clone()


# ------------------------------------------------------------------------------------ perplexity
@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token, in nats
    tokens_scored: int
    windows: int
    window: int
    seconds: float

    def __repr__(self) -> str:
        return (
            f"PerplexityResult(perplexity={self.perplexity:.4f}, nll={self.nll:.5f} nats/token, "
            f"tokens_scored={self.tokens_scored}, windows={self.windows}, window={self.window}, "
            f"seconds={self.seconds:.1f})"
        )

    def as_dict(self) -> dict:
        return asdict(self)


def _as_ids(tokenizer_or_ids, text: str | None) -> torch.Tensor:
    if isinstance(tokenizer_or_ids, torch.Tensor):
        if text is not None:
            raise InputError("Pass either token ids, or a tokenizer and a text, not ids and a text.")
        ids = tokenizer_or_ids
        if ids.is_floating_point() or ids.is_complex() or ids.dim() > 2 or (ids.dim() == 2 and len(ids) != 1):
            raise InputError(
                f"Token ids must be an integer tensor [N] or [1, N], got {ids.dtype} {tuple(ids.shape)}."
            )
        return ids.reshape(-1).long()
    return tokenize(tokenizer_or_ids, wikitext2_test_text() if text is None else text)


def _model_device(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return torch.device("cpu")


def _logits(output) -> torch.Tensor:
    logits = getattr(output, "logits", output)
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    return logits


def perplexity(
    model, tokenizer_or_ids, text: str | None = None, tokens: int | None = 20480, window: int = 1024,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of `model` on the first `tokens` tokens of `text` in non-overlapping windows.

    `model` maps LongTensor [1, T] to logits [1, T, V] or to an object with `.logits` (an HF model).
    `tokenizer_or_ids` is a tokenizer (then `text`, default WikiText-2 test, is tokenized once) or
    the token ids themselves. `tokens=None` scores the whole text. Each window of T tokens scores
    T - 1 (its first token has no context); a last window shorter than `window` is scored too.
    Convention and reference figure: see the module docstring. Measured on this project's 2-core
    CPU machine: eager FP32 SmolLM2, 20 windows of 1024, about 85 s.
    """
    if window < 2:
        raise InputError(f"window must be at least 2 tokens (one of context, one scored), got {window}.")
    ids = _as_ids(tokenizer_or_ids, text)
    if tokens is None:
        tokens = ids.numel()
    if tokens < window:
        raise InputError(
            f"tokens ({tokens}) must be at least one window ({window}); lower --window or raise --tokens."
        )
    if ids.numel() < tokens:
        raise InputError(
            f"The text has only {ids.numel()} tokens, fewer than the {tokens} asked for; ask for fewer."
        )
    starts = [s for s in range(0, tokens, window) if min(window, tokens - s) >= 2]
    device = _model_device(model)
    nll_sum, scored = 0.0, 0
    began = time.perf_counter()
    with torch.inference_mode():
        bar = tqdm(starts, desc=f"perplexity (window {window})", disable=not progress)
        for k, start in enumerate(bar):
            x = ids[start : min(start + window, tokens)].unsqueeze(0).to(device)
            logits = _logits(model(x))
            if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape):
                raise InputError(
                    f"The model returned logits of shape {tuple(logits.shape)} for input "
                    f"{tuple(x.shape)}; expected [1, T, V]."
                )
            nll = F.cross_entropy(logits[0, :-1].float(), x[0, 1:], reduction="sum")
            if not torch.isfinite(nll):
                raise LowcError(
                    f"Non-finite loss in window {k} (tokens {start}..{start + x.shape[1]}): the model "
                    "produced NaN/Inf logits; check the quantized model on this window (e.g. zero scales "
                    "or overflow)."
                )
            nll_sum += float(nll)
            scored += x.shape[1] - 1
    mean_nll = nll_sum / scored
    return PerplexityResult(
        perplexity=math.exp(mean_nll), nll=mean_nll, tokens_scored=scored, windows=len(starts),
        window=window, seconds=time.perf_counter() - began,
    )


# ----------------------------------------------------------------------------------------- CLI
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _parser() -> argparse.ArgumentParser:
    from lowc.models import MODELS

    p = argparse.ArgumentParser(
        prog="lowc eval", description="Perplexity of an eager or lowc-compiled model."
    )
    p.add_argument("--model", default="smollm2", choices=sorted(MODELS))
    p.add_argument("--scheme", default="none", help='a lowc scheme name, or "none" for the eager model')
    p.add_argument("--tokens", type=int, default=20480, help="tokens from the text's start; 0 = all")
    p.add_argument("--window", type=int, default=1024, help="window length; stride = window")
    p.add_argument("--dataset", default="wikitext2", choices=sorted(TEXTS), help="a shipped text")
    p.add_argument("--text", metavar="FILE", help="score this UTF-8 text file instead of --dataset")
    p.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    p.add_argument("--device", default="auto", help='"cpu", "cuda", or "auto" (cuda when there is one)')
    p.add_argument("--calibration-samples", type=int, default=None,
                   help="512-token calibration windows (default: the scheme's, 128 unless it says otherwise)")
    p.add_argument("--cache-dir", help="model cache (default $LOWC_CACHE_DIR or ~/.cache/lowc)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON (atomically)")
    p.add_argument("--no-progress", action="store_true")
    return p


def eval_main(argv: list[str] | None = None) -> int:
    """`python -m lowc eval [flags]`: prints the run, and last `perplexity: X`; returns 0."""
    args = _parser().parse_args(argv)
    if args.window < 2:
        raise InputError(f"--window must be at least 2, got {args.window}.")
    if args.tokens < 0 or (args.tokens and args.tokens < args.window):
        raise InputError(
            f"--tokens ({args.tokens}) must be 0 (all) or at least --window ({args.window})."
        )
    if args.text is not None:
        text_path = Path(args.text)
        if not text_path.is_file():
            raise InputError(
                f"--text {args.text}: no such file; pass a UTF-8 text file, or use --dataset."
            )
        text, text_name = text_path.read_text(encoding="utf-8"), str(text_path)
    else:
        text, text_name = TEXTS[args.dataset](), args.dataset
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    progress = not args.no_progress

    from lowc.models import load

    began = time.perf_counter()
    model, tokenizer = load(args.model, dtype=_DTYPES[args.dtype], cache_dir=args.cache_dir)
    model = model.to(device)
    load_seconds = time.perf_counter() - began
    compile_seconds = 0.0
    if args.scheme != "none":
        import lowc

        began = time.perf_counter()
        from lowc.calibrate import DEFAULT_SAMPLES
        from lowc.schemes import parse_scheme

        n_calib = args.calibration_samples or parse_scheme(args.scheme).calibration_samples or DEFAULT_SAMPLES
        calibration = calibration_batches(tokenizer, n_calib, seq_len=512)
        model = lowc.compile(model, scheme=args.scheme, calibration=calibration, progress=progress)
        compile_seconds = time.perf_counter() - began
    ids = tokenize(tokenizer, text)
    tokens = args.tokens or ids.numel()
    print(f"model: {args.model} ({args.dtype}, {device})  scheme: {args.scheme}")
    print(f"text: {text_name} ({ids.numel()} tokens); "
          f"scoring the first {tokens} in windows of {args.window}")
    result = perplexity(model, ids, tokens=tokens, window=args.window, progress=progress)
    print(f"windows: {result.windows}  tokens scored: {result.tokens_scored}  nll: {result.nll:.5f}  "
          f"seconds: {result.seconds:.1f} (load {load_seconds:.1f}, compile {compile_seconds:.1f})")
    if args.json:
        import lowc

        atomic_write_json(Path(args.json), {
            "model": args.model, "scheme": args.scheme, "dtype": args.dtype, "device": str(device),
            "text": text_name, "text_tokens": ids.numel(), "tokens": tokens, **result.as_dict(),
            "load_seconds": load_seconds, "compile_seconds": compile_seconds,
            "lowc_version": lowc.__version__, "torch_version": torch.__version__,
        })
    print(f"perplexity: {result.perplexity:.4f}")
    return 0

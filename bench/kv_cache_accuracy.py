"""KV cache accuracy and memory on SmolLM2: perplexity, agreement with the 16-bit cache, bytes per token.

    python bench/kv_cache_accuracy.py [--tokens 20480] [--window 1024] [--gen 64] [--json OUT]

For each cache (kv16 = the model dtype, kv8, plain kv4, kv4 with the key rotation, and kv4 with the
rotation and the key centre — lowc's kv4 recipe in every scheme that calibrates), weights and
activations unquantized (schemes w16a16, w16a16kv8, w16a16kv4 with kv_rotation off and on, and with
kv_key_center, which calibrates on lowc's shipped text):
- WikiText-2 test perplexity (lowc.eval protocol: first `tokens` tokens, windows of `window`), where
  attention reads K/V back from the (quantized) cache even in these full-window forwards;
- agreement with the 16-bit cache over a generation: the kv16 model generates `gen` greedy tokens
  per prompt; each format then follows the same tokens (teacher forcing, prefill then one-token
  decode steps) and at every step the next-token distributions are compared: mean KL(p16 || p) in
  nats, and the fraction of steps whose argmax agrees;
- cache bytes per token, for SmolLM2 as compiled and for a Llama-3-8B shape (32 layers, 8 KV heads,
  head_dim 128, fp16 for the 16-bit cache).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

PROMPTS = [
    "The history of the Roman Empire",
    "Write a short poem about the sea.",
    "Photosynthesis is the process by which plants",
    "In 1969, the first humans landed on the Moon. The mission",
]


def teacher_forced_logits(model, prompts: list[list[int]], forced: list[list[int]]) -> torch.Tensor:
    """Next-token logits [B, n, V] after each prompt and after each forced token (n = len(forced[b]))."""
    from lowc.runtime.context import ForwardContext

    n = len(forced[0])
    longest = max(map(len, prompts))
    cache = model.new_cache(len(prompts), longest + n)
    slots = cache.allocate(len(prompts))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts])
    steps = [model(ids, context=ForwardContext(cache, slots, [len(p) for p in prompts], longest))[:, -1]]
    for i in range(n - 1):
        tok = torch.tensor([[f[i]] for f in forced])
        steps.append(model(tok, context=ForwardContext(cache, slots, [1] * len(prompts), 1))[:, -1])
    return torch.stack(steps, dim=1).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=20480)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--gen", type=int, default=64, help="generated tokens per prompt for the agreement figures")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--formats", default="kv16,kv8,kv4,kv4+rotation,kv4+rotation+center",
                   help="rows to run, comma-separated (kv16 first: it is the agreement reference)")
    args = p.parse_args()

    import lowc
    from lowc.eval import perplexity, wikitext2_test_text
    from lowc.models import smollm2
    from lowc.ops.kv_ops import KVCacheSpec

    model, tok = smollm2()
    prompts = [tok(t)["input_ids"] for t in PROMPTS]
    results = {"model": "SmolLM2-135M-Instruct fp32", "tokens": args.tokens, "window": args.window, "formats": {}}
    ref_logits = None
    forced = None
    from lowc.schemes import parse_scheme

    rows = {"kv16": parse_scheme("w16a16"), "kv8": parse_scheme("w16a16kv8"),
            "kv4": parse_scheme("w16a16kv4").replace(name="w16a16kv4-norot", kv_rotation=False),
            "kv4+rotation": parse_scheme("w16a16kv4"),
            "kv4+rotation+center": parse_scheme("w16a16kv4").replace(name="w16a16kv4-center", kv_key_center=True)}
    wanted = args.formats.split(",")
    if wanted[0] != "kv16" or any(w not in rows for w in wanted):
        raise SystemExit(f"--formats: choose from {', '.join(rows)}, starting with kv16")
    for label, scheme in ((w, rows[w]) for w in wanted):
        qmodel = lowc.compile(model, scheme, tokenizer=tok, progress=False)
        spec = qmodel.kv_spec
        t0 = time.perf_counter()
        with torch.inference_mode():
            ppl = perplexity(qmodel, tok, wikitext2_test_text(), tokens=args.tokens, window=args.window)
            if forced is None:
                new = qmodel.generate(prompts, args.gen, eos_token_id=[])
                forced = new
            logits = teacher_forced_logits(qmodel, prompts, forced)
        row = {"scheme": scheme.name, "format": spec.fmt, "key_rotation": scheme.kv_rotation,
               "key_center": scheme.kv_key_center,
               "perplexity": ppl.perplexity,
               "bytes_per_token": spec.bytes_per_token(), "seconds": time.perf_counter() - t0}
        if ref_logits is None:
            ref_logits = logits
        else:
            logp_ref = ref_logits.log_softmax(-1)
            logp = logits.log_softmax(-1)
            kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)
            row["mean_kl_nats"] = float(kl.mean())
            row["top1_agreement"] = float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean())
        results["formats"][label] = row
        print(json.dumps(row), flush=True)
    base = results["formats"]["kv16"]["perplexity"]
    for row in results["formats"].values():
        row["perplexity_vs_kv16_pct"] = 100 * (row["perplexity"] / base - 1)
    results["smollm2_fp16_bytes_per_token"] = {
        f: KVCacheSpec(f, 30, 3, 64, torch.float16).bytes_per_token() for f in ("kv16", "kv8", "kv4")}
    results["llama3_8b_bytes_per_token"] = {
        f: KVCacheSpec(f, 32, 8, 128, torch.float16).bytes_per_token() for f in ("kv16", "kv8", "kv4")}
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()

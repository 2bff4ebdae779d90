"""Where SmolLM2's KV4 loss comes from, and what each key treatment wins back (a diagnostic).

    python bench/kv4_keys.py --tokens 4096 --rows none,kv,k,v,k+rot,kv+rot,kv+sa,kv+rot+sa,k+g32,k+rot+g32,kv+rot+center

16-bit weights and activations over a 16-bit cache, with the 4-bit cache error simulated inside the
fused RoPE + store reference: the stored K and/or V are replaced by dequantize(quantize_kv4(.)) —
the same grid as lowc's kv4 (lowc.quant.kv) — so the variants that lowc has no format for can be
compared on one footing. Row names: `k`, `v`, `kv` = which of K/V go through KV4; `+rot` = the
Walsh-Hadamard key rotation (x -> Q(x H) H^T, what `kv_rotation` computes up to where H is applied);
`+sa` = SmoothAttention (alpha 0.5) folded into q/k_proj; `+g32` = two scale/zero pairs per head
vector instead of one (a format lowc does not have: 4 more bytes per token-head); `+sink` = the
window's first token kept exact; `+center` = the key centre (`kv_key_center`): each layer's mean
post-RoPE key over lowc's default calibration sample (gathered once; 32 x 512 tokens when
docs/accuracy.md's rows were measured, 128 x 512 since) is subtracted before
quantizing and added back after, which attention could skip (softmax cancels it). WikiText-2 test, first `--tokens` tokens, windows of 1024.
"""

from __future__ import annotations

import argparse
import time

import torch

ROW_FLAGS = ("rot", "sa", "g32", "sink", "center")


def _fake_kv4(x: torch.Tensor, rotate: bool, group32: bool) -> torch.Tensor:
    from lowc.ops.kv_ops import hadamard_reference
    from lowc.quant.kv import dequantize_kv4, quantize_kv4

    y = hadamard_reference(x) if rotate else x
    shape = y.shape
    if group32:
        y = y.reshape(*shape[:-1], shape[-1] // 32, 32)
    y = dequantize_kv4(quantize_kv4(y), x.dtype).reshape(shape)
    return hadamard_reference(y) if rotate else y  # H is its own inverse


def install(mode: dict) -> None:
    """Route the fused RoPE + store reference through the simulated cache error of `mode`."""
    from lowc.ops import fused_ops
    from lowc.ops.kv_ops import kv_store_reference, rotate_half_rope

    def simulated(q, k, v, cos, sin, k_cache, v_cache, slot_ids, cache_lens, new_lens, fmt, rotate=False,
                  key_bias=None):
        k = rotate_half_rope(k, cos, sin)
        layer = mode["calls"] % mode["layers"]
        mode["calls"] += 1
        if mode.get("gather") is not None:  # the calibration pass of +center: sum the keys, store as is
            total, n = mode["gather"].get(layer, (0.0, 0))
            mode["gather"][layer] = (total + k.double().sum(dim=(0, 2)), n + k.shape[0] * k.shape[2])
        elif mode["k"]:
            c = mode["centres"][layer].to(k.dtype)[None, :, None, :] if mode["center"] else 0.0
            kq = _fake_kv4(k - c, mode["rot"], mode["g32"]) + c
            if mode["sink"]:
                kq[:, :, :1] = k[:, :, :1]
            k = kq
        if mode["v"]:
            v = _fake_kv4(v, mode["rot"], mode["g32"])
        kv_store_reference(k, k_cache, slot_ids, cache_lens, new_lens, fmt)
        kv_store_reference(v, v_cache, slot_ids, cache_lens, new_lens, fmt)
        return rotate_half_rope(q, cos, sin).contiguous()

    fused_ops.rope_qkv_store_reference = simulated


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--rows", default="none,kv,k,v,k+rot,kv+rot,kv+sa,kv+rot+sa")
    args = p.parse_args()

    import lowc
    from lowc.eval import perplexity, tokenize, wikitext2_test_text
    from lowc.models import smollm2
    from lowc.schemes import parse_scheme

    from lowc.calibrate import default_calibration

    model, tok = smollm2()
    ids = tokenize(tok, wikitext2_test_text())[: args.tokens]
    mode: dict = {"calls": 0, "layers": model.config.num_hidden_layers, "centres": None}
    install(mode)
    for row in args.rows.split(","):
        which, *flags = row.split("+")
        if which not in ("none", "k", "v", "kv") or any(f not in ROW_FLAGS for f in flags):
            raise SystemExit(f"bad row {row!r}: none|k|v|kv, then any of +{', +'.join(ROW_FLAGS)}")
        mode.update(k="k" in which, v="v" in which, **{f: f in flags for f in ROW_FLAGS})
        scheme = parse_scheme("w16a16")
        if mode["sa"]:
            scheme = scheme.replace(name="w16a16-smoothattention", smooth_attention_alpha=0.5)
        t0 = time.perf_counter()
        compiled = lowc.compile(model, scheme, tokenizer=tok, progress=False)
        if mode["center"] and mode["centres"] is None:  # gather once: the mean post-RoPE key per layer
            mode.update(gather={}, calls=0)
            calib = default_calibration(tok)
            with torch.no_grad():
                for rows in calib.split(4):
                    compiled(rows)
            mode["centres"] = {layer: (t / n).float() for layer, (t, n) in mode["gather"].items()}
            mode["gather"] = None
        mode["calls"] = 0
        ppl = perplexity(compiled, ids, tokens=args.tokens, window=1024, progress=False).perplexity
        print(f"{row:14s} perplexity {ppl:.4f}   ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()

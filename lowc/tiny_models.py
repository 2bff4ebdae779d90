"""Small random-init causal LMs of the supported architectures, for tests and quick experiments.

They have the real module structure (GQA, RoPE, RMSNorm, SwiGLU) at a size that compiles in a
second on a CPU. `tiny_model("llama", hidden=64, heads=4, kv_heads=2)` etc.
"""

from __future__ import annotations

import torch

ARCHS = ("llama", "qwen2", "mistral")


def tiny_config(arch: str = "llama", *, vocab: int = 256, hidden: int = 64, intermediate: int | None = None,
                layers: int = 2, heads: int = 4, kv_heads: int = 2, head_dim: int | None = None,
                max_positions: int = 512, tie: bool = False):
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; choose from {ARCHS}")
    cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
           "mistral": transformers.MistralConfig}[arch]
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
              num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
              max_position_embeddings=max_positions, tie_word_embeddings=tie, rms_norm_eps=1e-5)
    if head_dim is not None:
        kw["head_dim"] = head_dim
    if arch == "mistral":
        kw["sliding_window"] = None
    return cls(**kw)


def tiny_model(arch: str = "llama", *, seed: int = 0, dtype=torch.float32, **config_kw):
    """A random-init `*ForCausalLM` in eval mode; weights scaled up so logits are not near-uniform."""
    import transformers

    cfg = tiny_config(arch, **config_kw)
    cls = {"llama": transformers.LlamaForCausalLM, "qwen2": transformers.Qwen2ForCausalLM,
           "mistral": transformers.MistralForCausalLM}[arch]
    torch.manual_seed(seed)
    model = cls(cfg).to(dtype).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 1.0 / p.shape[1] ** 0.5)
            elif "norm" in name:
                p.uniform_(0.5, 1.5)
    return model

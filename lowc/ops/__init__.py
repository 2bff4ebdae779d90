"""lowc's torch.library ops (namespace `lowc`); importing this package registers them all.

Each op has a fake (meta) kernel and a plain-torch reference that is the CPU path and the test
oracle; the runtime registers CUDA kernels on top.
"""

from lowc.ops import attention, norm  # noqa: F401  (registers lowc::attention, lowc::rms_norm)
from lowc.ops import quant_ops  # noqa: F401  (registers lowc::quantize_act, lowc::qlinear)
from lowc.ops import kv_ops  # noqa: F401  (registers lowc::kv_store, lowc::rope_kv_store, lowc::attention_kv)
from lowc.ops import fused_ops  # noqa: F401  (registers the fused norm/SiLU/RoPE + quantize/store ops)

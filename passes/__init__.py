"""lowc's graph passes (installed as `lowc.passes`): one pass per module, registered by name.

Import order registers every built-in pass; `REGISTRY.names()` lists them. To write your own, see
docs/writing-a-pass.md: a pass is `fn(gm, ctx) -> PassResult`, and `before`/`after` place it in a
scheme's pipeline.
"""

from lowc.passes.base import (  # noqa: F401
    APPROXIMATE,
    EXACT,
    REGISTRY,
    PassContext,
    PassInfo,
    PassResult,
    register_pass,
)
from lowc.passes.pipeline import after, before, build_pipeline, lint, run_pipeline  # noqa: F401

# Built-in passes (importing registers them). Keep this list in pipeline order.
from lowc.passes import annotate, smooth_attention, reorder, smooth, scale_search, clip, gptq, quantize, bitplane, center_keys, kv_cache, fuse_glue, dce  # noqa: F401,E402

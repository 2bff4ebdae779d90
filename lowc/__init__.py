"""lowc: a compiler for low-bit LLM inference.

    import lowc
    qmodel = lowc.compile(model, scheme="w4a8kv4")
    logits = qmodel(input_ids)

`import lowc` is cheap: the compiler, transformers and Triton load on first use.
"""

__version__ = "0.1.0"

_LAZY = {
    "compile": ("lowc.compiler", "compile"),
    "CompiledModel": ("lowc.compiler", "CompiledModel"),
    "Scheme": ("lowc.schemes", "Scheme"),
    "parse_scheme": ("lowc.schemes", "parse_scheme"),
    "list_schemes": ("lowc.schemes", "list_schemes"),
    "capture": ("lowc.capture", "capture"),
    "LowcError": ("lowc.errors", "LowcError"),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lowc' has no attribute {name!r}")

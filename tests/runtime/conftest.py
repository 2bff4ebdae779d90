"""Fixtures of the runtime tests."""

import pytest


@pytest.fixture
def pdl_restored():
    """Restores lowc's PDL mode after a test that sets it."""
    from lowc.runtime.pdl import pdl_mode, set_pdl

    before = pdl_mode()
    yield
    set_pdl(before)

from __future__ import annotations

import pytest

from engines import registry
from engines.device import discover
from engines.lightweight import LightweightEngine


@pytest.fixture(scope="session")
def engine(cache):
    """One engine for the session; the embedded models compile once into the shared cache."""
    return LightweightEngine(discover(), cache)


@pytest.fixture(scope="session")
def text_spec():
    return registry.get("tiny-llama-pydoc")


@pytest.fixture(scope="session")
def image_spec():
    return registry.get("tiny-shapes-unet")

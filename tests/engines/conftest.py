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


@pytest.fixture(scope="session")
def flux_spec(tmp_path_factory):
    """A FLUX pipeline of tiny random components (real diffusers and transformers classes)."""
    from tests import tiny

    source = tiny.flux_pipeline_dir(tmp_path_factory.mktemp("tiny-flux"))
    return registry.ModelSpec(id="tiny-flux", task="image", source=source, params_b=0.001, compile_module="transformer",
                              sizes=((32, 32),), steps=3, fp8=False)

from __future__ import annotations

import pytest
import torch

import aoti
from tests import tiny


@pytest.fixture(scope="session")
def flux_compiled(cache):
    """A tiny FLUX transformer with its static AOTI graph applied (compiled once per session)."""
    model = tiny.flux()
    with aoti.capture(model) as call, torch.no_grad():
        model(**tiny.flux_inputs())
    artifact = aoti.compile(model, call, cache=cache)
    status = aoti.apply(artifact, model)
    assert status.runtime == "aoti", status
    return model, artifact


@pytest.fixture(scope="session")
def mlp_artifact(cache):
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    return model, aoti.compile(model, call, cache=cache)

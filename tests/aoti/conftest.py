from __future__ import annotations

import pytest
import torch

import aoti
from tests import tiny


@pytest.fixture(autouse=True)
def _no_crash_probe(request, monkeypatch):
    """The library's tests load the packages they build in their own process, without first probing each
    in a child process (about 3 s of CPU a package): the tests marked ``probe`` (test_probe.py's among
    them) keep it, and so do the engines', app's and ZeroGPU tests, as the app runs."""
    if request.node.get_closest_marker("probe") is None:
        monkeypatch.setenv("AOTI_PROBE", "0")


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

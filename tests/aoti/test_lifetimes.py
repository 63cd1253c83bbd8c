"""aoti.lifetimes: a model's weights are given back once nothing uses them, although torch's AOTI
runtime keeps the constants a package was loaded with (user_managed) and a build leaves module trees
that bind the model's tensors."""

from __future__ import annotations

import gc

import torch

import aoti
from aoti import lifetimes
from tests import tiny


def live_bytes(storage_ptr: int) -> int:
    """The most bytes a live tensor on the storage at ``storage_ptr`` still has (0: none has any)."""
    sizes = [t.untyped_storage().nbytes() for t in gc.get_objects()
             if isinstance(t, torch.Tensor) and lifetimes._storage_ptr(t) == storage_ptr]
    return max(sizes, default=0)


def test_weights_of_a_discarded_package_are_freed_once_unused(mlp_artifact):
    _, artifact = mlp_artifact
    model, x = tiny.MLP().requires_grad_(False), torch.randn(4, 32)  # no autograd graph holds a weight
    expected = model(x)
    assert aoti.apply(artifact, model).runtime == "aoti"
    torch.testing.assert_close(model(x), expected)
    weight = model.up.weight.untyped_storage().data_ptr()
    aoti.restore(model)

    model.up.weight = torch.nn.Parameter(model.up.weight.clone())  # replaced, as quantizing does
    gc.collect()
    assert live_bytes(weight) == 64 * 32 * 4  # the tensor the package was loaded with: the runtime keeps it
    assert lifetimes.release_orphans() >= 64 * 32 * 4
    assert live_bytes(weight) == 0
    torch.testing.assert_close(model(x), expected)  # the model runs on its new weight, eager and compiled
    assert aoti.apply(artifact, model).runtime == "aoti"
    torch.testing.assert_close(model(x), expected)
    aoti.restore(model)


def test_releasing_leaves_the_weights_a_model_still_runs_on(mlp_artifact):
    _, artifact = mlp_artifact
    model, x = tiny.MLP().requires_grad_(False), torch.randn(4, 32)
    expected = model(x)
    weight = model.up.weight.untyped_storage().data_ptr()
    aoti.apply(artifact, model)
    aoti.restore(model)
    assert lifetimes.release_orphans() >= 64 * 32 * 4
    assert live_bytes(weight) == 64 * 32 * 4
    torch.testing.assert_close(model(x), expected)
    assert aoti.apply(artifact, model).runtime == "aoti"
    torch.testing.assert_close(model(x), expected)
    aoti.restore(model)


def test_build_trees_are_unbound_and_the_models_own_modules_left_alone():
    model, x = tiny.MLP(), torch.randn(4, 32)
    tree = torch.export.export(model, (x,)).module()  # binds the model's tensors, as a build does
    tied = torch.nn.Linear(32, 64)
    tied.weight = model.up.weight  # a module of the program's own sharing a weight
    assert any(p is model.up.weight for p in tree.parameters())

    assert lifetimes.unbind_build_trees(model) >= 1
    assert not any(p is model.up.weight for p in tree.parameters())
    assert tied.weight is model.up.weight
    assert [n for n, _ in model.named_parameters()] == ["up.weight", "up.bias", "down.weight", "down.bias"]

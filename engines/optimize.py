"""The one optimize flow both model kinds share: capture, compile, probe, apply."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

import aoti


def optimize_module(
    module: torch.nn.Module,
    capture_calls: Callable[[], aoti.CapturedCalls],
    options: aoti.CompileOptions,
    cache: aoti.Cache | None,
    exclusive: contextlib.AbstractContextManager | None,
    cuda_graphs: bool = False,
) -> tuple[aoti.Status, dict | None]:
    """Capture the hot module's calls and export it while holding ``exclusive`` (the model's request
    lock); build and crash-probe without it; swap the graphs in holding it again. Returns the status
    and the artifact's reference (`aoti.Artifact.ref`) if its graphs now run, else None."""
    lock = exclusive or contextlib.nullcontext()
    with lock:
        calls = capture_calls()
    artifact = aoti.compile(module, calls, options, cache=cache, exclusive=lock)
    aoti.verify_loadable(artifact)
    with lock:
        status = aoti.apply(artifact, module, cuda_graphs=cuda_graphs)
    return status, artifact.ref() if status.runtime == "aoti" else None


def bind_module(module: torch.nn.Module, ref: dict, cache: aoti.Cache | None, cuda_graphs: bool = False) -> tuple[aoti.Status, dict | None]:
    """Swap in the graphs of the artifact ``ref`` names, compiled by another process (`aoti.load`):
    the module is rewritten as the package records, then bound. Returns what `optimize_module` does."""
    artifact = aoti.load(module, ref, cache=cache)
    status = aoti.apply(artifact, module, cuda_graphs=cuda_graphs)
    return status, ref if status.runtime == "aoti" else None


def module_storages(module: torch.nn.Module) -> dict[int, int]:
    """A module's distinct parameter and buffer storages (a quantized weight's inner tensors):
    address -> bytes."""
    seen: dict[int, int] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        for plain in _plain_tensors(tensor):
            storage = plain.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return seen


def _plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold the data: itself, or a tensor subclass's (torchao's) inner tensors."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not is_traceable_wrapper_subclass(tensor):
        return [tensor]
    names, _ = tensor.__tensor_flatten__()
    return [plain for name in names for plain in _plain_tensors(getattr(tensor, name))]

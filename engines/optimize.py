"""The optimize flow both model kinds share, as one visible sequence: transform, capture, compile,
probe, apply (and bind, for a package compiled by another process)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable

import torch

import aoti
from aoti.compile import first_error_line

from .recipes import DECODE_KERNELS, Recipe

log = logging.getLogger(__name__)

MEASURE_S = float(os.environ.get("AOTI_MEASURE_S", "1.5"))  # seconds spent timing new graphs against eager



def transform_module(module: torch.nn.Module, transforms: tuple[aoti.TransformConfig, ...]) -> None:
    """``module`` rewritten with exactly ``transforms`` (from the loaded model: earlier ones undone, the
    compiled graphs of another recipe unbound). Hold the model's lock."""
    if aoti.transforms_of(module) != tuple(transforms):
        aoti.restore(module)
        aoti.transform(module, transforms)


def optimize_module(
    module: torch.nn.Module,
    capture_calls: Callable[[], aoti.CapturedCalls],
    recipe: Recipe,
    cache: aoti.Cache | None,
    exclusive: contextlib.AbstractContextManager | None,
    cuda_graphs: bool = False,
    on_stage: aoti.OnStage | None = None,
    timed: Callable[[aoti.CapturedCalls], list[aoti.CapturedCall]] | None = None,
) -> tuple[aoti.Status, dict | None]:
    """1. Transform and capture holding ``exclusive`` (the model's request lock); 2. compile and
    crash-probe without it (requests keep running eagerly); 3. swap the graphs in holding it again.
    A build that fails with the decode kernels is built again without them, recorded. Returns the
    status and the artifact's reference (`aoti.Artifact.ref`) if its graphs now run, else None.
    ``on_stage`` is told each stage as it starts (`aoti.OnStage`). 4. With ``timed`` (which of the
    captured calls the model's speed is: a decode step, a denoising step), the graphs are timed against
    the eager method on those calls (`aoti.measure_speedup`, holding ``exclusive``): ``status.measured``."""
    lock = exclusive or contextlib.nullcontext()
    stage = on_stage or (lambda name, estimate_s: None)
    with lock:
        stage("transform", None)
        transform_module(module, recipe.transforms)
        stage("capture", None)
        calls = capture_calls()
    kernels = any(isinstance(t, DECODE_KERNELS) for t in aoti.transforms_of(module))
    try:
        artifact = aoti.compile(module, calls, recipe.options, cache=cache, exclusive=lock, remember_failure=kernels,
                                on_stage=stage)
    except Exception as exc:
        if not kernels:
            raise
        reason = first_error_line(exc)  # the compiler's own "error:" line where there is one
        log.warning("optimize: the build with the decode kernels failed (%s); building without them", reason)
        recipe = recipe.without_decode_kernels()
        with lock:
            transform_module(module, recipe.transforms)
        artifact = aoti.compile(module, calls, recipe.options, cache=cache, exclusive=lock, on_stage=stage)
        artifact.status.fallbacks.insert(0, f"decode kernels -> off: the build with them failed ({reason})")
    stage("crash probe (the package loads and runs in a child process)", None)
    aoti.verify_loadable(artifact)
    stage("swap in", None)
    with lock:
        status = aoti.apply(artifact, module, cuda_graphs=cuda_graphs)
    if timed is not None and status.runtime == "aoti":
        stage("timing the graphs against eager", None)
        with lock:
            speedup = aoti.measure_speedup(module, timed(calls), budget_s=MEASURE_S)
        status.measured = speedup.to_dict() if speedup else None
    return status, artifact.ref() if status.runtime == "aoti" else None


def bind_module(module: torch.nn.Module, ref: dict, cache: aoti.Cache | None, cuda_graphs: bool = False) -> tuple[aoti.Status, dict | None]:
    """Swap in the graphs of the artifact ``ref`` names, compiled by another process: the module is
    transformed as the package records, then bound (`aoti.load`). Returns what `optimize_module` does."""
    transform_module(module, tuple(aoti.transforms_for(ref)))
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

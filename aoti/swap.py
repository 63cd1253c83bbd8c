"""Swapping a module's method for compiled graphs and back: the one owner of what is swapped in.

`install` puts a `CompiledMethod` (or a regional module's `StepGraph`) on the module (an instance
attribute over the class's method); `unswap` takes it (and every regional block's) away; `eager` lifts
them for the length of a block, `step_graph_lifted` only the step graph; `status_of` reads the live
record. Nothing else looks inside a module for compiled methods.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch.export._tree_utils import reorder_kwargs
from torch.utils import _pytree as pytree

from . import lifetimes
from .cuda_graphs import StepGraph
from .module_record import record_of, update
from .shapes import flatten_call
from .status import Status

log = logging.getLogger(__name__)


class CompiledMethod:
    """Installed as ``module.<method>``: runs the first compiled graph whose guard accepts the call,
    otherwise the eager method (counted in ``status.guard_fallbacks``)."""

    def __init__(self, module: torch.nn.Module, method: str, graphs: list[tuple[Any, ...]], weights: dict[str, torch.Tensor], status: Status) -> None:
        self.method = method
        self.eager = getattr(module, method)
        self.graphs = graphs  # (guard, runner, in_spec, out_spec)
        self.weights = weights  # the compiled graphs alias these tensors: keep them alive
        self.status = status
        lifetimes.orphan_on_death(self, weights.values())  # the runtime never lets them go

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        reason = "no compiled graph"
        for guard, runner, in_spec, out_spec in self.graphs:
            try:
                ordered = reorder_kwargs(kwargs, in_spec) if kwargs else kwargs
            except (ValueError, KeyError, TypeError, AssertionError):
                reason = f"keyword arguments {sorted(kwargs)} differ from the compiled call"
                continue
            leaves, spec = flatten_call(args, ordered)
            reason, bound = guard.check(leaves, spec)
            if reason is None:
                tensors, copies = guard.fit([leaf for leaf in leaves if isinstance(leaf, torch.Tensor)], bound)
                if copies:  # same shapes, another layout: copied into the one the graph reads
                    self.status.layout_copies += copies
                outputs = runner.run(tensors)
                self.status.compiled_calls += 1
                return pytree.tree_unflatten(outputs, out_spec)
        self.status.guard_fallbacks += 1
        self.status.last_guard_reason = reason
        log.debug("aoti: eager fallback for %s: %s", self.method, reason)
        return self.eager(*args, **kwargs)


SWAPPED = (CompiledMethod, StepGraph)


def install(module: torch.nn.Module, method: str, compiled: CompiledMethod | StepGraph) -> None:
    """``module.<method>`` runs ``compiled`` from now on (until `unswap`)."""
    setattr(module, method, compiled)


@contextlib.contextmanager
def eager(module: torch.nn.Module, method: str = "forward") -> Iterator[None]:
    """Run (or export) the module's own method inside the block, even while compiled graphs are
    swapped in on it or on its blocks (regional); they are back when the block ends. For an A/B
    comparison of one request, or an export of the eager code. Not thread-safe: hold the lock
    the module's callers hold.

    Example::

        with aoti.eager(pipe.transformer):
            reference = pipe("a cat")               # eager, for this call only
    """
    swapped = {sub: sub.__dict__.pop(method) for sub in module.modules() if isinstance(sub.__dict__.get(method), SWAPPED)}
    try:
        yield
    finally:
        for sub, compiled in swapped.items():
            sub.__dict__[method] = compiled


def unswap(module: torch.nn.Module, method: str) -> None:
    """The eager method back on the module and on every regional block; transforms stay."""
    for sub in module.modules():
        swapped = sub.__dict__.get(method)
        if isinstance(swapped, SWAPPED):
            del sub.__dict__[method]
    update(module, regional=None)


@contextlib.contextmanager
def step_graph_lifted(module: torch.nn.Module) -> Iterator[None]:
    """Inside the block, a regional module's step runs its blocks' graphs one by one (no `StepGraph`
    replay), so that they can be skipped (`aoti.step_cache`); the step graph is back when it ends."""
    graph = module.__dict__.get("forward")
    if not isinstance(graph, StepGraph):
        yield
        return
    del module.__dict__["forward"]
    try:
        yield
    finally:
        module.__dict__["forward"] = graph


def status_of(module: torch.nn.Module, method: str = "forward") -> Status:
    """The live status of a module: its compiled method's record, or eager."""
    swapped = module.__dict__.get(method)
    if isinstance(swapped, CompiledMethod):
        return swapped.status
    return record_of(module).regional or Status(runtime="eager", reason="not compiled")

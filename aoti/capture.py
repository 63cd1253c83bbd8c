"""Record the inputs of a module's calls during a real run."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

log = logging.getLogger(__name__)


@dataclass
class CapturedCall:
    """The positional and keyword arguments of one call."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@dataclass
class CapturedCalls:
    """The calls recorded by `capture`; behaves like its first call where one call is expected."""

    calls: list[CapturedCall] = field(default_factory=list)

    @property
    def args(self) -> tuple[Any, ...]:
        return self.first.args

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.first.kwargs

    @property
    def first(self) -> CapturedCall:
        if not self.calls:
            raise RuntimeError(
                "No call was captured: the module was not called inside the `aoti.capture` block."
            )
        return self.calls[0]

    def __len__(self) -> int:
        return len(self.calls)


class _StopAfterCapture(Exception):
    """Raised inside the run after the first call in stop mode; swallowed by `capture`."""


def _detach(value: Any) -> Any:
    return torch.utils._pytree.tree_map_only(torch.Tensor, lambda t: t.detach(), value)


@contextlib.contextmanager
def capture(
    module: torch.nn.Module, *, stop: bool = True, method: str = "forward", run: bool = True
) -> Iterator[CapturedCalls]:
    """Record the inputs of ``module.<method>`` while the block runs.

    With ``stop=True`` (as ``spaces.aoti_capture``) the run is interrupted right after the first call,
    so capturing costs no full pipeline run. With ``stop=False`` every call is recorded and the module
    runs normally, so dims that vary between calls can be made dynamic. With ``stop=False, run=False``
    every call is recorded and none runs (the method returns None): for a caller that makes the calls
    only to record them and ignores what they return (on a warm cache nothing else runs the eager module).

    Example:
        >>> with aoti.capture(pipe.transformer) as call:
        ...     pipe("a cat", num_inference_steps=1)
        >>> call.args, call.kwargs
    """
    recorded = CapturedCalls()
    had_instance_attr = method in module.__dict__
    previous = module.__dict__.get(method)
    original = getattr(module, method)

    def recorder(*args: Any, **kwargs: Any) -> Any:
        recorded.calls.append(CapturedCall(_detach(args), _detach(kwargs)))
        if stop:
            raise _StopAfterCapture
        return original(*args, **kwargs) if run else None

    setattr(module, method, recorder)
    try:
        yield recorded
    except _StopAfterCapture:
        log.debug("capture: stopped the run after the first call of %s", type(module).__name__)
    finally:
        if had_instance_attr:
            setattr(module, method, previous)
        else:
            delattr(module, method)
    if not recorded.calls:
        log.warning("capture: %s.%s was never called", type(module).__name__, method)

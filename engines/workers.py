"""What crosses between the main process and a GPU worker: plain, picklable data.

On ZeroGPU every call of a ``@spaces.GPU`` function runs in a process forked from the main one, and
only its arguments and return values cross back (pickled). Whatever the call changes in the worker's
memory (a swapped-in compiled forward, a status record) stays there. So the main process decides and
the worker reports:

- `Binding`: what a model's hot module should run for this call (an `aoti` artifact reference, or
  eager). The worker makes its own copy of the model match, once per worker (`LightweightEngine.bind`).
- `RunReport`: what really ran in the worker (runtime, bind time, peak memory, guard fallbacks), which
  the main process records for the panel and the API.
- `gpu_seconds_*` and `gpu_size`: what each GPU call asks the scheduler for, from the request and the
  model's measured speed.

Locally (no ZeroGPU) the same functions run in the main process, with no binding: the process's own
state is the truth there.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .select import GiB

MARGIN = 1.5  # asked-for GPU time over the estimate: a call that outlives its duration may be cut off
MIN_SECONDS, MAX_SECONDS = 10, 600
MAX_COMPILE_SECONDS = 1500
SETUP_S = 15.0  # a fresh worker before its first step (weights arrive, package loads and binds), until measured
DEFAULT_TOKEN_S = 0.1  # seconds per generated token, until measured
DEFAULT_STEP_S = 1.0  # seconds per denoising step at the largest size, until measured
DEFAULT_COMPILE_S = 300.0  # a first compile, until measured
# spaces 0.51's `xlarge_threshold` for the RTX Pro 6000 (42 GiB): a "large" call gets half the card.
LARGE_BUDGET_BYTES = 42 * GiB


@dataclass(frozen=True)
class Binding:
    """What ``model_id``'s hot module should run in the worker: the artifact `ref` (``aoti.Artifact.ref()``:
    its key and the transforms the module needs), or eager (``ref=None``)."""

    model_id: str
    ref: dict[str, Any] | None = None


@dataclass
class RunReport:
    """What one GPU call really ran, measured in the process that ran it."""

    model_id: str
    runtime: str  # "aoti" | "eager" | ...
    reason: str = ""
    worker_pid: int = field(default_factory=os.getpid)
    calls_in_worker: int = 1  # 1: this process served its first call
    bind_s: float = 0.0  # spent making the model match its binding in this call (0: already did)
    call_s: float = 0.0  # the whole call inside the worker (bind and run); the rest of a request's
    # latency is the main process's queue and spaces' work: the fork, attaching the GPU, moving weights
    peak_mem_mb: float | None = None
    device: str = ""
    compiled_calls: int = 0  # calls of this request the compiled graphs served,
    guard_fallbacks: int = 0  # and the calls the shape guard sent to eager (with the last one's reason)
    last_guard_reason: str | None = None
    layout_copies: int = 0  # (this request's)
    cuda_graphs: int = 0
    fallbacks: list[str] = field(default_factory=list)
    # An A/B comparison of this request: seconds per token (text) or per step (image), compiled and
    # eager, measured one after the other in this worker; None when not asked for (or nothing compiled).
    compared: dict[str, float] | None = None
    compare_note: str = ""  # why a comparison asked for did not run ("": it ran, or none was asked for)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_CALLS = {"pid": 0, "count": 0}


def count_call() -> int:
    """How many GPU calls this process has served, this one included (a fresh fork starts at 1)."""
    if _CALLS["pid"] != os.getpid():
        _CALLS.update(pid=os.getpid(), count=0)
    _CALLS["count"] += 1
    return _CALLS["count"]


def _clamp(seconds: float, upper: int = MAX_SECONDS) -> int:
    return int(min(upper, max(MIN_SECONDS, seconds)))


def gpu_seconds_text(max_new_tokens: int, token_s: float | None, setup_s: float | None) -> int:
    """GPU time to ask for a text request: setup plus ``max_new_tokens`` at the measured seconds per
    token (defaults until measured), with a margin."""
    return _clamp(MARGIN * ((setup_s or SETUP_S) + max_new_tokens * (token_s or DEFAULT_TOKEN_S)))


def gpu_seconds_image(steps: int, pixels: int, step_s: float | None, step_pixels: int | None, setup_s: float | None) -> int:
    """GPU time to ask for an image: setup plus ``steps`` at the measured step time, scaled by the
    image's pixels against the size it was measured at (defaults until measured), with a margin."""
    scale = pixels / step_pixels if step_s and step_pixels else 1.0
    return _clamp(MARGIN * ((setup_s or SETUP_S) + steps * (step_s or DEFAULT_STEP_S) * scale))


def gpu_seconds_compile(compile_s: list[float | None]) -> int:
    """GPU time to ask for compiling models: their last compile times (a default for each not yet
    measured), with a margin."""
    return _clamp(MARGIN * sum(s or DEFAULT_COMPILE_S for s in compile_s), MAX_COMPILE_SECONDS)


def gpu_size(need_bytes: int) -> str:
    """ZeroGPU's size for a model: "xlarge" (a whole card) when it needs more than half of one."""
    return "xlarge" if need_bytes > LARGE_BUDGET_BYTES else "large"


def prepare_torch_for_spaces() -> None:
    """Call before ``import spaces`` on ZeroGPU. While it patches torch, spaces binds
    ``torch.cuda._maybe_exchange_device`` and ``torch.cuda._exchange_device`` to one function; Dynamo
    builds its in-graph function handlers lazily, and then meets that function twice: a strict export in
    a worker (the text models' compile) fails with "Handler already registered". Built first, they are
    keyed by the real functions."""
    from torch._dynamo.variables.torch import TorchInGraphFunctionVariable

    TorchInGraphFunctionVariable._get_handlers()

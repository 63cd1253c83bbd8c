"""How much faster the compiled graphs are than the module's own eager method, measured on the
module's real inputs: the number the product exists to show, taken when the graphs are bound.

Eager and compiled calls alternate (the order flips every round, so that clock drift, caches and
frequency changes fall on both), warm-up rounds are run and left out, and the figure is the median of
the rounds' ratios with their interquartile range: a ratio whose range holds 1 is no measurable
difference.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .capture import CapturedCall
from .swap import eager, status_of

WARMUP_ROUNDS = 2


@dataclass(frozen=True)
class Speedup:
    """Seconds per call set, eager and compiled (medians), and their ratio's median and quartiles."""

    eager_s: float
    compiled_s: float
    ratio: float
    low: float  # the rounds' ratios: first quartile
    high: float  # and third
    rounds: int

    @property
    def verdict(self) -> str:
        """"faster", "slower", or "no measurable difference" (the quartiles hold 1)."""
        if self.low <= 1.0 <= self.high:
            return "no measurable difference"
        return "faster" if self.ratio > 1.0 else "slower"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def measure_speedup(module: torch.nn.Module, calls: list[CapturedCall], budget_s: float = 2.0, min_rounds: int = 5,
                    max_rounds: int = 50) -> Speedup | None:
    """Time ``calls`` on ``module``'s compiled graphs and on its eager method, alternating, for about
    ``budget_s`` seconds (at least ``min_rounds`` rounds after the warm-up, at most ``max_rounds``).
    None when no compiled graph is swapped in (nothing to compare) or no call is given. Hold the lock
    the module's callers hold: the calls run the module."""
    if not calls or status_of(module).runtime != "aoti":
        return None
    device = next((t.device for t in [*module.parameters(), *module.buffers()]), torch.device("cpu"))
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(compiled: bool) -> float:
        sync()
        start = time.perf_counter()
        with torch.no_grad():
            if compiled:
                for call in calls:
                    module(*call.args, **call.kwargs)
            else:
                with eager(module):
                    for call in calls:
                        module(*call.args, **call.kwargs)
        sync()
        return time.perf_counter() - start

    status = status_of(module)
    counters = (status.compiled_calls, status.guard_fallbacks, status.layout_copies, status.last_guard_reason)
    for _ in range(WARMUP_ROUNDS):  # first calls: allocations, plans, a CUDA graph's capture
        run(True), run(False)
    eager_times, compiled_times = [], []
    deadline = time.perf_counter() + budget_s
    while len(eager_times) < max_rounds and (len(eager_times) < min_rounds or time.perf_counter() < deadline):
        first_compiled = len(eager_times) % 2 == 0
        a = run(first_compiled)
        b = run(not first_compiled)
        compiled_s, eager_s = (a, b) if first_compiled else (b, a)
        eager_times.append(eager_s)
        compiled_times.append(compiled_s)
    guarded = status.guard_fallbacks - counters[1]  # a call the graphs were not built for ran eager: no comparison
    status.compiled_calls, status.guard_fallbacks, status.layout_copies, status.last_guard_reason = counters  # requests' counts only
    if guarded:
        return None
    ratios = sorted(e / c for e, c in zip(eager_times, compiled_times, strict=True))
    q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return Speedup(statistics.median(eager_times), statistics.median(compiled_times), statistics.median(ratios),
                   q1, q3, len(ratios))

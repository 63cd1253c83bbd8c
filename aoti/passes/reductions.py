"""One-pass (persistent) reductions over rows up to `PERSISTENT_LIMIT` values wide, in Inductor's GPU kernels.

Inductor reduces a row in one pass, the row in registers, only up to 1024 values
(`torch._inductor.choices.InductorChoices.should_use_persistent_reduction`); wider rows loop: the
statistics in one pass over the row, the output in another. A diffusion transformer's rows are 3072
(FLUX.1's LayerNorm and modulation before each FP8 product, with the row's absolute maximum) to
15360 values wide, and those looping kernels read each row twice. `one_pass_rows` lets
Inductor keep rows up to `PERSISTENT_LIMIT` values in registers for the kernels it generates inside
the block (its choices handler, `InductorChoices`'s documented extension point). (Other reductions
stay Inductor's: making FLUX.1's RMS norm over each head's 128 values, read through a permute,
one-pass too was no faster.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch._inductor.choices import InductorChoices
from torch._inductor.runtime.hints import ReductionHint
from torch._inductor.virtualized import V

PERSISTENT_LIMIT = 16384  # inner reductions: along a row in memory


class OnePassRows(InductorChoices):
    """Inductor's heuristics, with inner (row) reductions up to `PERSISTENT_LIMIT` values persistent."""

    @staticmethod
    def should_use_persistent_reduction(*args, **kwargs) -> bool:
        if InductorChoices.should_use_persistent_reduction(*args, **kwargs):
            return True
        features = args[0] if args else kwargs["features"]
        cooperative = args[1] if len(args) > 1 else kwargs.get("cooperative_reduction", False)
        return (torch._inductor.config.triton.persistent_reductions and not cooperative
                and features.get_reduction_hint() == ReductionHint.INNER
                and V.graph.sizevars.statically_known_leq(features.reduction_numel, PERSISTENT_LIMIT))

    @staticmethod
    def uuid() -> str:
        """Part of Inductor's own cache key for graphs built with these choices."""
        return f"aoti-studio-one-pass-rows-{PERSISTENT_LIMIT}"


def _cache_key_configs() -> dict:
    """The setting that puts `OnePassRows` in Inductor's graph cache key (torch versions that have it)."""
    return {"inductor_choices_class": OnePassRows} if hasattr(torch._inductor.config, "inductor_choices_class") else {}


@contextlib.contextmanager
def one_pass_rows(enabled: bool = True) -> Iterator[None]:
    """Inductor compiles with `OnePassRows` inside the block (when ``enabled``), and caches what it
    compiles under a key of its own."""
    if not enabled:
        yield
        return
    with torch._inductor.config.patch(_cache_key_configs()), V.set_choices_handler(OnePassRows()):
        yield

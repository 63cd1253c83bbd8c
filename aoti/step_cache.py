"""Step caching for a denoiser whose repeated blocks run one by one (a regional build, or eager):
First-Block Cache, as ParaAttention and cache-dit's DBCache F1B0 do it.

Each denoising step runs the first block; when the change of its residual (output minus input)
against the last fully computed step's is under a threshold, the other blocks are skipped and the
residual they added in that step is added instead. Skipped blocks are not called at all: with a
regional build, their compiled graphs are not launched.

    with aoti.step_cache(pipe.transformer, aoti.StepCacheConfig(threshold=0.1)) as stats:
        image = pipe("a cat").images[0]
    stats.cached_steps        # [4, 6, 7, ...]: the steps that reused the blocks' residual

Nothing stays on the module after the block: a request without it runs exactly as before.
Supported where the blocks fill lists that are children of the module and take ``hidden_states``
(and ``encoder_hidden_states``), returning the hidden states or diffusers' (encoder, hidden) pair:
FLUX, SD3, Wan, QwenImage and most diffusers transformers; `refusal` says why otherwise.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .regional import find_blocks
from .swap import CompiledMethod, step_graph_lifted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepCacheConfig:
    """``threshold``: the first block's relative residual change (mean |r - r_ref| / mean |r_ref|)
    under which a step reuses the other blocks' residual; ``warmup_steps``: the first steps always run
    in full; ``max_in_a_row``: at most this many cached steps in a row, then a full one; ``schedule``:
    a fixed plan instead of the threshold (step i cached where ``schedule[i]``; for measuring a cached
    step's cost where a threshold means nothing, as on random weights)."""

    threshold: float = 0.1
    warmup_steps: int = 1
    max_in_a_row: int = 3
    schedule: tuple[bool, ...] | None = None


@dataclass
class StepCacheStats:
    """What one run under `step_cache` did: per step, whether it reused the blocks' residual and the
    first block's residual change that decided it (None where there was nothing to compare with)."""

    cached: list[bool] = field(default_factory=list)
    changes: list[float | None] = field(default_factory=list)
    blocks_run: int = 0
    blocks_skipped: int = 0
    fallback: str | None = None  # why caching stopped part-way (the rest of the run was not cached)

    @property
    def steps(self) -> int:
        return len(self.cached)

    @property
    def cached_steps(self) -> list[int]:
        return [i for i, c in enumerate(self.cached) if c]


def block_lists(module: torch.nn.Module) -> list[str]:
    """The names of the module's children that hold its repeated blocks, in the order they are declared;
    a ValueError saying why where the blocks are not whole lists of the module's own children."""
    blocks = find_blocks(module)
    parents = list(dict.fromkeys(name.rpartition(".")[0] for name in blocks))
    for parent in parents:
        holder = module.get_submodule(parent) if parent else module
        if not parent or "." in parent or not isinstance(holder, torch.nn.ModuleList):
            raise ValueError(f"its repeated blocks ({blocks[0]}, ...) are not in lists that are children of {type(module).__name__}")
        if len(holder) != sum(1 for name in blocks if name.rpartition(".")[0] == parent):
            raise ValueError(f"{parent} holds other modules beside its repeated blocks")
    for name in blocks:
        if "hidden_states" not in _signature(type(module.get_submodule(name))).parameters:
            raise ValueError(f"its blocks ({type(module.get_submodule(name)).__name__}) take no `hidden_states`")
    return parents


def refusal(module: torch.nn.Module) -> str | None:
    """Why step caching can't run on ``module`` (None where it can)."""
    if isinstance(module.__dict__.get("forward"), CompiledMethod):
        return "it is compiled as one graph, so its blocks can't be skipped one by one: compile it regionally"
    try:
        block_lists(module)
    except ValueError as error:
        return str(error)
    return None


class _Run:
    """The state of one `step_cache` block: which step, which block of it, and the residuals kept."""

    def __init__(self, config: StepCacheConfig, stats: StepCacheStats) -> None:
        self.config, self.stats = config, stats
        self.step = -1
        self.position = 0  # of the block called next in this step
        self.reuse = False
        self.added = False  # this cached step's residual has been added (by the first block not run)
        self.in_a_row = 0
        self.reference: torch.Tensor | None = None  # the first block's residual at the last full step
        self.residuals: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the other blocks' (hidden, encoder)
        self.first: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the first block's outputs this step
        self.last: tuple[torch.Tensor, torch.Tensor | None] | None = None  # the latest block's outputs this step
        self.kinds: dict[type, str] = {}  # a block class's output: "hidden" alone or the (encoder, hidden) "pair"

    def begin_step(self) -> None:
        self.step += 1
        self.position, self.reuse, self.added, self.first, self.last = 0, False, False, None, None

    def end_step(self) -> None:
        if self.first is None:  # no block ran through the lists (compiled whole, or another code path)
            self.stop("the blocks were not called one by one in this step")
        elif not self.reuse:
            (hidden, encoder), (first_hidden, first_encoder) = self.last, self.first
            self.residuals = (hidden - first_hidden, None if encoder is None else encoder - first_encoder)
        self.stats.cached.append(self.reuse)
        self.in_a_row = self.in_a_row + 1 if self.reuse else 0

    def stop(self, why: str) -> None:
        if self.stats.fallback is None:
            self.stats.fallback = why
            log.info("step cache: off for the rest of this run: %s", why)

    def decide(self, residual: torch.Tensor) -> None:
        """Whether this step reuses the other blocks' residual, from the first block's ``residual``."""
        change = None
        if self.reference is not None and self.reference.shape == residual.shape:
            change = ((residual - self.reference).abs().mean() / self.reference.abs().mean().clamp_min(1e-12)).item()
        self.stats.changes.append(change)
        config = self.config
        if self.stats.fallback is not None or self.residuals is None or change is None:
            self.reuse = False
        elif config.schedule is not None:
            self.reuse = self.step < len(config.schedule) and config.schedule[self.step]
        else:
            self.reuse = self.step >= config.warmup_steps and self.in_a_row < config.max_in_a_row and change < config.threshold
        if not self.reuse:
            self.reference = residual


@functools.lru_cache(maxsize=64)
def _signature(block_type: type) -> inspect.Signature:
    return inspect.signature(block_type.forward)  # per class, once: a step calls every block


def _states(block: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    bound = _signature(type(block)).bind(block, *args, **kwargs).arguments
    return bound["hidden_states"], bound.get("encoder_hidden_states")


def _split(output: Any, hidden_in: torch.Tensor, encoder_in: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """A block's output as (hidden, encoder): the hidden states alone, or diffusers' (encoder, hidden)
    pair; None where it is neither (shapes checked against the inputs)."""
    if isinstance(output, torch.Tensor) and output.shape == hidden_in.shape:
        return output, None
    if (isinstance(output, tuple) and len(output) == 2 and encoder_in is not None
            and all(isinstance(t, torch.Tensor) for t in output)
            and output[1].shape == hidden_in.shape and output[0].shape == encoder_in.shape):
        return output[1], output[0]
    return None


class _Step:
    """Stands in for one block while the list is iterated: runs it or, in a cached step, is the one
    block not run that adds the others' residual (the blocks after it are not even iterated)."""

    def __init__(self, block: torch.nn.Module, run: _Run) -> None:
        self.block, self.run = block, run

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        run, stats = self.run, self.run.stats
        position = run.position
        run.position += 1
        hidden_in, encoder_in = _states(self.block, args, kwargs)
        if run.reuse:
            run.added = True
            stats.blocks_skipped += 1
            hidden = hidden_in + run.residuals[0]
            encoder = encoder_in if run.residuals[1] is None else encoder_in + run.residuals[1]
            return hidden if encoder_in is None or run.kinds.get(type(self.block)) == "hidden" else (encoder, hidden)
        output = self.block(*args, **kwargs)
        stats.blocks_run += 1
        states = _split(output, hidden_in, encoder_in)
        if states is None:
            run.stop(f"{type(self.block).__name__} returns neither its hidden states nor an (encoder, hidden) pair")
            return output
        run.kinds[type(self.block)] = "hidden" if states[1] is None else "pair"
        run.last = states
        if position == 0:
            run.first = states
            run.decide(states[0] - hidden_in)
        return output


class _CachedList(torch.nn.ModuleList):
    """The module's block list while a `step_cache` block runs: the same blocks (same names, same
    weights), iterated as `_Step` stand-ins."""

    def __init__(self, blocks: torch.nn.ModuleList, run: _Run) -> None:
        super().__init__(blocks)
        self._run = run

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        run = self._run
        blocks = list(super().__iter__())
        for i, block in enumerate(blocks):
            if run.reuse and run.added:  # a cached step: the rest are skipped without a call (no Python per block)
                run.stats.blocks_skipped += len(blocks) - i
                return
            yield _Step(block, run)


@contextlib.contextmanager
def step_cache(module: torch.nn.Module, config: StepCacheConfig | None = None) -> Iterator[StepCacheStats]:
    """Within the block, each call of ``module`` is a denoising step that may reuse the residual of its
    blocks after the first (see the module's doc); yields the run's `StepCacheStats`. A ValueError
    (`refusal`) where the module can't. Not thread-safe: hold the lock the module's callers hold."""
    why = refusal(module)
    if why is not None:
        raise ValueError(f"step caching is not offered for {type(module).__name__}: {why}")
    stats = StepCacheStats()
    run = _Run(config or StepCacheConfig(), stats)
    originals = {name: module.get_submodule(name) for name in block_lists(module)}
    handles = [module.register_forward_pre_hook(lambda m, a: run.begin_step()),
               module.register_forward_hook(lambda m, a, out: run.end_step())]
    for name, blocks in originals.items():
        setattr(module, name, _CachedList(blocks, run))
    try:
        with step_graph_lifted(module):  # a replay of the whole step could skip nothing
            yield stats
    finally:
        for name, blocks in originals.items():
            setattr(module, name, blocks)
        for handle in handles:
            handle.remove()
        if stats.steps:
            log.info("step cache: %d of %d steps cached, %d blocks skipped", len(stats.cached_steps), stats.steps, stats.blocks_skipped)

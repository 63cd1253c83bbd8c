"""Regional compilation: one package per (block class, parameter-shape signature), reused by every
block with that signature, each bound to its own weights."""

from __future__ import annotations

import contextlib
import logging
import time

import torch

from .cache import Cache
from .capture import CapturedCall, capture
from .compile import Artifact, RegionalArtifact, compile, eager
from .options import CompileOptions
from .status import Status

log = logging.getLogger(__name__)


def find_blocks(module: torch.nn.Module) -> list[str]:
    """Qualified names of the module's repeated blocks.

    Order of preference: diffusers' ``_repeated_blocks`` class names; the largest ``ModuleList`` whose
    children share one class; transformers' ``_no_split_modules`` class names.
    """
    declared = getattr(module, "_repeated_blocks", None)
    if declared:
        names = [n for n, m in module.named_modules() if n and type(m).__name__ in set(declared)]
        if names:
            return names
    best: list[str] = []
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.ModuleList) and len(sub) > len(best):
            classes = {type(child) for child in sub}
            if len(classes) == 1:
                best = [f"{name}.{i}" if name else str(i) for i in range(len(sub))]
    if len(best) >= 2:
        return best
    no_split = getattr(module, "_no_split_modules", None)
    if no_split:
        names = [n for n, m in module.named_modules() if n and type(m).__name__ in set(no_split)]
        if names:
            return names
    raise ValueError(
        f"{type(module).__name__} has no repeated blocks (no `_repeated_blocks`, no ModuleList of one "
        "class, no `_no_split_modules`); compile it whole (regional=False)."
    )


def block_signature(block: torch.nn.Module) -> tuple[object, ...]:
    """Blocks with the same signature can share one compiled package."""
    shapes = tuple((n, tuple(p.shape), str(p.dtype)) for n, p in block.named_parameters())
    return (type(block).__qualname__, shapes)


def group_blocks(module: torch.nn.Module) -> list[list[str]]:
    groups: dict[tuple[object, ...], list[str]] = {}
    for name in find_blocks(module):
        groups.setdefault(block_signature(module.get_submodule(name)), []).append(name)
    return list(groups.values())


def compile_regional(
    module: torch.nn.Module, calls: list[CapturedCall], options: CompileOptions, *, cache: Cache,
    exclusive: contextlib.AbstractContextManager | None = None, hub: object | None = None,
) -> RegionalArtifact:
    """Capture each distinct block's inputs by re-running the module on the captured calls, then
    compile one package per block signature."""
    start = time.perf_counter()
    groups = group_blocks(module)
    representatives = [module.get_submodule(names[0]) for names in groups]
    with exclusive or contextlib.nullcontext(), contextlib.ExitStack() as stack:
        recorders = [stack.enter_context(capture(block, stop=False)) for block in representatives]
        with eager(module), torch.no_grad():
            for call in calls:
                module(*call.args, **call.kwargs)
    parts: list[tuple[list[str], Artifact]] = []
    status = Status(runtime="eager", reason="regional, not applied yet", cache_hit=None)
    for names, block, recorded in zip(groups, representatives, recorders):
        if not recorded.calls:
            log.warning("regional: block %s was never called; it stays eager", names[0])
            continue
        artifact = compile(block, recorded, options, cache=cache, exclusive=exclusive, hub=hub)
        assert isinstance(artifact, Artifact)
        parts.append((names, artifact))
        status.merge(artifact.status)
    status.key = "+".join(a.key[:8] for _, a in parts)
    status.quantization = options.quantization
    log.info("regional: %d packages for %d blocks in %.1f s", len(parts), sum(len(g) for g in groups), time.perf_counter() - start)
    return RegionalArtifact(parts, status)

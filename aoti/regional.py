"""Which blocks a regional compile builds: the repeated blocks of a module, grouped by (block class,
parameter-shape signature); one package per group, reused by every block in it with its own weights
(`aoti.compile` with ``regional=True``)."""

from __future__ import annotations

import torch


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

"""What aoti has done to one module, kept in one place on it: a `ModuleRecord` under one attribute
(as diffusers keeps one hook registry per module), never loose attributes set from several files."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

ATTR = "_aoti"


@dataclass
class ModuleRecord:
    """``transforms``: on the module transformed, what `aoti.transform` did and how to undo it (a
    `transforms.base.Record`); ``configs``: on it and every submodule, the transform configs applied, in
    order (a regional build keys each block by them); ``regional``: on a module whose blocks run compiled
    graphs, their shared live `Status`; ``lora``: its LoRA state (`lora.LoraState`: host copies of the weights adapters touched, the one fused now)."""

    transforms: Any = None
    configs: tuple = ()
    regional: Any = None
    lora: Any = None

    def empty(self) -> bool:
        return self.transforms is None and not self.configs and self.regional is None and self.lora is None


def record_of(module: torch.nn.Module) -> ModuleRecord:
    """``module``'s record (a fresh, empty one if aoti has done nothing to it; not attached)."""
    return module.__dict__.get(ATTR) or ModuleRecord()


def update(module: torch.nn.Module, **changes: Any) -> ModuleRecord:
    """Change ``module``'s record; an empty record is removed (the module as aoti found it)."""
    record = module.__dict__.setdefault(ATTR, ModuleRecord())
    for name, value in changes.items():
        setattr(record, name, value)
    if record.empty():
        del module.__dict__[ATTR]
    return record

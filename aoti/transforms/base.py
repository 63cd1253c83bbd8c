"""The `transform` verb: rewrites of a module before export, each a config dataclass with a registered
handler (torchao's ``quantize_(model, config)`` pattern), recorded on the module and undone in reverse.

A handler changes the module in place and returns how to undo it, or raises `NotApplied` with the
reason it can't run here (no FP8 tensor cores, no Triton, nothing to rewrite): that becomes a fallback
line, never a silent skip. The configs that did apply are recorded on the module and on every
submodule (a regional compile builds blocks one by one, and each block's cache key names them).

    fallbacks = transform(model, [FuseProjections(), Float8Rowwise()])
    transforms_of(model)    # (FuseProjections(), Float8Rowwise())
    undo_transforms(model)  # the module as it was, weights included
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..module_record import record_of as module_record
from ..module_record import update

log = logging.getLogger(__name__)



class NotApplied(Exception):
    """Raised by a handler that can't rewrite this module on this device; the message says why."""


@dataclass(frozen=True)
class TransformConfig:
    """Base of every transform config: plain, frozen data, serialized beside a compiled package and
    hashed into its cache key. Subclasses are registered with `register_transform`."""

    version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "version": self.version, **dataclasses.asdict(self)}


@dataclass(frozen=True)
class Applied:
    """What a handler did: how to undo it, a note for the log and the status ("12 linear layers in
    e4m3"), and what it left as it was ("": nothing; else a fallback line's reason, e.g. layers whose
    sizes the kernel can't take)."""

    undo: Callable[[], None]
    note: str
    partial: str = ""


# handler(module, config) -> Applied, or raises NotApplied with the reason.
Handler = Callable[[torch.nn.Module, Any], Applied]
_HANDLERS: dict[type[TransformConfig], Handler] = {}
_CONFIGS: dict[str, type[TransformConfig]] = {}


def register_transform(config_type: type[TransformConfig]) -> Callable[[Handler], Handler]:
    """Register ``handler(module, config) -> Applied`` for ``config_type``."""

    def register(handler: Handler) -> Handler:
        _HANDLERS[config_type] = handler
        _CONFIGS[config_type.__name__] = config_type
        return handler

    return register


def config_from_dict(data: dict[str, Any]) -> TransformConfig:
    """The config `TransformConfig.to_dict` wrote (from a manifest or an artifact reference)."""
    data = dict(data)
    name, version = data.pop("name"), data.pop("version", 1)
    config_type = _CONFIGS.get(name)
    if config_type is None:
        raise ValueError(f"unknown transform {name!r}; known: {sorted(_CONFIGS)}")
    if version != config_type.version:
        raise ValueError(f"transform {name} version {version} is not this library's ({config_type.version}); recompile.")
    return config_type(**data)


@dataclass
class Record:
    """What `transform` did to one module: the configs applied, how to undo each, and what it skipped."""

    applied: list[tuple[TransformConfig, Callable[[], None], str]] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)

    @property
    def configs(self) -> tuple[TransformConfig, ...]:
        return tuple(config for config, _, _ in self.applied)

    @property
    def notes(self) -> list[str]:
        return [f"{type(config).__name__}: {note}" for config, _, note in self.applied]


def record_of(module: torch.nn.Module) -> Record:
    """The record of what `transform` did to ``module`` (empty if nothing)."""
    return module_record(module).transforms or Record()


def transforms_of(module: torch.nn.Module) -> tuple[TransformConfig, ...]:
    """The transforms applied to ``module`` or to a module that contains it, in order."""
    return module_record(module).configs


def transform(module: torch.nn.Module, configs: Iterable[TransformConfig]) -> list[str]:
    """Rewrite ``module`` in place with each config's handler, in order, and record it; a config
    already applied is skipped. Returns a fallback line for each config that could not apply here
    (also kept in `record_of(module).fallbacks`). Hold the module's lock: it is changed in place.

    Example::

        aoti.transform(model, [aoti.FuseProjections(), aoti.Float8Rowwise()])
        artifact = aoti.compile(model, calls)   # compiles the rewritten module; its key names the configs
        aoti.restore(model)                     # eager and untransformed again
    """
    record = module_record(module).transforms or update(module, transforms=Record()).transforms
    new: list[str] = []
    for config in configs:
        if not isinstance(config, TransformConfig) or type(config) not in _HANDLERS:
            raise TypeError(f"{config!r} is not a registered transform config")
        if config in record.configs:
            continue
        name = type(config).__name__
        if any(type(c) is type(config) for c in record.configs):
            raise ValueError(f"{name} is already applied with other settings; `aoti.restore` the module first.")
        try:
            applied = _HANDLERS[type(config)](module, config)
        except NotApplied as exc:
            new.append(f"{name} -> skipped: {exc}")
            log.warning("aoti: %s", new[-1])
            continue
        if applied.partial:
            new.append(f"{name} -> partly: {applied.partial}")
            log.warning("aoti: %s", new[-1])
        record.applied.append((config, applied.undo, applied.note))
        log.info("aoti: %s applied to %s (%s)", name, type(module).__name__, applied.note)
    record.fallbacks.extend(new)
    _mark(module, record.configs)
    return new


def undo_transforms(module: torch.nn.Module) -> int:
    """Undo every transform recorded on ``module``, last first; returns how many were undone."""
    record = module_record(module).transforms
    if record is None:
        return 0
    update(module, transforms=None)
    for config, undo, _ in reversed(record.applied):
        undo()
        log.info("aoti: %s undone on %s", type(config).__name__, type(module).__name__)
    _mark(module, ())
    return len(record.applied)


def _mark(module: torch.nn.Module, configs: tuple[TransformConfig, ...]) -> None:
    for sub in module.modules():
        update(sub, configs=configs)


def module_device(module: torch.nn.Module) -> torch.device:
    """The device of the module's first parameter or buffer (the CPU for one without tensors)."""
    for tensor in [*module.parameters(), *module.buffers()]:
        return tensor.device
    return torch.device("cpu")

"""The environment an artifact is valid for: library versions and the target device's identity."""

from __future__ import annotations

import functools
import importlib.metadata
import platform
from typing import Any

import torch

_LIBRARIES = ("transformers", "diffusers", "torchao")


@functools.cache
def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


@functools.cache
def _cpu_isa() -> str:
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa()) or "scalar"


def fingerprint(device: torch.device) -> dict[str, Any]:
    """Key fields that make a package foreign when they differ: versions, CUDA and GPU capability or
    CPU ISA. (The GPU's name is informational; packages run on any GPU of the same capability.)"""
    fields: dict[str, Any] = {**_versions(), "machine": platform.machine(), "device": device.type}
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        fields.update(cuda=torch.version.cuda, capability=f"{major}.{minor}")
    else:
        fields["cpu_isa"] = _cpu_isa()
    return fields

"""Hardware discovery: CPU, a CUDA GPU or a MIG slice; memory budget and capability."""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass

import psutil

ENV_MEMORY_CAP_GB = "AOTI_MEMORY_CAP_GB"


def on_zerogpu() -> bool:
    """A ZeroGPU Space: the main process has no GPU (spaces stands in for it and moves the weights into
    each GPU worker itself)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


_MIG_NAME = re.compile(r"MIG\s+(?P<gi>\d+)g\.(?P<mem>\d+)gb", re.IGNORECASE)
_SMI_GPU = re.compile(r"^GPU (?P<index>\d+): (?P<name>.+?) \(UUID: (?P<uuid>[^)]+)\)")
_SMI_MIG = re.compile(r"^\s+MIG (?P<profile>\S+)\s+Device\s+(?P<index>\d+): \(UUID: (?P<uuid>[^)]+)\)")


@dataclass(frozen=True)
class DeviceInfo:
    """One device the engines can use. ``budget_bytes`` is what a model may take (after the cap)."""

    kind: str  # "cpu" | "cuda" | "mig"
    name: str
    total_bytes: int
    free_bytes: int
    budget_bytes: int
    capability: tuple[int, int] | None = None
    count: int = 1  # GPUs of this kind on the host (the distributed engine can use them together)
    mig_profile: str | None = None

    @property
    def torch_device(self) -> str:
        return "cpu" if self.kind == "cpu" else "cuda"

    @property
    def fp8(self) -> bool:
        return self.capability is not None and self.capability >= (8, 9)

    @property
    def arch(self) -> str | None:
        """The GPU generation packages are built for ("sm_90": H100/H200; "sm_120": ZeroGPU's RTX Pro
        6000 Blackwell); None on the CPU. Artifacts carry it in their cache key."""
        return f"sm_{self.capability[0]}{self.capability[1]}" if self.capability else None

    @property
    def label(self) -> str:
        gb = self.budget_bytes / 1024**3
        return f"{self.name}, {self.arch} ({gb:.0f} GiB budget)" if self.kind != "cpu" else f"CPU ({gb:.0f} GiB RAM budget)"


def parse_mig_profile(name: str) -> tuple[int, int] | None:
    """(compute slices, memory GB) from a name such as 'NVIDIA H200 MIG 3g.71gb'; None if not MIG."""
    match = _MIG_NAME.search(name)
    return (int(match["gi"]), int(match["mem"])) if match else None


def parse_nvidia_smi_list(output: str) -> list[dict[str, str]]:
    """Parse ``nvidia-smi -L``: one dict per GPU or MIG device (name, uuid, parent, mig profile)."""
    devices: list[dict[str, str]] = []
    parent: dict[str, str] | None = None
    for line in output.splitlines():
        if m := _SMI_GPU.match(line):
            parent = {"index": m["index"], "name": m["name"], "uuid": m["uuid"], "mig": ""}
            devices.append(parent)
        elif (m := _SMI_MIG.match(line)) and parent is not None:
            parent["has_mig"] = "1"
            devices.append({"index": f"{parent['index']}:{m['index']}", "name": f"{parent['name']} MIG {m['profile']}",
                            "uuid": m["uuid"], "mig": m["profile"], "parent": parent["uuid"]})
    return [d for d in devices if not d.get("has_mig")]


def _memory_cap() -> int | None:
    value = os.environ.get(ENV_MEMORY_CAP_GB)
    if not value:
        return None
    try:
        return int(float(value) * 1024**3)
    except ValueError as exc:
        raise ValueError(f"{ENV_MEMORY_CAP_GB} must be a number of GiB, got {value!r}") from exc


def discover(apply_cap: bool = True) -> DeviceInfo:
    """The device this process will run on. With ``AOTI_MEMORY_CAP_GB`` set, the budget is capped
    (and on CUDA enforced with ``torch.cuda.set_per_process_memory_fraction``) to emulate a slice."""
    import torch

    cap = _memory_cap()
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        name = torch.cuda.get_device_name()
        budget = min(total, cap) if cap else total
        if cap and apply_cap:
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
        mig = parse_mig_profile(name)
        return DeviceInfo("mig" if mig else "cuda", name, total, free, budget, torch.cuda.get_device_capability(),
                          torch.cuda.device_count(), f"{mig[0]}g.{mig[1]}gb" if mig else None)
    vm = psutil.virtual_memory()
    budget = min(vm.total, cap) if cap else vm.total
    return DeviceInfo("cpu", "CPU", vm.total, vm.available, budget)


def nvidia_smi_list() -> str:
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""

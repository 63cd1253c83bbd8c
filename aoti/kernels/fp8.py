"""The e4m3 arithmetic the FP8 kernels and layers share, and which devices have FP8 tensor cores."""

from __future__ import annotations

import torch

FP8_MIN_CAPABILITY = (8, 9)
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
SCALE_FLOOR = 1e-12  # an all-zero row gets this scale, not 0 (no division by zero)


def fp8_scaled(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in e4m3 with float32 scales ``amax / 448`` (``amax`` broadcasts against ``x``):
    ``x ≈ values * scale``."""
    scale = amax.float().clamp(min=SCALE_FLOOR) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def fp8_capable(device: torch.device) -> bool:
    """Whether ``device`` has FP8 tensor cores (CUDA compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def fp8_unsupported(device: torch.device) -> str | None:
    """Why ``device`` has no FP8 tensor cores ("needs ..."), or None where it has them."""
    if device.type != "cuda":
        return f"needs a CUDA GPU; this device is the {device.type.upper()}"
    if not fp8_capable(device):
        major, minor = torch.cuda.get_device_capability(device)
        return f"needs compute capability >= 8.9; this GPU has {major}.{minor}"
    return None

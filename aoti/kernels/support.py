"""Whether the kernels can run here: Triton installed, a CUDA device (or Triton's CPU interpreter)."""

from __future__ import annotations

import os

import torch

try:
    import triton
except ImportError:  # CPU-only installs: the ops are absent and callers keep their plain path
    triton = None

# Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, read at import).
INTERPRETING = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def available() -> bool:
    """Whether Triton is installed, so the kernels (and their ops) exist."""
    return triton is not None


def runs_on(device: torch.device) -> bool:
    """Whether the kernels run on ``device``: a CUDA device, or any device under the interpreter."""
    return device.type == "cuda" or INTERPRETING

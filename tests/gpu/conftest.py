"""GPU correctness tests: compiled against eager on a real GPU, our kernels against PyTorch's. Every
test here carries the ``cuda`` marker and is skipped, with the reason, where there is no CUDA device
(CI); on the GPU machine: ``python -m pytest tests/gpu -m cuda -p no:xdist``."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine: pytest tests/gpu -m cuda)")
    for item in items:
        if item.path.parent.name == "gpu":
            item.add_marker(pytest.mark.cuda)
            if not torch.cuda.is_available():
                item.add_marker(skip)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.float(), b.float()
    return float((a - b).norm() / b.norm().clamp(min=1e-12))

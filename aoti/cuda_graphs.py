"""Replay a static compiled graph as one CUDA graph: one launch per call instead of hundreds."""

from __future__ import annotations

import logging
from typing import Any

import torch

from .status import Status

log = logging.getLogger(__name__)


def is_static(guard: dict[str, Any]) -> bool:
    """Whether a graph's guard (JSON form) fixes every tensor dimension."""
    return all(isinstance(d, int) for leaf in guard["leaves"] if leaf[0] == "tensor" for d in leaf[3])


class CUDAGraphRunner:
    """Stands in for an AOTI runner (``run(list_of_tensors)``) and replays its launches as a CUDA graph.

    A decode step is hundreds of small kernels; launching them one by one from the CPU can take longer
    than running them. The first call runs the graph once on a side stream (warm-up) and captures it
    on that same stream (cuBLAS/cuDNN allocate their per-stream workspace in the warm-up, an illegal
    call inside a capture); later calls copy the inputs into the captured buffers and replay. Outputs
    are cloned, so a caller may keep them. The warm-up runs the graph one extra time with the first
    call's inputs: use it only where that is harmless (a KV-cache write at the same position is).
    The runner must come from ``load_package(..., run_single_threaded=True)``: the default model
    container records and waits on events, which a capture rejects. A capture that fails keeps the
    plain launches, and says so in ``status``.
    """

    def __init__(self, runner: Any, status: Status) -> None:
        self.runner = runner
        self.status = status
        self.graph: torch.cuda.CUDAGraph | None = None
        self.failed: str | None = None

    def _capture(self, inputs: list[torch.Tensor]) -> None:
        self.static_inputs = [t.clone() for t in inputs]
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.runner.run(self.static_inputs)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            self.static_outputs = self.runner.run(self.static_inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = graph

    def run(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.failed is None and self.graph is None:
            try:
                self._capture(inputs)
            except Exception as exc:  # e.g. a kernel that synchronizes: keep the plain launches
                self.failed = f"CUDA graph capture failed: {type(exc).__name__}: {exc}"[:300]
                log.warning("aoti: %s", self.failed)
                self.status.cuda_graphs -= 1
                self.status.fallbacks.append(f"cuda graphs -> off: {self.failed}")
        if self.graph is None:
            return self.runner.run(inputs)
        for static, new in zip(self.static_inputs, inputs):
            static.copy_(new)
        self.graph.replay()
        return [t.clone() for t in self.static_outputs]

"""Replay compiled work as CUDA graphs: one launch per call instead of hundreds. `CUDAGraphRunner`
replays one static package; `StepGraph` a regional module's whole step."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch.utils import _pytree as pytree

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


class StepGraph:
    """Installed as a regionally compiled module's ``forward`` on a GPU: the whole step (every block's
    compiled graph and the eager work between them: embeddings, norms, rotary tables, the output
    projection) replayed as one CUDA graph per input signature (shapes, dtypes, the other arguments).

    A regional build launches each block's graph on its own, and between them the module's Python
    runs; the host's launch gaps add up over dozens of blocks. The first call of a signature runs the
    step once on a side stream (warm-up), then captures it; later calls copy the tensors they pass
    into the captured ones, replay, and return clones of the outputs. The blocks' runners must come
    from ``load_package(..., run_single_threaded=True)`` (see `CUDAGraphRunner`). The step must be a
    function of its arguments (a denoiser's is): what it does to anything else is done once, at capture.

    Not used, and said once in ``status``, where it can't hold: with autograd on, a step whose other
    arguments are not plain values, a capture that fails (the plain launches go on). `aoti.step_cache`
    and `aoti.eager` lift it for their block: a cached step skips blocks, which a replay can't.
    """

    MAX_SIGNATURES = 8  # each captured step keeps its own activations' memory

    def __init__(self, step: Any, status: Status) -> None:
        self.eager = step  # the module's step as the blocks' compiled graphs run it, launch by launch
        self.status = status
        self.captured: dict[Any, tuple[torch.cuda.CUDAGraph, list[Any], Any, list[torch.Tensor], int]] = {}
        self.said: set[str] = set()
        self.broken = False  # a capture failed: every later step runs launch by launch

    def _say(self, why: str) -> None:
        if why not in self.said:
            self.said.add(why)
            log.warning("aoti: step graph not used: %s", why)
            self.status.fallbacks.append(f"cuda graph of the step -> off: {why}")

    def _capture(self, leaves: list[Any], spec: Any) -> tuple[torch.cuda.CUDAGraph, list[Any], Any, list[torch.Tensor], int]:
        static = [t.clone() if isinstance(t, torch.Tensor) else t for t in leaves]
        args, kwargs = pytree.tree_unflatten(static, spec)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.eager(*args, **kwargs)  # warm-up: workspaces, lazy tables, first-call allocations
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        before = self.status.compiled_calls
        # thread-local: another model's request on another thread (its own stream) may go on meanwhile
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            outputs = self.eager(*args, **kwargs)
        torch.cuda.current_stream().wait_stream(stream)
        out_leaves, out_spec = pytree.tree_flatten(outputs)
        if not all(isinstance(t, torch.Tensor) for t in out_leaves):
            raise TypeError("the step returns values other than tensors")
        return graph, static, out_spec, out_leaves, self.status.compiled_calls - before

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if torch.is_grad_enabled():
            self._say("autograd is on (a step is captured for inference only)")
            return self.eager(*args, **kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        try:
            key = (spec, tuple((tuple(t.shape), t.dtype, t.device) if isinstance(t, torch.Tensor) else t for t in leaves))
            hash(key)
        except TypeError:
            self._say("the step takes arguments other than tensors and plain values")
            return self.eager(*args, **kwargs)
        entry = self.captured.get(key)
        if entry is None:
            if self.broken:
                return self.eager(*args, **kwargs)
            if len(self.captured) >= self.MAX_SIGNATURES:
                self._say(f"more than {self.MAX_SIGNATURES} input signatures (the later ones run launch by launch)")
                return self.eager(*args, **kwargs)
            try:
                entry = self.captured[key] = self._capture(leaves, spec)
                self.status.cuda_graphs += 1
            except Exception as exc:  # e.g. a kernel that synchronizes: the plain launches go on
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.broken = True
                self._say(f"capture failed: {type(exc).__name__}: {exc}"[:300])
                return self.eager(*args, **kwargs)
        graph, static, out_spec, outputs, calls = entry
        for old, new in zip(static, leaves):
            if isinstance(new, torch.Tensor) and new.data_ptr() != old.data_ptr():
                old.copy_(new)
        graph.replay()
        self.status.compiled_calls += calls  # the blocks' graphs ran: counted as if launched one by one
        return pytree.tree_unflatten([t.clone() for t in outputs], out_spec)

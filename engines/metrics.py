"""Per-request measurements in a bounded ring buffer, with a snapshot for the UI and JSON for the API."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil


@dataclass
class RequestRecord:
    """One finished request."""

    model: str
    task: str
    runtime: str
    latency_s: float
    ttft_s: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    steps: int | None = None
    step_ms: float | None = None
    stages_s: dict[str, float] | None = None  # an image's seconds per stage (text encoding, denoising, VAE decode)
    step_cache: str = ""  # an image's step caching level where on ("fast", "faster"),
    cached_steps: int | None = None  # the steps of it that reused the blocks' residual,
    step_cache_note: str = ""  # and why caching stopped part-way, where it did
    lora: str = ""  # an image's LoRA adapter ("": none), its scale,
    lora_scale: float | None = None
    lora_switch_s: float | None = None  # and the seconds its switch took (0: fused already)
    peak_mem_mb: float | None = None
    worker_pid: int | None = None  # the process that ran it (a ZeroGPU worker, or this one)
    bind_s: float | None = None  # seconds that process spent binding compiled graphs first (a fresh worker)
    setup_s: float | None = None  # latency spent outside the model's process: queue, fork, GPU attach, weights moved
    compared: dict[str, float] | None = None  # this request's A/B run: seconds per token or step, "aoti" and "eager"
    compare_note: str = ""  # why an A/B run asked for did not run
    compiled_calls: int | None = None  # calls the compiled graphs served (None: not reported),
    guard_fallbacks: int | None = None  # and calls the shape guard sent to eager, with the last reason
    last_guard_reason: str | None = None
    acceptance: float | None = None  # speculative decoding: the share of drafted tokens the model kept (None: not used)
    warmup: bool = False  # its process bound the compiled graphs first (a fresh ZeroGPU worker): reported apart
    ok: bool = True
    error: str | None = None
    t: float = field(default_factory=time.time)
    number: int = 0  # its place among all requests this server recorded (1, 2, ...), set by `Metrics.record`


def memory_mb(device: str = "cpu") -> tuple[float, float | None]:
    """(current, peak) memory in MiB: CUDA allocator figures, or this process's RSS on the CPU."""
    if device != "cpu":
        import torch

        return torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20
    return psutil.Process(os.getpid()).memory_info().rss / 2**20, None


def peak_mb(device: str = "cpu") -> float:
    """The peak since `reset_peak_memory` on CUDA, this process's RSS on the CPU (MiB, one decimal)."""
    current, peak = memory_mb(device)
    return round(peak if peak is not None else current, 1)


def reset_peak_memory(device: str = "cpu") -> None:
    """Start a new peak for `memory_mb` (CUDA only: RSS has no peak)."""
    if device != "cpu":
        import torch

        torch.cuda.reset_peak_memory_stats()


class Metrics:
    """Thread-safe bounded history of requests and memory samples."""

    def __init__(self, capacity: int = 256) -> None:
        self.requests: deque[RequestRecord] = deque(maxlen=capacity)
        self.memory: deque[tuple[float, float]] = deque(maxlen=capacity)
        self.switches: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self._recorded = 0

    def record_switch(self, task: str, previous: str | None, model: str, by: str) -> None:
        """A model now serves ``task`` in place of ``previous``, at the request of ``by``."""
        with self._lock:
            self.switches.append({"t": time.time(), "task": task, "from": previous, "to": model, "by": by})

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._recorded += 1
            record.number = self._recorded
            self.requests.append(record)

    def sample_memory(self, device: str = "cpu") -> float:
        current, _ = memory_mb(device)
        self.add_memory_sample(current)
        return current

    def add_memory_sample(self, mb: float) -> None:
        """A sample measured elsewhere (a GPU worker's peak)."""
        with self._lock:
            self.memory.append((time.time(), mb))

    def snapshot(self) -> dict[str, Any]:
        """Plain data: the request history, memory samples and summary figures."""
        with self._lock:
            requests = [asdict(r) for r in self.requests]
            memory = list(self.memory)
            switches = list(self.switches)
        ok = [r for r in requests if r["ok"] and not r["warmup"]]  # the figures of warm calls; warm-ups counted apart
        tps = [r["tokens_per_s"] for r in ok if r["tokens_per_s"]]
        steps = [r["step_ms"] for r in ok if r["step_ms"]]
        ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
        kept = [r["acceptance"] for r in ok if r["acceptance"] is not None]
        return {
            "requests": requests,
            "memory": [{"t": t, "mb": mb} for t, mb in memory],
            "switches": switches,
            "summary": {
                "count": len(requests),
                "errors": sum(not r["ok"] for r in requests),
                "warmups": sum(r["ok"] and r["warmup"] for r in requests),
                "median_latency_s": median([r["latency_s"] for r in ok]),
                "median_ttft_s": median(ttft),
                "median_tokens_per_s": median(tps),
                "median_step_ms": median(steps),
                "median_acceptance": median(kept),
            },
        }


def median(values: list[float]) -> float | None:
    """The middle value (the upper one of an even count); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]

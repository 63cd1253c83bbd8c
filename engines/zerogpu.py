"""Both halves of a GPU call, as ZeroGPU runs them (see `workers` for the data that crosses).

::

    main process (no GPU)                          GPU worker (forked per call, or reused while idle)
      Ledger.binding(model) -> Binding  ──────────►  GpuCall.begin: bind the model as the binding says
                                                     run the request
      Ledger.record_text / record_image  ◄────────  GpuCall.report() -> RunReport (plain data)
      Ledger.mark_compiling / record_compiles ◄───  a compile call's states (`ModelState.as_row`)

Locally (no ZeroGPU) both halves are one process, there is no binding, and the process's own state
(`States`, read live) is the truth; the ledger still records each request's metrics.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aoti

from . import registry
from .device import discover
from .image import ImageParams, ImageResult
from .lightweight import LightweightEngine
from .metrics import Metrics, RequestRecord, median, peak_mb, reset_peak_memory
from .recipes import Switches, default_switches
from .select import estimate_bytes
from .state import ModelState, Phase
from .text import SamplingParams, TextStep
from .workers import Binding, RunReport, count_call, gpu_seconds_compile, gpu_seconds_image, gpu_seconds_text, gpu_size

log = logging.getLogger(__name__)


class Ledger:
    """The main process's side: what each GPU call should bind and ask for, and what came back."""

    def __init__(self, engine: LightweightEngine, metrics: Metrics, gpu_in_workers: bool,
                 runtime_of: Callable[[str], str]) -> None:
        self.engine, self.states, self.metrics = engine, engine.states, metrics
        self.gpu_in_workers = gpu_in_workers
        self.runtime_of = runtime_of  # the runtime a request gets in this process (local serving)
        self._setup_s: dict[str, float] = {}  # per model: the longest bind a fresh worker has reported

    # --- before a call -----------------------------------------------------------------------------

    def binding(self, model_id: str) -> Binding | None:
        """What a GPU worker should run for ``model_id``: the recorded compiled artifact (also while a
        new one compiles), or eager. None when requests run in this process, whose state is the truth."""
        if not self.gpu_in_workers:
            return None
        state = self.states[model_id]
        if state.ref is not None and state.phase in (Phase.AOTI, Phase.COMPILING):
            return Binding(model_id, state.ref)
        return Binding(model_id)

    def expected_runtime(self, model_id: str) -> str:
        """The runtime a request for ``model_id`` should get (for a request that failed before reporting)."""
        binding = self.binding(model_id)
        if binding is None:
            return self.runtime_of(model_id)
        return "aoti" if binding.ref else "eager"

    def gpu_size(self, model_id: str) -> str:
        """ZeroGPU's size for calls that run ``model_id``."""
        return gpu_size(estimate_bytes(registry.get(model_id), self.engine.device))

    def gpu_seconds_text(self, model_id: str, params: SamplingParams) -> int:
        speed = self.states[model_id].speed
        return gpu_seconds_text(params.max_new_tokens, speed.aoti_latency_s or speed.eager_latency_s, self._setup_s.get(model_id))

    def gpu_seconds_image(self, model_id: str, params: ImageParams) -> int:
        speed = self.states[model_id].speed
        largest = max((h * w for h, w in registry.get(model_id).sizes), default=None)
        return gpu_seconds_image(params.steps, params.height * params.width, speed.aoti_latency_s or speed.eager_latency_s,
                                 largest, self._setup_s.get(model_id))

    def gpu_seconds_compile(self, model_ids: list[str]) -> int:
        return gpu_seconds_compile([self.states[m].build.compile_s for m in model_ids])

    # --- compiles in a worker ----------------------------------------------------------------------

    def mark_compiling(self, model_ids: list[str], switches: Switches | None) -> None:
        """Show a compile that runs in a GPU worker (the model keeps serving what it served); ``switches``
        None for each model's `default_switches`."""
        for model_id in model_ids:
            self.states.compiling(model_id, switches or default_switches(registry.get(model_id)), "compiling in a GPU worker", "in a GPU worker",
                                  self.states[model_id].build.compile_s)

    def compile_failed(self, model_ids: list[str], reason: str) -> None:
        """Record a compile GPU call that failed or was refused: the models serve eager, visibly."""
        for model_id in model_ids:
            self.states.failed(model_id, reason, f"aoti -> eager: {reason[:200]}")

    def record_compiles(self, rows: list[dict[str, Any]], asked: list[str] | None = None) -> None:
        """Record the compile states a GPU worker returned (`Studio.serve_compile`); later requests bind
        them. A model ``asked`` for that has no row fails visibly (never left "compiling")."""
        if missing := [m for m in asked or [] if m not in {row["model"] for row in rows}]:
            self.compile_failed(missing, "the compile GPU call returned no state for it")
        for row in rows:
            self.states.recorded(ModelState.from_row(row))

    # --- after a request ---------------------------------------------------------------------------

    def record_text(self, model_id: str, latency_s: float, last: TextStep | None, report: RunReport | None = None,
                    error: str | None = None, params: SamplingParams | None = None) -> None:
        """Record a finished (or failed) text request with what the worker reported."""
        rate = last.decode_tokens_per_s if last else None  # timed where the model ran (the worker's clock)
        acceptance = round(last.accepted / last.drafted, 3) if last and last.drafted else None
        if acceptance is not None and rate:  # speculative: shown as such, kept out of the compiled-vs-eager speeds
            self.states.speculative(model_id, rate, acceptance)
        self._record(RequestRecord(
            model_id, "text", report.runtime if report else self.expected_runtime(model_id), latency_s,
            ttft_s=last.ttft_s if last else None, tokens=last.tokens if last else 0,
            tokens_per_s=round(rate, 2) if rate else None, ok=error is None, error=error, acceptance=acceptance,
            lora=params.lora if params else "", lora_scale=params.lora_scale if params and params.lora else None,
            lora_switch_s=last.lora_switch_s if last else None,
        ), report, 1 / rate if rate and acceptance is None else None)  # a fused adapter changes no token's cost
        if last is not None and params is not None:
            self.states.adapter_used(model_id, params.lora, params.lora_scale, last.lora_switch_s)

    def record_image(self, model_id: str, result: ImageResult | None, latency_s: float, report: RunReport | None = None,
                     error: str | None = None, params: ImageParams | None = None) -> None:
        """Record a finished (or failed) image request with what the worker reported."""
        steps = result.step_ms if result else []
        step_ms = median(steps)
        caching = params is not None and params.step_cache != "off"
        self._record(RequestRecord(
            model_id, "image", report.runtime if report else self.expected_runtime(model_id), latency_s,
            steps=len(steps) or None, step_ms=step_ms, stages_s=result.stages_s if result else None,
            step_cache=params.step_cache if caching else "", cached_steps=len(result.cached_steps) if caching and result else None,
            step_cache_note=result.step_cache_note if result else "", lora=params.lora if params else "",
            lora_scale=params.lora_scale if params and params.lora else None, lora_switch_s=result.lora_switch_s if result else None,
            ok=error is None, error=error,
        ), report, step_ms / 1e3 if step_ms and not caching else None)  # a cached step is not the compiled step's speed
        if result is not None and params is not None:
            self.states.adapter_used(model_id, params.lora, params.lora_scale, result.lora_switch_s)

    def _record(self, record: RequestRecord, report: RunReport | None, unit_s: float | None) -> None:
        if report is not None:
            record.peak_mem_mb, record.worker_pid, record.bind_s = report.peak_mem_mb, report.worker_pid, report.bind_s
            record.compared, record.compare_note = report.compared, report.compare_note
            if report.compared:
                self.states.compared(report.model_id, report.compared)
            record.compiled_calls, record.guard_fallbacks = report.compiled_calls, report.guard_fallbacks
            record.last_guard_reason = report.last_guard_reason
            record.setup_s = round(max(0.0, record.latency_s - report.call_s), 4) if report.call_s else None
            record.warmup = report.bind_s > 0  # this call bound the graphs: its first calls pay for it
            if self.gpu_in_workers:
                self._from_worker(report, None if record.warmup else unit_s)
        if record.peak_mem_mb is None and not self.gpu_in_workers:
            self.sample_memory()
            record.peak_mem_mb = peak_mb(self.engine.device.torch_device)
        elif record.peak_mem_mb is not None:
            self.metrics.add_memory_sample(record.peak_mem_mb)
        self.metrics.record(record)

    def _from_worker(self, report: RunReport, unit_s: float | None) -> None:
        """What a worker ran becomes this process's record: the model's state, speed and memory."""
        if unit_s:
            self.states.observed(report.model_id, unit_s, report.runtime)
        for runtime, seconds in (report.compared or {}).items():  # a visitor's A/B run measured both
            self.states.observed(report.model_id, seconds, runtime)
        self.states.from_worker(report)
        if report.calls_in_worker == 1:
            self._setup_s[report.model_id] = max(self._setup_s.get(report.model_id, 0.0), report.bind_s)

    def sample_memory(self) -> None:
        """A memory sample for the panel, where this process runs the models (workers report theirs)."""
        if not self.gpu_in_workers:
            self.metrics.sample_memory(self.engine.device.torch_device)


def enter_worker(engine: LightweightEngine) -> int:
    """Call first in every GPU function. In a fresh worker the device is discovered again (the real
    GPU spaces attached, not the main process's stand-in). Returns the calls this process served,
    this one included."""
    if os.getpid() != engine.pid:
        engine.pid, engine.device = os.getpid(), discover()
        log.info("worker %d: %s", engine.pid, engine.device.label)
    return count_call()


@dataclass
class GpuCall:
    """One GPU call's measurements in the process that runs it: `begin` binds the model, `report`
    says what ran."""

    engine: LightweightEngine
    model_id: str
    start: float
    calls: int
    bind_s: float
    before: aoti.Status  # the compiled graphs' counters before the call: the report counts what it added

    @classmethod
    def begin(cls, engine: LightweightEngine, model_id: str, binding: Binding | None) -> GpuCall:
        """Start the clock, count the call, bind the model as ``binding`` says; the memory peak starts here."""
        start, calls = time.perf_counter(), enter_worker(engine)
        bind_s = engine.bind(binding) if binding is not None else 0.0
        reset_peak_memory(engine.device.torch_device)
        return cls(engine, model_id, start, calls, bind_s, copy.copy(live_status(engine, model_id)))

    def report(self, runtime: str) -> RunReport:
        """What ran, as plain data: the compiled graphs' live record when they ran, else the model's
        reason (switched off, or a bind that failed); the calls the graphs served and the shape guard
        sent to eager during this call."""
        live, before = live_status(self.engine, self.model_id), self.before
        state = self.engine.states[self.model_id]
        compiled = live.runtime == "aoti"
        guarded = max(0, live.guard_fallbacks - before.guard_fallbacks)
        return RunReport(
            self.model_id, runtime, live.reason if compiled else state.reason, calls_in_worker=self.calls,
            bind_s=round(self.bind_s, 4), call_s=round(time.perf_counter() - self.start, 4),
            peak_mem_mb=peak_mb(self.engine.device.torch_device), device=self.engine.device.label,
            compiled_calls=max(0, live.compiled_calls - before.compiled_calls), guard_fallbacks=guarded,
            last_guard_reason=live.last_guard_reason if guarded else None,
            layout_copies=max(0, live.layout_copies - before.layout_copies), cuda_graphs=live.cuda_graphs,
            fallbacks=list(live.fallbacks if compiled else state.build.fallbacks),
        )


def live_status(engine: LightweightEngine, model_id: str) -> aoti.Status:
    model = engine.models.get(model_id)
    return aoti.status_of(model.hot_module) if model is not None else aoti.Status()


def not_compared(report: RunReport, speculative: bool = False) -> str:
    """Why a request's "compare with eager" can't run ("" when it can): it is said, never dropped."""
    if speculative:
        return ("not compared with eager: speculative decoding's speed is its own (shown apart), not the "
                "compiled graphs' against eager")
    if report.runtime != "aoti":
        return f"not compared with eager: the model runs {report.runtime} here ({report.reason or 'not compiled'})"
    return ""

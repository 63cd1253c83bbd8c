"""engines: what model runs where, and how. `Studio` is the one facade the app talks to."""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import aoti

from . import inputs, registry
from .access import RateLimit
from .device import DeviceInfo, discover
from .distributed import DistributedEngine
from .image import ImageParams, ImageResult, check_image_request, image_recipe
from .lightweight import CompileState, LightweightEngine
from .metrics import Metrics, RequestRecord, median, peak_mb, reset_peak_memory
from .optimize import Recipe
from .select import Decision, choose, estimate_bytes
from .text import SamplingParams, TextModel, TextStep, check_text_request, text_recipe
from .workers import Binding, RunReport, count_call, gpu_seconds_compile, gpu_seconds_image, gpu_seconds_text, gpu_size

log = logging.getLogger(__name__)

__all__ = ["Studio", "inputs", "SamplingParams", "ImageParams", "ImageResult", "TextStep", "CompileState", "Decision", "DeviceInfo",
           "Binding", "RunReport"]


class Studio:
    """Model catalog + device + engine + metrics, behind plain methods that validate their inputs and
    raise ``ValueError`` with a message a user can act on.

    With ``gpu_in_workers`` (ZeroGPU) this object lives twice: in the main process, which has no GPU,
    validates requests, decides what each model should run (`binding`) and records what the workers
    report (`record_compiles`, `record_text`, `record_image`); and in every GPU worker forked from it,
    where the ``serve_*`` methods run the request on the worker's copy of the models and return plain
    data. Locally both halves are this one process."""

    def __init__(self, device: DeviceInfo | None = None, cache: aoti.Cache | None = None, gpu_in_workers: bool = False,
                 open_catalog: bool = True) -> None:
        self.device = device or discover()
        # Models held at once (one per task at most): 1 on a device that fits one (an MIG slice), where a
        # request for the other task's model switches, unloading the one held.
        self.engine = LightweightEngine(self.device, cache, max_loaded=int(os.environ.get("AOTI_MAX_LOADED", "2")))
        self.engine.observe_locally = not gpu_in_workers
        self.gpu_in_workers = gpu_in_workers
        self.distributed: dict[str, DistributedEngine] = {}
        self.metrics = Metrics()
        self._pid = os.getpid()
        self._setup_s: dict[str, float] = {}  # per model: the longest bind a fresh worker has reported
        self.compile_rate = RateLimit(int(os.environ.get("AOTI_COMPILE_RATE", "10")), 600.0)  # compiles per 10 min
        # Which model serves each task. With ``open_catalog`` (a local server: whoever uses it owns it) a
        # request may name any available catalog model and switch to it, at most `switch_rate` times;
        # otherwise requests name only these, and loading another is an owner action (`set_optimization`).
        self.open_catalog = open_catalog
        self.served: dict[str, str] = {}
        self.switch_rate = RateLimit(int(os.environ.get("AOTI_SWITCH_RATE", "10")), 600.0, "model switches")

    # --- catalog -----------------------------------------------------------------------------------

    def decision(self, model_id: str, fp8: bool = False) -> Decision:
        return choose(registry.get(model_id), self.device, "fp8_rowwise" if fp8 else "none")

    def models(self) -> list[dict[str, Any]]:
        rows = []
        for spec in registry.CATALOG:
            available, why = registry.availability(spec)
            decision = self.decision(spec.id)
            if available and decision.engine == "refused":
                available, why = False, decision.reason
            rows.append({
                "id": spec.id, "task": spec.task, "source": spec.source if not spec.is_local else "embedded",
                "available": available, "reason": why, "engine": decision.engine, "fits": decision.reason,
                "sizes": [f"{w}x{h}" for h, w in spec.sizes], "steps": spec.steps, "guidance": spec.guidance,
                "max_new_tokens": spec.max_new_tokens, "fp8": spec.fp8 and self.device.fp8, "regional": spec.regional,
                "state": self.engine.states[spec.id].state, "served": self.served.get(spec.task) == spec.id,
            })
        return rows

    def check_model(self, model_id: str, task: str | None = None) -> registry.ModelSpec:
        """The spec if ``model_id`` names a catalog model that can serve (``task``, if given) here;
        otherwise a ValueError saying why not. Nothing changes either way."""
        try:
            spec = registry.get(inputs.text("model_id", model_id))
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if task is not None and spec.task != task:
            article = {"image": "an"}.get(spec.task, "a")
            raise ValueError(f"{model_id} is {article} {spec.task} model; pick {'an' if task == 'image' else 'a'} {task} model for this tab.")
        available, why = registry.availability(spec)
        if not available:
            raise ValueError(f"{model_id} is not available here: {why}.")
        decision = self.decision(model_id)
        if decision.engine == "refused":
            raise ValueError(f"{model_id} {decision.reason}.")
        return spec

    def check_request_model(self, model_id: str, task: str) -> registry.ModelSpec:
        """`check_model`, and whether a request may use it: a served model; or, on an open catalog, any
        model while switches stay under `switch_rate` (checked, not counted: `admit_request` counts)."""
        spec = self.check_model(model_id, task)
        if self.served.get(task) == model_id:
            return spec
        if not self.open_catalog:
            served = ", ".join(sorted(self.served.values())) or "none yet"
            raise ValueError(f"{model_id} is not served here (served: {served}); loading another model is for "
                             "the owner (the Optimization tab).")
        self.switch_rate.check()
        return spec

    def admit_request(self, model_id: str) -> None:
        """A checked request is about to run: a model other than its task's served one is a switch,
        counted against `switch_rate` and recorded (`/metrics`' switches, the log)."""
        task = registry.get(model_id).task
        previous = self.served.get(task)
        if previous == model_id:
            return
        self.switch_rate.take()
        self.served[task] = model_id
        self.metrics.record_switch(task, previous, model_id, "a request")
        log.warning("switch: %s model %s -> %s, asked by a request", task, previous, model_id)

    # --- lifecycle ---------------------------------------------------------------------------------

    def startup_models(self, requested: str | None = None) -> list[str]:
        """The models to load at startup: ``requested`` (comma-separated ids, at most one per task, as in
        ``$AOTI_STARTUP_MODELS``), else the embedded ones. A ValueError names what is wrong."""
        if not requested or not requested.strip():
            return [s.id for s in registry.CATALOG if s.is_local]
        ids = [i.strip() for i in requested.split(",") if i.strip()]
        try:
            tasks = [registry.get(i).task for i in ids]
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"startup models {ids}: at most one text and one image model (one of each task is loaded at a time).")
        return ids

    def startup(self, model_ids: list[str] | None = None, compile: bool = True, background: bool = True) -> None:
        """Load the given (default: the embedded) models so they serve eagerly, then compile or load
        their AOTI graphs (in the background unless ``background=False``)."""
        specs = [registry.get(i) for i in model_ids] if model_ids else [s for s in registry.CATALOG if s.is_local]
        for spec in [s for s in specs if not registry.availability(s)[0]]:  # said on its card, not dropped
            why = registry.availability(spec)[1]
            log.warning("startup: %s is not loaded: %s", spec.id, why)
            self.engine.mark_unavailable(spec.id, f"asked for at startup, unavailable: {why}")
        specs = [s for s in specs if registry.availability(s)[0]]
        for spec in specs:  # all loaded first: a load waits for a running compile
            self.engine.load(spec)
            self.served[spec.task] = spec.id
        if self.gpu_in_workers:
            aoti.preload()  # every GPU worker forked from here binds its graphs without these imports
        for spec in specs if compile else []:
            self._optimize(spec.id, background=background)

    def recipe_for(self, model_id: str, fp8: bool = False, regional: bool = False) -> Recipe:
        """The model's recipe (`text_recipe`, `image_recipe`) from the switches and the selection (FP8
        when only FP8 weights fit; the decode kernels with the GPU preset)."""
        spec, decision = registry.get(model_id), self.decision(model_id, fp8)
        fp8 = decision.quantization == "fp8_rowwise"
        if spec.task == "text":
            preset = decision.preset.text_inductor if decision.preset else "default"
            return text_recipe(fp8, decode_kernels=preset == "decode" and self.device.kind != "cpu", preset=preset)
        preset = decision.preset.inductor if decision.preset else "default"
        flux = spec.family == "flux" and self.device.kind != "cpu"
        return image_recipe(fp8, flux_attention=flux, regional=regional, preset=preset)

    def check_optimization(self, model_id: str, fp8: bool = False, regional: bool = False) -> None:
        """A ValueError for a model that is not available here, and for switches this model or device
        can't take (FP8 where it can't run); nothing changes either way."""
        spec = self.check_model(model_id)
        if fp8 and not (spec.fp8 and self.device.fp8):
            raise ValueError(
                f"FP8 needs a GPU with compute capability >= 8.9 and a model that offers it; "
                f"{model_id} on {self.device.label} does not."
            )
        if regional and not spec.regional:
            raise ValueError(f"regional compilation is not offered for {model_id}.")

    def set_optimization(self, model_id: str, use_aoti: bool, fp8: bool = False, regional: bool = False) -> CompileState:
        """The per-model switches: AOTI on/off, FP8, regional. FP8 where it can't run is refused. With
        ``gpu_in_workers`` only "off" is done here; compiling is a GPU call (`serve_compile`)."""
        if not use_aoti:
            self.check_optimization(model_id, fp8, regional)
            return self.engine.set_eager(model_id)
        if not self.admit_compile(model_id, fp8, regional):  # checks the switches too
            return self.engine.states[model_id]
        state = self._optimize(model_id, fp8, regional)  # loads it first (a load that fails changes nothing)
        self.serve(model_id, "the owner")
        return state

    def serve(self, model_id: str, by: str) -> None:
        """``model_id`` now serves its task (an owner loaded it), recorded as a switch if it is one."""
        task = registry.get(model_id).task
        previous, self.served[task] = self.served.get(task), model_id
        if previous != model_id:
            self.metrics.record_switch(task, previous, model_id, by)
            log.warning("switch: %s model %s -> %s, by %s", task, previous, model_id, by)

    def admit_compile(self, model_id: str, fp8: bool = False, regional: bool = False) -> bool:
        """Whether a request to compile ``model_id`` with these switches starts a compile. Not when the
        model already runs, or is being compiled, with them: the request joins that one. A ValueError
        past `compile_rate`'s limit."""
        self.check_optimization(model_id, fp8, regional)
        state = self.engine.states[model_id]
        if state.state in ("aoti", "compiling") and state.requested == {"fp8": fp8, "regional": regional}:
            return False
        self.compile_rate.take()
        return True

    def _optimize(self, model_id: str, fp8: bool = False, regional: bool = False, background: bool = True) -> CompileState:
        state = self.engine.optimize(model_id, self.recipe_for(model_id, fp8, regional), background=background)
        state.requested = {"fp8": fp8, "regional": regional}
        return state

    # --- main process: validate, decide, record -----------------------------------------------------

    def check_text(self, model_id: str, prompt: str, params: SamplingParams) -> None:
        """Validate a text request before any GPU time is asked for (the prompt's length too, where the
        model's tokenizer is loaded in this process)."""
        spec = self.check_request_model(model_id, "text")
        check_text_request(spec, inputs.text("prompt", prompt), params)
        if params.speculative and not (decision := self.decision(model_id)).draft:
            raise ValueError(f"`speculative` decoding is not available for {model_id} here: it {decision.reason}.")
        model = self.engine.models.get(model_id)
        if isinstance(model, TextModel):
            model.prompt_ids(prompt)

    def check_image(self, model_id: str, prompt: str, params: ImageParams) -> None:
        """Validate an image request before any GPU time is asked for (with the pipeline's own checks,
        where it is loaded in this process)."""
        spec = self.check_request_model(model_id, "image")
        inputs.text("prompt", prompt)
        model = self.engine.models.get(model_id)
        if model is not None and model.spec.task == "image":
            model.check_inputs(prompt, params)  # `check_image_request` and the pipeline's own checks
        else:
            check_image_request(spec, prompt, params)

    def binding(self, model_id: str) -> Binding | None:
        """What a GPU worker should run for ``model_id``: the recorded compiled artifact (also while a
        new one compiles), or eager. None when requests run in this process, whose state is the truth."""
        if not self.gpu_in_workers:
            return None
        state = self.engine.states[model_id]
        if state.ref is not None and state.state in ("aoti", "compiling"):
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
        return gpu_size(estimate_bytes(registry.get(model_id), self.device))

    def gpu_seconds_text(self, model_id: str, params: SamplingParams) -> int:
        state = self.engine.states[model_id]
        return gpu_seconds_text(params.max_new_tokens, state.aoti_latency_s or state.eager_latency_s, self._setup_s.get(model_id))

    def gpu_seconds_image(self, model_id: str, params: ImageParams) -> int:
        state = self.engine.states[model_id]
        largest = max((h * w for h, w in registry.get(model_id).sizes), default=None)
        return gpu_seconds_image(params.steps, params.height * params.width, state.aoti_latency_s or state.eager_latency_s,
                                 largest, self._setup_s.get(model_id))

    def gpu_seconds_compile(self, model_ids: list[str]) -> int:
        return gpu_seconds_compile([self.engine.states[m].compile_s for m in model_ids])

    def mark_compiling(self, model_ids: list[str], fp8: bool = False, regional: bool = False) -> None:
        """Show a compile that runs in a GPU worker (the model keeps serving what it served)."""
        for model_id in model_ids:
            state = self.engine.states[model_id]
            state.state, state.reason = "compiling", "compiling in a GPU worker"
            state.requested, state.compiles = {"fp8": fp8, "regional": regional}, state.compiles + 1
            state.stage, state.started, state.estimate_s = "in a GPU worker", time.time(), state.compile_s

    def compile_failed(self, model_ids: list[str], reason: str) -> None:
        """Record a compile GPU call that failed or was refused: the models serve eager, visibly."""
        for model_id in model_ids:
            state = self.engine.states[model_id]
            state.state, state.reason, state.ref = "fallback", reason[:500], None
            state.fallbacks = [f"aoti -> eager: {reason[:200]}"]
            state.stage, state.started, state.estimate_s = "", None, None

    def record_compiles(self, rows: list[dict[str, Any]], asked: list[str] | None = None) -> None:
        """Record the compile states a GPU worker returned (`serve_compile`); later requests bind them.
        A model ``asked`` for that has no row fails visibly (never left "compiling")."""
        if missing := [m for m in asked or [] if m not in {row["model"] for row in rows}]:
            self.compile_failed(missing, "the compile GPU call returned no state for it")
        for row in rows:
            kept = self.engine.states[row["model"]]
            row = {**row, "eager_latency_s": kept.eager_latency_s, "aoti_latency_s": kept.aoti_latency_s, "speedup": kept.speedup,
                   "compiles": kept.compiles}
            if row["state"] == "not loaded":  # the worker loaded it; this process did not
                row["state"] = "eager"
            self.engine.states[row["model"]] = CompileState(**row)

    def record_text(self, model_id: str, latency_s: float, last: TextStep | None, report: RunReport | None = None,
                    error: str | None = None) -> None:
        """Record a finished (or failed) text request with what the worker reported."""
        rate = last.decode_tokens_per_s if last else None  # timed where the model ran (the worker's clock)
        acceptance = round(last.accepted / last.drafted, 3) if last and last.drafted else None
        if acceptance is not None and rate:  # speculative: shown as such, kept out of the compiled-vs-eager speeds
            state = self.engine.states[model_id]
            state.speculative_tokens_per_s, state.acceptance = round(rate, 2), acceptance
        self._record(RequestRecord(
            model_id, "text", report.runtime if report else self.expected_runtime(model_id), latency_s,
            ttft_s=last.ttft_s if last else None, tokens=last.tokens if last else 0,
            tokens_per_s=round(rate, 2) if rate else None, ok=error is None, error=error, acceptance=acceptance,
        ), report, 1 / rate if rate and acceptance is None else None)

    def record_image(self, model_id: str, result: ImageResult | None, latency_s: float, report: RunReport | None = None,
                     error: str | None = None) -> None:
        """Record a finished (or failed) image request with what the worker reported."""
        steps = result.step_ms if result else []
        step_ms = median(steps)
        self._record(RequestRecord(
            model_id, "image", report.runtime if report else self.expected_runtime(model_id), latency_s,
            steps=len(steps) or None, step_ms=step_ms, stages_s=result.stages_s if result else None, ok=error is None,
            error=error,
        ), report, step_ms / 1e3 if step_ms else None)

    def _record(self, record: RequestRecord, report: RunReport | None, unit_s: float | None) -> None:
        if report is not None:
            record.peak_mem_mb, record.worker_pid, record.bind_s = report.peak_mem_mb, report.worker_pid, report.bind_s
            record.compared, record.compare_note = report.compared, report.compare_note
            record.compiled_calls, record.guard_fallbacks = report.compiled_calls, report.guard_fallbacks
            record.last_guard_reason = report.last_guard_reason
            record.setup_s = round(max(0.0, record.latency_s - report.call_s), 4) if report.call_s else None
            if self.gpu_in_workers:
                self._from_worker(report, unit_s)
        if record.peak_mem_mb is None and not self.gpu_in_workers:
            record.peak_mem_mb = self._memory()
        elif record.peak_mem_mb is not None:
            self.metrics.add_memory_sample(record.peak_mem_mb)
        self.metrics.record(record)

    def _from_worker(self, report: RunReport, unit_s: float | None) -> None:
        """What a worker ran becomes this process's record: the model's state, speed and memory."""
        state = self.engine.states[report.model_id]
        if unit_s:
            self.engine.observe(report.model_id, unit_s, report.runtime)
        for runtime, seconds in (report.compared or {}).items():  # a visitor's A/B run measured both
            self.engine.observe(report.model_id, seconds, runtime)
        state.guard_fallbacks += report.guard_fallbacks  # (a report counts its own call's)
        state.layout_copies += report.layout_copies
        state.cuda_graphs = report.cuda_graphs
        if report.last_guard_reason:
            state.last_guard_reason = report.last_guard_reason
        if report.runtime == "aoti" or report.fallbacks:
            state.fallbacks = list(report.fallbacks)
        if state.state == "aoti" and report.runtime != "aoti":  # asked to bind graphs, and could not
            state.state, state.reason = "fallback", f"a GPU worker served eager: {report.reason}"[:500]
        if report.calls_in_worker == 1:
            self._setup_s[report.model_id] = max(self._setup_s.get(report.model_id, 0.0), report.bind_s)

    def sample_memory(self) -> None:
        """A memory sample for the panel, where this process runs the models (workers report theirs)."""
        if not self.gpu_in_workers:
            self.metrics.sample_memory(self.device.torch_device)

    def _memory(self) -> float | None:
        self.metrics.sample_memory(self.device.torch_device)
        return peak_mb(self.device.torch_device)

    def compile_status(self) -> list[dict[str, Any]]:
        return self.engine.rows()

    # --- GPU side (a ZeroGPU worker, or this process): run, and return plain data ------------------------

    def enter_worker(self) -> int:
        """Call first in every GPU function. In a fresh worker the device is discovered again (the
        real GPU spaces attached, not the main process's stand-in). Returns the calls this process
        served, this one included."""
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self.device = self.engine.device = discover()
            log.info("worker %d: %s", self._pid, self.device.label)
        return count_call()

    def serve_compile(self, model_ids: list[str], fp8: bool = False, regional: bool = False) -> list[dict[str, Any]]:
        """Compile (or load from the cache) each model's graphs here and return their states as rows,
        with the artifact references other processes bind (`record_compiles`)."""
        self.enter_worker()
        rows = []
        for model_id in model_ids:
            available, why = registry.availability(registry.get(model_id))
            if not available:  # (checked in the main process too; the worker may see less, e.g. no Hub)
                rows.append({**self.engine.states[model_id].as_row(), "state": "fallback",
                             "reason": f"not compiled: unavailable in the GPU worker: {why}", "ref": None})
                continue
            rows.append(self._optimize(model_id, fp8, regional, background=False).as_row())
        return rows

    def serve_text(self, model_id: str, prompt: str, params: SamplingParams, binding: Binding | None = None,
                   compare: bool = False) -> Iterator[TextStep | RunReport]:
        """`generate_text` on this process's copy of the model, bound as ``binding`` says; yields the
        steps, then one `RunReport`. With ``compare`` the request runs again on the eager forward and
        the report holds both speeds (the server's setting is not touched)."""
        start, calls, bind_s, before = self._begin_call(binding, model_id)
        last = None
        for last in self.generate_text(model_id, prompt, params):
            yield last
        report = self.report(model_id, calls, bind_s, time.perf_counter() - start, before)
        report.compare_note = self._not_compared(report, params.speculative) if compare else ""
        if compare and not report.compare_note and last is not None and last.decode_tokens_per_s:
            eager = None
            for eager in self.engine.generate_text(model_id, prompt, params, eager=True):  # noqa: B007 (the last step)
                pass
            if eager is not None and eager.decode_tokens_per_s:
                report.compared = {"aoti": 1 / last.decode_tokens_per_s, "eager": 1 / eager.decode_tokens_per_s}
        yield report

    def serve_image(self, model_id: str, prompt: str, params: ImageParams, binding: Binding | None = None,
                    progress=None, compare: bool = False) -> tuple[ImageResult, RunReport]:
        """`generate_image` on this process's copy of the model, bound as ``binding`` says (``compare``
        as in `serve_text`: seconds per step, compiled and eager)."""
        start, calls, bind_s, before = self._begin_call(binding, model_id)
        result = self.generate_image(model_id, prompt, params, progress)
        report = self.report(model_id, calls, bind_s, time.perf_counter() - start, before)
        report.compare_note = self._not_compared(report) if compare else ""
        if compare and not report.compare_note and result.step_ms:
            eager = self.engine.generate_image(model_id, prompt, params, eager=True)
            report.compared = {"aoti": median(result.step_ms) / 1e3, "eager": median(eager.step_ms) / 1e3}
        return result, report

    @staticmethod
    def _not_compared(report: RunReport, speculative: bool = False) -> str:
        """Why a request's "compare with eager" can't run ("" when it can): it is said, never dropped."""
        if speculative:
            return ("not compared with eager: speculative decoding's speed is its own (shown apart), not the "
                    "compiled graphs' against eager")
        if report.runtime != "aoti":
            return f"not compared with eager: the model runs {report.runtime} here ({report.reason or 'not compiled'})"
        return ""

    def _begin_call(self, binding: Binding | None, model_id: str) -> tuple[float, int, float, aoti.Status]:
        """A GPU call's start: its start time, this process's call count, the seconds spent binding
        the model as ``binding`` says, and the compiled graphs' counters before the call (`report`
        counts what this call added); the memory peak starts here."""
        start, calls = time.perf_counter(), self.enter_worker()
        bind_s = self.engine.bind(binding) if binding is not None else 0.0
        reset_peak_memory(self.device.torch_device)
        return start, calls, bind_s, copy.copy(self._live(model_id))

    def _live(self, model_id: str) -> aoti.Status:
        model = self.engine.models.get(model_id)
        return aoti.status_of(model.hot_module) if model is not None else aoti.Status()

    def report(self, model_id: str, calls: int = 1, bind_s: float = 0.0, call_s: float = 0.0,
               before: aoti.Status | None = None) -> RunReport:
        """What ran for ``model_id`` in this process, as plain data: the compiled graphs' live record
        when they ran, else the engine's reason (switched off, or a bind that failed); the calls the
        compiled graphs served and the shape guard sent to eager since ``before``."""
        live, before = self._live(model_id), before or aoti.Status()
        state = self.engine.states[model_id]
        compiled = live.runtime == "aoti"
        guarded = max(0, live.guard_fallbacks - before.guard_fallbacks)
        return RunReport(
            model_id, self.runtime_of(model_id), live.reason if compiled else state.reason, calls_in_worker=calls,
            bind_s=round(bind_s, 4), call_s=round(call_s, 4), peak_mem_mb=peak_mb(self.device.torch_device), device=self.device.label,
            compiled_calls=max(0, live.compiled_calls - before.compiled_calls), guard_fallbacks=guarded,
            last_guard_reason=live.last_guard_reason if guarded else None,
            layout_copies=max(0, live.layout_copies - before.layout_copies), cuda_graphs=live.cuda_graphs,
            fallbacks=list(live.fallbacks if compiled else state.fallbacks),
        )

    # --- requests (pure: no bookkeeping) -------------------------------------------------------------

    def generate_text(self, model_id: str, prompt: str, params: SamplingParams) -> Iterator[TextStep]:
        """Stream text. Pure (no bookkeeping); `serve_text` runs it in a GPU worker."""
        spec = self.check_model(model_id, "text")
        if self.decision(model_id).engine == "distributed":
            check_text_request(spec, prompt, params)
            yield from self._distributed(spec).generate(prompt, params)
            return
        yield from self.engine.generate_text(model_id, prompt, params)

    def _distributed(self, spec: registry.ModelSpec) -> DistributedEngine:
        """The multi-GPU engine for a model too large for one GPU (one per model, started lazily)."""
        if spec.id not in self.distributed:
            engine = self.distributed[spec.id] = DistributedEngine(spec, world_size=self.device.count, device="cuda")
            self.engine.states[spec.id].state = "distributed"
            self.engine.states[spec.id].reason = f"{engine.parallelism} over {self.device.count} GPUs (eager on the workers)"
        return self.distributed[spec.id]

    def generate_image(self, model_id: str, prompt: str, params: ImageParams, progress=None) -> ImageResult:
        """Generate one image; pure, like `generate_text`."""
        spec = self.check_model(model_id, "image")
        if self.decision(model_id).engine == "distributed":
            check_image_request(spec, prompt, params)  # bad input never reaches (or restarts) the workers
            return self._distributed(spec).generate_image(prompt, params)
        return self.engine.generate_image(model_id, prompt, params, progress)

    def runtime_of(self, model_id: str) -> str:
        if model_id in self.distributed:
            return f"eager, {self.distributed[model_id].parallelism} x{self.device.count}"
        return self.engine.runtime_of(model_id)

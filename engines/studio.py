"""`Studio`: the one facade the app talks to. The catalog and what can run here, the owner's switches,
requests checked before any GPU time is asked for, and the GPU calls' bodies (`serve_*`).

With ``gpu_in_workers`` (ZeroGPU) a Studio lives twice: in the main process, which has no GPU, checks
requests and keeps the records (`ledger`: what to bind, what came back); and in every GPU worker forked
from it, where `serve_compile`, `serve_text` and `serve_image` run on the worker's copy of the models
and return plain data. Locally both halves are this one process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import aoti

from . import inputs, registry
from .access import RateLimit, ServedModels
from .device import DeviceInfo, discover
from .distributed import STEP_CACHE_REFUSAL, DistributedEngine
from .image import ImageParams, ImageResult, check_image_request, prompt_hint
from .lightweight import LightweightEngine
from .metrics import Metrics, median
from .recipes import Switches, check_switches, default_switches, fp8_refusal, recipe_for, regional_refusal
from .select import choose
from .state import ModelState, Phase
from .text import SamplingParams, TextModel, TextStep, check_text_request
from .workers import Binding, RunReport
from .zerogpu import GpuCall, Ledger, enter_worker, not_compared

log = logging.getLogger(__name__)


class Studio:
    """Model catalog + device + engine + metrics, behind plain methods that validate their inputs and
    raise ``ValueError`` with a message a user can act on."""

    def __init__(self, device: DeviceInfo | None = None, cache: aoti.Cache | None = None, gpu_in_workers: bool = False,
                 open_catalog: bool = True) -> None:
        # Models held at once (one per task at most): 1 on a device that fits one (an MIG slice), where a
        # request for the other task's model switches, unloading the one held.
        self.engine = LightweightEngine(device or discover(), cache, max_loaded=int(os.environ.get("AOTI_MAX_LOADED", "2")),
                                        observe_locally=not gpu_in_workers)
        self.states = self.engine.states
        self.gpu_in_workers = gpu_in_workers
        self.distributed: dict[str, DistributedEngine] = {}
        self.metrics = Metrics()
        self.ledger = Ledger(self.engine, self.metrics, gpu_in_workers, self.runtime_of)
        self.served = ServedModels(open_catalog, self.metrics.record_switch)
        self.compile_rate = RateLimit(int(os.environ.get("AOTI_COMPILE_RATE", "10")), 600.0)  # compiles per 10 min

    @property
    def device(self) -> DeviceInfo:
        """The device models run on (in a ZeroGPU worker: the real GPU, discovered again)."""
        return self.engine.device

    # --- catalog -----------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        """The catalog: per model, whether it can run here and how (engine, FP8, regional, step caching, sizes)."""
        rows = []
        for spec in registry.CATALOG:
            available, why = registry.availability(spec)
            decision = choose(spec, self.device)
            if available and decision.engine == "refused":
                available, why = False, decision.reason
            fp8_note, regional_note = fp8_refusal(spec, self.device), regional_refusal(spec)
            rows.append({
                "id": spec.id, "task": spec.task, "source": spec.source if not spec.is_local else "embedded",
                "available": available, "reason": why, "engine": decision.engine, "fits": decision.reason,
                "sizes": [f"{w}x{h}" for h, w in spec.sizes], "steps": spec.steps, "guidance": spec.guidance,
                "max_new_tokens": spec.max_new_tokens, "fp8": not fp8_note, "fp8_note": fp8_note,
                "regional": not regional_note, "regional_note": regional_note, "step_cache": spec.step_cache,
                "adapters": [a.id for a in registry.adapters_for(spec.id)],
                "state": str(self.states[spec.id].phase), "served": self.served.get(spec.task) == spec.id,
                "prompt_hint": prompt_hint(spec) if spec.task == "image" else "",
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
        decision = choose(spec, self.device)
        if decision.engine == "refused":
            raise ValueError(f"{model_id} {decision.reason}.")
        return spec

    def admit_request(self, model_id: str) -> None:
        """A checked request is about to run: naming a model other than its task's served one is a
        switch, counted against the switch rate and recorded (`/metrics`' switches, the log)."""
        self.served.admit(model_id, registry.get(model_id).task)

    # --- lifecycle ---------------------------------------------------------------------------------

    def startup(self, model_ids: list[str] | None = None, compile: bool = True, background: bool = True) -> None:
        """Load the given (default: `registry.startup_models`) models so they serve eagerly, then compile or load
        their AOTI graphs (in the background unless ``background=False``)."""
        specs = [registry.get(i) for i in model_ids or registry.startup_models()]
        for spec in [s for s in specs if not registry.availability(s)[0]]:  # said on its card, not dropped
            why = registry.availability(spec)[1]
            log.warning("startup: %s is not loaded: %s", spec.id, why)
            self.states.unavailable(spec.id, f"asked for at startup, unavailable: {why}")
        specs = [s for s in specs if registry.availability(s)[0]]
        for spec in specs:  # all loaded first: a load waits for a running compile
            self.engine.load(spec)
            self.served.start(spec.id, spec.task)
        if self.gpu_in_workers:
            aoti.preload()  # every GPU worker forked from here binds its graphs without these imports
        for spec in specs if compile else []:
            self._optimize(spec.id, default_switches(spec), background=background)

    def switches_of(self, model_id: str) -> Switches:
        """The switches ``model_id`` runs (or would run) with: the owner's last, else its defaults."""
        return self.states[model_id].switches or default_switches(registry.get(model_id))

    def check_optimization(self, model_id: str, switches: Switches) -> None:
        """A ValueError for a model that is not available here, and for switches this model or device
        can't take (FP8 where it can't run); nothing changes either way."""
        check_switches(self.check_model(model_id), self.device, switches)

    def set_optimization(self, model_id: str, switches: Switches) -> ModelState:
        """The owner's switches for a model: AOTI on/off, FP8, regional. With ``gpu_in_workers`` only
        "off" is done here; compiling is a GPU call (`serve_compile`, recorded by the ledger)."""
        if not switches.aoti:
            self.check_optimization(model_id, switches)
            return self.engine.set_eager(model_id)
        if not self.admit_compile(model_id, switches):  # checks the switches too
            return self.states[model_id]
        state = self._optimize(model_id, switches)  # loads it first (a load that fails changes nothing)
        self.serve(model_id, "the owner")
        return state

    def serve(self, model_id: str, by: str) -> None:
        """``model_id`` now serves its task (an owner loaded it), recorded as a switch if it is one."""
        self.served.serve(model_id, registry.get(model_id).task, by)

    def admit_compile(self, model_id: str, switches: Switches) -> bool:
        """Whether a request to compile ``model_id`` with these switches starts a compile. Not when the
        model already runs, or is being compiled, with them: the request joins that one. A ValueError
        past `compile_rate`'s limit."""
        self.check_optimization(model_id, switches)
        state = self.states[model_id]
        if state.phase in (Phase.AOTI, Phase.COMPILING) and state.switches == switches:
            return False
        self.compile_rate.take()
        return True

    def _optimize(self, model_id: str, switches: Switches, background: bool = True) -> ModelState:
        recipe = recipe_for(registry.get(model_id), self.device, switches)
        return self.engine.optimize(model_id, recipe, background=background, switches=switches)

    # --- requests: checked here, before any GPU time is asked for -------------------------------------

    def check_text(self, model_id: str, prompt: str, params: SamplingParams) -> None:
        """Validate a text request (the prompt's length too, where the model's tokenizer is loaded in
        this process), and whether it may name this model (`ServedModels.check`)."""
        spec = self.check_model(model_id, "text")
        self.served.check(model_id, "text")
        check_text_request(spec, inputs.text("prompt", prompt), params)
        if params.speculative and not (decision := choose(spec, self.device)).draft:
            raise ValueError(f"`speculative` decoding is not available for {model_id} here: it {decision.reason}.")
        model = self.engine.models.get(model_id)
        if isinstance(model, TextModel):
            model.prompt_ids(prompt)

    def check_image(self, model_id: str, prompt: str, params: ImageParams) -> None:
        """Validate an image request (with the pipeline's own checks, where it is loaded in this process)."""
        spec = self.check_model(model_id, "image")
        self.served.check(model_id, "image")
        inputs.text("prompt", prompt)
        if params.step_cache != "off" and choose(spec, self.device).engine == "distributed":
            raise ValueError(STEP_CACHE_REFUSAL)
        model = self.engine.models.get(model_id)
        if model is not None and model.spec.task == "image":
            model.check_inputs(prompt, params)  # `check_image_request` and the pipeline's own checks
        else:
            check_image_request(spec, prompt, params)

    def compile_status(self) -> list[dict[str, Any]]:
        return self.engine.rows()

    def runtime_of(self, model_id: str) -> str:
        if model_id in self.distributed:
            return f"eager, {self.distributed[model_id].parallelism} x{self.device.count}"
        return self.engine.runtime_of(model_id)

    # --- GPU calls (a ZeroGPU worker, or this process): run, and return plain data ------------------------

    def serve_compile(self, model_ids: list[str], switches: Switches | None) -> list[dict[str, Any]]:
        """Compile (or load from the cache) each model's graphs here and return their states as rows,
        with the artifact references other processes bind (`Ledger.record_compiles`). ``switches``:
        None for each model's `default_switches`."""
        enter_worker(self.engine)
        rows = []
        for model_id in model_ids:
            available, why = registry.availability(registry.get(model_id))
            if not available:  # (checked in the main process too; the worker may see less, e.g. no Hub)
                rows.append({**self.states[model_id].as_row(), "state": "fallback",
                             "reason": f"not compiled: unavailable in the GPU worker: {why}", "ref": None})
                continue
            rows.append(self._optimize(model_id, switches or default_switches(registry.get(model_id)), background=False).as_row())
        return rows

    def serve_text(self, model_id: str, prompt: str, params: SamplingParams, binding: Binding | None = None,
                   compare: bool = False) -> Iterator[TextStep | RunReport]:
        """`generate_text` on this process's copy of the model, bound as ``binding`` says; yields the
        steps, then one `RunReport`. With ``compare`` the request runs again on the eager forward and
        the report holds both speeds (the server's setting is not touched)."""
        call = GpuCall.begin(self.engine, model_id, binding)
        last = None
        for last in self.generate_text(model_id, prompt, params):
            yield last
        report = call.report(self.runtime_of(model_id))
        report.compare_note = not_compared(report, params.speculative) if compare else ""
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
        call = GpuCall.begin(self.engine, model_id, binding)
        result = self.generate_image(model_id, prompt, params, progress)
        report = call.report(self.runtime_of(model_id))
        report.compare_note = not_compared(report) if compare else ""
        if compare and not report.compare_note and result.step_ms:
            eager = self.engine.generate_image(model_id, prompt, params, eager=True)
            report.compared = {"aoti": median(result.step_ms) / 1e3, "eager": median(eager.step_ms) / 1e3}
        return result, report

    def generate_text(self, model_id: str, prompt: str, params: SamplingParams) -> Iterator[TextStep]:
        """Stream text, on one device or several. Pure (no bookkeeping); `serve_text` runs it in a GPU call."""
        spec = self.check_model(model_id, "text")
        if choose(spec, self.device).engine == "distributed":
            check_text_request(spec, prompt, params)
            yield from self._distributed(spec).generate(prompt, params)
            return
        yield from self.engine.generate_text(model_id, prompt, params)

    def generate_image(self, model_id: str, prompt: str, params: ImageParams, progress=None) -> ImageResult:
        """Generate one image; pure, like `generate_text`."""
        spec = self.check_model(model_id, "image")
        if choose(spec, self.device).engine == "distributed":
            check_image_request(spec, prompt, params)  # bad input never reaches (or restarts) the workers
            return self._distributed(spec).generate_image(prompt, params)
        return self.engine.generate_image(model_id, prompt, params, progress)

    def _distributed(self, spec: registry.ModelSpec) -> DistributedEngine:
        """The multi-GPU engine for a model too large for one GPU (one per model, started lazily)."""
        if spec.id not in self.distributed:
            engine = self.distributed[spec.id] = DistributedEngine(spec, world_size=self.device.count, device="cuda")
            self.states.distributed(spec.id, f"{engine.parallelism} over {self.device.count} GPUs (eager on the workers)")
        return self.distributed[spec.id]




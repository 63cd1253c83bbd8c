"""One device (CPU, GPU or MIG slice): load, optimize in the background, generate, unload, switch.

Startup never blocks on compilation: a model serves eagerly as soon as it is loaded, its AOTI graphs
compile in a background thread (or load from the cache in well under a second), and the compiled
forward is swapped in between two requests.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

import torch

import aoti

from . import registry
from .device import DeviceInfo
from .image import ImageModel, ImageParams, ImageResult
from .metrics import median, memory_mb
from .recipes import Recipe, Switches
from .registry import ModelSpec
from .select import choose, estimate_bytes
from .state import ModelState, States
from .text import SamplingParams, TextModel, TextStep
from .workers import Binding

log = logging.getLogger(__name__)

# Loading and compiling a model both go through process-wide torch state, so they take turns, one
# at a time in the process. torch.export, Dynamo and Inductor's config patches are global: two
# concurrent exports broke each other's traces. transformers' and diffusers' loaders patch
# `nn.Module.register_parameter` (onto the meta device) and the default dtype while they build a
# model: an export running meanwhile came out with meta parameters or failed with "Tensor device
# mismatch" (the embedded text model's startup compile, while the image model loaded, in CI).
TORCH_STATE = threading.Lock()


class LightweightEngine:
    """Holds at most one model per task on the device; swaps models and their compiled graphs."""

    def __init__(self, device: DeviceInfo, cache: aoti.Cache | None = None, max_loaded: int = 2,
                 observe_locally: bool = True) -> None:
        self.device = device
        self.pid = os.getpid()  # a ZeroGPU worker, forked, discovers its device again (`zerogpu.enter_worker`)
        self.cache = cache or aoti.Cache()
        self.max_loaded = max_loaded
        self.models: dict[str, TextModel | ImageModel] = {}
        self.states = States([s.id for s in registry.CATALOG], observe_locally)  # each model's state: written through its transitions only
        self.locks: dict[str, threading.Lock] = {}
        self.threads: dict[str, threading.Thread] = {}
        self.recipes: dict[str, Recipe | None] = {}  # what each model was last optimized with, until AOTI is switched off
        self._guard = threading.Lock()

    @property
    def observe_locally(self) -> bool:
        """Whether requests' runtime and speed are recorded here, as they run (locally), or by the main
        process from the GPU worker's `RunReport` (ZeroGPU: `zerogpu.Ledger`)."""
        return self.states.observe_locally

    # --- lifecycle ---------------------------------------------------------------------------------

    def load(self, spec: ModelSpec, rebind: bool = True) -> TextModel | ImageModel:
        """The loaded model, loading it if needed and then unloading the other model of its task (and
        the least recent ones past `max_loaded`). The new model is built before anything is unloaded,
        so a load that fails leaves the models that were serving as they were; only where the device
        cannot hold both (`fits_beside_loaded`) is the old one freed first, and then loaded back if the
        new one fails. Building waits for a running compile (see `TORCH_STATE`); requests for models
        already loaded never wait. A model switched back in gets the graphs it ran before
        (``rebind``: in the background, from the cache, served eager meanwhile) unless AOTI was
        switched off for it."""
        with self._guard:
            if spec.id in self.models:
                self.models[spec.id] = self.models.pop(spec.id)  # most recently used last
                return self.models[spec.id]
        with TORCH_STATE:
            with self._guard:
                if spec.id in self.models:  # loaded by another request while this one waited
                    return self.models[spec.id]
                room = self.fits_beside_loaded(spec)
                making_room = [] if room else [self._take(k) for k in self._displaced_by(spec)]
            freed = [entry[1].spec for entry in making_room]
            while making_room:  # outside the guard: each waits for the request it is serving
                self._free(making_room)
            try:
                model, placement, seconds = self._build(spec)
            except Exception as exc:
                log.exception("engine: loading %s failed", spec.id)
                raise RuntimeError(f"{spec.id} could not be loaded ({type(exc).__name__}: {str(exc)[:300]})"
                                   f"{self._load_back(freed)}.") from exc
            with self._guard:
                self._insert(model, placement, seconds)
                taken = [self._take(k) for k in self._displaced_by(spec, keep=spec.id)]
            while taken:
                self._free(taken)
        log.info("engine: loaded %s on %s", spec.id, self.device.label)
        if rebind and spec.id in self.recipes and self.observe_locally:  # switched back in: its graphs again, from the cache
            self.optimize(spec.id, self.recipes[spec.id], background=True)
        return model

    def _load_back(self, freed: list[ModelSpec]) -> str:
        """Load again the models freed to make room for a load that failed; what to tell the user."""
        if not freed:
            return ""
        for spec in freed:
            try:
                built = self._build(spec)
            except Exception as exc:
                log.exception("engine: loading %s back failed", spec.id)
                return f"; {spec.id} was unloaded first to make room, and loading it back failed too ({type(exc).__name__})"
            with self._guard:
                self._insert(*built)
        return f"; {', '.join(s.id for s in freed)} was unloaded first to make room (the device holds one of them) and is loaded again"

    def fits_beside_loaded(self, spec: ModelSpec) -> bool:
        """Whether ``spec`` fits the device's budget beside the models loaded now (a switch builds the
        new model before it frees the old one)."""
        held = sum(m.nbytes for m in self.models.values())
        return held + estimate_bytes(spec, self.device) <= self.device.budget_bytes

    def _displaced_by(self, spec: ModelSpec, keep: str | None = None) -> list[str]:
        """The models ``spec`` replaces (hold the guard): the other one of its task, then the least
        recently used past `max_loaded`."""
        others = [k for k, m in self.models.items() if m.spec.task == spec.task and k != keep]
        rest = [k for k in self.models if k not in others and k != keep]
        over = max(0, len(self.models) - len(others) - self.max_loaded + (keep is None))
        return others + rest[:over]

    def _build(self, spec: ModelSpec) -> tuple[TextModel | ImageModel, str, float]:
        """Build ``spec``'s model on the device: (model, what of it is not on the device, seconds)."""
        start = time.perf_counter()
        decision = choose(spec, self.device)  # what fits: a text model's draft, an image pipeline's text encoders
        if spec.task == "text":
            model = TextModel(spec, self.device.torch_device, without_draft="" if decision.draft else decision.reason)
            return model, "" if decision.draft else model.no_draft, time.perf_counter() - start
        model = ImageModel(spec, self.device.torch_device, offload_encoders=decision.offload_encoders)
        return model, model.placement, time.perf_counter() - start

    def _insert(self, model: TextModel | ImageModel, placement: str, seconds: float) -> TextModel | ImageModel:
        """Make a built model the served one of its id, with a fresh state."""
        model_id = model.spec.id
        self.models[model_id] = model
        self.locks[model_id] = threading.Lock()
        self.states.loaded(model_id, seconds, placement)
        return model

    def unload(self, model_id: str) -> float:
        """Free a model; returns the MiB of memory given back (see `_free`). A request the model is
        serving finishes first, on the same weights; the panel keeps reading meanwhile."""
        with self._guard:
            if model_id not in self.models:
                return 0.0
            taken = [self._take(model_id)]
        return self._free(taken)

    def _take(self, model_id: str) -> tuple[str, TextModel | ImageModel, threading.Lock | None]:
        """Remove a model from the loaded set (hold the guard); `_free` frees it."""
        return model_id, self.models.pop(model_id), self.locks.pop(model_id, None)

    def _free(self, taken: list[tuple[str, TextModel | ImageModel, threading.Lock | None]]) -> float:
        """Restore and drop the last model in ``taken`` (popped: no reference is left behind) once its
        request in flight (if any) is done. Returns the MiB
        given back: on CUDA the allocator's figure before and after; on the CPU the bytes of the model's
        storages that no live tensor holds any more (RSS rarely shrinks)."""
        model_id, model, lock = taken.pop()
        before, _ = memory_mb(self.device.torch_device)
        storages = model.storages
        with lock or contextlib.nullcontext():  # after the request in flight, if any
            model.restore(transforms=False)  # dropped: nothing to rebuild
        alive = weakref.ref(model.hot_module)
        del model
        gc.collect()
        aoti.lifetimes.release_orphans()  # the weights its compiled graphs were loaded with
        if self.device.torch_device == "cuda":
            torch.cuda.empty_cache()
            freed = before - memory_mb("cuda")[0]
        else:
            freed = (sum(storages.values()) - aoti.lifetimes.bytes_still_held(storages)) / 2**20
        if alive() is not None:
            log.warning("engine: %s is still referenced after unload; its memory was not freed", model_id)
        self.states.unloaded(model_id, freed)
        log.info("engine: unloaded %s (%.1f MiB freed)", model_id, freed)
        return freed

    # --- optimize ----------------------------------------------------------------------------------

    def optimize(self, model_id: str, recipe: Recipe | None = None, background: bool = True,
                 switches: Switches | None = None) -> ModelState:
        """Transform, compile (or load from cache) and swap in the model's AOTI graphs with ``recipe``
        (default: its kind's plain recipe; ``switches``: the owner's, which it was made from, for the
        record); in a thread by default. A model transformed otherwise before (FP8 on, now off) is given
        back its own weights first: no reload."""
        spec = registry.get(model_id)
        model = self.load(spec, rebind=False)
        running = self.threads.get(model_id)
        if running is not None and running.is_alive():
            return self.states[model_id]
        state = self.states.compiling(model_id, switches, "exporting and compiling the hot module",
                                      "waiting for another load or compile to finish")
        self.recipes[model_id] = recipe

        def on_stage(stage: str, estimate_s: float | None) -> None:
            self.states.stage(model_id, stage, estimate_s)

        def work() -> None:
            try:
                with TORCH_STATE:
                    status = model.optimize(recipe, cache=self.cache, exclusive=self.locks[model_id], on_stage=on_stage)
                self.states.compiled(model_id, status, model.ref)
            except Exception as exc:  # a failed compile leaves the model eager, visibly
                log.exception("engine: compile of %s failed", model_id)
                model.restore()
                self.states.failed(model_id, f"AOTI failed, serving eager: {type(exc).__name__}: {exc}",
                                   f"aoti -> eager: {type(exc).__name__}")

        if background:
            thread = threading.Thread(target=work, name=f"aoti-compile-{model_id}", daemon=True)
            self.threads[model_id] = thread
            thread.start()
            return state  # compiling (`wait` gives the outcome)
        work()
        return self.states[model_id]

    def bind(self, binding: Binding) -> float:
        """Make this process's copy of the model run what ``binding`` names (in a ZeroGPU worker: the
        graphs the main process recorded, or eager); returns the seconds it took, 0 when it already did.
        A worker pays this once; the next calls it serves find the graphs bound."""
        model = self.load(registry.get(binding.model_id))
        if model.ref == binding.ref and (binding.ref or not aoti.transforms_of(model.hot_module)):
            return 0.0
        start = time.perf_counter()
        with self.locks[binding.model_id]:
            if binding.ref is None:
                model.restore()
                self.states.switched_off(binding.model_id)
            else:
                try:
                    status = model.bind(binding.ref, self.cache)
                except Exception as exc:  # a package this process can't bind: serve eager, say why
                    log.exception("engine: binding %s failed", binding.model_id)
                    model.restore()
                    self.states.failed(binding.model_id, f"could not bind the compiled graphs, serving eager: {type(exc).__name__}: {exc}",
                                       f"aoti -> eager: {type(exc).__name__}: {exc}")
                else:
                    self.states.compiled(binding.model_id, status, model.ref)
        seconds = time.perf_counter() - start
        log.info("engine: %s bound to %s in %.3f s", binding.model_id, binding.ref or "eager", seconds)
        return seconds

    def wait(self, model_id: str, timeout: float | None = None) -> ModelState:
        thread = self.threads.get(model_id)
        if thread is not None:
            thread.join(timeout)
        return self.states[model_id]

    def set_eager(self, model_id: str) -> ModelState:
        """Turn AOTI off for a model (A/B): back to its eager forward (and eager after a switch out
        and back in)."""
        model = self.models.get(model_id)
        self.recipes.pop(model_id, None)
        if model is not None:
            with self.locks[model_id]:
                model.restore()
        return self.states.switched_off(model_id)

    # --- generate ----------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """Every model's compile state, with the live guard counters of the loaded ones (when requests
        run in this process)."""
        with self._guard:
            loaded = list(self.models.items()) if self.observe_locally else []
        for model_id, model in loaded:
            self._live(model_id, model)
        return self.states.rows()

    def _request_lock(self, model_id: str) -> threading.Lock:
        """The lock a request on ``model_id`` holds; a clear error if the model was switched out between
        its load and now (another request loaded a model of its task)."""
        lock = self.locks.get(model_id)
        if lock is None:
            raise RuntimeError(f"{model_id} was unloaded for another model of its task while this request started; send it again.")
        return lock

    def _live(self, model_id: str, model: TextModel | ImageModel) -> aoti.Status:
        live = aoti.status_of(model.hot_module)
        self.states.live(model_id, live)
        return live

    def runtime_of(self, model_id: str) -> str:
        model = self.models.get(model_id)
        if model is None:
            return "eager"
        return aoti.status_of(model.hot_module).runtime

    def generate_text(self, model_id: str, prompt: str, params: SamplingParams, eager: bool = False) -> Iterator[TextStep]:
        """Stream text; with ``eager`` on the model's eager forward for this request alone (an A/B
        comparison: the compiled graphs stay swapped in for everyone else)."""
        model = self.load(registry.get(model_id))
        assert isinstance(model, TextModel), f"{model_id} is not a text model"
        with self._request_lock(model_id), aoti.eager(model.hot_module) if eager else contextlib.nullcontext():
            last = None
            for step in model.generate(prompt, params):  # generate() validates its inputs before it runs
                last = step
                yield step
            rate = last.decode_tokens_per_s if last is not None else None
            if rate and self.observe_locally and not params.speculative:  # the compile's speedup, not speculation's
                runtime = "eager" if eager else self._live(model_id, model).runtime
                self.states.observed(model_id, 1 / rate, runtime)  # seconds per decoded token

    def generate_image(self, model_id: str, prompt: str, params: ImageParams, progress=None, eager: bool = False) -> ImageResult:
        """One image; ``eager`` as in `generate_text`."""
        model = self.load(registry.get(model_id))
        assert isinstance(model, ImageModel), f"{model_id} is not an image model"
        with self._request_lock(model_id), aoti.eager(model.hot_module) if eager else contextlib.nullcontext():
            result = model.generate(prompt, params, progress)  # generate() validates its inputs before it runs
        if result.step_ms and self.observe_locally:
            runtime = "eager" if eager else self._live(model_id, model).runtime
            self.states.observed(model_id, median(result.step_ms) / 1e3, runtime)
        return result

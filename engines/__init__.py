"""engines: what model runs where, and how. `Studio` is the one facade the app talks to."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import aoti

from . import registry
from .device import DeviceInfo, discover
from .distributed import DistributedEngine
from .image import ImageParams, ImageResult, check_image_request
from .lightweight import CompileState, LightweightEngine
from .metrics import Metrics, RequestRecord, memory_mb
from .select import Decision, choose
from .text import SamplingParams, TextStep

log = logging.getLogger(__name__)

__all__ = ["Studio", "SamplingParams", "ImageParams", "ImageResult", "TextStep", "CompileState", "Decision", "DeviceInfo"]


class Studio:
    """Model catalog + device + engine + metrics, behind plain methods that validate their inputs and
    raise ``ValueError`` with a message a user can act on."""

    def __init__(self, device: DeviceInfo | None = None, cache: aoti.Cache | None = None) -> None:
        self.device = device or discover()
        self.engine = LightweightEngine(self.device, cache)
        self.distributed: dict[str, DistributedEngine] = {}
        self.metrics = Metrics()

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
                "state": self.engine.states[spec.id].state,
            })
        return rows

    def check_model(self, model_id: str, task: str) -> registry.ModelSpec:
        """The spec if ``model_id`` can serve ``task`` here; otherwise a ValueError saying why not."""
        try:
            spec = registry.get(model_id)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if spec.task != task:
            raise ValueError(f"{model_id} is a {spec.task} model; pick a {task} model for this tab.")
        available, why = registry.availability(spec)
        if not available:
            raise ValueError(f"{model_id} is not available here: {why}.")
        decision = self.decision(model_id)
        if decision.engine == "refused":
            raise ValueError(f"{model_id} {decision.reason}.")
        return spec

    # --- lifecycle ---------------------------------------------------------------------------------

    def startup(self, model_ids: list[str] | None = None, compile: bool = True, background: bool = True) -> None:
        """Load the given (default: the embedded) models so they serve eagerly, then compile or load
        their AOTI graphs (in the background unless ``background=False``)."""
        specs = [registry.get(i) for i in model_ids] if model_ids else [s for s in registry.CATALOG if s.is_local]
        specs = [s for s in specs if registry.availability(s)[0]]
        for spec in specs:  # all loaded first: a load waits for a running compile
            self.engine.load(spec)
        for spec in specs if compile else []:
            self.engine.optimize(spec.id, self.options_for(spec.id), background=background)

    def options_for(self, model_id: str, fp8: bool = False, regional: bool = False) -> aoti.CompileOptions:
        """Compile options from the switches and the selection (FP8 when only FP8 weights fit)."""
        decision = self.decision(model_id, fp8)
        preset = "default"
        if decision.preset:
            text = registry.get(model_id).task == "text"
            preset = decision.preset.text_inductor if text else decision.preset.inductor
        return aoti.CompileOptions(quantization=decision.quantization, regional=regional, preset=preset)

    def set_optimization(self, model_id: str, use_aoti: bool, fp8: bool = False, regional: bool = False) -> CompileState:
        """The per-model switches: AOTI on/off, FP8, regional. FP8 where it can't run is refused."""
        spec = registry.get(model_id)
        if fp8 and not (spec.fp8 and self.device.fp8):
            raise ValueError(
                f"FP8 needs a GPU with compute capability >= 8.9 and a model that offers it; "
                f"{model_id} on {self.device.label} does not."
            )
        if regional and not spec.regional:
            raise ValueError(f"regional compilation is not offered for {model_id}.")
        if not use_aoti:
            return self.engine.set_eager(model_id)
        return self.engine.optimize(model_id, self.options_for(model_id, fp8, regional))

    # --- requests ----------------------------------------------------------------------------------

    def generate_text(self, model_id: str, prompt: str, params: SamplingParams) -> Iterator[TextStep]:
        """Stream text; pure (no bookkeeping), so it can run in a ZeroGPU worker. Record with `record_text`."""
        spec = self.check_model(model_id, "text")
        if self.decision(model_id).engine == "distributed":
            if not 1 <= params.max_new_tokens <= spec.max_new_tokens:
                raise ValueError(f"`max_new_tokens` must be between 1 and {spec.max_new_tokens}, got {params.max_new_tokens}.")
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
        """Generate one image; pure, like `generate_text`. Record with `record_image`."""
        spec = self.check_model(model_id, "image")
        if self.decision(model_id).engine == "distributed":
            check_image_request(spec, prompt, params)  # bad input never reaches (or restarts) the workers
            return self._distributed(spec).generate_image(prompt, params)
        return self.engine.generate_image(model_id, prompt, params, progress)

    def runtime_of(self, model_id: str) -> str:
        if model_id in self.distributed:
            return f"eager, {self.distributed[model_id].parallelism} x{self.device.count}"
        return self.engine.runtime_of(model_id)

    def record_text(self, model_id: str, runtime: str, latency_s: float, last: TextStep | None, error: str | None = None) -> None:
        tokens = last.tokens if last else 0
        decode_s = latency_s - (last.ttft_s or 0) if last else 0
        self.metrics.record(RequestRecord(
            model_id, "text", runtime, latency_s, ttft_s=last.ttft_s if last else None, tokens=tokens,
            tokens_per_s=round((tokens - 1) / decode_s, 2) if tokens > 1 and decode_s > 0 else None,
            peak_mem_mb=self._memory(), ok=error is None, error=error,
        ))

    def record_image(self, model_id: str, runtime: str, result: ImageResult | None, latency_s: float, error: str | None = None) -> None:
        steps = sorted(result.step_ms) if result else []
        self.metrics.record(RequestRecord(
            model_id, "image", runtime, latency_s, steps=len(steps) or None,
            step_ms=steps[len(steps) // 2] if steps else None, peak_mem_mb=self._memory(), ok=error is None, error=error,
        ))

    def _memory(self) -> float | None:
        self.metrics.sample_memory(self.device.torch_device)
        current, peak = memory_mb(self.device.torch_device)
        return round(peak if peak is not None else current, 1)

    def compile_status(self) -> list[dict[str, Any]]:
        return self.engine.rows()

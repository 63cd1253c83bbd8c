"""Image generation: a diffusion pipeline whose denoiser (transformer or UNet) runs as AOTI graphs,
one per resolution bucket, dispatched by input shape."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

import aoti
from aoti import module_device

from . import registry
from .adapters import AdapterSlot, check_adapter_request
from .device import on_zerogpu
from .optimize import bind_module, module_storages, optimize_module
from .recipes import Recipe, image_recipe
from .registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageParams:
    height: int
    width: int
    steps: int
    seed: int = 0
    guidance: float | None = None
    step_cache: str = "off"  # a level of `STEP_CACHE`: "off", "fast" or "faster"
    lora: str = ""  # an adapter of `registry.adapters_for` the model ("": none)
    lora_scale: float = 1.0


@dataclass
class ImageResult:
    image: Image.Image
    latency_s: float
    step_ms: list[float] = field(default_factory=list)
    stages_s: dict[str, float] = field(default_factory=dict)  # seconds per stage: `STAGES`, those the pipeline has
    cached_steps: list[int] = field(default_factory=list)  # the steps that reused the blocks' residual (step caching)
    step_cache_note: str = ""  # why step caching stopped part-way, where it did
    lora_switch_s: float = 0.0  # seconds spent fusing (or unfusing) the asked adapter first (0: it was in place)


MAX_STEPS = 50  # denoising steps a request may ask for (the UI's slider too)
GUIDANCE_MAX = 10.0
MAX_PROMPT_CHARS = 1000
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
STAGES = ("text encoding", "denoising", "VAE decode")
# Step caching levels (`aoti.step_cache`), the thresholds chosen on the embedded DiT (its first block's
# residual changes 8-17 % a step over 20 steps): "fast" reuses about a quarter of the steps, "faster"
# about half, each still drawing its prompt (BENCHMARKS.md, "Step caching").
STEP_CACHE: dict[str, aoti.StepCacheConfig | None] = {
    "off": None,
    "fast": aoti.StepCacheConfig(threshold=0.12, warmup_steps=2, max_in_a_row=3),
    "faster": aoti.StepCacheConfig(threshold=0.2, warmup_steps=2, max_in_a_row=3),
}


class StageClock:
    """Where an image's time goes, timed by forward hooks on the pipeline's own modules: the text
    encoders ("text encoding"), the denoiser from its first call to the last step's end ("denoising",
    with each step's time) and the VAE's decoder ("VAE decode"). On a GPU each mark is a CUDA event,
    read once at `close`: timing a step never makes the host wait for the GPU, which would leave the
    GPU idle while the host launches the next step's work."""

    def __init__(self, pipe, denoiser: torch.nn.Module, events: bool) -> None:
        self.events = events
        self._spans: list[tuple[str, Any, Any]] = []  # (stage, start mark, end mark)
        self.marks: list[Any] = []  # the denoiser's first call, then the end of each step
        self._started: dict[str, Any] = {}
        timed = [(getattr(pipe, name, None), "text encoding") for name in TEXT_ENCODERS]
        timed.append((getattr(getattr(pipe, "vae", None), "decoder", None), "VAE decode"))
        self._handles = []
        for module, stage in timed:
            if isinstance(module, torch.nn.Module):
                self._handles.append(module.register_forward_pre_hook(lambda m, a, stage=stage: self._start(stage)))
                self._handles.append(module.register_forward_hook(lambda m, a, out, stage=stage: self._stop(stage)))
        self._handles.append(denoiser.register_forward_pre_hook(lambda m, a: self._first_step()))

    def mark(self) -> Any:
        """Now: a CUDA event recorded on the current stream, or the host's clock."""
        if not self.events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def _seconds(self, start: Any, end: Any) -> float:
        return start.elapsed_time(end) / 1e3 if self.events else end - start

    def _start(self, stage: str) -> None:
        self._started[stage] = self.mark()

    def _stop(self, stage: str) -> None:
        self._spans.append((stage, self._started.pop(stage), self.mark()))

    def _first_step(self) -> None:
        if not self.marks:
            self.marks.append(self.mark())

    def step_done(self) -> None:
        self.marks.append(self.mark())

    def close(self) -> tuple[list[float], dict[str, float]]:
        """Remove the hooks and read the marks (on a GPU, after its work so far is done); (each step's
        ms, seconds per stage in `STAGES` order)."""
        for handle in self._handles:
            handle.remove()
        if self.events:
            torch.cuda.synchronize()
        stages_s: dict[str, float] = {}
        for stage, start, end in self._spans:
            stages_s[stage] = stages_s.get(stage, 0.0) + self._seconds(start, end)
        steps = [round(self._seconds(a, b) * 1e3, 3) for a, b in zip(self.marks, self.marks[1:])]
        if steps:
            stages_s["denoising"] = sum(steps) / 1e3
        return steps, {stage: round(stages_s[stage], 4) for stage in STAGES if stage in stages_s}


def prompt_hint(spec: ModelSpec) -> str:
    """What a prompt for ``spec`` can say, where the model knows a fixed vocabulary ("" otherwise)."""
    if not spec.embedded_shapes:
        return ""
    from .pipelines.shapes import labels_at, vocabulary

    try:
        return f"This model draws one shape from these words: {vocabulary(labels_at(spec.source))}."
    except OSError:  # not on this disk: said when it is asked for
        return ""


def check_image_request(spec: ModelSpec, prompt: str, params: ImageParams) -> None:
    """What any image model checks before it runs: a ValueError a user can act on."""
    if not prompt or not prompt.strip():
        raise ValueError("`prompt` is empty: describe the image.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise ValueError(f"`prompt` is {len(prompt)} characters; at most {MAX_PROMPT_CHARS}.")
    if (params.height, params.width) not in spec.sizes:
        sizes = ", ".join(f"{w}x{h}" for h, w in spec.sizes)
        raise ValueError(f"size {params.width}x{params.height} is not offered for {spec.id}; choose one of {sizes}.")
    if not 1 <= params.steps <= MAX_STEPS:
        raise ValueError(f"`steps` must be between 1 and {MAX_STEPS}, got {params.steps}.")
    if params.step_cache not in STEP_CACHE:
        raise ValueError(f"`step_cache` must be one of {', '.join(STEP_CACHE)}, got {params.step_cache!r}.")
    if params.step_cache != "off" and not spec.step_cache:
        raise ValueError(f"step caching (`step_cache`) is not offered for {spec.id}: its denoiser's blocks can't be skipped "
                         "one by one; choose \"off\".")
    check_adapter_request(spec.id, params.lora, params.lora_scale)
    if spec.embedded_shapes:  # its vocabulary is known without loading it: refused at the door, loaded or not
        from .pipelines.shapes import label_for, labels_at

        label_for(prompt, labels_at(spec.source))




def keep_in_host_memory(module: torch.nn.Module, device: str) -> list[torch.utils.hooks.RemovableHandle]:
    """``module``'s weights wait in host memory; each call runs on a copy on ``device``, dropped when
    the call returns (the host copy is still the weights: nothing is copied back)."""
    host = {name: t.data for name, t in [*module.named_parameters(), *module.named_buffers()]}

    def tensors():
        return [*module.named_parameters(), *module.named_buffers()]

    def move_in(mod, args):
        for name, tensor in tensors():
            tensor.data = host[name].to(device, non_blocking=True)

    def move_out(mod, args, output):
        for name, tensor in tensors():
            tensor.data = host[name]

    return [module.register_forward_pre_hook(move_in), module.register_forward_hook(move_out)]


class ImageModel:
    """A loaded diffusion pipeline; `optimize` compiles its denoiser per size bucket. With
    ``offload_encoders`` (`engines.select.choose` decides it where the pipeline does not fit with them)
    the text encoders stay in host memory and move to the device for each prompt's encoding."""

    def __init__(self, spec: ModelSpec, device: str = "cpu", offload_encoders: bool = False) -> None:
        self.spec = spec
        self.shapes = spec.embedded_shapes
        dtype = torch.float32 if device == "cpu" else getattr(torch, spec.dtype)
        if spec.pipeline == "shapes-dit":
            from .pipelines.shapes_dit import ShapesDiTPipeline

            self.pipe = ShapesDiTPipeline.from_pretrained(spec.source, torch_dtype=dtype)
        elif self.shapes:
            from .pipelines import ShapesPipeline

            self.pipe = ShapesPipeline.from_pretrained(spec.source, torch_dtype=dtype)
        else:
            from diffusers import DiffusionPipeline

            # Straight onto the GPU where everything goes there: no host copy of the weights first.
            direct = {"device_map": device} if device == "cuda" and not offload_encoders and not on_zerogpu() else {}
            self.pipe = DiffusionPipeline.from_pretrained(spec.source, revision=spec.revision, torch_dtype=dtype, **direct)
        self.in_host: dict[str, int] = {}  # components kept in host memory, moved in per call: name -> bytes
        if offload_encoders and not self.shapes:  # (the embedded pipeline has no text encoders)
            for name in TEXT_ENCODERS:
                encoder = getattr(self.pipe, name, None)
                if isinstance(encoder, torch.nn.Module):
                    keep_in_host_memory(encoder, device)
                    self.in_host[name] = sum(module_storages(encoder).values())
            modules = [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]
            for module in modules:
                if not any(module is getattr(self.pipe, name, None) for name in self.in_host):
                    module.to(device)
        else:
            self.pipe = self.pipe.to(device)
        self.denoiser: torch.nn.Module = getattr(self.pipe, spec.compile_module)
        self.status = aoti.Status(runtime="eager", reason="not compiled yet")
        self.ref: dict | None = None  # the artifact bound now (`aoti.Artifact.ref`), None when eager
        self.adapter = AdapterSlot(spec.id, self.denoiser, self._read_adapter)

    @property
    def placement(self) -> str:
        """What is not on the device, in words ("" when everything is)."""
        if not self.in_host:
            return ""
        size = sum(self.in_host.values()) / 1024**3
        return (f"{', '.join(self.in_host)} in host memory ({size:.1f} GiB), moved to the {'GPU' if self.device == 'cuda' else self.device} for each "
                "prompt's encoding: the pipeline does not fit the device with them")

    @property
    def device(self) -> str:
        """Where the weights are now: "cuda" or "cpu" (in a ZeroGPU worker, wherever spaces moved them)."""
        return module_device(self.denoiser).type

    def _run(self, prompt: str, params: ImageParams, callback=None) -> Image.Image:
        generator = torch.Generator(self.device).manual_seed(params.seed)
        if self.shapes:
            return self.pipe(prompt, num_inference_steps=params.steps, generator=generator,
                             height=params.height, width=params.width, callback=callback)
        kwargs = {"guidance_scale": params.guidance} if params.guidance is not None else {}
        if callback is not None:
            kwargs["callback_on_step_end"] = lambda pipe, i, t, state: (callback(i, params.steps), state)[1]
        return self.pipe(prompt, num_inference_steps=params.steps, generator=generator, height=params.height,
                         width=params.width, **kwargs).images[0]

    def capture_calls(self) -> aoti.CapturedCalls:
        """One denoiser call per size bucket (the run stops right after each first call)."""
        calls = aoti.CapturedCalls()
        for height, width in self.spec.sizes:
            with aoti.capture(self.denoiser) as call:
                self._run("a red circle, top left" if self.shapes else "a photo of a cat",
                          ImageParams(height, width, steps=2))
            calls.calls.extend(call.calls)
        return calls

    @property
    def hot_module(self) -> torch.nn.Module:
        return self.denoiser

    @property
    def storages(self) -> dict[int, int]:
        """Every module of the pipeline (denoiser, text encoders, VAE): storage address -> bytes."""
        components = getattr(self.pipe, "components", {"unet": self.denoiser})
        return {ptr: n for m in components.values() if isinstance(m, torch.nn.Module) for ptr, n in module_storages(m).items()}

    @property
    def nbytes(self) -> int:
        return sum(self.storages.values())

    def optimize(self, recipe: Recipe | None = None, cache: aoti.Cache | None = None,
                 exclusive: contextlib.AbstractContextManager | None = None, cuda_graphs: bool | None = None,
                 on_stage: aoti.OnStage | None = None) -> aoti.Status:
        """Transform, compile (or load) one denoiser graph per size bucket and swap them in (``recipe``:
        see `image_recipe`; the rest as `TextModel.optimize`). On a GPU each bucket's graph is replayed
        as a CUDA graph (``cuda_graphs``, default on): a denoising step launches hundreds of kernels,
        and the host's launch gaps between them add up."""
        recipe = recipe or image_recipe()
        graphs = self.device == "cuda" if cuda_graphs is None else cuda_graphs
        self.adapter.drop()  # built on the model's own weights; the next request fuses again
        self.status, self.ref = optimize_module(self.denoiser, self.capture_calls, recipe, cache, exclusive, cuda_graphs=graphs,
                                                on_stage=on_stage, timed=lambda calls: calls.calls[:1])  # a step at the first size
        return self.status

    def bind(self, ref: dict, cache: aoti.Cache | None = None, cuda_graphs: bool | None = None) -> aoti.Status:
        """Swap in the graphs of an artifact compiled elsewhere (`aoti.load`): no capture, no build."""
        graphs = self.device == "cuda" if cuda_graphs is None else cuda_graphs
        self.adapter.drop()
        self.status, self.ref = bind_module(self.denoiser, ref, cache, cuda_graphs=graphs)
        return self.status

    def restore(self, transforms: bool = True) -> None:
        """Eager again; ``transforms=False`` leaves the rewrites in place (a model about to be dropped)."""
        self.adapter.drop()
        self.status, self.ref = aoti.restore(self.denoiser, transforms=transforms), None

    def _read_adapter(self, spec: registry.AdapterSpec) -> aoti.LoraAdapter:
        """An offered adapter, read with the pipeline's own `lora_state_dict` (diffusers')."""
        if not hasattr(type(self.pipe), "lora_state_dict"):
            raise ValueError(f"{self.spec.id}'s pipeline reads no LoRA adapters")
        kwargs = {"weight_name": spec.weight_name, "revision": spec.revision} if not spec.is_local else {}
        return aoti.LoraAdapter.from_diffusers(type(self.pipe), spec.source, name=spec.id, **kwargs)

    def check_inputs(self, prompt: str, params: ImageParams) -> None:
        check_image_request(self.spec, prompt, params)
        if params.step_cache != "off" and (why := aoti.step_cache_refusal(self.denoiser)):
            raise ValueError(f"step caching (`step_cache`) can't run on {self.spec.id} now: {why}.")
        if self.shapes:
            self.pipe.check_inputs(prompt)

    @torch.no_grad()
    def generate(self, prompt: str, params: ImageParams, progress=None,
                 step_cache: aoti.StepCacheConfig | None = None) -> ImageResult:
        """Generate one image; each step's time and each stage's (`StageClock`) are measured. With
        ``params.step_cache`` on, steps that change little reuse the residual of the denoiser's blocks
        after the first (`aoti.step_cache`); which steps did is in the result. ``step_cache``: a config
        in place of the level's (a benchmark's fixed schedule)."""
        self.check_inputs(prompt, params)
        switch_s = self.adapter.use(params.lora, params.lora_scale)
        config = step_cache or STEP_CACHE[params.step_cache]
        caching = aoti.step_cache(self.denoiser, config) if config else contextlib.nullcontext(aoti.StepCacheStats())
        clock = StageClock(self.pipe, self.denoiser, events=self.device == "cuda")

        def on_step(i: int, total: int) -> None:
            clock.step_done()
            if progress is not None:
                progress((i + 1) / total, desc=f"denoising {i + 1}/{total}")

        start = time.perf_counter()
        try:
            with caching as cache_stats:
                image = self._run(prompt, params, on_step)
        finally:
            steps, stages = clock.close()
        return ImageResult(image, time.perf_counter() - start, steps, stages, cache_stats.cached_steps, cache_stats.fallback or "",
                           round(switch_s, 4))

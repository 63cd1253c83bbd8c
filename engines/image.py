"""Image generation: a diffusion pipeline whose denoiser (transformer or UNet) runs as AOTI graphs,
one per resolution bucket, dispatched by input shape."""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch
from PIL import Image

import aoti
from aoti import module_device

from .optimize import Recipe, bind_module, module_storages, optimize_module
from .registry import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageParams:
    height: int
    width: int
    steps: int
    seed: int = 0
    guidance: float | None = None


@dataclass
class ImageResult:
    image: Image.Image
    latency_s: float
    step_ms: list[float] = field(default_factory=list)


def check_image_request(spec: ModelSpec, prompt: str, params: ImageParams) -> None:
    """What any image model checks before it runs: a ValueError a user can act on."""
    if not prompt or not prompt.strip():
        raise ValueError("`prompt` is empty: describe the image.")
    if len(prompt) > 1000:
        raise ValueError(f"`prompt` is {len(prompt)} characters; at most 1000.")
    if (params.height, params.width) not in spec.sizes:
        sizes = ", ".join(f"{w}x{h}" for h, w in spec.sizes)
        raise ValueError(f"size {params.width}x{params.height} is not offered for {spec.id}; choose one of {sizes}.")
    if not 1 <= params.steps <= 100:
        raise ValueError(f"`steps` must be between 1 and 100, got {params.steps}.")
    if spec.pipeline == "shapes":  # its vocabulary is known without loading it: refused at the door, loaded or not
        from .pipelines.shapes import label_for, labels_at

        label_for(prompt, labels_at(spec.source))


def image_recipe(fp8: bool = False, flux_attention: bool = False, regional: bool = False,
                 preset: str = "default") -> Recipe:
    """How an image model's denoiser is optimized, in order:

    1. FLUX attention's q/k norms and rotary embedding as one kernel (``flux_attention``: FLUX on a GPU);
    2. FP8 weights (``fp8``);
    3. compiled with one static graph per size bucket, or per repeated block (``regional``).
    """
    transforms: list[aoti.TransformConfig] = []
    if flux_attention:
        transforms.append(aoti.FuseFluxNormRope())
    if fp8:
        transforms.append(aoti.Float8Rowwise())
    return Recipe(tuple(transforms), aoti.CompileOptions(dispatch="buckets", regional=regional, preset=preset))


class ImageModel:
    """A loaded diffusion pipeline; `optimize` compiles its denoiser per size bucket."""

    def __init__(self, spec: ModelSpec, device: str = "cpu") -> None:
        self.spec = spec
        self.shapes = spec.pipeline == "shapes"
        dtype = torch.float32 if device == "cpu" else getattr(torch, spec.dtype)
        if self.shapes:
            from .pipelines import ShapesPipeline

            self.pipe = ShapesPipeline.from_pretrained(spec.source, torch_dtype=dtype).to(device)
        else:
            from diffusers import DiffusionPipeline

            self.pipe = DiffusionPipeline.from_pretrained(spec.source, revision=spec.revision, torch_dtype=dtype).to(device)
        self.denoiser: torch.nn.Module = getattr(self.pipe, spec.compile_module)
        self.status = aoti.Status(runtime="eager", reason="not compiled yet")
        self.ref: dict | None = None  # the artifact bound now (`aoti.Artifact.ref`), None when eager

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
        self.status, self.ref = optimize_module(self.denoiser, self.capture_calls, recipe, cache, exclusive, cuda_graphs=graphs,
                                                   on_stage=on_stage)
        return self.status

    def bind(self, ref: dict, cache: aoti.Cache | None = None, cuda_graphs: bool | None = None) -> aoti.Status:
        """Swap in the graphs of an artifact compiled elsewhere (`aoti.load`): no capture, no build."""
        graphs = self.device == "cuda" if cuda_graphs is None else cuda_graphs
        self.status, self.ref = bind_module(self.denoiser, ref, cache, cuda_graphs=graphs)
        return self.status

    def restore(self, transforms: bool = True) -> None:
        """Eager again; ``transforms=False`` leaves the rewrites in place (a model about to be dropped)."""
        self.status, self.ref = aoti.restore(self.denoiser, transforms=transforms), None

    def check_inputs(self, prompt: str, params: ImageParams) -> None:
        check_image_request(self.spec, prompt, params)
        if self.shapes:
            self.pipe.check_inputs(prompt)

    @torch.no_grad()
    def generate(self, prompt: str, params: ImageParams, progress=None) -> ImageResult:
        """Generate one image; per-step times are measured from the step callbacks."""
        self.check_inputs(prompt, params)
        marks: list[float] = []

        def on_step(i: int, total: int) -> None:
            if self.device != "cpu":
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
            if progress is not None:
                progress((i + 1) / total, desc=f"denoising {i + 1}/{total}")

        start = time.perf_counter()
        image = self._run(prompt, params, on_step)
        latency = time.perf_counter() - start
        stamps = [start, *marks]
        return ImageResult(image, latency, [round((b - a) * 1e3, 3) for a, b in zip(stamps, stamps[1:])])

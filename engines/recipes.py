"""What a model is optimized with: the owner's `Switches`, what this device and model allow, and the
`Recipe` (transforms, then compile options) they make.

The one place where "can FP8 run here?" is decided (`fp8_refusal`); every caller (the catalog's rows,
the owner's checks, the Optimization tab's labels) reads it from here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import aoti

from .device import DeviceInfo
from .registry import ModelSpec
from .select import choose

# Transforms that only route calls to our decode kernels: dropped, visibly, when a build with them fails
# (Inductor's C++ wrapper has failed to compile such graphs now and then; see `aoti.passes.inductor_fixes`).
DECODE_KERNELS = (aoti.OneRowKernels, aoti.FuseDecoderLayers, aoti.DecodeAttention)


@dataclass(frozen=True)
class Switches:
    """The owner's choices for one model, from the Optimization tab (or `/set_optimization`) down to
    its recipe. The per-request choices of later features (LoRA adapter, step caching) travel with
    the request, not here: changing these is a build, those never are."""

    aoti: bool = True
    fp8: bool = False
    regional: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Recipe:
    """What one model is optimized with: the transforms, in order, then the compile options."""

    transforms: tuple[aoti.TransformConfig, ...] = ()
    options: aoti.CompileOptions = field(default_factory=aoti.CompileOptions)

    def without_decode_kernels(self) -> Recipe:
        """The recipe with Inductor's own kernels for the decode step (and no combo kernels)."""
        transforms = tuple(t for t in self.transforms if not isinstance(t, DECODE_KERNELS))
        preset = "tuned" if self.options.preset == "decode" else self.options.preset
        return Recipe(transforms, self.options.replace(preset=preset))


def default_switches(spec: ModelSpec) -> Switches:
    """A model's switches until the owner sets them: compiled, regionally where step caching is offered
    (it skips the blocks of a regional build)."""
    return Switches(regional=spec.step_cache)


def fp8_refusal(spec: ModelSpec, device: DeviceInfo) -> str:
    """Why FP8 weights can't be asked for ``spec`` on ``device`` ("" where they can)."""
    if not device.fp8:
        where = "the CPU" if device.kind == "cpu" else f"{device.name}, compute capability {device.capability[0]}.{device.capability[1]}"
        return f"FP8 needs a GPU of compute capability 8.9 or newer; this server runs on {where}"
    if not spec.fp8:
        return f"FP8 needs a model that offers it; {spec.id} does not"
    return ""


def regional_refusal(spec: ModelSpec) -> str:
    """Why regional compilation can't be asked for ``spec`` ("" where it can)."""
    return "" if spec.regional else f"regional compilation is not offered for {spec.id}"


def check_switches(spec: ModelSpec, device: DeviceInfo, switches: Switches) -> None:
    """A ValueError for a switch this model or device can't take; nothing changes either way."""
    if switches.fp8 and (why := fp8_refusal(spec, device)):
        raise ValueError(f"{why}.")
    if switches.regional and (why := regional_refusal(spec)):
        raise ValueError(f"{why}.")


def text_recipe(fp8: bool = False, decode_kernels: bool = False, preset: str = "default") -> Recipe:
    """How a text model is optimized, in order:

    1. q/k/v and gate/up projections fused (one product each);
    2. FP8 weights (``fp8``);
    3. decode kernels (``decode_kernels``, GPUs): one-row linears on `aoti.kernels.gemv`, decoder
       layers' one-token step fused around them, grouped-query decode attention split over the cache;
    4. compiled with a dynamic prefill length and a static one-token decode graph, strict export
       (transformers' static cache is reached through a Python object).
    """
    transforms: list[aoti.TransformConfig] = [aoti.FuseProjections()]
    if fp8:
        transforms.append(aoti.Float8Rowwise())
    if decode_kernels:
        transforms += [aoti.OneRowKernels(), aoti.FuseDecoderLayers(), aoti.DecodeAttention()]
    return Recipe(tuple(transforms), aoti.CompileOptions(dispatch="dynamic", strict=True, preset=preset))


def image_recipe(fp8: bool = False, flux_attention: bool = False, regional: bool = False,
                 preset: str = "default", attention: str = "auto") -> Recipe:
    """How an image model's denoiser is optimized, in order:

    1. FLUX attention's q/k norms and rotary embedding as one kernel (``flux_attention``: FLUX on a GPU);
    2. FP8 weights (``fp8``);
    3. compiled with one static graph per size bucket, or per repeated block (``regional``), its
       attention on ``attention``'s kernel (`aoti.attention`; "fp8": FLUX with FP8 weights on a GPU).
    """
    transforms: list[aoti.TransformConfig] = []
    if flux_attention:
        transforms.append(aoti.FuseFluxNormRope())
    if fp8:
        transforms.append(aoti.Float8Rowwise())
    return Recipe(tuple(transforms), aoti.CompileOptions(dispatch="buckets", regional=regional, preset=preset,
                                                         attention=attention))


def recipe_for(spec: ModelSpec, device: DeviceInfo, switches: Switches) -> Recipe:
    """``spec``'s recipe on ``device`` with ``switches``: FP8 where asked, or where only FP8 weights fit
    (`select.choose`); on a GPU, text models with the decode kernels and Inductor's "decode" preset
    (their decode steps are one-row products), FLUX with its fused q/k norm + rotary kernel and, with
    FP8 weights, FP8 attention."""
    fp8 = switches.fp8 or choose(spec, device).quantization == "fp8_rowwise"
    gpu = device.kind != "cpu"
    if spec.task == "text":
        return text_recipe(fp8, decode_kernels=gpu, preset="decode" if gpu else "default")
    flux_gpu = spec.family == "flux" and gpu
    return image_recipe(fp8, flux_attention=flux_gpu, regional=switches.regional, attention="fp8" if fp8 and flux_gpu else "auto")

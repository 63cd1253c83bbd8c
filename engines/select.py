"""Pick an engine from the model's memory needs against the device budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import registry
from .device import DeviceInfo
from .registry import ModelSpec

GiB = 1024**3
Engine = Literal["lightweight", "distributed", "refused"]
BYTES_PER_PARAM = {"float32": 4, "bfloat16": 2, "float16": 2, "fp8_rowwise": 1, "int8_weight_only": 1}
HEADROOM = 1.15  # allocator fragmentation, CUDA context, compiled graph workspaces


@dataclass(frozen=True)
class Decision:
    engine: Engine
    reason: str
    need_bytes: int
    budget_bytes: int
    quantization: str
    offload_encoders: bool = False  # image pipelines: text encoders wait in host memory, moved in for each prompt
    draft: bool = True  # text models with a draft (`ModelSpec.draft`): load it (False: it does not fit beside the model)


def size_words(nbytes: float) -> str:
    """Bytes in the unit that reads best: "14.2 GiB", "310 MiB"."""
    return f"{nbytes / GiB:.1f} GiB" if nbytes >= GiB else f"{nbytes / 2**20:.0f} MiB"


def runtime_dtype(spec: ModelSpec, device: DeviceInfo) -> str:
    return "float32" if device.kind == "cpu" else spec.dtype


def estimate_parts(spec: ModelSpec, device: DeviceInfo, quantization: str = "none",
                   offload_encoders: bool = False, draft: bool = True) -> tuple[float, float]:
    """(weights, working memory) in bytes on the device, before headroom: the compiled module's weights
    at their runtime dtype (or quantized), an image pipeline's text encoders at their dtype (none with
    ``offload_encoders``), a text model's draft (``draft``: quantized like the model, with its own
    cache); working memory is the KV cache (text) or activations at the largest size (image)."""
    dtype = runtime_dtype(spec, device)
    weight_bytes = BYTES_PER_PARAM[quantization if quantization != "none" else dtype]
    encoders = 0.0 if offload_encoders else spec.encoders_b * 1e9 * BYTES_PER_PARAM[dtype]
    weights = (spec.params_b - spec.encoders_b) * 1e9 * weight_bytes + encoders
    if spec.task == "text":
        # KV cache: about 0.1 MB per token per billion parameters at bf16 (GQA models are below this).
        tokens = spec.max_prompt_tokens + spec.max_new_tokens
        params_b = spec.params_b + (registry.draft(spec.draft).params_b if spec.draft and draft else 0.0)
        weights = params_b * 1e9 * weight_bytes
        working = params_b * 1e9 * 2 * 0.02 + tokens * params_b * 0.1e6
    else:
        side = max((max(s) for s in spec.sizes), default=1024)
        working = (side / 1024) ** 2 * 3 * GiB * max(1.0, spec.params_b / 12)
    return weights, working


def estimate_bytes(spec: ModelSpec, device: DeviceInfo, quantization: str = "none", offload_encoders: bool = False,
                   draft: bool = True) -> int:
    """Weights + working memory, with headroom: what one device must hold."""
    return int(sum(estimate_parts(spec, device, quantization, offload_encoders, draft)) * HEADROOM)


def choose(spec: ModelSpec, device: DeviceInfo, quantization: str = "none") -> Decision:
    """Where the model runs, tried in order: one device as it is; with FP8 weights (models that offer
    them, GPUs that run them); an image pipeline with its text encoders in host memory, moved to the
    GPU for each prompt's encoding (with FP8 weights too where they are offered); several GPUs of the
    host; otherwise a refusal that names the numbers."""
    need = estimate_bytes(spec, device, quantization)
    budget = device.budget_bytes
    numbers = f"needs about {size_words(need)}, {device.label}"
    if need <= budget:
        return Decision("lightweight", f"fits one device: {numbers}", need, budget, quantization)
    fp8 = spec.fp8 and quantization == "none" and device.fp8
    if fp8 and estimate_bytes(spec, device, "fp8_rowwise") <= budget:
        return Decision("lightweight", f"fits with FP8 weights: {numbers}", estimate_bytes(spec, device, "fp8_rowwise"),
                        budget, "fp8_rowwise")
    why_not = ""  # what else was tried, for a refusal
    if spec.draft:  # the model alone, without speculative decoding
        for quant in (quantization, "fp8_rowwise") if fp8 else (quantization,):
            alone = estimate_bytes(spec, device, quant, draft=False)
            how = f"{' with FP8 weights and' if quant != quantization else ''} without its draft {spec.draft}"
            if alone <= budget:
                return Decision("lightweight", f"fits{how} (speculative decoding off): about {alone / GiB:.1f} GiB "
                                f"({numbers} with it)", alone, budget, quant, draft=False)
        why_not = f"; about {alone / GiB:.1f} GiB even{how}"
    if device.kind != "cpu" and device.count > 1:
        n = device.count
        alone = estimate_bytes(spec, device, quantization, draft=False)  # tensor parallel runs no draft
        if spec.task == "text" and alone <= budget * n * 0.9:
            return Decision("distributed", f"too large for one GPU; tensor parallel over {n}: {numbers}", alone,
                            budget * n, quantization, draft=False)
        weights, working = estimate_parts(spec, device, quantization)
        per_gpu = int((weights + working / n) * HEADROOM)  # context parallel: weights on every GPU, activations split
        if spec.task == "image" and per_gpu <= budget:
            return Decision("distributed", f"too large for one GPU; context parallel over {n} "
                            f"(about {per_gpu / GiB:.1f} GiB each): {numbers}", per_gpu, budget, quantization)
        if spec.task == "image":
            why_not += (f"; context parallelism over {n} splits the activations, not the {weights * HEADROOM / GiB:.1f} GiB "
                       "of weights")
    if spec.encoders_b and device.kind != "cpu":
        quant = "fp8_rowwise" if fp8 else quantization
        offloaded = estimate_bytes(spec, device, quant, offload_encoders=True)
        how = f"{'FP8 weights and ' if quant == 'fp8_rowwise' else ''}its text encoders"
        if offloaded <= budget:
            encoders = spec.encoders_b * 1e9 * BYTES_PER_PARAM[runtime_dtype(spec, device)] / GiB
            return Decision("lightweight", f"fits with {how} ({encoders:.1f} GiB) in host memory, moved to the GPU for "
                            f"each prompt: about {offloaded / GiB:.1f} GiB on the device ({numbers} with them)",
                            offloaded, budget, quant, offload_encoders=True)
        why_not += f"; about {offloaded / GiB:.1f} GiB even with {how} in host memory"
    more = "" if device.kind == "cpu" else f" x{device.count} GPU(s)"
    return Decision("refused", f"does not fit: {numbers}{more}{why_not}", need, budget, quantization)

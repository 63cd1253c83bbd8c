"""Compile options: plain, frozen, versioned data that is hashed into every cache key."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from .attention import BACKENDS as ATTENTIONS

OPTIONS_VERSION = 9  # 9: static_sizes (8: module rewrites are transforms, not options)

Dispatch = Literal["static", "dynamic", "buckets"]
Preset = Literal["default", "tuned", "decode", "max-autotune"]

DISPATCH_MODES: tuple[str, ...] = ("static", "dynamic", "buckets")
PRESETS: tuple[str, ...] = ("default", "tuned", "decode", "max-autotune")

# Inductor settings that keep weights outside the package, named like the module's state_dict().
EXTERNAL_WEIGHTS_CONFIGS: dict[str, Any] = {
    "aot_inductor.package_constants_in_so": False,
    "always_keep_tensor_constants": True,
}

# "default" builds fast: every matmul is an ATen (cuBLAS / CUTLASS) call. Without the backend list,
# Inductor autotunes Triton templates for each FP8 `_scaled_mm` shape even when max_autotune is off
# (torch/_inductor/kernel/mm.py: `use_triton_template(..., check_max_autotune=False)`), which made a
# full-width FLUX FP8 build run for more than 6 minutes. "tuned" adds coordinate-descent tuning of
# Inductor's own (pointwise and reduction) kernels' launch parameters. "decode" adds it too, with
# which Inductor turns one-row matmuls (LLM decode) into tuned reductions instead of cuBLAS calls
# (torch/_inductor/decomposition.py: "Our matrix vector multiplies only achieve peak bandwidth with
# coordinate descent tuning"; the `OneRowKernels` transform routes them to `aoti.kernels.gemv`).
# "max-autotune" searches Triton GEMM templates too.
PRESET_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"max_autotune_gemm_backends": "ATEN"},
    "tuned": {"max_autotune_gemm_backends": "ATEN", "coordinate_descent_tuning": True},
    "decode": {"max_autotune_gemm_backends": "ATEN", "coordinate_descent_tuning": True},
    "max-autotune": {"max_autotune": True, "coordinate_descent_tuning": True, "max_autotune_gemm_backends": "ATEN,TRITON"},
}
# Added on CUDA devices. Combo kernels launch independent small Triton kernels as one (Inductor's
# horizontal fusion): a decode step's rotary embeddings of q and k and its two KV-cache writes ran as
# four kernels a layer; with them a decode step launches about a quarter fewer kernels.
GPU_PRESET_CONFIGS: dict[str, dict[str, Any]] = {"decode": {"combo_kernels": True}}


@dataclass(frozen=True)
class DimRange:
    """An explicit dynamic range for one input dimension (`torch.export.Dim(min=, max=)`)."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if self.min < 2:
            raise ValueError(
                f"`DimRange.min` must be >= 2 (got {self.min}); AOTInductor specializes size-1 dims, "
                "so compile size 1 as its own static graph (dispatch='buckets')."
            )
        if self.max < self.min:
            raise ValueError(f"`DimRange.max` ({self.max}) must be >= `min` ({self.min}).")


@dataclass(frozen=True)
class CompileOptions:
    """Everything that decides what an artifact contains.

    Args:
        dispatch: "static" compiles the first captured call's shapes; "dynamic" infers dims that vary
            across captured calls (sizes of 1 get their own static graph); "buckets" compiles one
            static graph per distinct captured shape, all in one package, dispatched by input shape.
        dynamic_dims: explicit ranges, ``((input_path, dim_index, DimRange), ...)`` where
            ``input_path`` is a positional index (``"0"``) or keyword name (``"hidden_states"``).
            Implies dispatch="dynamic" for those dims.
        static_sizes: with dispatch="dynamic", sizes of a varying dim that get a static graph of their own,
            as size 1 always does (a static graph is replayed as a CUDA graph): a speculative verify
            step's ``k + 1`` tokens.
        regional: compile one package per repeated block signature instead of the whole module.
        preset: inductor preset: "default" (fast builds, cuBLAS/CUTLASS matmuls), "tuned" (the same,
            with Inductor's fused kernels tuned by coordinate descent: longer builds), "decode" (LLM decode
            steps: reductions tuned by coordinate descent and, on CUDA, small independent kernels
            launched as combo kernels) or "max-autotune".
        device: "cpu", "cuda" or None (the module's own device).
        method: the module method to compile and swap.
        strict: `torch.export` strict mode (TorchDynamo tracing); needed by transformers' static-cache
            export wrapper, whose cache tensors are reached through a Python object.
        attention: the fused SDPA kernel the graph calls: "auto" (PyTorch's choice), "cudnn", "flash",
            "efficient", "math", or "fp8" (`aoti.kernels.fp8_attention`'s FP8 Triton kernel for unmasked,
            non-causal calls; GPUs with compute capability 8.9+) (see `aoti.attention`).
        one_pass_rows: on CUDA, rows wider than Inductor's one-pass limit (1024 values) are reduced in
            one pass: the FP8 activation scales of rows 4096-32768 wide on `aoti.kernels.fp8_rows`'s
            kernel (with GELU producers moved into it), Inductor's own row reductions persistent up to
            16384 values (`aoti.passes.reductions`). False: Inductor's own choices.

    What the module itself runs (quantized weights, fused projections, decode kernels) is not an
    option: rewrite the module with `aoti.transform` first; its cache key names the transforms.
    """

    dispatch: Dispatch = "static"
    dynamic_dims: tuple[tuple[str, int, DimRange], ...] = ()
    static_sizes: tuple[int, ...] = ()
    regional: bool = False
    preset: Preset = "default"
    device: str | None = None
    method: str = "forward"
    strict: bool = False
    attention: str = "auto"
    one_pass_rows: bool = True
    version: int = field(default=OPTIONS_VERSION)

    def __post_init__(self) -> None:
        if self.dispatch not in DISPATCH_MODES:
            raise ValueError(f"`dispatch` must be one of {DISPATCH_MODES}, got {self.dispatch!r}.")
        if self.preset not in PRESETS:
            raise ValueError(f"`preset` must be one of {PRESETS}, got {self.preset!r}.")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"`attention` must be one of {ATTENTIONS}, got {self.attention!r}.")

    def replace(self, **changes: Any) -> CompileOptions:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["dynamic_dims"] = [[p, d, [r.min, r.max]] for p, d, r in self.dynamic_dims]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompileOptions:
        data = dict(data)
        data["dynamic_dims"] = tuple(
            (str(p), int(d), DimRange(int(r[0]), int(r[1]))) for p, d, r in data.get("dynamic_dims", ())
        )
        data["static_sizes"] = tuple(int(n) for n in data.get("static_sizes", ()))
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def inductor_configs(self, device_type: str = "cpu") -> dict[str, Any]:
        """Inductor configs for this preset on a device of ``device_type``, always with weights kept
        outside the package."""
        gpu = GPU_PRESET_CONFIGS.get(self.preset, {}) if device_type == "cuda" else {}
        return {**PRESET_CONFIGS[self.preset], **gpu, **EXTERNAL_WEIGHTS_CONFIGS}

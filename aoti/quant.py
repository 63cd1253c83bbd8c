"""Quantization recipes and the weight map a compiled graph binds to.

``quantize(module, recipe)`` changes a module's linear layers in place, as torchao's own
``quantize_(model, config)``. "int8_weight_only" is torchao's recipe. "fp8_rowwise" is ours:
`RowwiseFloat8Linear`, plain FP8 weight and scale tensors and a `torch._scaled_mm` call, which
``torch.export`` (strict and non-strict) traces like any other op. torchao's FP8 tensor subclass did
not get through export at full model width (a 1+1-block FLUX.1-dev transformer segfaulted while
exporting on an H200; 4+8 blocks ran for more than 7 minutes; Dynamo's strict export rejected it).
Ours runs the same math as torchao's plain-PyTorch FP8 path (per-row scales, `_scaled_mm` with fast
accumulation), and Inductor fuses the activation quantization into the preceding kernel. A recipe
that cannot run on the target device falls back to "none" with the reason, so the caller can show it.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import fp8_rows, lifetimes
from .fuse import unfuse_projections
from .gemv import GemvLinear, gemv, one_row, runs_on, use_gemv

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class QuantDecision:
    """The recipe that will run, and why it differs from the one asked for (if it does)."""

    requested: str
    applied: str
    reason: str | None = None


FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
SCALE_FLOOR = 1e-12  # an all-zero row gets this scale, not 0 (no division by zero)


def fp8_scaled(x: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` in e4m3 with float32 scales ``amax / 448`` (``amax`` broadcasts against ``x``):
    ``x ≈ values * scale``."""
    scale = amax.float().clamp(min=SCALE_FLOOR) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of a 2-D tensor to e4m3 with its own float32 scale: ``x ≈ q * scale``.
    Wide rows on an FP8 GPU go through `aoti.fp8_rows`'s one-pass kernel."""
    if fp8_rows.serves(x):
        return fp8_rows.quantize(x)
    return fp8_scaled(x, x.abs().amax(dim=-1, keepdim=True))


class RowwiseFloat8Linear(torch.nn.Module):
    """A linear layer with FP8 (e4m3) weights scaled per output row and activations quantized per
    token at run time, multiplied by `torch._scaled_mm` (cuBLASLt / CUTLASS FP8 tensor-core kernels on
    GPUs of compute capability 8.9 and newer).

    The e4m3 weight is kept as its bits, a uint8 parameter without gradient, viewed as e4m3 in
    `forward` (a free reinterpretation, in compiled graphs too). A parameter because Inductor's AOT
    compile clones every buffer of the module it compiles, and held on to the clones: with the weight
    as a buffer, a two-graph build of Qwen2.5-7B geometry left three copies of the FP8 weights on the
    GPU (benchmarks/gpu/quantized_memory.py). Bits because libraries read ``model.dtype`` from the
    first floating-point parameter (diffusers, transformers) and ``module.to(dtype)`` casts every
    floating-point tensor: uint8 is neither. The float32 scale stays a (small) buffer for that reason.

    One-row inputs (an LLM decode step, FLUX's timestep modulation) are bound by reading the weight,
    and cuBLASLt's FP8 kernels tile 128 rows: they read a one-row product's FP8 weight at 1.0-2.4 TB/s
    on an H200. With ``one_row_kernel`` set (`aoti.gemv.use_gemv`; `aoti.compile` sets it with the
    "decode" preset) such calls go through `aoti.gemv` instead, weight-only (the activation stays
    bf16), at 1.4-3.7 TB/s (`benchmarks/gpu/gemv.py`). Inductor's own reduction over the FP8 weight
    (product + sum, gpt-fast's int8 trick) read it at 0.4-1.5 TB/s; BENCHMARKS.md has the figures."""

    one_row_kernel = False

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = torch.nn.Parameter(weight.view(torch.uint8), requires_grad=False)  # (out, in), e4m3 bits
        self.register_buffer("weight_scale", weight_scale)  # (1, out), float32
        self.bias = torch.nn.Parameter(bias, requires_grad=False) if bias is not None else None

    @property
    def fp8_weight(self) -> torch.Tensor:
        """The weight as e4m3, ``(out_features, in_features)``."""
        return self.weight.view(FP8_DTYPE)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> RowwiseFloat8Linear:
        weight, scale = rowwise_fp8(linear.weight.detach())
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(weight, scale.reshape(1, -1).contiguous(), bias)

    fusion: dict = {}  # extra `gemv` arguments for the kernel path, as `aoti.gemv.GemvLinear.fusion`

    def kernel_path(self, x: torch.Tensor) -> bool:
        """Whether a call with ``x`` goes through `aoti.gemv` (weight-only: any activation dtype)."""
        return self.one_row_kernel and runs_on(x.device) and one_row(x)

    def kernel_operands(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The e4m3 weight, per-row scale and bias that `aoti.gemv.gemv` reads."""
        return self.fp8_weight, self.weight_scale.reshape(-1), self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_path(x):
            return gemv(x, *self.kernel_operands(), **self.fusion)
        rows = x.reshape(-1, x.shape[-1])
        q, scale = rowwise_fp8(rows)
        out = torch._scaled_mm(q, self.fp8_weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                               out_dtype=x.dtype, use_fast_accum=True)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8=e4m3 rowwise"


def fp8_compatible(linear: torch.nn.Linear) -> bool:
    """`_scaled_mm` needs both matrix dimensions of the weight to be multiples of 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


def _int8_weight_only_config() -> object:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


RECIPES: dict[str, Callable[[], object]] = {
    "int8_weight_only": _int8_weight_only_config,
}


def fp8_capable(device: torch.device) -> bool:
    """Whether ``device`` has FP8 tensor cores (CUDA compute capability 8.9 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= FP8_MIN_CAPABILITY


def fp8_unsupported(device: torch.device) -> str | None:
    """Why ``device`` has no FP8 tensor cores ("needs ..."), or None where it has them."""
    if device.type != "cuda":
        return f"needs a CUDA GPU; this device is the {device.type.upper()}"
    if not fp8_capable(device):
        major, minor = torch.cuda.get_device_capability(device)
        return f"needs compute capability >= 8.9; this GPU has {major}.{minor}"
    return None


def decide(recipe: str, device: torch.device) -> QuantDecision:
    """Whether ``recipe`` can run on ``device``; FP8 needs CUDA with compute capability >= 8.9."""
    if recipe == "none":
        return QuantDecision(recipe, "none")
    if recipe == "int8_weight_only":
        try:
            import torchao  # noqa: F401
        except ImportError:
            return QuantDecision(recipe, "none", "torchao is not installed")
    if recipe == "fp8_rowwise" and (reason := fp8_unsupported(device)):
        return QuantDecision(recipe, "none", f"FP8 {reason}")
    return QuantDecision(recipe, recipe)


def _linear_only(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear)


def applied(module: torch.nn.Module) -> str:
    """The recipe ``module`` was quantized with by `quantize` ("none" if it was not)."""
    return getattr(module, "_aoti_quantization", "none")


def quantize(module: torch.nn.Module, recipe: str) -> None:
    """Quantize ``module``'s linear layers in place with a named recipe (no-op for "none").

    Quantizing replaces the float weights, so a module quantized with one recipe can't be requantized
    with another (or un-quantized): that raises, and the caller reloads the model instead."""
    current = applied(module)
    if recipe == current:
        return
    if current != "none":
        raise ValueError(
            f"{type(module).__name__} was quantized in place with {current!r}; its float weights are gone. "
            f"Reload the model to compile it with quantization={recipe!r}."
        )
    if recipe == "fp8_rowwise":
        swapped = _swap_linears(module, RowwiseFloat8Linear.from_linear)
        log.info("quantized %s with fp8_rowwise (%d linear layers)", type(module).__name__, swapped)
    else:
        unfuse_projections(module)  # export unwraps torchao's weights on a copy the slices don't see
        _torchao_quantize(module, recipe)
        use_gemv(module, enabled=False)  # the kernel can't read torchao's tensor-subclass weights
    for sub in module.modules():
        sub._aoti_quantization = recipe
    lifetimes.release_orphans()  # float weights that an earlier package was loaded with


def keeps_plain_weights(recipe: str) -> bool:
    """Whether a recipe leaves weights as plain tensors (not torchao tensor subclasses)."""
    return recipe in ("none", "fp8_rowwise")


def _torchao_quantize(module: torch.nn.Module, recipe: str) -> None:
    from torchao.quantization import quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantize_(module, RECIPES[recipe](), filter_fn=_linear_only)
    log.info("quantized %s with %s", type(module).__name__, recipe)


def _swap_linears(module: torch.nn.Module, make: Callable[[torch.nn.Linear], torch.nn.Module]) -> int:
    """Replace every FP8-compatible ``nn.Linear`` under ``module`` with ``make(linear)``; returns how many."""
    swapped = 0
    for parent in list(module.modules()):
        for name, child in list(parent._modules.items()):
            if type(child) in (torch.nn.Linear, GemvLinear) and fp8_compatible(child):
                parent._modules[name] = make(child)
                swapped += 1
    return swapped


def _has_subclass_weights(module: torch.nn.Module) -> bool:
    """Whether some weight is a tensor subclass (torchao's int8 weights), which export must unwrap."""
    return any(type(p) is not torch.nn.Parameter and type(p) is not torch.Tensor for p in module.parameters())


def _shallow_tree(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares every tensor, so unwrapping leaves the original alone."""
    clone = copy.copy(module)
    clone._modules = {name: _shallow_tree(child) for name, child in module._modules.items() if child is not None}
    clone._parameters = dict(module._parameters)
    clone._buffers = dict(module._buffers)
    return clone


def exportable(module: torch.nn.Module) -> torch.nn.Module:
    """The module to export: itself, or for tensor-subclass (quantized) weights a shallow copy with the
    subclasses unwrapped into plain tensors (``...parametrizations.weight.original0``, ...)."""
    if not _has_subclass_weights(module):
        return module
    from torch._functorch._aot_autograd.subclass_parametrization import unwrap_tensor_subclass_parameters

    clone = _shallow_tree(module)
    unwrap_tensor_subclass_parameters(clone)
    return clone


def constants_map(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor a compiled graph of ``module`` may name, keyed like ``state_dict()``, non-persistent
    buffers and quantized weights' inner tensors included."""
    source = exportable(module)
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in source.named_parameters(remove_duplicate=False):
        tensors[name] = tensor.detach()
    for name, tensor in source.named_buffers(remove_duplicate=False):
        tensors[name] = tensor
    return tensors

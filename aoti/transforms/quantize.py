"""Quantization as transforms: `Float8Rowwise` (ours) and `Int8WeightOnly` (torchao's recipe).

`Float8Rowwise` swaps every linear layer whose sizes are multiples of 16 for a `RowwiseFloat8Linear`:
plain e4m3 weight and scale tensors and a `torch._scaled_mm` call, which ``torch.export`` (strict and
non-strict) traces like any other op. torchao's FP8 tensor subclass did not get through export at
full model width (a 1+1-block FLUX.1-dev transformer segfaulted while exporting on an H200; Dynamo's
strict export rejected it). Ours runs the same math as torchao's plain-PyTorch FP8 path (per-row
scales, `_scaled_mm` with fast accumulation), and Inductor fuses the activation quantization into the
preceding kernel.

Both keep the float weights they replace in host memory (the CPU), so `aoti.restore` gives the module
its float weights back, bit for bit, without reloading the model; the device holds only the quantized
ones. Where a recipe can't run (FP8 without FP8 tensor cores, torchao absent) the transform is skipped
with the reason.

    aoti.transform(model, [aoti.Float8Rowwise()])
    quantization_of(model)   # "fp8_rowwise"
"""

from __future__ import annotations

import logging
import types
import warnings
from collections import Counter
from dataclasses import dataclass

import torch

from ..kernels.fp8 import FP8_DTYPE, fp8_scaled, fp8_unsupported, scaled_mm_fails
from ..kernels.fp8_rows import rowwise_fp8
from ..kernels.gemv import gemv, one_row
from ..kernels.support import runs_on
from .base import Applied, NotApplied, TransformConfig, module_device, register_transform, transforms_of
from .decode import GemvLinear
from .fuse import fused_groups

log = logging.getLogger(__name__)


def _quantized(weight: torch.Tensor, per_tensor: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``weight`` in e4m3 and its float32 scales: one per output row, or one for the whole weight."""
    if per_tensor:
        return fp8_scaled(weight, weight.abs().amax().reshape(1, 1))
    return rowwise_fp8(weight)


class RowwiseFloat8Linear(torch.nn.Module):
    """A linear layer with FP8 (e4m3) weights scaled per output row and activations quantized per
    token at run time, multiplied by `torch._scaled_mm` (cuBLASLt / CUTLASS FP8 tensor-core kernels on
    GPUs of compute capability 8.9 and newer).

    The e4m3 weight is kept as its bits, a uint8 parameter without gradient, viewed as e4m3 in
    `forward` (a free reinterpretation, in compiled graphs too). A parameter because Inductor's AOT
    compile clones every buffer of the module it compiles, and held on to the clones: with the weight
    as a buffer, a two-graph build of Qwen2.5-7B geometry left three copies of the FP8 weights on the
    GPU. Bits because libraries read ``model.dtype`` from the
    first floating-point parameter (diffusers, transformers) and ``module.to(dtype)`` casts every
    floating-point tensor: uint8 is neither. The float32 scale stays a (small) buffer for that reason.

    One-row inputs (an LLM decode step, FLUX's timestep modulation) are bound by reading the weight,
    and cuBLASLt's FP8 kernels tile 128 rows, so most of each tile's work is padding and the weight is
    read well below the memory's rate. With ``one_row_kernel`` set (the `OneRowKernels` transform) such calls go through
    `aoti.kernels.gemv` instead, weight-only (the activation stays bf16)."""

    one_row_kernel = False
    source: torch.Tensor | None = None  # the float weight it was made from, in host memory (`Float8Rowwise` sets it)

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
    def from_linear(cls, linear: torch.nn.Linear, per_tensor: bool = False) -> RowwiseFloat8Linear:
        """``linear`` in e4m3 with a scale per output row, or (``per_tensor``) one scale for the whole
        weight: its ``weight_scale`` is then (1, 1), so a package built either way knows which by the
        shapes of its constants."""
        weight, scale = _quantized(linear.weight.detach(), per_tensor)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(weight, scale.reshape(1, -1).contiguous(), bias)

    @torch.no_grad()
    def requantize_(self, weight: torch.Tensor) -> None:
        """``weight`` (float, out x in, on the layer's device) quantized as this layer's was, written into
        the layer's own tensors in place (compiled graphs and CUDA graphs hold their addresses): how an
        adapter is fused into an FP8 layer (`aoti.fuse_lora`)."""
        q, scale = _quantized(weight, self.per_tensor)
        self.weight.copy_(q.view(torch.uint8))
        self.weight_scale.copy_(scale.reshape(1, -1))

    @property
    def per_tensor(self) -> bool:
        """One scale for the whole weight, and one for each call's activations (where row-wise fail)."""
        return self.weight_scale.numel() == 1 and self.out_features > 1

    fusion: dict = {}  # extra `gemv` arguments for the kernel path, as `GemvLinear.fusion`

    def kernel_path(self, x: torch.Tensor) -> bool:
        """Whether a call with ``x`` goes through `aoti.kernels.gemv` (weight-only: any activation dtype)."""
        return self.one_row_kernel and runs_on(x.device) and one_row(x)

    def kernel_operands(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The e4m3 weight, per-row scale and bias that `aoti.kernels.gemv.gemv` reads."""
        scale = self.weight_scale.reshape(-1)
        return self.fp8_weight, scale.expand(self.out_features).contiguous() if self.per_tensor else scale, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_path(x):
            return gemv(x, *self.kernel_operands(), **self.fusion)
        rows = x.reshape(-1, x.shape[-1])
        if self.per_tensor:
            q, scale = fp8_scaled(rows, rows.abs().amax().reshape(1, 1))
        else:
            q, scale = rowwise_fp8(rows)
        out = torch._scaled_mm(q, self.fp8_weight.t(), scale_a=scale, scale_b=self.weight_scale, bias=self.bias,
                               out_dtype=x.dtype, use_fast_accum=True)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        scaling = "per tensor" if self.per_tensor else "rowwise"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, fp8=e4m3 {scaling}"


def fp8_compatible(linear: torch.nn.Linear) -> bool:
    """`_scaled_mm` needs both matrix dimensions of the weight to be multiples of 16."""
    return linear.in_features % 16 == 0 and linear.out_features % 16 == 0


@dataclass(frozen=True)
class Float8Rowwise(TransformConfig):
    """FP8 (e4m3) weights scaled per output row, activations quantized per token, `torch._scaled_mm`.

    Before it rewrites anything, each scale layout is self-tested once on the device
    (`aoti.kernels.fp8.scaled_mm_fails`): where row-wise scales fail, the layers use one scale per
    tensor (recorded as a fallback with the reason); where both fail, the module stays in its float
    dtype (`NotApplied`, with both reasons).

    Args:
        emulate: run where the device has no FP8 tensor cores too (torch's reference `_scaled_mm` on the
            CPU: slow, for checks of the arithmetic). By default such a device skips the transform.
    """

    emulate: bool = False


@dataclass(frozen=True)
class Int8WeightOnly(TransformConfig):
    """torchao's int8 weight-only quantization (`Int8WeightOnlyConfig`) of every linear layer."""


def quantization_of(module: torch.nn.Module) -> str:
    """The recipe ``module`` runs: "fp8_rowwise", "int8_weight_only" or "none"."""
    for config in transforms_of(module):
        if isinstance(config, Float8Rowwise):
            return "fp8_rowwise"
        if isinstance(config, Int8WeightOnly):
            return "int8_weight_only"
    return "none"


def _shared(module: torch.nn.Module) -> set[int]:
    """Ids of parameters that more than one submodule holds (a tied LM head and embedding)."""
    counts = Counter(id(p) for m in module.modules() for p in m._parameters.values() if p is not None)
    return {key for key, n in counts.items() if n > 1}


def _to_host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in host memory (itself if it is there). The copy's pages are touched first by
    `torch.zeros`'s threads: a plain ``.to("cpu")`` faults them in one thread inside the copy, which
    for a large transformer's weights takes several times longer."""
    if tensor.device.type == "cpu":
        return tensor
    host = torch.zeros(tensor.shape, dtype=tensor.dtype)
    return host.copy_(tensor)


class _Stash:
    """A layer's float parameters kept in host memory while a quantized layer stands in for it; one
    that another module shares (a tied embedding) is kept as it is, since that module keeps it alive."""

    def __init__(self, layer: torch.nn.Module, shared: set[int]) -> None:
        self.layer, self.device = layer, module_device(layer)
        self.saved = {name: (p if id(p) in shared else _to_host(p.detach()), p.requires_grad)
                      for name, p in layer._parameters.items() if p is not None}

    def release(self) -> None:
        """Drop the layer's own handles on its device parameters (the stash holds what comes back)."""
        for name in self.saved:
            self.layer._parameters[name] = None

    def put_back(self) -> torch.nn.Module:
        for name, (tensor, requires_grad) in self.saved.items():
            if not isinstance(tensor, torch.nn.Parameter):
                tensor = torch.nn.Parameter(tensor.to(self.device), requires_grad=requires_grad)
            self.layer._parameters[name] = tensor
        return self.layer


@register_transform(Float8Rowwise)
def _float8_rowwise(module: torch.nn.Module, config: Float8Rowwise) -> Applied:
    device = module_device(module)
    if not config.emulate and (reason := fp8_unsupported(device)):
        raise NotApplied(f"FP8 {reason}")
    per_tensor = False
    if row_failed := scaled_mm_fails(device, "row"):
        if tensor_failed := scaled_mm_fails(device, "tensor"):
            raise NotApplied(f"torch._scaled_mm failed its self-test on this device with row-wise scales ({row_failed}) "
                             f"and with per-tensor scales ({tensor_failed})")
        per_tensor = True
        log.warning("aoti: FP8 row-wise scales failed their self-test (%s); one scale per tensor instead", row_failed)
    shared, swapped, left = _shared(module), [], 0
    with torch.no_grad():
        for parent in list(module.modules()):
            for name, child in list(parent._modules.items()):
                if type(child) in (torch.nn.Linear, GemvLinear) and not fp8_compatible(child):
                    left += 1
                elif type(child) in (torch.nn.Linear, GemvLinear):
                    stash = _Stash(child, shared)
                    quantized = parent._modules[name] = RowwiseFloat8Linear.from_linear(child, per_tensor)
                    # An adapter is fused from it (`aoti.fuse_lora`): the stash's own tensor object, so that pinning
                    # it in place (`Tensor.set_`) serves both.
                    weight = stash.saved["weight"][0]  # (a tied weight stays the shared Parameter: a plain view of it)
                    quantized.source = weight.detach() if isinstance(weight, torch.nn.Parameter) else weight
                    stash.release()
                    swapped.append((parent, name, stash))
    if not swapped:
        raise NotApplied("no linear layer whose sizes are multiples of 16")

    def undo() -> None:
        with torch.no_grad():
            for parent, name, stash in swapped:
                parent._modules[name] = stash.put_back()

    total = len(swapped) + left
    partial = [f"{left} of {total} linear layers left unquantized (sizes not multiples of 16)"] if left else []
    if per_tensor:
        partial.append(f"per-row scales -> one per tensor: torch._scaled_mm with row-wise scales failed its self-test here "
                       f"({row_failed})")
    scaling = ", one scale per tensor" if per_tensor else ""
    return Applied(undo, f"{len(swapped)} of {total} linear layers in e4m3{scaling}", "; ".join(partial))


@register_transform(Int8WeightOnly)
def _int8_weight_only(module: torch.nn.Module, config: Int8WeightOnly) -> Applied:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise NotApplied("torchao is not installed") from None
    if fused_groups(module):
        raise ValueError("Int8WeightOnly can't follow FuseProjections: export unwraps torchao's weights on a copy "
                         "the fused slices don't see. Transform without FuseProjections.")
    shared = _shared(module)
    stashes = [_Stash(m, shared) for m in module.modules() if isinstance(m, torch.nn.Linear)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantize_(module, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear))

    def undo() -> None:
        for stash in stashes:
            stash.put_back()
            if isinstance(stash.layer.__dict__.get("extra_repr"), types.MethodType):
                del stash.layer.__dict__["extra_repr"]  # torchao's description of the quantized weight

    return Applied(undo, f"{len(stashes)} linear layers in int8")

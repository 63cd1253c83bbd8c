"""Sibling projections that read the same input, computed as one matrix product.

An attention block projects its input three times (q, k, v) and a gated MLP twice (gate, up). At
batch 1 each projection is a separate pass over its weight; one pass over the concatenated weight
costs fewer launches and keeps the small (k, v) products from idling most of the GPU (the decode
table of BENCHMARKS.md has the measured difference).

transformers' attention and MLP modules call each projection themselves
(``self.q_proj(x)``, ``self.k_proj(x)``, ...), so `fuse_projections` keeps those names: the group's
layers become `ProjectionSlice` modules that share one `torch.nn.Linear` (``qkv_proj`` or
``gate_up_proj``, registered on the parent, weights concatenated, the originals freed; gate and up rows
alternate, so that a one-row product can pair them up in its epilogue). The first
slice called with an input runs the fused layer and keeps its output until every slice of the group
has taken its part of it; a call with a different input runs the fused layer again, so the result is
always that of the separate layers (an input changed in place between two slices' calls is not
noticed; transformers' blocks don't do that). Because the fused layer is a plain ``nn.Linear`` registered on
the parent, FP8 quantization and `aoti.kernels.gemv` routing treat it like any other linear layer.

    aoti.transform(model, [aoti.FuseProjections()])     # q/k/v -> qkv_proj, gate/up -> gate_up_proj
    aoti.transform(model, [aoti.FuseDecoderLayers()])   # then known decoder layers' one-token step fused

Also here, the other fusions of whole blocks a model family allows: `FuseDecoderLayers` (transformers'
Llama/Mistral/Qwen layers: norms, residual adds and SiLU·mul inside the one-row products) and
`FuseFluxNormRope` (diffusers' FLUX attention: q/k norms and rotary embedding in one kernel).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import torch

from ..integrations.diffusers import fuse_flux_attention, unfuse_flux_attention
from ..integrations.transformers import fuse_layers, unfuse_layers
from .base import Applied, NotApplied, TransformConfig, register_transform
from .decode import GemvLinear

log = logging.getLogger(__name__)

# Names of sibling layers that transformers' decoder blocks (Llama, Qwen2/3, Mistral, Gemma, Phi-3's
# unfused variants, ...) call on one and the same input, the name of their fused layer, and whether
# its rows interleave the layers' rows (gate/up: `aoti.kernels.gemv`'s ``glu`` reads them as pairs) or stack them.
GROUPS: tuple[tuple[tuple[str, ...], str, bool], ...] = (
    (("q_proj", "k_proj", "v_proj"), "qkv_proj", False),
    (("gate_proj", "up_proj"), "gate_up_proj", True),
)


class _Served:
    """The fused output for one input, until every slice of the group has taken its part."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.input: torch.Tensor | None = None
        self.output: torch.Tensor | None = None
        self.waiting: set[int] = set()

    def take(self, fused: torch.nn.Module, x: torch.Tensor, index: int) -> torch.Tensor:
        if self.input is not x or index not in self.waiting:
            self.input, self.output, self.waiting = x, fused(x), set(range(self.size))
        output = self.output
        self.waiting.discard(index)
        if not self.waiting:
            self.input = self.output = None
        return output


class ProjectionSlice(torch.nn.Module):
    """One projection of a fused group: columns ``start:stop:step`` of the parent's fused layer's output."""

    def __init__(self, parent: torch.nn.Module, fused_name: str, index: int, start: int, stop: int,
                 served: _Served, step: int = 1) -> None:
        super().__init__()
        # Plain attributes, not submodules: the fused layer is registered (and quantized, routed,
        # moved) once, on the parent, and looked up by name at call time.
        self.__dict__["_parent"] = parent
        self.fused_name, self.index, self.start, self.stop, self.step = fused_name, index, start, stop, step
        self.__dict__["_served"] = served

    @property
    def out_features(self) -> int:
        return len(range(self.start, self.stop, self.step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self._parent, self.fused_name)
        return self._served.take(fused, x, self.index)[..., self.start : self.stop : self.step]

    def extra_repr(self) -> str:
        return f"{self.fused_name}[..., {self.start}:{self.stop}:{self.step}]"


def _fusable(layers: list[torch.nn.Module], interleave: bool) -> bool:
    """Plain (or `aoti.kernels.gemv`-routed) linear layers with plain weights of one dtype, device and input
    size (and output size, to interleave), biases alike. The fused layer is a plain ``nn.Linear``;
    routing is applied to it afterwards."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    if not all(type(layer) in (torch.nn.Linear, GemvLinear) for layer in layers):
        return False
    first = layers[0].weight
    return all(
        not is_traceable_wrapper_subclass(layer.weight)
        and layer.weight.dtype == first.dtype and layer.weight.device == first.device
        and layer.in_features == layers[0].in_features and (layer.bias is None) == (layers[0].bias is None)
        and (not interleave or layer.out_features == layers[0].out_features)
        for layer in layers
    )


def _linear(weight: torch.Tensor, bias: torch.Tensor | None, requires_grad: bool) -> torch.nn.Linear:
    """An ``nn.Linear`` holding these tensors (no new allocation)."""
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    layer.weight = torch.nn.Parameter(weight, requires_grad=requires_grad)
    if bias is not None:
        layer.bias = torch.nn.Parameter(bias, requires_grad=requires_grad)
    return layer


def _join(tensors: list[torch.Tensor], interleave: bool) -> torch.Tensor:
    """Rows of ``tensors`` stacked, or interleaved (row i of each, in turn)."""
    return torch.stack(tensors, 1).flatten(0, 1) if interleave else torch.cat(tensors)


@torch.no_grad()
def _fuse_group(parent: torch.nn.Module, names: tuple[str, ...], fused_name: str, interleave: bool) -> None:
    layers = [getattr(parent, name) for name in names]
    weight = _join([layer.weight for layer in layers], interleave)
    bias = _join([layer.bias for layer in layers], interleave) if layers[0].bias is not None else None
    parent.add_module(fused_name, _linear(weight, bias, layers[0].weight.requires_grad))
    served, start = _Served(len(names)), 0
    for index, (name, layer) in enumerate(zip(names, layers)):
        if interleave:
            part = ProjectionSlice(parent, fused_name, index, index, weight.shape[0], served, step=len(names))
        else:
            part = ProjectionSlice(parent, fused_name, index, start, start + layer.out_features, served)
            start += layer.out_features
        parent._modules[name] = part


def reads_parameters(parent: torch.nn.Module, names: tuple[str, ...]) -> bool:
    """Whether ``parent``'s class reads a layer's weight or bias itself (``self.q_proj.weight``, as
    diffusers' attention pooling passes them to `F.multi_head_attention_forward`) rather than only
    calling it: a fused group's slices have no weights of their own, so such a group stays unfused."""
    try:
        source = inspect.getsource(type(parent))
    except (OSError, TypeError):  # no source (built in C, or in an interpreter session): calls only, as before
        return False
    return any(f"{name}.{attr}" in source for name in names for attr in ("weight", "bias"))


def fuse_projections(module: torch.nn.Module) -> int:
    """Fuse every q/k/v and gate/up group of plain linear layers under ``module``, in place; returns how
    many groups were fused. Groups already fused, or whose layers are quantized tensor subclasses or
    differ in dtype, device, input size or bias, or whose parent reads their weights itself
    (`reads_parameters`), are left as they are."""
    fused = 0
    for parent in list(module.modules()):
        for names, fused_name, interleave in GROUPS:
            layers = [parent._modules.get(name) for name in names]
            if (fused_name not in parent._modules and all(layers) and _fusable(layers, interleave)
                    and not reads_parameters(parent, names)):
                _fuse_group(parent, names, fused_name, interleave)
                fused += 1
    if fused:
        log.info("fused %d projection groups of %s", fused, type(module).__name__)
    return fused


@torch.no_grad()
def unfuse_projections(module: torch.nn.Module) -> int:
    """Give every fused group under ``module`` its separate linear layers back (their weights are views
    of the fused weight, or copies of its interleaved rows); returns how many groups were unfused. A
    fused layer that is no longer a plain linear layer (quantized since) raises, since its parts can't
    be split off."""
    unfused = 0
    for parent in list(module.modules()):
        for names, fused_name, _ in GROUPS:
            fused = parent._modules.get(fused_name)
            if fused is None or not all(isinstance(parent._modules.get(n), ProjectionSlice) for n in names):
                continue
            if not isinstance(fused, torch.nn.Linear):
                raise ValueError(f"{fused_name} of {type(parent).__name__} is a {type(fused).__name__} now; "
                                 "reload the model to split it.")
            for name in names:
                rows = slice(parent._modules[name].start, parent._modules[name].stop, parent._modules[name].step)
                bias = fused.bias[rows].contiguous() if fused.bias is not None else None
                parent._modules[name] = _linear(fused.weight[rows].contiguous(), bias, fused.weight.requires_grad)
            del parent._modules[fused_name]
            unfused += 1
    return unfused


def fused_groups(module: torch.nn.Module) -> int:
    """How many fused projection groups ``module`` holds."""
    return sum(isinstance(sub, ProjectionSlice) and sub.index == 0 for sub in module.modules())


@dataclass(frozen=True)
class FuseProjections(TransformConfig):
    """q/k/v and gate/up linear layers that read one input run as one layer each (names kept)."""


@dataclass(frozen=True)
class FuseDecoderLayers(TransformConfig):
    """transformers' Llama/Mistral/Qwen decoder layers run their one-token step with norms, residual
    adds and SiLU·mul inside `aoti.kernels.gemv`'s products. Needs `FuseProjections` and
    `OneRowKernels` (the fused step runs where every projection takes the kernel path)."""


@dataclass(frozen=True)
class FuseFluxNormRope(TransformConfig):
    """diffusers' FLUX attention runs its q/k RMS norms, text/image join and rotary embedding as one
    `aoti.kernels.norm_rope` kernel per tensor (CUDA tensors; others take diffusers' path).

    Args:
        fp8_attention: the kernel writes q and k in e4m3 and attention runs `aoti.kernels.fp8_attention`.
    """

    fp8_attention: bool = False


@register_transform(FuseProjections)
def _fuse_projections(module: torch.nn.Module, config: FuseProjections) -> Applied:
    fused = fuse_projections(module)
    if not fused:
        raise NotApplied("no q/k/v or gate/up group of plain linear layers")
    return Applied(lambda: unfuse_projections(module), f"{fused} projection groups")


@register_transform(FuseDecoderLayers)
def _fuse_decoder_layers(module: torch.nn.Module, config: FuseDecoderLayers) -> Applied:
    fused = fuse_layers(module)
    if not fused:
        raise NotApplied("no known decoder layer with fused projections (apply FuseProjections first)")
    return Applied(lambda: unfuse_layers(module), f"{fused} decoder layers")


@register_transform(FuseFluxNormRope)
def _fuse_flux_norm_rope(module: torch.nn.Module, config: FuseFluxNormRope) -> Applied:
    swapped = fuse_flux_attention(module, fp8_attention=config.fp8_attention)
    if not swapped:
        raise NotApplied("no diffusers FLUX attention processor (or Triton is not installed)")
    return Applied(lambda: unfuse_flux_attention(module), f"{swapped} attention processors")

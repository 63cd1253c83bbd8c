"""Quantization recipes (torchao) and the weight map a compiled graph binds to.

A recipe name maps to a torchao config, as torchao's own ``quantize_(model, config)``. A recipe that
cannot run on the target device falls back to "none" with the reason, so the caller can show it.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

FP8_MIN_CAPABILITY = (8, 9)


@dataclass(frozen=True)
class QuantDecision:
    """The recipe that will run, and why it differs from the one asked for (if it does)."""

    requested: str
    applied: str
    reason: str | None = None


def _fp8_config() -> object:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow

    return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())


def _int8_weight_only_config() -> object:
    from torchao.quantization import Int8WeightOnlyConfig

    return Int8WeightOnlyConfig()


RECIPES: dict[str, Callable[[], object]] = {
    "fp8_rowwise": _fp8_config,
    "int8_weight_only": _int8_weight_only_config,
}


def decide(recipe: str, device: torch.device) -> QuantDecision:
    """Whether ``recipe`` can run on ``device``; FP8 needs CUDA with compute capability >= 8.9."""
    if recipe == "none":
        return QuantDecision(recipe, "none")
    try:
        import torchao  # noqa: F401
    except ImportError:
        return QuantDecision(recipe, "none", "torchao is not installed")
    if recipe == "fp8_rowwise":
        if device.type != "cuda":
            return QuantDecision(recipe, "none", "FP8 needs a CUDA GPU; this device is the CPU")
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_MIN_CAPABILITY:
            return QuantDecision(
                recipe, "none", f"FP8 needs compute capability >= 8.9; this GPU has {capability[0]}.{capability[1]}"
            )
    return QuantDecision(recipe, recipe)


def _linear_only(module: torch.nn.Module, fqn: str) -> bool:
    return isinstance(module, torch.nn.Linear)


def quantize(module: torch.nn.Module, recipe: str) -> None:
    """Quantize ``module``'s linear layers in place with a named recipe (no-op for "none")."""
    if recipe == "none":
        return
    from torchao.quantization import quantize_

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        quantize_(module, RECIPES[recipe](), filter_fn=_linear_only)
    log.info("quantized %s with %s", type(module).__name__, recipe)


def is_quantized(module: torch.nn.Module) -> bool:
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
    if not is_quantized(module):
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

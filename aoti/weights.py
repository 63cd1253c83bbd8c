"""The tensors a compiled graph binds to: a module's parameters and buffers by state-dict name, with
quantized tensor subclasses (torchao's) unwrapped into the plain tensors export sees."""

from __future__ import annotations

import copy

import torch


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


PINNED_SLAB = 1 << 30


def pinned_copies(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``tensors`` in page-locked host memory (what a device copies from at the bus's speed),
    packed into 1 GiB slabs: PyTorch's pinned-memory allocator rounds each allocation up to a power of
    two, which for a transformer's weights one by one costs about 1.7 times their size."""
    copies, slab, used = [], None, 0
    for tensor in tensors:
        size = tensor.numel() * tensor.element_size()
        padded = -(-size // 256) * 256
        if padded > PINNED_SLAB:
            copies.append(torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True).copy_(tensor))
            continue
        if slab is None or used + padded > PINNED_SLAB:
            slab, used = torch.empty(PINNED_SLAB, dtype=torch.uint8, pin_memory=True), 0
        copies.append(slab[used:used + size].view(tensor.dtype).view(tensor.shape).copy_(tensor))
        used += padded
    return copies

"""Decode-step kernels as transforms: one-row linear layers on `aoti.kernels.gemv`, grouped-query
attention on `aoti.kernels.decode_attention`. For an LLM's decode step on a GPU (batch 1, one token):
the step is bound by reading the weights, and these kernels read them faster than cuBLAS's GEMV or
cuBLASLt's FP8 tiles (BENCHMARKS.md, the decode table).

    aoti.transform(decoder, [aoti.OneRowKernels(), aoti.DecodeAttention()])

Every layer keeps its own path for other calls (more rows, the CPU): a traced graph holds one path or
the other, decided on static facts (device, dtype, sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..integrations.transformers import use_decode_attention
from ..kernels.gemv import gemv, one_row, serves
from ..kernels.support import available, runs_on
from .base import Applied, NotApplied, TransformConfig, module_device, register_transform


class GemvLinear(torch.nn.Linear):
    """`torch.nn.Linear` whose one-row calls (a decode step) go through `gemv` while ``one_row_kernel``
    is set (by `use_gemv`); the others, and every call on the CPU, stay `F.linear`. Same parameters and
    state dict. The checks in `forward` are on static facts (device, dtype, sizes), so a traced graph
    holds one path or the other, never a branch.

    ``fusion`` holds extra `gemv` arguments for the kernel path (a norm, a residual), set around a call
    by a caller that owns them (`aoti.integrations.transformers`); it is empty otherwise."""

    one_row_kernel = False
    fusion: dict = {}  # replaced, never changed in place

    def kernel_path(self, x: torch.Tensor) -> bool:
        """Whether a call with ``x`` goes through the kernel."""
        return self.one_row_kernel and runs_on(x.device) and x.dtype == self.weight.dtype and one_row(x)

    def kernel_operands(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """The weight, per-row scale and bias that `gemv` reads."""
        return self.weight, None, self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_path(x):
            return gemv(x, *self.kernel_operands(), **self.fusion)
        return torch.nn.functional.linear(x, self.weight, self.bias)


def use_gemv(module: torch.nn.Module, enabled: bool = True) -> int:
    """Route the one-row calls of ``module``'s linear layers through `gemv` (or back, with
    ``enabled=False``), in place; returns how many layers are routed. Plain ``nn.Linear`` layers become
    `GemvLinear` (a class change: parameters, hooks and state dict stay; back to ``nn.Linear`` when
    disabled); layers with their own one-row path (`aoti.transforms.quantize.RowwiseFloat8Linear`:
    a ``one_row_kernel`` switch and ``kernel_operands``) switch it."""
    routed = 0
    for sub in module.modules():
        if enabled and type(sub) is torch.nn.Linear and serves(sub.weight):
            sub.__class__ = GemvLinear
        elif not enabled and type(sub) is GemvLinear:
            sub.__class__ = torch.nn.Linear
            continue
        if not hasattr(type(sub), "one_row_kernel"):
            continue
        sub.one_row_kernel = enabled and serves(sub.kernel_operands()[0])
        routed += sub.one_row_kernel
    return routed


@dataclass(frozen=True)
class OneRowKernels(TransformConfig):
    """One-row calls of linear layers (a decode step) run `aoti.kernels.gemv` (bf16, fp16 or FP8
    weights, FP8 weight-only). On CUDA (or Triton's interpreter) with Triton installed."""


@dataclass(frozen=True)
class DecodeAttention(TransformConfig):
    """Grouped-query attention modules run a decode step on `aoti.kernels.decode_attention`'s split-KV
    kernel (read by `aoti.integrations.transformers.gqa_decode_attention`, which the model must use)."""


def _kernels_here(module: torch.nn.Module) -> None:
    device = module_device(module)
    if not runs_on(device):
        raise NotApplied(f"the decode kernels need a CUDA GPU; this device is the {device.type.upper()}")
    if not available():
        raise NotApplied("the decode kernels need Triton, which is not installed")


@register_transform(OneRowKernels)
def _one_row_kernels(module: torch.nn.Module, config: OneRowKernels) -> Applied:
    _kernels_here(module)
    routed = use_gemv(module)
    if not routed:
        use_gemv(module, enabled=False)
        raise NotApplied("no linear layer with a plain weight the kernel reads")
    return Applied(lambda: use_gemv(module, enabled=False), f"{routed} linear layers")


@register_transform(DecodeAttention)
def _decode_attention(module: torch.nn.Module, config: DecodeAttention) -> Applied:
    _kernels_here(module)
    flagged = use_decode_attention(module)
    if not flagged:
        raise NotApplied("no grouped-query attention module")
    return Applied(lambda: use_decode_attention(module, enabled=False), f"{flagged} attention modules")

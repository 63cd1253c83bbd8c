"""Which fused attention kernel the compiled graph calls.

Inductor lowers ``F.scaled_dot_product_attention`` to one fused kernel chosen while the graph is
traced, by the SDPA backend flags active then. ``"auto"`` keeps PyTorch's own choice (FlashAttention-2
on Hopper); ``"cudnn"`` pins cuDNN's fused attention, usually faster on H100/H200 at diffusion
sequence lengths. ``"fp8"`` traces the calls `aoti.kernels.fp8_attention` serves (no mask, not causal: a
diffusion transformer's attention) as its FP8 Triton kernel, the others as SDPA; it needs a GPU with
FP8 tensor cores (compute capability 8.9+), and its tiles were sized on an H200: on a GPU with less
shared memory (an RTX Pro 6000 Blackwell, sm_120) they run with fewer pipeline stages, said in the
decision. A backend the device can't run falls back to "auto" with the reason.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

BACKENDS: tuple[str, ...] = ("auto", "flash", "cudnn", "efficient", "math", "fp8")
CUDA_ONLY = ("flash", "cudnn", "efficient", "fp8")


@dataclass(frozen=True)
class AttentionDecision:
    requested: str
    applied: str
    reason: str | None = None


def decide(backend: str, device: torch.device) -> AttentionDecision:
    """Whether ``backend`` can run on ``device``; CUDA-only kernels fall back to "auto" elsewhere."""
    if backend in CUDA_ONLY and device.type != "cuda":
        return AttentionDecision(backend, "auto", f"{backend} attention needs a CUDA GPU; this device is the {device.type.upper()}")
    if backend == "cudnn" and not torch.backends.cudnn.is_available():
        return AttentionDecision(backend, "auto", "cuDNN is not available in this torch build")
    if backend == "fp8":
        from .kernels import fp8_attention
        from .kernels.fp8 import fp8_unsupported

        if not fp8_attention.available():
            return AttentionDecision(backend, "auto", "FP8 attention needs Triton, which is not installed")
        if reason := fp8_unsupported(device):
            return AttentionDecision(backend, "auto", f"FP8 attention {reason}")
        config, reason = fp8_attention.config_for(device.index or 0, 128)
        if config is None:
            return AttentionDecision(backend, "auto", f"FP8 attention: {reason}")
        return AttentionDecision(backend, backend, reason)  # fewer pipeline stages on a smaller GPU: said
    return AttentionDecision(backend, backend)


@contextlib.contextmanager
def pinned(backend: str) -> Iterator[None]:
    """Trace under this SDPA backend (a no-op for "auto"). For "fp8", `F.scaled_dot_product_attention`
    is `aoti.fp8_attention.sdpa` inside the block for this thread only: other threads (requests for
    other models, served eagerly meanwhile) keep PyTorch's own SDPA. `aoti.compile` holds it around
    `torch.export`."""
    if backend == "auto":
        yield
        return
    if backend == "fp8":
        from .kernels import fp8_attention

        original, tracer = torch.nn.functional.scaled_dot_product_attention, threading.get_ident()

        def this_thread_only(*args, **kwargs):  # (Dynamo, in a strict export, traces in the tracing thread)
            chosen = fp8_attention.sdpa if torch.compiler.is_compiling() or threading.get_ident() == tracer else original
            return chosen(*args, **kwargs)

        torch.nn.functional.scaled_dot_product_attention = this_thread_only
        try:
            yield
        finally:
            torch.nn.functional.scaled_dot_product_attention = original
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
              "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[backend]
    with sdpa_kernel(chosen):
        yield

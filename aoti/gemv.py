"""One-row matrix products (an LLM decode step) as one bandwidth-bound Triton kernel.

At batch 1 a linear layer reads its whole weight to produce one row: the step is bound by memory
bandwidth, and the kernel that reads the weight fastest wins. cuBLAS's GEMV and Inductor's tuned
reductions read Qwen2.5-7B's weights at ~78 % of an H200's copy bandwidth, and cuBLASLt's FP8
kernels (which tile 128 rows) at ~40 %. `gemv` streams the weight in ``(BLOCK_N, BLOCK_K)`` tiles with
software pipelining and reads bf16, fp16 or e4m3 weights (FP8 scaled per output row) the same way, so
an FP8 weight costs half the bytes of a bf16 one.

`torch.ops.aoti_studio.gemv` is a `torch.library.triton_op`: `torch.export` traces it to the Triton
kernel itself, and AOTInductor compiles that kernel into the package. The op is registered only where
Triton imports; `available()` says whether it is. `use_gemv(module)` routes a module's linear layers
to it for one-row calls; `aoti.compile` does so with the "decode" preset (`CompileOptions.gemv`).

    aoti.gemv.use_gemv(model)          # nn.Linear -> GemvLinear; FP8 layers switch their one-row path
    y = model(x_one_token)             # on CUDA: the kernel; more rows or on the CPU: F.linear
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op is absent and callers keep their plain path
    triton = None


@dataclass(frozen=True)
class GemvConfig:
    """A launch configuration: rows per program, columns per tile, warps, pipelining depth."""

    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


# Launch configs per kind of shape, bf16/fp16 weights and e4m3 weights: the fastest for Qwen2.5-7B's
# decode step on an H200 with each shape's 28 calls replayed back to back in a CUDA graph, as the text
# engine runs them (`benchmarks/gpu/gemv_step.py`, results/gpu_gemv_step_sweep2_*_h200.json): many rows
# (fused gate/up, the LM head), a long row (down), and the rest (fused q/k/v, o). Few rows (a separate
# K or V projection) get one row per program, so that the grid still covers every multiprocessor.
_CONFIGS = {
    2: {"few_rows": GemvConfig(1, 2048, 8, 4), "many_rows": GemvConfig(16, 256, 4, 3),
        "long_rows": GemvConfig(8, 1024, 4, 4), "other": GemvConfig(8, 512, 8, 3)},
    1: {"few_rows": GemvConfig(1, 2048, 8, 3), "many_rows": GemvConfig(16, 256, 4, 3),
        "long_rows": GemvConfig(4, 1024, 4, 4), "other": GemvConfig(8, 512, 8, 4)},
}


def default_config(n: int, k: int, weight_bytes: int) -> GemvConfig:
    """The launch configuration for an ``(n, k)`` weight of ``weight_bytes``-wide elements."""
    kind = "few_rows" if n < 1024 else "many_rows" if n >= 16384 else "long_rows" if k >= 8192 else "other"
    config = _CONFIGS[1 if weight_bytes == 1 else 2][kind]
    block_k = min(config.block_k, max(16, 1 << (k - 1).bit_length()))  # no wider than the row
    return GemvConfig(config.block_n, block_k, config.num_warps, config.num_stages)


if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, N, K,
                     HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last")
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        out = tl.sum(acc, axis=1)
        if HAS_SCALE:
            out *= tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
        if HAS_BIAS:
            out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def available() -> bool:
    """Whether Triton is installed, so the kernel (and the op) exist."""
    return triton is not None


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, config: GemvConfig | None = None, wrap=None) -> torch.Tensor:
    """``weight @ x`` (times ``scale`` per row, plus ``bias``) for a vector ``x`` of ``weight.shape[1]``
    elements; ``weight`` is ``(n, k)`` and contiguous, bf16/fp16/e4m3. Returns ``(n,)`` in x's dtype.

    ``wrap`` is `torch.library.wrap_triton` when called inside the op (so tracing sees the kernel)."""
    n, k = weight.shape
    config = config or default_config(n, k, weight.element_size())
    out = torch.empty(n, device=x.device, dtype=x.dtype)
    kernel = wrap(_gemv_kernel) if wrap is not None else _gemv_kernel
    kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, scale if scale is not None else x, bias if bias is not None else x, out, n, k,
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out


# Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``, read at import).
INTERPRETING = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @torch.library.triton_op("aoti_studio::gemv", mutates_args=())
    def _gemv_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None,
                 bias: torch.Tensor | None) -> torch.Tensor:
        return launch(x, weight, scale, bias, wrap=torch.library.wrap_triton)


def one_row(x: torch.Tensor) -> bool:
    """Whether ``x`` holds a single row of features, for certain: a traced dynamic size is never one."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return statically_known_true(math.prod(x.shape[:-1]) == 1)


def serves(weight: torch.Tensor) -> bool:
    """Whether the kernel can read this weight: Triton present, a plain tensor (not a quantized tensor
    subclass) stored row-major."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return available() and not is_traceable_wrapper_subclass(weight) and weight.dim() == 2 and weight.is_contiguous()


def runs_on(device: torch.device) -> bool:
    """Whether the kernel runs on ``device``: a CUDA device, or any device under the interpreter."""
    return device.type == "cuda" or INTERPRETING


def gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
         bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for one row of ``x`` through the kernel, times ``scale`` (one float32 per output
    row; FP8 weights) plus ``bias``; the result has x's shape with ``weight.shape[0]`` features."""
    out = torch.ops.aoti_studio.gemv(x.reshape(-1).contiguous(), weight, scale, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


class GemvLinear(torch.nn.Linear):
    """`torch.nn.Linear` whose one-row calls (a decode step) go through `gemv` while ``one_row_kernel``
    is set (by `use_gemv`); the others, and every call on the CPU, stay `F.linear`. Same parameters and
    state dict. The checks in `forward` are on static facts (device, dtype, sizes), so a traced graph
    holds one path or the other, never a branch."""

    one_row_kernel = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_row_kernel and runs_on(x.device) and x.dtype == self.weight.dtype and one_row(x):
            return gemv(x, self.weight, None, self.bias)
        return torch.nn.functional.linear(x, self.weight, self.bias)


def use_gemv(module: torch.nn.Module, enabled: bool = True) -> int:
    """Route the one-row calls of ``module``'s linear layers through `gemv` (or back, with
    ``enabled=False``), in place; returns how many layers are routed. Plain ``nn.Linear`` layers become
    `GemvLinear` (a class change: parameters, hooks and state dict stay); FP8 layers
    (`aoti.quant.RowwiseFloat8Linear`) switch their own one-row path."""
    from .quant import RowwiseFloat8Linear

    routed = 0
    for sub in module.modules():
        if enabled and type(sub) is torch.nn.Linear and serves(sub.weight):
            sub.__class__ = GemvLinear
        if isinstance(sub, GemvLinear):
            sub.one_row_kernel = enabled and serves(sub.weight)
        elif isinstance(sub, RowwiseFloat8Linear):
            sub.one_row_kernel = enabled and serves(sub.fp8_weight)
        else:
            continue
        routed += sub.one_row_kernel
    return routed

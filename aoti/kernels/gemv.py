"""One-row matrix products (an LLM decode step) as one bandwidth-bound Triton kernel.

At batch 1 a linear layer reads its whole weight to produce one row: the step is bound by memory
bandwidth, and the kernel that reads the weight fastest wins. cuBLAS's GEMV and Inductor's tuned
reductions read Qwen2.5-7B's weights at ~78 % of an H200's copy bandwidth, and cuBLASLt's FP8
kernels (which tile 128 rows) at ~40 %. `gemv` streams the weight in ``(BLOCK_N, BLOCK_K)`` tiles with
software pipelining and reads bf16, fp16 or e4m3 weights (FP8 scaled per output row) the same way, so
an FP8 weight costs half the bytes of a bf16 one. Every program reads the whole input row, so the
kernel can also take in what surrounds a product in a decoder layer: an RMS norm of its input, a
residual add and SiLU·mul of interleaved gate/up rows on its output (`aoti.integrations.transformers` uses them).

`torch.ops.aoti_studio.gemv` is a `torch.library.triton_op`: `torch.export` traces it to the Triton
kernel itself, and AOTInductor compiles that kernel into the package. The op is registered only where
Triton imports; `available()` says whether it is. `use_gemv(module)` routes a module's linear layers
to it for one-row calls; `aoti.compile` does so with the "decode" preset (`CompileOptions.gemv`).

    aoti.kernels.gemv.use_gemv(model)          # nn.Linear -> GemvLinear; FP8 layers switch their one-row path
    y = model(x_one_token)             # on CUDA: the kernel; more rows or on the CPU: F.linear
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .support import INTERPRETING, available, runs_on  # noqa: F401  (re-exported: the kernel's own checks)

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
# engine runs them (`python -m benchmarks.kernels gemv-step`): many rows
# (fused gate/up, the LM head), a long row (down), and the rest (fused q/k/v, o). Few rows (a separate
# K or V projection) get one row per program, so that the grid still covers every multiprocessor.
_CONFIGS = {
    2: {"few_rows": GemvConfig(1, 2048, 8, 4), "many_rows": GemvConfig(16, 256, 4, 3),
        "long_rows": GemvConfig(8, 1024, 4, 4), "other": GemvConfig(8, 512, 8, 3)},
    1: {"few_rows": GemvConfig(1, 2048, 8, 3), "many_rows": GemvConfig(16, 256, 4, 3),
        "long_rows": GemvConfig(4, 1024, 4, 4), "other": GemvConfig(8, 512, 8, 4)},
}
# Where a fused call (`aoti.integrations.transformers`) is faster on another config, by (weight bytes, kind, fusion):
# a prologue or epilogue adds registers per program, so fewer warps keep more programs resident.
_FUSED_CONFIGS = {(2, "other", "norm"): GemvConfig(4, 512, 4, 4), (1, "other", "residual"): GemvConfig(4, 1024, 4, 4)}


def max_block_k(k: int) -> int:
    """The widest column tile worth launching for rows of ``k`` elements: no wider than the row."""
    return max(16, 1 << (k - 1).bit_length())


def default_config(n: int, k: int, weight_bytes: int, fusion: str | None = None) -> GemvConfig:
    """The launch configuration for an ``(n, k)`` weight of ``weight_bytes``-wide elements; ``fusion``:
    "norm" for a call with the norm prologue, "residual" for one with only the residual epilogue."""
    kind = "few_rows" if n < 1024 else "many_rows" if n >= 16384 else "long_rows" if k >= 8192 else "other"
    width = 1 if weight_bytes == 1 else 2
    config = _FUSED_CONFIGS.get((width, kind, fusion)) or _CONFIGS[width][kind]
    block_k = min(config.block_k, max_block_k(k))
    return GemvConfig(config.block_n, block_k, config.num_warps, config.num_stages)


def fusion_kind(norm_weight: torch.Tensor | None, residual: torch.Tensor | None) -> str | None:
    """The ``fusion`` that `default_config` takes for a call with this norm weight and residual."""
    return "norm" if norm_weight is not None else "residual" if residual is not None else None


if triton is not None:

    @triton.jit
    def _gemv_kernel(x_ptr, w_ptr, scale_ptr, bias_ptr, norm_ptr, residual_ptr, out_ptr, N, K,
                     HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, NORM: tl.constexpr, EPS: tl.constexpr,
                     GLU: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        # Every program reads the whole input row, so it can RMS-normalize it on the way in (NORM: times
        # the norm's weight, with the 1 / rms factor, a sum over the row, applied to the dot products at
        # the end). GLU: rows 2i and 2i + 1 are a gate and an up row, and the output is
        # silu(gate) * up, one value per pair (BLOCK_N is even, so no pair straddles two programs).
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        squares = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for start in range(0, K, BLOCK_K):
            cols = start + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            w = tl.load(w_ptr + rows[:, None].to(tl.int64) * K + cols[None, :],
                        mask=row_ok[:, None] & col_ok[None, :], other=0.0, eviction_policy="evict_first")
            x = tl.load(x_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
            if NORM:
                squares += x * x
                x *= tl.load(norm_ptr + cols, mask=col_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
            acc += w.to(tl.float32) * x[None, :]
        out = tl.sum(acc, axis=1)
        if NORM:
            out *= tl.rsqrt(tl.sum(squares, axis=0) / K + EPS)
        if HAS_SCALE:
            out *= tl.load(scale_ptr + rows, mask=row_ok, other=0.0)
        if HAS_BIAS:
            out += tl.load(bias_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        if GLU:
            gate, up = tl.split(tl.reshape(out, (BLOCK_N // 2, 2)))
            out = gate * tl.sigmoid(gate) * up
            rows = tl.program_id(0) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
            row_ok = rows < N // 2
        if RESIDUAL:
            out += tl.load(residual_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)


def launch(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, config: GemvConfig | None = None, wrap=None, *,
           norm_weight: torch.Tensor | None = None, eps: float = 1e-6, glu: bool = False,
           residual: torch.Tensor | None = None) -> torch.Tensor:
    """``weight @ x`` (times ``scale`` per row, plus ``bias``, plus ``residual``) for a vector ``x`` of
    ``weight.shape[1]`` elements; ``weight`` is ``(n, k)`` and contiguous, bf16/fp16/e4m3. Returns
    ``(n,)`` in x's dtype. ``norm_weight``: the product reads ``x`` RMS-normalized (``eps``) times that
    weight. ``glu``: rows ``2i`` and ``2i + 1`` of ``weight`` are a gate and an up projection, and the
    result is ``silu(gate) * up``, ``(n // 2,)`` (``residual`` then has that size too).

    ``wrap`` is `torch.library.wrap_triton` when called inside the op (so tracing sees the kernel)."""
    n, k = weight.shape
    config = config or default_config(n, k, weight.element_size(), fusion_kind(norm_weight, residual))
    if glu and config.block_n == 1:  # (block_n is a power of two) whole pairs in every program
        config = GemvConfig(2, config.block_k, config.num_warps, config.num_stages)
    out = torch.empty(n // 2 if glu else n, device=x.device, dtype=x.dtype)
    kernel = wrap(_gemv_kernel) if wrap is not None else _gemv_kernel
    kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, *(t if t is not None else x for t in (scale, bias, norm_weight, residual)), out, n, k,
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, NORM=norm_weight is not None, EPS=float(eps),
        GLU=glu, RESIDUAL=residual is not None, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out


if triton is not None:

    @torch.library.triton_op("aoti_studio::gemv", mutates_args=())
    def _gemv_op(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
                 norm_weight: torch.Tensor | None, residual: torch.Tensor | None, eps: float, glu: bool) -> torch.Tensor:
        return launch(x, weight, scale, bias, wrap=torch.library.wrap_triton, norm_weight=norm_weight, eps=eps,
                      glu=glu, residual=residual)


def one_row(x: torch.Tensor) -> bool:
    """Whether ``x`` holds a single row of features, for certain: a traced dynamic size is never one."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    return statically_known_true(math.prod(x.shape[:-1]) == 1)


def serves(weight: torch.Tensor) -> bool:
    """Whether the kernel can read this weight: Triton present, a plain tensor (not a quantized tensor
    subclass) stored row-major."""
    from torch.utils._python_dispatch import is_traceable_wrapper_subclass

    return available() and not is_traceable_wrapper_subclass(weight) and weight.dim() == 2 and weight.is_contiguous()


def gemv(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None, bias: torch.Tensor | None = None,
         *, norm_weight: torch.Tensor | None = None, eps: float = 1e-6, glu: bool = False,
         residual: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for one row of ``x`` through the kernel, times ``scale`` (one float32 per output
    row; FP8 weights) plus ``bias`` and ``residual``; the result has x's shape with ``weight.shape[0]``
    features. ``norm_weight``/``eps``: the product reads ``x`` RMS-normalized; ``glu``: interleaved
    gate and up rows give ``silu(gate) * up``, half as many features (see `launch`)."""
    if residual is not None:
        residual = residual.reshape(-1).contiguous()
    out = torch.ops.aoti_studio.gemv(x.reshape(-1).contiguous(), weight, scale, bias, norm_weight, residual, float(eps), glu)
    return out.reshape(*x.shape[:-1], out.shape[0])

"""Row-wise FP8 quantization of wide rows in one pass: a Triton kernel that holds each row in registers.

`aoti.quant.rowwise_fp8` scales each row of an activation by its own absolute maximum before an
FP8 product. Inductor lowers that to a reduction and a cast; for rows wider than its persistent-
reduction limit (1024 values) it loops over the row twice (the maximum, then the cast), and on an H200
the two passes over FLUX.1's 4608 × 15360 single-block `proj_out` input ran at about 1 TB/s, 2.2 ms a
step. This kernel reads each row once: one program per row, the whole row in registers (up to
`MAX_WIDTH` values), the maximum, then the scaled cast.

`torch.ops.aoti_studio.rowwise_fp8` is a `torch.library.triton_op`, so `torch.export` traces it and
AOTInductor compiles it into the package; Inductor still fuses the row's producer into one kernel that
writes the bf16 row the op reads.

    values, scale = quantize(x)   # x (rows, width) bf16/fp16/fp32 on CUDA -> e4m3 (rows, width), fp32 (rows, 1)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from . import quant
from .gemv import available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op is absent
    triton = None

MIN_WIDTH = 4096  # narrower rows fit Inductor's own one-pass (persistent) reductions, fused into their producer
MAX_WIDTH = 32768  # one row in the registers of one program


if triton is not None:

    @triton.jit
    def _rowwise_kernel(x_ptr, q_ptr, scale_ptr, width, x_stride, q_stride,
                        FP8_MAX: tl.constexpr, FLOOR: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=0), FLOOR) / FP8_MAX
        values = tl.clamp(x / scale, -FP8_MAX, FP8_MAX)
        tl.store(q_ptr + row * q_stride + cols, values.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(scale_ptr + row, scale)


def _num_warps(block: int) -> int:
    return max(4, min(16, block // 1024))


def launch(x: torch.Tensor, wrap=None, out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel on a 2-D ``x`` whose rows are contiguous; ``wrap`` is `torch.library.wrap_triton`
    inside the op. Returns the e4m3 values and the ``(rows, 1)`` float32 scales. ``out_dtype`` (float32)
    keeps the values before their e4m3 cast: the check of the arithmetic in Triton's interpreter, whose
    e4m3 casts round wrongly (-126.9 to -64)."""
    rows, width = x.shape
    values = torch.empty((rows, width), device=x.device, dtype=out_dtype or quant.FP8_DTYPE)
    scale = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(width)
    kernel = wrap(_rowwise_kernel) if wrap is not None else _rowwise_kernel
    kernel[(rows,)](x, values, scale, width, x.stride(0), values.stride(0),
                    FP8_MAX=quant.FP8_MAX, FLOOR=quant.SCALE_FLOOR, BLOCK=block, num_warps=_num_warps(block))
    return values, scale


if triton is not None:

    @torch.library.triton_op("aoti_studio::rowwise_fp8", mutates_args=())
    def _rowwise_fp8_op(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(x.contiguous() if x.stride(-1) != 1 else x, wrap=torch.library.wrap_triton)


_enabled = True


@contextlib.contextmanager
def used(enabled: bool) -> Iterator[None]:
    """Let `serves` take calls (the default) or not, inside the block (``CompileOptions.one_pass_rows``)."""
    global _enabled
    prior, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = prior


def serves(x: torch.Tensor) -> bool:
    """Whether the kernel takes ``x``: on (`used`), Triton present, a 2-D floating-point tensor on a
    GPU with FP8 tensor cores, rows from `MIN_WIDTH` to `MAX_WIDTH` values wide."""
    return (_enabled and x.dim() == 2 and MIN_WIDTH <= x.shape[1] <= MAX_WIDTH
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and available() and x.device.type == "cuda" and quant.fp8_capable(x.device))


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows, width) in e4m3 with one float32 scale per row, in one pass (see the module)."""
    return torch.ops.aoti_studio.rowwise_fp8(x)

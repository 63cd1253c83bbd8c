"""Row-wise FP8 quantization of wide rows in one pass: a Triton kernel that holds each row in registers.

`aoti.kernels.fp8_rows.rowwise_fp8` scales each row of an activation by its own absolute maximum before an
FP8 product. Inductor lowers that to a reduction and a cast; for rows wider than its persistent-
reduction limit (1024 values) it loops over the row twice (the maximum, then the cast), reading a wide
activation (FLUX.1's single-block `proj_out` input, 15360 values a row) twice. This kernel reads each row once: one program per row, the whole row in registers (up to
`MAX_WIDTH` values), the maximum, then the scaled cast.

`torch.ops.aoti_studio.rowwise_fp8` is a `torch.library.triton_op`, so `torch.export` traces it and
AOTInductor compiles it into the package. Inductor fuses the row's producer into one kernel that writes
the bf16 row the op reads, except where `fuse_producers` has moved the producer into the op itself: a
tanh-GELU, with a concatenation in front of it (the kernel then reads ``[lead | gelu(x)]``'s inputs).

    values, scale = quantize(x)   # x (rows, width) bf16/fp16/fp32 on CUDA -> e4m3 (rows, width), fp32 (rows, 1)
    fuse_producers(graph_module)  # in an exported graph: rowwise_fp8(cat([a, gelu(b)])) -> one kernel
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from . import fp8
from .support import available

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op is absent
    triton = None

MIN_WIDTH = 4096  # narrower rows stay in Inductor's kernels, fused with their producer (FLUX.1's 3072-wide
# LayerNorm and modulation), which make them one-pass with `aoti.passes.reductions`
MAX_WIDTH = 32768  # one row in the registers of one program


if triton is not None:

    @triton.jit
    def _gelu_tanh(x):
        # 0.5 x (1 + tanh(u)) = x sigmoid(2u), u = sqrt(2 / pi) (x + 0.044715 x^3): one exp2 and one
        # division (cheaper than tanh); 2^inf -> x / inf = -0
        return x / (1.0 + tl.math.exp2(x * (-2.302208198144325 - 0.1029432395800235 * x * x)))

    @triton.jit
    def _rowwise_kernel(x_ptr, lead_ptr, q_ptr, scale_ptr, width, lead_width, x_stride, lead_stride, q_stride,
                        FP8_MAX: tl.constexpr, FLOOR: tl.constexpr, BLOCK: tl.constexpr, LEAD_BLOCK: tl.constexpr,
                        GELU: tl.constexpr, ROUND: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < width
        x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
        if GELU:
            x = _gelu_tanh(x)
            if ROUND:  # as an eager GELU's output in the input's dtype (and half the registers)
                x = x.to(x_ptr.dtype.element_ty)
        amax = tl.max(tl.abs(x), axis=0)
        if LEAD_BLOCK > 0:
            lead_cols = tl.arange(0, LEAD_BLOCK)
            lead_mask = lead_cols < lead_width
            lead = tl.load(lead_ptr + row * lead_stride + lead_cols, mask=lead_mask, other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(lead), axis=0))
        scale = tl.maximum(amax, FLOOR) / FP8_MAX
        out = q_ptr + row * q_stride
        tl.store(out + lead_width + cols, tl.clamp(x / scale, -FP8_MAX, FP8_MAX).to(q_ptr.dtype.element_ty), mask=mask)
        if LEAD_BLOCK > 0:
            tl.store(out + lead_cols, tl.clamp(lead / scale, -FP8_MAX, FP8_MAX).to(q_ptr.dtype.element_ty), mask=lead_mask)
        tl.store(scale_ptr + row, scale)


# 8 warps a row ran fastest on every FLUX.1 row width swept on Hopper (benchmarks/kernels).
NUM_WARPS = 8


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def launch(x: torch.Tensor, lead: torch.Tensor | None = None, gelu: bool = False, wrap=None,
           out_dtype: torch.dtype | None = None, num_warps: int | None = None,
           round_gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel on the rows ``[lead | gelu(x)]`` (``lead`` optional, GELU with the tanh approximation
    if ``gelu``), both 2-D with contiguous rows; ``wrap`` is `torch.library.wrap_triton` inside the op.
    The GELU's output stays float32 (as in Inductor's fused kernels); ``round_gelu`` rounds it to
    ``x``'s dtype first, as an eager GELU's (10-20 % slower on an H200). ``num_warps`` overrides
    `NUM_WARPS`. Returns the e4m3 values and the ``(rows, 1)`` float32 scales. ``out_dtype`` (float32) keeps the
    values before their e4m3 cast: the check of the arithmetic in Triton's interpreter, whose e4m3 casts
    round wrongly (-126.9 to -64)."""
    rows, width = x.shape
    lead_width = lead.shape[1] if lead is not None else 0
    values = torch.empty((rows, lead_width + width), device=x.device, dtype=out_dtype or fp8.FP8_DTYPE)
    scale = torch.empty((rows, 1), device=x.device, dtype=torch.float32)
    block = triton.next_power_of_2(width)
    lead_block = triton.next_power_of_2(lead_width) if lead_width else 0
    kernel = wrap(_rowwise_kernel) if wrap is not None else _rowwise_kernel
    kernel[(rows,)](x, lead if lead is not None else x, values, scale, width, lead_width, x.stride(0),
                    lead.stride(0) if lead is not None else 0, values.stride(0),
                    FP8_MAX=fp8.FP8_MAX, FLOOR=fp8.SCALE_FLOOR, BLOCK=block, LEAD_BLOCK=lead_block, GELU=gelu,
                    ROUND=round_gelu, num_warps=num_warps or NUM_WARPS)
    return values, scale


if triton is not None:

    @torch.library.triton_op("aoti_studio::rowwise_fp8", mutates_args=())
    def _rowwise_fp8_op(x: torch.Tensor, lead: torch.Tensor | None = None, gelu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(_rows(x), _rows(lead) if lead is not None else None, gelu, wrap=torch.library.wrap_triton)


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
            and available() and x.device.type == "cuda" and fp8.fp8_capable(x.device))


def quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` (rows, width) in e4m3 with one float32 scale per row, in one pass (see the module)."""
    return torch.ops.aoti_studio.rowwise_fp8(x)


def rowwise_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize each row of a 2-D tensor to e4m3 with its own float32 scale: ``x ≈ q * scale``.
    Wide rows on an FP8 GPU go through the one-pass kernel (`quantize`), the rest through PyTorch."""
    if serves(x):
        return quantize(x)
    return fp8.fp8_scaled(x, x.abs().amax(dim=-1, keepdim=True))

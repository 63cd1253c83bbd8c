"""Attention's per-head RMS norm and rotary embedding of the query and key, in one pass: a Triton kernel.

FLUX.1's attention normalizes each head of the query and key (`RMSNorm` over the head's 128 values),
joins the text tokens' to the image tokens' (double blocks) and rotates pairs of values by each
token's position (`apply_rotary_emb`, interleaved pairs). Inductor fuses the lot into one kernel
that reads the heads through the permutes well below the memory's rate. This kernel reads each token's
heads once, a block of heads per program: the squares' mean, the weight, the rotation (the pair
partners from a split of the row held in registers), one store of the result. The text tokens
(``lead``, normalized with their own weight) and the image tokens are written into one output, so
the concatenation costs no copy. With ``fp8`` the result is written in e4m3 for the FP8 attention
kernel, scaled by the bound of a normalized head (see `launch`), so no pass over the sequence first.

`torch.ops.aoti_studio.norm_rope` is a `torch.library.triton_op`, so `torch.export` traces it and
AOTInductor compiles it into the package. `aoti.integrations.diffusers` has diffusers' FLUX
attention call it (the `FuseFluxNormRope` transform).

    out = norm_rope(x, weight, cos, sin, eps)   # x (B, S, H, D) -> rope(rms_norm(x) * weight), (B, S, H, D)
    values, scale = norm_rope(x, weight, cos, sin, eps, fp8=True)   # e4m3 (B, S, H, D), float32 (B, H, S)
"""

from __future__ import annotations

import torch

from . import fp8 as fp8_math
from .support import available, runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op is absent
    triton = None

BLOCK_HEADS = 8  # heads per program: FLUX.1's 24 heads take 3 programs a token
NUM_WARPS = 2


if triton is not None:

    @triton.jit
    def _norm_rope_kernel(x_ptr, lead_ptr, w_ptr, lead_w_ptr, cos_ptr, sin_ptr, out_ptr, scale_ptr, S, S_LEAD, H,
                          x_sb, x_ss, x_sh, l_sb, l_ss, l_sh, o_sb, o_ss, o_sh, cs_ss, eps,
                          D: tl.constexpr, BLOCK_H: tl.constexpr, FP8: tl.constexpr, FP8_MAX: tl.constexpr,
                          FLOOR: tl.constexpr, ROOT_D: tl.constexpr):
        token = tl.program_id(0)  # batch * (S_LEAD + S) + position
        b, position = token // (S_LEAD + S), token % (S_LEAD + S)
        if position < S_LEAD:  # a text token (the lead), with its own norm weight
            row, w_row, head_stride = lead_ptr + b.to(tl.int64) * l_sb + position.to(tl.int64) * l_ss, lead_w_ptr, l_sh
        else:
            row, w_row, head_stride = x_ptr + b.to(tl.int64) * x_sb + (position - S_LEAD).to(tl.int64) * x_ss, w_ptr, x_sh
        heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
        dims = tl.arange(0, D)
        mask = heads[:, None] < H
        x = tl.load(row + heads[:, None] * head_stride + dims[None, :], mask=mask, other=0.0).to(tl.float32)
        # (an AOTI package passes ``eps`` as a float64 scalar: keep the arithmetic float32)
        rstd = tl.rsqrt((tl.sum(x * x, axis=1) / D + eps).to(tl.float32))[:, None]
        normed = x * rstd * tl.load(w_row + dims).to(tl.float32)[None, :]
        # interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin): rotated = (-x1, x0)
        even, odd = tl.split(tl.reshape(normed, (BLOCK_H, D // 2, 2)))
        rotated = tl.reshape(tl.join(-odd, even), (BLOCK_H, D))
        cos = tl.load(cos_ptr + position.to(tl.int64) * cs_ss + dims).to(tl.float32)
        sin = tl.load(sin_ptr + position.to(tl.int64) * cs_ss + dims).to(tl.float32)
        out = normed * cos[None, :] + rotated * sin[None, :]
        dest = out_ptr + b.to(tl.int64) * o_sb + position.to(tl.int64) * o_ss + heads[:, None] * o_sh + dims[None, :]
        if FP8:
            # e4m3 scaled by the largest value an RMS-normalized, rotated head can hold, sqrt(D) times the
            # largest weight: the same scale for every token and head (no pass over the sequence first),
            # stored per (token, head) as (B, H, S_LEAD + S)
            largest = tl.maximum(tl.max(tl.abs(tl.load(w_ptr + dims).to(tl.float32)), axis=0),
                                 tl.max(tl.abs(tl.load(lead_w_ptr + dims).to(tl.float32)), axis=0))
            bound = tl.maximum(largest * ROOT_D, FLOOR)
            scale = bound / FP8_MAX
            out = tl.clamp(out * (FP8_MAX / bound), -FP8_MAX, FP8_MAX)
            tl.store(scale_ptr + (b * H + heads) * (S_LEAD + S) + position, tl.zeros_like(heads).to(tl.float32) + scale,
                     mask=heads < H)
        tl.store(dest, out.to(out_ptr.dtype.element_ty), mask=mask)


def launch(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
           lead: torch.Tensor | None = None, lead_weight: torch.Tensor | None = None, fp8: bool = False,
           wrap=None, block_heads: int | None = None, num_warps: int | None = None,
           out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel: ``rope(cat([rms_norm(lead) * lead_weight, rms_norm(x) * weight], 1))`` for ``x``
    (and ``lead``) ``(B, S, H, D)`` with contiguous heads, ``cos``/``sin`` ``(S_lead + S, D)``. Returns a
    contiguous ``(B, S_lead + S, H, D)`` tensor in ``x``'s dtype and None, or with ``fp8`` its e4m3 values
    and their float32 scales ``(B, H, S_lead + S)``: one value, ``sqrt(D) * max|weight| / 448``, the bound
    of an RMS-normalized head rotated in pairs (values past it, possible only where ``cos``/``sin`` are
    not a rotation's, are clamped). ``wrap`` is
    `torch.library.wrap_triton` inside the op; ``block_heads`` and ``num_warps`` override `BLOCK_HEADS`
    and `NUM_WARPS`; ``out_dtype`` (float32) keeps FP8 values before their cast (the interpreter's check)."""
    batch, tokens, heads, dim = x.shape
    first = lead.shape[1] if lead is not None else 0
    lead, lead_weight = (lead, lead_weight) if lead is not None else (x, weight)
    dtype = out_dtype or (fp8_math.FP8_DTYPE if fp8 else x.dtype)
    out = torch.empty((batch, first + tokens, heads, dim), device=x.device, dtype=dtype)
    scale = torch.empty((batch, heads, first + tokens), device=x.device, dtype=torch.float32) if fp8 else None
    cos, sin = cos.float().contiguous(), sin.float().contiguous()
    block = min(block_heads or BLOCK_HEADS, triton.next_power_of_2(heads))
    kernel = wrap(_norm_rope_kernel) if wrap is not None else _norm_rope_kernel
    kernel[(batch * (first + tokens), triton.cdiv(heads, block))](
        x, lead, weight, lead_weight, cos, sin, out, scale if fp8 else out, tokens, first, heads,
        x.stride(0), x.stride(1), x.stride(2), lead.stride(0), lead.stride(1), lead.stride(2),
        out.stride(0), out.stride(1), out.stride(2), cos.stride(0), eps,
        D=dim, BLOCK_H=block, FP8=fp8, FP8_MAX=fp8_math.FP8_MAX, FLOOR=fp8_math.SCALE_FLOOR, ROOT_D=dim ** 0.5,
        num_warps=num_warps or NUM_WARPS)
    return out, scale


if triton is not None:

    @torch.library.triton_op("aoti_studio::norm_rope", mutates_args=())
    def _norm_rope_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
                      lead: torch.Tensor | None = None, lead_weight: torch.Tensor | None = None) -> torch.Tensor:
        return launch(x, weight, cos, sin, eps, lead, lead_weight, wrap=torch.library.wrap_triton)[0]

    @torch.library.triton_op("aoti_studio::norm_rope_fp8", mutates_args=())
    def _norm_rope_fp8_op(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
                          lead: torch.Tensor | None = None,
                          lead_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return launch(x, weight, cos, sin, eps, lead, lead_weight, fp8=True, wrap=torch.library.wrap_triton)


def serves(x: torch.Tensor) -> bool:
    """Whether the kernel takes ``x``: Triton present, a CUDA tensor (or the interpreter),
    ``(B, S, H, D)`` in a floating-point dtype with contiguous heads and a power-of-two head size."""
    dim = x.shape[-1]
    return (available() and runs_on(x.device) and x.dim() == 4 and x.stride(-1) == 1
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and 16 <= dim <= 256 and dim & (dim - 1) == 0)


def norm_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, eps: float,
              lead: torch.Tensor | None = None, lead_weight: torch.Tensor | None = None,
              fp8: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``rope(cat([rms_norm(lead) * lead_weight, rms_norm(x) * weight], dim=1))`` on the kernel (see the
    module): ``x``/``lead`` ``(B, S, H, D)``, interleaved pairs rotated by ``cos``/``sin`` ``(S_total, D)``.
    ``fp8``: the e4m3 values and their ``(B, H, S_total)`` float32 scales, the same for every token (the
    operands of `aoti.kernels.fp8_attention.attend_quantized`; see `launch`)."""
    op = torch.ops.aoti_studio.norm_rope_fp8 if fp8 else torch.ops.aoti_studio.norm_rope
    return op(x, weight, cos, sin, eps, lead, lead_weight)

"""Softmax attention with FP8 (e4m3) operands, for diffusion transformers' long self-attention.

Once FLUX.1's matmuls run in FP8, bf16 attention is the largest part of its step left at bf16's
rate: torch 2.11 has no FP8 attention and FlashAttention-3 is not on PyPI. This is a flash-attention
forward in Triton whose two products read e4m3 tiles (Hopper's FP8 tensor cores, twice bf16's rate):
q is quantized per token, k and v per (batch, head), with float32 scales (`aoti.kernels.fp8.fp8_scaled`);
the scores and the softmax stay float32, and the probabilities are multiplied by 2^8 before their
e4m3 cast (keeping small ones out of e4m3's subnormal range) and divided back with the row sums. v is
quantized into a (head dim, sequence) layout, the one the second product reads.

`torch.ops.aoti_studio.fp8_attention` is a `torch.library.triton_op`: `torch.export` traces the
quantization (Inductor fuses it) and the kernel, and AOTInductor compiles both into the package.
`sdpa` has `F.scaled_dot_product_attention`'s signature and takes the calls the kernel serves (no
mask, no dropout, not causal, equal head counts), leaving the others to SDPA; `aoti.attention`'s
"fp8" backend traces a module with it in place of SDPA. `attend_quantized` takes q and k already
in e4m3 from their producer: `aoti.kernels.norm_rope` writes them in FLUX.1's attention.

    out = sdpa(query, key, value)   # (B, H, S, D) bf16/fp16 -> same; FP8 inside on CUDA
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from .fp8 import fp8_capable, fp8_scaled
from .fp8_rows import rowwise_fp8
from .support import INTERPRETING, available, runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op is absent
    triton = None

# Head sizes the kernel takes: powers of two from 32 (an e4m3 tensor-core dot needs K >= 32; a
# 16-wide head failed to compile on an H200) to 256.
MIN_HEAD_DIM, MAX_HEAD_DIM = 32, 256
LOG2_P_SCALE = 8  # probabilities (<= 1) times 2^8 before their e4m3 cast; e4m3 holds up to 448


@dataclass(frozen=True)
class AttentionConfig:
    """A launch configuration: query rows per program, keys per step, warps, pipelining depth."""

    block_m: int
    block_n: int
    num_warps: int
    num_stages: int


# The fastest of the configs swept on FLUX.1's attention shape (1×24×4608×128) on Hopper
# (benchmarks/kernels, BENCHMARKS.md).
DEFAULT_CONFIG = AttentionConfig(64, 128, 4, 3)


def shared_bytes(config: AttentionConfig, dim: int) -> int:
    """The kernel's shared memory, estimated: q's e4m3 tile, and k's and v's tiles for every pipeline
    stage (the float32 accumulator lives in registers)."""
    return config.block_m * dim + config.num_stages * 2 * config.block_n * dim


def fit_config(limit_bytes: int, dim: int = 128, config: AttentionConfig = DEFAULT_CONFIG) -> tuple[AttentionConfig | None, str | None]:
    """``config`` (tuned on an H200, 227 KiB of shared memory per block) with as few pipeline stages
    dropped as a GPU with ``limit_bytes`` per block needs (an RTX Pro 6000 Blackwell, sm_120: 99 KiB);
    with the reason when it differs, and None when even one stage does not fit."""
    fitted = config
    while shared_bytes(fitted, dim) > limit_bytes and fitted.num_stages > 1:
        fitted = dataclasses.replace(fitted, num_stages=fitted.num_stages - 1)
    need, have = shared_bytes(config, dim) // 1024, limit_bytes // 1024
    if shared_bytes(fitted, dim) > limit_bytes:
        return None, f"its tiles need {shared_bytes(fitted, dim) // 1024} KiB of shared memory; this GPU has {have} KiB"
    if fitted != config:
        return fitted, f"H200-tuned tiles need {need} KiB of shared memory, this GPU has {have} KiB: {fitted.num_stages} pipeline stages"
    return fitted, None


@functools.cache
def config_for(device_index: int, dim: int) -> tuple[AttentionConfig | None, str | None]:
    """`fit_config` for a CUDA device's shared memory."""
    return fit_config(torch.cuda.get_device_properties(device_index).shared_memory_per_block_optin, dim)

_original_sdpa = torch.nn.functional.scaled_dot_product_attention


if triton is not None:

    @triton.jit
    def _attention_kernel(q_ptr, k_ptr, v_ptr, o_ptr, q_scale_ptr, k_scale_ptr, v_scale_ptr, sm_scale, S_Q, S_KV, H,
                          q_sb, q_sh, q_ss, k_sb, k_sh, k_ss, v_sb, v_sh, v_ss, v_sd, o_sb, o_sh, o_ss,
                          LOG2_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr,
                          EVEN_M: tl.constexpr, EVEN_N: tl.constexpr):
        bh = tl.program_id(1)  # batch * heads
        b, h = bh // H, bh % H
        rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        q_ptrs = q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_ss + dims[None, :]
        q = tl.load(q_ptrs) if EVEN_M else tl.load(q_ptrs, mask=rows[:, None] < S_Q, other=0.0)
        # Scores in base 2: exp(s) = exp2(s * log2(e)); the operands' scales fold into one factor per
        # query row (q is scaled per token, k per head: a scale per key would cost a product per score).
        # (An AOTI package passes ``sm_scale`` as a float64 scalar:
        # keep the scores float32.)
        q_scale_ptrs = q_scale_ptr + bh * S_Q + rows
        q_scale = tl.load(q_scale_ptrs) if EVEN_M else tl.load(q_scale_ptrs, mask=rows < S_Q, other=1.0)
        qk_scale = (q_scale * sm_scale * 1.4426950408889634 * tl.load(k_scale_ptr + bh)).to(tl.float32)
        m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_M,), tl.float32)
        acc = tl.zeros((BLOCK_M, D), tl.float32)
        for start in range(0, S_KV, BLOCK_N):
            keys = start + tl.arange(0, BLOCK_N)
            k_ptrs = k_ptr + b * k_sb + h * k_sh + keys[:, None] * k_ss + dims[None, :]
            # v as (D, BLOCK_N) tiles of its (head dim, sequence) layout, transposed for the product
            v_ptrs = v_ptr + b * v_sb + h * v_sh + dims[:, None] * v_sd + keys[None, :] * v_ss
            if EVEN_N:
                k, vt = tl.load(k_ptrs), tl.load(v_ptrs)
            else:
                k = tl.load(k_ptrs, mask=keys[:, None] < S_KV, other=0.0)
                vt = tl.load(v_ptrs, mask=keys[None, :] < S_KV, other=0.0)
            scores = tl.dot(q, tl.trans(k))
            if not EVEN_N:
                scores = tl.where(keys[None, :] < S_KV, scores, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(scores, axis=1) * qk_scale)
            # probabilities times 2^LOG2_P (one subtraction folds it in; the row sums carry it too)
            p = tl.math.exp2(scores * qk_scale[:, None] - (m_new - LOG2_P)[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = tl.dot(p.to(vt.dtype), tl.trans(vt), acc * alpha[:, None])
            m_i = m_new
        out = acc * (tl.load(v_scale_ptr + bh) / l_i)[:, None]
        o_ptrs = o_ptr + b * o_sb + h * o_sh + rows[:, None] * o_ss + dims[None, :]
        if EVEN_M:
            tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty))
        else:
            tl.store(o_ptrs, out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < S_Q)


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values of ``x`` ``(B, H, S, D)`` scaled per token (one reduction over ``D``, which Inductor
    fuses into ``x``'s producer), and the ``B * H * S`` float32 scales."""
    values, scale = rowwise_fp8(x.reshape(-1, x.shape[-1]))
    return values.reshape(x.shape), scale.reshape(-1)


def quantize_heads(x: torch.Tensor, transpose: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """e4m3 values of ``x`` ``(B, H, S, D)`` scaled per (batch, head), and the ``B * H`` float32 scales.
    The head's maximum is the maximum of its tokens' (a reduction over ``D`` that fuses into the
    producer, then a short one over ``S``; one reduction over ``S * D`` per head ran on 24 programs).
    ``transpose``: the values in ``(B, H, D, S)`` layout."""
    amax = x.abs().amax(-1).amax(-1)[..., None, None]
    values, scale = fp8_scaled(x.transpose(-1, -2) if transpose else x, amax)
    return values.contiguous(), scale.reshape(-1)


def run_kernel(q: torch.Tensor, k: torch.Tensor, vt: torch.Tensor, q_scale: torch.Tensor, k_scale: torch.Tensor,
               v_scale: torch.Tensor, scale: float | None, out_dtype: torch.dtype, log2_p: int = LOG2_P_SCALE,
               config: AttentionConfig | None = None, wrap=None) -> torch.Tensor:
    """The kernel on prepared operands: ``q`` ``(B, H, S_q, D)``, ``k`` ``(B, H, S_kv, D)`` and ``vt``
    ``(B, H, D, S_kv)`` (rows contiguous), their float32 scales (``B * H * S_q`` for q, one per token;
    ``B * H`` for k and v); the softmax scale (None: ``D ** -0.5``); the probabilities are
    multiplied by ``2 ** log2_p`` before their cast to v's dtype. Returns ``(B, H, S_q, D)`` in ``out_dtype``."""
    batch, heads, s_q, dim = q.shape
    scale = scale if scale is not None else dim ** -0.5
    if config is None:  # on a GPU, the tuned tiles fitted to its shared memory (the interpreter has no limit)
        fitted = config_for(q.device.index or 0, dim)[0] if q.device.type == "cuda" else None
        config = fitted or DEFAULT_CONFIG
    out = torch.empty(q.shape, device=q.device, dtype=out_dtype)
    kernel = wrap(_attention_kernel) if wrap is not None else _attention_kernel
    kernel[(triton.cdiv(s_q, config.block_m), batch * heads)](
        q, k, vt, out, q_scale, k_scale, v_scale, scale, s_q, k.shape[2], heads,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        vt.stride(0), vt.stride(1), vt.stride(3), vt.stride(2), out.stride(0), out.stride(1), out.stride(2),
        LOG2_P=log2_p, BLOCK_M=config.block_m, BLOCK_N=config.block_n, D=dim,
        EVEN_M=s_q % config.block_m == 0, EVEN_N=k.shape[2] % config.block_n == 0,
        num_warps=config.num_warps, num_stages=config.num_stages)
    return out


def launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None = None,
           wrap=None, fp8: bool = True, config: AttentionConfig | None = None) -> torch.Tensor:
    """Attention of ``query`` ``(B, H, S_q, D)`` over ``key``/``value`` ``(B, H, S_kv, D)``, no mask;
    the result in the query's dtype. ``fp8``: quantize the operands (else the kernel reads them as
    they are, with unit scales: the interpreter's check of the arithmetic). ``wrap`` is
    `torch.library.wrap_triton` inside the op; ``config`` overrides `DEFAULT_CONFIG`."""
    if fp8:
        (q, q_scale), (k, k_scale), (vt, v_scale) = quantize_tokens(query), quantize_heads(key), quantize_heads(value, True)
        return run_kernel(q, k, vt, q_scale, k_scale, v_scale, scale, query.dtype, LOG2_P_SCALE, config, wrap)
    ones = torch.ones(query.shape[:3].numel(), device=query.device, dtype=torch.float32)
    vt = value.transpose(-1, -2).contiguous()
    return run_kernel(query.contiguous(), key.contiguous(), vt, ones, ones[:key.shape[:2].numel()],
                      ones[:key.shape[:2].numel()], scale, query.dtype, 0, config, wrap)


if triton is not None:

    @torch.library.triton_op("aoti_studio::fp8_attention", mutates_args=())
    def _fp8_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None) -> torch.Tensor:
        return launch(query, key, value, scale, wrap=torch.library.wrap_triton)

    @torch.library.triton_op("aoti_studio::fp8_attention_quantized", mutates_args=())
    def _fp8_attention_quantized_op(q: torch.Tensor, q_scale: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor,
                                    value: torch.Tensor, scale: float | None) -> torch.Tensor:
        vt, v_scale = quantize_heads(value, True)
        return run_kernel(q, k, vt, q_scale.reshape(-1), k_scale.reshape(-1)[::k.shape[2]].contiguous(), v_scale,
                          scale, value.dtype, wrap=torch.library.wrap_triton)


def attend_quantized(q: torch.Tensor, q_scale: torch.Tensor, k: torch.Tensor, k_scale: torch.Tensor,
                     value: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Attention on operands quantized by their producer: e4m3 ``q``/``k`` ``(B, H, S, D)`` (any layout with
    contiguous rows) with float32 scales ``(B, H, S)``, one per token (`aoti.kernels.norm_rope` writes them); k's
    must be the same for every token of a head (the kernel reads its first). ``value`` ``(B, H, S_kv, D)``
    in bf16/fp16 is quantized here per head. Returns ``(B, H, S_q, D)`` in ``value``'s dtype."""
    return torch.ops.aoti_studio.fp8_attention_quantized(q, q_scale, k, k_scale, value, scale)


def head_dim_ok(dim: int) -> bool:
    """Whether the kernel takes heads of ``dim`` values: a power of two from `MIN_HEAD_DIM` to `MAX_HEAD_DIM`."""
    return MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM and dim & (dim - 1) == 0


def supports(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
             dropout_p: float = 0.0, is_causal: bool = False, enable_gqa: bool = False) -> bool:
    """Whether the kernel takes this call: Triton present, an FP8-capable GPU (or the interpreter),
    bf16/fp16 ``(B, H, S, D)`` tensors of one shape but for the key length, a head size `head_dim_ok`,
    no mask, no dropout, not causal."""
    dim = query.shape[-1]
    # The call's own arguments first: a masked or causal call (a decoder's) is refused before the
    # device query, which TorchDynamo (strict export) need not trace.
    return (attn_mask is None and not dropout_p and not is_causal and not enable_gqa
            and query.dtype in (torch.float16, torch.bfloat16) and key.dtype == value.dtype == query.dtype
            and query.dim() == key.dim() == value.dim() == 4 and key.shape == value.shape
            and query.shape[:2] == key.shape[:2] and key.shape[-1] == dim and head_dim_ok(dim)
            and available() and runs_on(query.device) and (INTERPRETING or fp8_capable(query.device)))


def sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
         dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> torch.Tensor:
    """`F.scaled_dot_product_attention` on the FP8 kernel where `supports` says so, else SDPA itself."""
    if not supports(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa):
        return _original_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                              scale=scale, enable_gqa=enable_gqa)
    return torch.ops.aoti_studio.fp8_attention(query, key, value, scale)

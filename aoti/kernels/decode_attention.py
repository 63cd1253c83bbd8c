"""Attention for one decode step of a grouped-query model, split over the KV cache (flash-decoding).

A decode step asks, for each KV head, the attention of its group of query heads (7 for Qwen2.5-7B)
over the whole cache: a few rows against hundreds or thousands of keys. The fused SDPA kernels tile
128 query rows per program and parallelize over heads and query tiles, so such a call runs on as
many programs as KV heads: a handful of a GPU's multiprocessors, and a layer's attention then costs
more than its q/k/v projection.
`decode_attention` splits the cache into chunks of `BLOCK_L` keys, one program per (KV head, chunk),
each keeping the softmax statistics (max, sum, weighted values) of its chunk; a second kernel, one
program per (KV head, query row), merges the chunks' partial results.

`torch.ops.aoti_studio.decode_attention` is a `torch.library.triton_op`, so `torch.export` traces both
kernels and AOTInductor compiles them into the package (like `aoti.kernels.gemv`).

    out = decode_attention(query, key, value, mask)   # (B, kv_heads, group, D) over (B, kv_heads, L, D)
"""

from __future__ import annotations

import torch

from .support import INTERPRETING, available, runs_on

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the op is absent
    triton = None

BLOCK_L = 64  # keys per program: one tile each at decode-time cache lengths (a few hundred to a few thousand)


if triton is not None:

    @triton.jit
    def _chunk_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr,
                      G, L, scale, HEADS,
                      q_sb, q_sh, q_sg, k_sb, k_sh, k_sl, v_sb, v_sh, v_sl, mask_sb,
                      HAS_MASK: tl.constexpr, BOOL_MASK: tl.constexpr,
                      BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr, D: tl.constexpr):
        head = tl.program_id(0)  # batch * kv_heads
        chunk = tl.program_id(1)
        b, h = head // HEADS, head % HEADS
        rows = tl.arange(0, BLOCK_G)
        dims = tl.arange(0, D)
        keys = chunk * BLOCK_L + tl.arange(0, BLOCK_L)
        key_ok = keys < L
        q = tl.load(q_ptr + b * q_sb + h * q_sh + rows[:, None] * q_sg + dims[None, :], mask=rows[:, None] < G, other=0.0)
        k = tl.load(k_ptr + b * k_sb + h * k_sh + keys[:, None] * k_sl + dims[None, :], mask=key_ok[:, None], other=0.0)
        v = tl.load(v_ptr + b * v_sb + h * v_sh + keys[:, None] * v_sl + dims[None, :], mask=key_ok[:, None], other=0.0)
        # Products in float32 (tf32 on tensor cores, exact for bf16/fp16 inputs): Triton's interpreter
        # multiplies bf16 tiles wrongly, and at these sizes the kernel waits on memory, not arithmetic.
        # (An AOTI package passes ``scale`` as a float64 scalar: keep the scores float32.)
        scores = (tl.dot(q.to(tl.float32), tl.trans(k.to(tl.float32))) * scale).to(tl.float32)  # (BLOCK_G, BLOCK_L)
        allowed = key_ok
        if HAS_MASK:
            if BOOL_MASK:
                allowed = allowed & (tl.load(mask_ptr + b * mask_sb + keys, mask=key_ok, other=0) != 0)
            else:
                scores += tl.load(mask_ptr + b * mask_sb + keys, mask=key_ok, other=0.0).to(tl.float32)[None, :]
        scores = tl.where(allowed[None, :], scores, float("-inf"))
        m = tl.maximum(tl.max(scores, axis=1), -1e30)  # finite even for a chunk with no key allowed
        p = tl.exp(scores - m[:, None])
        out = head * tl.num_programs(1) + chunk
        tl.store(m_ptr + out * BLOCK_G + rows, m)
        tl.store(l_ptr + out * BLOCK_G + rows, tl.sum(p, axis=1))
        acc = tl.dot(p, v.to(tl.float32))  # (BLOCK_G, D)
        tl.store(acc_ptr + (out * BLOCK_G + rows[:, None]) * D + dims[None, :], acc)

    @triton.jit
    def _merge_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, CHUNKS, HEADS, o_sb, o_sh, o_sg,
                      BLOCK_G: tl.constexpr, BLOCK_C: tl.constexpr, D: tl.constexpr):
        head = tl.program_id(0)  # batch * kv_heads
        row = tl.program_id(1)  # a query row of the group
        b, h = head // HEADS, head % HEADS
        dims = tl.arange(0, D)
        total = tl.max(tl.full((BLOCK_C,), -1e30, tl.float32), axis=0)
        for start in range(0, CHUNKS, BLOCK_C):  # the running maximum over the chunks
            chunks = start + tl.arange(0, BLOCK_C)
            m = tl.load(m_ptr + (head * CHUNKS + chunks) * BLOCK_G + row, mask=chunks < CHUNKS, other=-1e30)
            total = tl.maximum(total, tl.max(m, axis=0))
        weight_sum = tl.sum(tl.zeros((BLOCK_C,), tl.float32), axis=0)
        acc = tl.zeros((D,), tl.float32)
        for start in range(0, CHUNKS, BLOCK_C):
            chunks = start + tl.arange(0, BLOCK_C)
            ok = chunks < CHUNKS
            base = (head * CHUNKS + chunks) * BLOCK_G + row
            w = tl.exp(tl.load(m_ptr + base, mask=ok, other=-1e30) - total)
            weight_sum += tl.sum(w * tl.load(l_ptr + base, mask=ok, other=0.0), axis=0)
            acc += tl.sum(w[:, None] * tl.load(acc_ptr + base[:, None] * D + dims[None, :], mask=ok[:, None], other=0.0), axis=0)
        out = acc / tl.maximum(weight_sum, 1e-30)
        tl.store(out_ptr + b * o_sb + h * o_sh + row * o_sg + dims, out.to(out_ptr.dtype.element_ty))


def supports(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether the kernels take these tensors: Triton present, a device they run on, float16/bfloat16
    (or float32 under the interpreter) of one dtype, a power-of-two head size of at least 16, rows
    contiguous, and a mask (if any) shared by every head and query row."""
    dim = query.shape[-1]
    dtypes = (torch.float16, torch.bfloat16) + ((torch.float32,) if INTERPRETING else ())
    return (available() and runs_on(query.device) and query.dtype in dtypes
            and key.dtype == value.dtype == query.dtype and query.dim() == key.dim() == value.dim() == 4
            and key.shape == value.shape and dim == key.shape[-1] and dim >= 16 and dim & (dim - 1) == 0
            and all(t.stride(-1) == 1 for t in (query, key, value))
            and (mask is None or (mask.dim() == 4 and mask.shape[1] == mask.shape[2] == 1 and mask.stride(-1) == 1)))


def launch(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None,
           scale: float | None = None, wrap=None) -> torch.Tensor:
    """Softmax attention of ``query`` ``(B, H, G, D)`` (G query rows per KV head) over ``key`` and
    ``value`` ``(B, H, L, D)``; ``mask`` ``(B or 1, 1, 1, L)`` is boolean (True = attend) or additive.
    Returns ``(B, H, G, D)`` in the query's dtype. ``wrap`` is `torch.library.wrap_triton` inside the op."""
    batch, heads, groups, dim = query.shape
    length = key.shape[2]
    chunks = triton.cdiv(length, BLOCK_L)
    block_g = max(16, triton.next_power_of_2(groups))
    programs = batch * heads
    m = torch.empty(programs * chunks * block_g, device=query.device, dtype=torch.float32)
    l_sum = torch.empty_like(m)
    acc = torch.empty(programs * chunks * block_g * dim, device=query.device, dtype=torch.float32)
    out = torch.empty(query.shape, device=query.device, dtype=query.dtype)
    chunk_kernel = wrap(_chunk_kernel) if wrap is not None else _chunk_kernel
    merge_kernel = wrap(_merge_kernel) if wrap is not None else _merge_kernel
    mask_stride = 0 if mask is None or mask.shape[0] == 1 else mask.stride(0)
    chunk_kernel[(programs, chunks)](
        query, key, value, mask if mask is not None else query, m, l_sum, acc,
        groups, length, scale if scale is not None else dim ** -0.5, heads,
        query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2), mask_stride,
        HAS_MASK=mask is not None, BOOL_MASK=mask is not None and mask.dtype == torch.bool,
        BLOCK_G=block_g, BLOCK_L=BLOCK_L, D=dim, num_warps=4)
    merge_kernel[(programs, groups)](
        m, l_sum, acc, out, chunks, heads, out.stride(0), out.stride(1), out.stride(2),
        BLOCK_G=block_g, BLOCK_C=triton.next_power_of_2(min(chunks, 64)), D=dim, num_warps=4)
    return out


if triton is not None:

    @torch.library.triton_op("aoti_studio::decode_attention", mutates_args=())
    def _decode_attention_op(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             mask: torch.Tensor | None, scale: float) -> torch.Tensor:
        return launch(query, key, value, mask, scale, wrap=torch.library.wrap_triton)


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None = None,
                     scale: float | None = None) -> torch.Tensor:
    """`launch` through the op (what a traced graph records); see `supports` for what it takes."""
    return torch.ops.aoti_studio.decode_attention(query, key, value, mask, scale if scale is not None else query.shape[-1] ** -0.5)

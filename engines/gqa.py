"""Decode-step attention on the key/value heads, for grouped-query attention models.

transformers' SDPA attention repeats each key/value head for its query heads (``repeat_kv``) before
calling `F.scaled_dot_product_attention` whenever a mask is given, which a static KV cache always
gives: a decode step of Qwen2.5-7B (28 query heads, 4 KV heads) copied its whole cache seven-fold,
twice per layer, 5.3 µs a layer on an H200 (results/gpu_llm_decode_gemv_h200.json). transformers
skips the copy for one-token queries by folding each group's query heads into the query-length
axis, but not while TorchDynamo traces (so never in an exported graph). `ATTENTION` does that fold
in traced graphs too, when the query length is one for certain, and runs it on
`aoti.decode_attention`'s split-KV kernel where `aoti.compile` flagged the module for it (the "decode"
preset on GPUs), else on SDPA; other calls go to transformers' SDPA attention unchanged.

    use_gqa_decode_attention(model)   # model.config._attn_implementation = "aoti_gqa_sdpa"
"""

from __future__ import annotations

import torch

from aoti import decode_attention

ATTENTION = "aoti_gqa_sdpa"


def gqa_decode_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                         **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``query`` ``(batch, heads, q_len, dim)``, ``key`` and
    ``value`` ``(batch, kv_heads, kv_len, dim)``; returns ``(batch, q_len, heads, dim)``."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, q_len, dim = query.shape
    groups = heads // key.shape[1]
    foldable = (groups > 1 and statically_known_true(q_len == 1) and not dropout
                and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
                and (attention_mask is None or attention_mask.shape[1] == 1))  # one mask for every head
    if not foldable:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    folded = query.reshape(batch, heads // groups, groups, dim)  # a group's query heads as query rows
    if getattr(module, "decode_attention_kernel", False) and decode_attention.supports(folded, key, value, attention_mask):
        out = decode_attention.decode_attention(folded, key, value, attention_mask, scaling)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(folded, key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None


def use_gqa_decode_attention(model: torch.nn.Module) -> bool:
    """Switch a transformers model that runs SDPA attention to `gqa_decode_attention`; returns whether
    it did (models on another attention implementation are left alone)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", ATTENTION):
        return False
    AttentionInterface.register(ATTENTION, gqa_decode_attention)
    if ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(ATTENTION, sdpa_mask)  # the same masks as SDPA
    model.set_attn_implementation(ATTENTION)
    return True

"""transformers' model families: what `aoti`'s transforms know of their classes.

Two things, both for an LLM's one-token decode step:

**Decoder layers as fused one-row products** (`fuse_layers`). A pre-norm decoder layer (Llama,
Mistral, Qwen2, Qwen3) computes, for its input ``x``:

    h   = x + o_proj(attention(qkv_proj(rms_norm(x))))
    out = h + down_proj(silu(gate) * up)      where [gate, up] = gate_up_proj(rms_norm(h))

Compiled as transformers writes it, each norm, residual add and SiLU·mul is a small kernel of its own
between the products. `aoti.kernels.gemv` reads the whole input row in every program, so it takes them
in: q/k/v normalizes its input on the way in, o adds the residual on the way out, gate/up normalizes
on the way in and applies SiLU·mul on the way out (gate and up rows interleaved by
`aoti.transforms.fuse`), down adds the residual on the way out: three kernels fewer per layer. The
fused step runs when all four projections take the kernel path (one row, on a GPU); every other call
runs the layer's own forward.

**Grouped-query decode attention** (`use_gqa_decode_attention`, `use_decode_attention`).
transformers' SDPA attention repeats each key/value head for its query heads (``repeat_kv``) whenever
a mask is given, which a static KV cache always gives, and skips the copy for one-token queries only
outside TorchDynamo (so never in an exported graph). `gqa_decode_attention` folds each group's query
heads into the query-length axis in traced graphs too, when the query length is one for certain, and
runs it on `aoti.kernels.decode_attention`'s split-KV kernel where the module is flagged for it
(`use_decode_attention`), else on SDPA; other calls go to transformers' SDPA attention unchanged.

    use_gqa_decode_attention(model)   # model.config._attn_implementation = "aoti_gqa_sdpa"
    use_decode_attention(model)       # flag its attention modules for the split-KV kernel
    fuse_layers(model)                # after the q/k/v and gate/up projections are fused
"""

from __future__ import annotations

import logging

import torch

from ..kernels import decode_attention as decode_attention_kernel
from ..kernels.gemv import gemv
from ..kernels.support import available

log = logging.getLogger(__name__)

# transformers' classes of pre-norm decoder layers with an RMSNorm before attention and before a
# SiLU-gated MLP, and a residual add after each (the forward above), and of their RMSNorms (x in
# float32, times rsqrt(mean(x²) + variance_epsilon), times weight).
LAYERS = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer")
NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
SILU = ("SiLU", "SiLUActivation")


class FusedDecoderLayer:
    """Put before a decoder layer's class (`fuse_layers`): the one-token step as fused products."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        attn, mlp = self.self_attn, self.mlp
        projections = (attn.qkv_proj, attn.o_proj, mlp.gate_up_proj, mlp.down_proj)
        if args or not all(hasattr(p, "kernel_path") and p.kernel_path(hidden_states) for p in projections):
            return super().forward(hidden_states, *args, **kwargs)
        before, after = self.input_layernorm, self.post_attention_layernorm
        attn.qkv_proj.fusion = {"norm_weight": before.weight, "eps": before.variance_epsilon}
        attn.o_proj.fusion = {"residual": hidden_states}
        try:
            hidden_states, _ = attn(hidden_states=hidden_states, **kwargs)  # x + o_proj(attention(...))
        finally:
            attn.qkv_proj.fusion, attn.o_proj.fusion = {}, {}
        act = gemv(hidden_states, *mlp.gate_up_proj.kernel_operands(), norm_weight=after.weight,
                   eps=after.variance_epsilon, glu=True)  # silu(gate) * up of the normalized row
        return gemv(act, *mlp.down_proj.kernel_operands(), residual=hidden_states)


_FUSED: dict[type, type] = {}  # layer class -> its fused subclass


def _fusable(layer: torch.nn.Module) -> bool:
    attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
    norms = (getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
    return (type(layer).__name__ in LAYERS and attn is not None and mlp is not None
            and all(hasattr(attn, name) for name in ("qkv_proj", "o_proj"))
            and all(hasattr(mlp, name) for name in ("gate_up_proj", "down_proj"))
            and type(getattr(mlp, "act_fn", None)).__name__ in SILU
            and all(type(norm).__name__ in NORMS and hasattr(norm, "variance_epsilon") for norm in norms)
            and getattr(mlp.gate_proj, "step", 1) == 2  # interleaved gate/up rows (`aoti.transforms.fuse`)
            and mlp.gate_up_proj.out_features == 2 * mlp.down_proj.in_features)


def fuse_layers(module: torch.nn.Module) -> int:
    """Give every fusable decoder layer under ``module`` the fused one-token step (a class change:
    parameters, state dict and other calls stay); returns how many layers have it. Layers need their
    projections fused first (``qkv_proj``, ``gate_up_proj``)."""
    fused = 0
    for layer in module.modules():
        if isinstance(layer, FusedDecoderLayer):
            fused += 1
        elif _fusable(layer):
            cls = type(layer)
            if cls not in _FUSED:
                _FUSED[cls] = type(f"Fused{cls.__name__}", (FusedDecoderLayer, cls), {"__module__": __name__})
            layer.__class__ = _FUSED[cls]
            fused += 1
    if fused:
        log.info("fused the one-token step of %d decoder layers of %s", fused, type(module).__name__)
    return fused


def unfuse_layers(module: torch.nn.Module) -> int:
    """Give fused decoder layers under ``module`` their own class back; returns how many."""
    unfused = 0
    for layer in module.modules():
        if isinstance(layer, FusedDecoderLayer):
            layer.__class__ = type(layer).__mro__[2]  # (fused subclass, FusedDecoderLayer, original, ...)
            unfused += 1
    return unfused


def fused_layers(module: torch.nn.Module) -> int:
    """How many decoder layers under ``module`` have the fused one-token step."""
    return sum(isinstance(layer, FusedDecoderLayer) for layer in module.modules())


# --- grouped-query decode attention ---------------------------------------------------------------

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
    if getattr(module, "decode_attention_kernel", False) and decode_attention_kernel.supports(folded, key, value, attention_mask):
        out = decode_attention_kernel.decode_attention(folded, key, value, attention_mask, scaling)
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


def use_decode_attention(module: torch.nn.Module, enabled: bool = True) -> int:
    """Flag the attention modules under ``module`` (transformers' grouped-query attention modules, which
    carry ``num_key_value_groups``) to run decode steps on this kernel where it applies (read by
    `gqa_decode_attention`); returns how many are flagged. ``enabled=False`` clears the flag."""
    flagged = 0
    for sub in module.modules():
        if hasattr(sub, "num_key_value_groups"):
            sub.decode_attention_kernel = enabled and available()
            flagged += sub.decode_attention_kernel
    return flagged

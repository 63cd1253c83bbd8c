"""A decoder layer's one-token step as fused one-row products around attention.

A pre-norm decoder layer (Llama, Mistral, Qwen2, Qwen3) computes, for its input ``x``:

    h   = x + o_proj(attention(qkv_proj(rms_norm(x))))
    out = h + down_proj(silu(gate) * up)      where [gate, up] = gate_up_proj(rms_norm(h))

Compiled as transformers writes it, each norm, residual add and SiLU·mul is a small kernel of its
own between the products: in a 28-layer decode step on an H200, 83 of 397 kernels and 0.24 ms of
~4 ms (BENCHMARKS.md). `aoti.gemv` reads the whole input row in every program, so it takes them in:
q/k/v normalizes its input on the way in, o adds the residual on the way out, gate/up normalizes on
the way in and applies SiLU·mul on the way out (its gate and up rows are interleaved, `aoti.fuse`),
down adds the residual on the way out. Three kernels fewer per layer.

`fuse_layers(model)` gives such layers (after `aoti.fuse.fuse_projections`) a forward that does this
when all four projections take the kernel path (`aoti.gemv.use_gemv`: one row, on a GPU); every other
call runs the layer's own forward, so a layer behaves as before wherever the kernel is off. Attention
stays transformers' (rotary embedding, KV cache, attention function): the norm and the residual reach
q/k/v and o through those projections' ``fusion`` arguments for the length of the call.

    aoti.fuse.fuse_projections(model)   # calls fuse_layers; unfuse_projections calls unfuse_layers
"""

from __future__ import annotations

import logging

import torch

from .gemv import gemv

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
            and getattr(mlp.gate_proj, "step", 1) == 2  # interleaved gate/up rows (`aoti.fuse`)
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

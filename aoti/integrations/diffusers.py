"""diffusers' model families: what `aoti`'s transforms know of their classes.

FLUX.1's attention processor with its query/key RMS norms, text/image join and rotary embedding on
`aoti.kernels.norm_rope` (one pass per tensor instead of Inductor's fused kernel), optionally writing
e4m3 for `aoti.kernels.fp8_attention` (the `FuseFluxNormRope` transform).

    count = fuse_flux_attention(transformer, fp8_attention=True)   # processors swapped
    unfuse_flux_attention(transformer)                              # diffusers' own again
"""

from __future__ import annotations

import logging

import torch

from ..kernels.fp8_attention import attend_quantized, head_dim_ok
from ..kernels.norm_rope import norm_rope, serves
from ..kernels.support import available

log = logging.getLogger(__name__)


def _rms_weights(norms: list[torch.nn.Module], like: torch.Tensor) -> tuple[list[torch.Tensor], float] | None:
    """The RMS norms' weights (ones where one has none) and their shared epsilon: torch's `RMSNorm` over
    the head (diffusers' FLUX attention) or diffusers' own. None where one is another kind of norm, has
    a bias, or the epsilons differ."""
    from diffusers.models.normalization import RMSNorm

    dim, epsilons = like.shape[-1], set()
    for norm in norms:
        if type(norm) is torch.nn.RMSNorm and tuple(norm.normalized_shape) == (dim,):
            epsilons.add(norm.eps if norm.eps is not None else torch.finfo(like.dtype).eps)
        elif type(norm) is RMSNorm and getattr(norm, "bias", None) is None:
            epsilons.add(norm.eps)
        else:
            return None
    if len(epsilons) != 1:
        return None
    return [n.weight if n.weight is not None else like.new_ones(dim) for n in norms], epsilons.pop()


class FusedFluxAttnProcessor:
    """diffusers' `FluxAttnProcessor` with its query/key norms, concatenation and rotary embedding on
    `norm_rope`; calls the kernel does not take (another norm, no rotary embedding, a CPU tensor)
    go to the processor it stands in for. ``fp8_attention``: the kernel writes the query and key in
    e4m3 for `aoti.kernels.fp8_attention.attend_quantized` (no mask: FLUX's)."""

    def __init__(self, original, fp8_attention: bool = False) -> None:
        self.original, self.fp8_attention = original, fp8_attention
        self._attention_backend = original._attention_backend
        self._parallel_config = original._parallel_config

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None) -> torch.Tensor:
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections, dispatch_attention_fn

        dim, joint = attn.head_dim, attn.added_kv_proj_dim is not None
        probe = hidden_states.new_empty(1, 1, 1, dim)
        found = _rms_weights([attn.norm_q, attn.norm_k, *((attn.norm_added_q, attn.norm_added_k) if joint else ())], probe)
        if not isinstance(image_rotary_emb, tuple) or found is None or not serves(probe):
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        weights, eps = found
        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query, key, value = (t.unflatten(-1, (-1, dim)) for t in (query, key, value))
        cos, sin = image_rotary_emb
        fp8 = self.fp8_attention and attention_mask is None and query.shape[2] == key.shape[2] and head_dim_ok(dim)
        if joint:
            encoder_query, encoder_key, encoder_value = (t.unflatten(-1, (-1, dim)) for t in (encoder_query, encoder_key, encoder_value))
            query = norm_rope(query, weights[0], cos, sin, eps, lead=encoder_query, lead_weight=weights[2], fp8=fp8)
            key = norm_rope(key, weights[1], cos, sin, eps, lead=encoder_key, lead_weight=weights[3], fp8=fp8)
            value = torch.cat([encoder_value, value], dim=1)
        else:
            query, key = (norm_rope(t, w, cos, sin, eps, fp8=fp8) for t, w in ((query, weights[0]), (key, weights[1])))
        if fp8:
            (q, q_scale), (k, k_scale) = query, key
            hidden_states = attend_quantized(q.transpose(1, 2), q_scale, k.transpose(1, 2), k_scale, value.transpose(1, 2)).transpose(1, 2)
        else:
            hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                                  backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).to(value.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


def _flux_processor_class() -> type | None:
    """diffusers' `FluxAttnProcessor`, or None without diffusers (or with one that lacks it)."""
    try:
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor
    except ImportError:
        return None
    return FluxAttnProcessor


def fuse_flux_attention(module: torch.nn.Module, fp8_attention: bool = False) -> int:
    """Give ``module``'s diffusers `FluxAttnProcessor`s the fused norm + rotary kernel (`FusedFluxAttnProcessor`);
    ``fp8_attention``: the FP8 attention kernel too. Returns how many processors were swapped (0 without
    Triton or diffusers' FLUX)."""
    original = _flux_processor_class() if available() else None
    swapped = [sub for sub in module.modules() if original is not None and type(getattr(sub, "processor", None)) is original]
    for sub in swapped:
        sub.processor = FusedFluxAttnProcessor(sub.processor, fp8_attention)
    if swapped:
        log.info("FLUX attention: %d processors on the fused norm + rotary kernel", len(swapped))
    return len(swapped)


def unfuse_flux_attention(module: torch.nn.Module) -> int:
    """Give every `FusedFluxAttnProcessor` under ``module`` its diffusers processor back; returns how many."""
    restored = 0
    for sub in module.modules():
        processor = getattr(sub, "processor", None)
        if isinstance(processor, FusedFluxAttnProcessor):
            sub.processor = processor.original
            restored += 1
    return restored

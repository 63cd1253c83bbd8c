"""Rewrites of a module before export: config dataclasses with registered handlers, applied with
`aoti.transform(module, [configs])`, recorded on the module and undone by `aoti.restore`.

| config | rewrites |
|---|---|
| `FuseProjections` | q/k/v and gate/up linears reading one input -> one linear each |
| `FuseDecoderLayers` | Llama/Mistral/Qwen decoder layers' one-token step inside the one-row products |
| `FuseFluxNormRope(fp8_attention)` | FLUX attention's q/k norms + rotary embedding in one kernel (FP8 attention) |
| `Float8Rowwise(emulate)` | linear layers -> e4m3 weights per row, `torch._scaled_mm` |
| `Int8WeightOnly` | torchao's int8 weight-only linear layers |
| `OneRowKernels` | one-row calls of linear layers on `aoti.kernels.gemv` |
| `DecodeAttention` | grouped-query attention's decode step on `aoti.kernels.decode_attention` |

Order matters and is the caller's: fuse, then quantize, then route (`FuseProjections`,
`Float8Rowwise`, `OneRowKernels`, `FuseDecoderLayers`, `DecodeAttention`).
"""

from .base import (
    Applied,
    NotApplied,
    Record,
    TransformConfig,
    config_from_dict,
    module_device,
    record_of,
    register_transform,
    transform,
    transforms_of,
    undo_transforms,
)
from .decode import DecodeAttention, GemvLinear, OneRowKernels
from .fuse import FuseDecoderLayers, FuseFluxNormRope, FuseProjections, fused_groups
from .quantize import Float8Rowwise, Int8WeightOnly, RowwiseFloat8Linear, quantization_of

__all__ = [
    "DecodeAttention",
    "Float8Rowwise",
    "FuseDecoderLayers",
    "FuseFluxNormRope",
    "FuseProjections",
    "GemvLinear",
    "Int8WeightOnly",
    "Applied",
    "NotApplied",
    "OneRowKernels",
    "Record",
    "RowwiseFloat8Linear",
    "TransformConfig",
    "config_from_dict",
    "fused_groups",
    "module_device",
    "quantization_of",
    "record_of",
    "register_transform",
    "transform",
    "transforms_of",
    "undo_transforms",
]

"""aoti: ahead-of-time compile a module's hot path with torch.export + AOTInductor, cache it, swap it in.

    with aoti.capture(pipe.transformer) as call:
        pipe("a cat", num_inference_steps=1)
    aoti.transform(pipe.transformer, [aoti.Float8Rowwise()])   # optional rewrites, recorded
    artifact = aoti.compile(pipe.transformer, call)            # or a cache hit: no compile
    aoti.apply(artifact, pipe.transformer)                     # forward now runs the compiled graph
    aoti.restore(pipe.transformer)                             # eager and untransformed again

A regional build (``CompileOptions(regional=True)``) may skip its blocks on steps that change little:

    with aoti.step_cache(pipe.transformer, aoti.StepCacheConfig(threshold=0.1)) as stats:
        pipe("a cat")

Elsewhere (a ZeroGPU worker, a restart), the same package from plain data, no capture or build:

    aoti.transform(module, aoti.transforms_for(ref))
    aoti.apply(aoti.load(module, ref), module)
"""

from . import lifetimes
from .apply import apply, preload, restore, verify_loadable
from .cache import Cache, CacheUnwritable, default_cache_dir
from .capture import CapturedCall, CapturedCalls, capture
from .compile import Artifact, OnStage, RegionalArtifact, compile, load, transforms_for
from .cuda_graphs import StepGraph
from .hub import HubRefused, HubSource
from .lora import FusedLora, LoraAdapter, fuse_lora, lora_of, unfuse_lora
from .measure import Speedup, measure_speedup
from .options import CompileOptions, DimRange
from .passes.toolchain import ensure_toolchain
from .probe import ProbeResult, probe_package
from .regional import find_blocks
from .status import Status
from .step_cache import StepCacheConfig, StepCacheStats, step_cache
from .step_cache import refusal as step_cache_refusal
from .swap import CompiledMethod, eager, status_of
from .transforms import (
    DecodeAttention,
    Float8Rowwise,
    FuseDecoderLayers,
    FuseFluxNormRope,
    FuseProjections,
    Int8WeightOnly,
    OneRowKernels,
    TransformConfig,
    module_device,
    quantization_of,
    record_of,
    transform,
    transforms_of,
)

__all__ = [
    "Artifact",
    "Cache",
    "CacheUnwritable",
    "CapturedCall",
    "CapturedCalls",
    "CompileOptions",
    "CompiledMethod",
    "DecodeAttention",
    "DimRange",
    "Float8Rowwise",
    "FusedLora",
    "FuseDecoderLayers",
    "FuseFluxNormRope",
    "FuseProjections",
    "HubRefused",
    "HubSource",
    "Int8WeightOnly",
    "LoraAdapter",
    "OnStage",
    "OneRowKernels",
    "ProbeResult",
    "RegionalArtifact",
    "Status",
    "StepCacheConfig",
    "StepGraph",
    "StepCacheStats",
    "TransformConfig",
    "apply",
    "capture",
    "compile",
    "default_cache_dir",
    "eager",
    "ensure_toolchain",
    "find_blocks",
    "fuse_lora",
    "lifetimes",
    "load",
    "lora_of",
    "module_device",
    "preload",
    "probe_package",
    "quantization_of",
    "step_cache",
    "step_cache_refusal",
    "record_of",
    "restore",
    "status_of",
    "Speedup",
    "measure_speedup",
    "transform",
    "transforms_for",
    "transforms_of",
    "unfuse_lora",
    "verify_loadable",
]

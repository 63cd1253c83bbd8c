"""aoti: ahead-of-time compile a module's hot path with torch.export + AOTInductor, cache it, swap it in.

    with aoti.capture(pipe.transformer) as call:
        pipe("a cat", num_inference_steps=1)
    artifact = aoti.compile(pipe.transformer, call)   # or a cache hit: no compile
    aoti.apply(artifact, pipe.transformer)            # forward now runs the compiled graph
    aoti.load(pipe.transformer, artifact.ref())       # elsewhere: the same package, no capture or build
    aoti.restore(pipe.transformer)                    # eager again
"""

from . import lifetimes
from .apply import CompiledMethod, apply, preload, restore, status_of, verify_loadable
from .cache import Cache, default_cache_dir
from .capture import CapturedCall, CapturedCalls, capture
from .compile import Artifact, RegionalArtifact, compile, eager, load
from .hub import HubRefused, HubSource
from .options import CompileOptions, DimRange
from .probe import ProbeResult, probe_package
from .quant import decide as decide_quantization
from .regional import find_blocks
from .status import Status
from .toolchain import ensure_toolchain

__all__ = [
    "Artifact",
    "Cache",
    "CapturedCall",
    "CapturedCalls",
    "CompileOptions",
    "CompiledMethod",
    "DimRange",
    "HubRefused",
    "HubSource",
    "ProbeResult",
    "RegionalArtifact",
    "Status",
    "apply",
    "capture",
    "compile",
    "decide_quantization",
    "default_cache_dir",
    "eager",
    "ensure_toolchain",
    "find_blocks",
    "lifetimes",
    "load",
    "preload",
    "probe_package",
    "restore",
    "status_of",
    "verify_loadable",
]

"""export + AOTInductor, weights kept outside the package, through the content-addressed cache.

`compile` never changes the module it is given: rewrites come first, from `aoti.transform`, and the
cache key names them. While tracing, only what the options pin (the SDPA backend, the one-pass row
kernels) is switched, and switched back."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import attention, lifetimes
from .cache import PACKAGE_FILE, Cache, Entry, ensure_room, key_of, storage_fault
from .capture import CapturedCall, CapturedCalls, capture
from .env import fingerprint
from .hub import ENV_PUSH_REPO, HubRefused, HubSource, push
from .hub import pull as hub_pull
from .kernels import fp8_rows
from .options import CompileOptions
from .passes.toolchain import prepare_inductor
from .regional import find_blocks, group_blocks
from .shapes import GraphPlan, Guard, export_dynamic_shapes, plan_graphs, shape_signature
from .status import Status
from .swap import eager
from .transforms import config_from_dict, module_device, quantization_of, record_of, transforms_of
from .weights import constants_map, exportable

log = logging.getLogger(__name__)

EXTRA_CONSTANTS_FILE = "extra_constants.pt"


@dataclass
class Artifact:
    """A verified package on disk plus its manifest; what `apply` binds to a module."""

    entry: Entry
    status: Status
    cache: Cache

    @property
    def key(self) -> str:
        return self.entry.key

    @property
    def package(self) -> Path:
        return self.entry.package

    @property
    def manifest(self) -> dict[str, Any]:
        return self.entry.manifest

    def ref(self) -> dict[str, Any]:
        """Plain data naming this artifact and the transforms its module needs, for `load` in another
        process (picklable, JSON-able)."""
        return {"key": self.key, "transforms": self.manifest.get("transforms", [])}

    def packages(self) -> list[Artifact]:
        """The packages this artifact binds: itself."""
        return [self]

    def wrapper_source(self) -> str:
        """The generated C++ of every graph in the package (which extern kernels it calls, for one)."""
        import zipfile

        with zipfile.ZipFile(self.package) as package:
            return "\n".join(package.read(n).decode(errors="ignore") for n in package.namelist() if n.endswith(".cpp"))


@dataclass
class RegionalArtifact:
    """One artifact per distinct block signature, and which blocks (by qualified name) use each."""

    parts: list[tuple[list[str], Artifact]]
    status: Status = field(default_factory=Status)

    def packages(self) -> list[Artifact]:
        """The packages this artifact binds: one per distinct block signature."""
        return [part for _, part in self.parts]

    def ref(self) -> dict[str, Any]:
        """Plain data naming every part and the transforms the whole module needs, for `load`."""
        transforms = self.parts[0][1].manifest.get("transforms", []) if self.parts else []
        return {"parts": [[list(names), part.key] for names, part in self.parts], "transforms": transforms}


def transforms_for(ref: dict[str, Any]) -> list:
    """The transform configs a module needs before `load` binds the artifact ``ref`` names.

    Example::

        aoti.transform(model, aoti.transforms_for(ref))
        aoti.apply(aoti.load(model, ref), model)
    """
    return [config_from_dict(data) for data in ref.get("transforms", [])]


class _MethodAsForward(torch.nn.Module):
    """Exports ``module.<method>`` as a forward; its parameters keep their names under ``inner.``."""

    def __init__(self, module: torch.nn.Module, method: str) -> None:
        super().__init__()
        self.inner = module
        self.method = method

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.inner, self.method)(*args, **kwargs)


def _as_calls(call: CapturedCalls | CapturedCall | list[CapturedCall]) -> list[CapturedCall]:
    if isinstance(call, CapturedCalls):
        return list(call.calls) if call.calls else [call.first]
    if isinstance(call, CapturedCall):
        return [call]
    return list(call)


def _config_dict(module: torch.nn.Module) -> Any:
    """The architecture config of ``module``, or of the first submodule that has one (transformers'
    static-cache export wrapper holds the model), with the attention implementation it runs."""
    config = next((sub.config for sub in module.modules() if getattr(sub, "config", None) is not None), None)
    if config is None:
        return None
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    # Private entries (`_name_or_path`, `_use_default_values`, ...) are bookkeeping, not architecture;
    # the attention implementation decides the graph.
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    if getattr(config, "_attn_implementation", None):
        data["attn_implementation"] = config._attn_implementation
    return data


def _identity(module: torch.nn.Module) -> dict[str, Any]:
    tensors = constants_map(module)
    return {
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "config": _config_dict(module),
        "tensors": sorted((name, list(t.shape), str(t.dtype)) for name, t in tensors.items()),
    }


def cache_key(module: torch.nn.Module, options: CompileOptions, plans: list[GraphPlan]) -> tuple[str, dict[str, Any]]:
    """The artifact's key and the fields it hashes: model identity, options, environment, graph plans."""
    device = torch.device(options.device) if options.device else module_device(module)
    fields = {
        "model": _identity(module),
        "options": options.to_dict(),
        "transforms": [config.to_dict() for config in transforms_of(module)],
        "env": fingerprint(device),
        "graphs": [[list(map(str, shape_signature(p.call))), repr(sorted((i, sorted(d)) for i, d in p.dynamic.items()))] for p in plans],
    }
    return key_of(fields), fields


def similar_key(fields: dict[str, Any]) -> str:
    """A key shared by builds of the same model, options and shapes on the same kind of device, whatever
    the versions: where a build's time estimate comes from when this exact package was never built."""
    kind = {k: fields["env"].get(k) for k in ("device", "capability", "machine")}
    return "similar-" + key_of({**{k: fields[k] for k in ("model", "options", "transforms", "graphs")}, "env": kind})


OnStage = Callable[[str, "float | None"], None]
"""Told each stage a compile enters, ``on_stage(stage, estimate_s)``: "export graph 1 of 2", "build
graph 1 of 2" (Inductor's C++), "download from <repo>"; ``estimate_s`` is how long the last build of this
package (or a similar one) took, None when none was recorded or nothing is built."""


def _no_stage(stage: str, estimate_s: float | None) -> None:
    return None


def compile(
    module: torch.nn.Module,
    call: CapturedCalls | CapturedCall | list[CapturedCall],
    options: CompileOptions | None = None,
    *,
    cache: Cache | None = None,
    exclusive: contextlib.AbstractContextManager | None = None,
    hub: HubSource | None = None,
    remember_failure: bool = False,
    on_stage: OnStage | None = None,
) -> Artifact | RegionalArtifact:
    """Compile ``module`` for the captured call(s) with torch.export + AOTInductor, or load it from cache.

    The module is compiled as it is (rewrite it first with `aoti.transform`; the key and the manifest
    name its transforms) and left as it was. Returns an `Artifact` (or a `RegionalArtifact` with
    ``options.regional``) to pass to `aoti.apply`. An option this device can't run (an attention
    kernel) falls back, recorded in the status with the transforms' own fallbacks.

    ``exclusive`` (e.g. the lock a server holds while a request runs the module) is held only while
    the module itself is traced, and released for the long Inductor build, so the module can keep
    serving eagerly meanwhile. ``remember_failure``: a failed build is recorded in the cache and
    raised again, without building, on later calls (for a caller with a fallback, which should not
    pay for the failure twice). ``on_stage`` follows a build (for a progress display; see `OnStage`).

    Where the artifact comes from, in order: the local cache; ``hub`` (or ``$AOTI_HUB_REPO``), an
    allow-listed repository pinned to a commit, every file checked (a refusal is recorded and we go
    on); a fresh compile, pushed to ``$AOTI_HUB_PUSH_REPO`` when that and a token are set.

    Example::

        with aoti.capture(model) as call:
            model(x)
        artifact = aoti.compile(model, call, aoti.CompileOptions(dispatch="dynamic"))
    """
    exclusive = exclusive or contextlib.nullcontext()
    hub = hub or HubSource.from_env()
    options = options or CompileOptions()
    cache = cache or Cache()
    on_stage = on_stage or _no_stage
    calls = _as_calls(call)
    device = torch.device(options.device) if options.device else module_device(module)

    # 1. What this device can run of the options; the transforms' fallbacks come first.
    fallbacks = list(record_of(module).fallbacks)
    kernel = attention.decide(options.attention, device)
    if kernel.reason:
        fallbacks.append(f"{kernel.requested} attention -> {kernel.applied}: {kernel.reason}")
        log.warning("aoti: %s", fallbacks[-1])
    options = options.replace(attention=kernel.applied)

    # 2. Regional mode compiles the repeated blocks instead of the whole module.
    if options.regional:
        return _compile_regional(module, calls, options.replace(regional=False), cache, exclusive, hub, fallbacks, on_stage)

    # 3. Whole module: one package with one graph per plan, through the cache. A module whose own code
    #    can't be exported (shapes from a tensor's values, `.numpy()` in forward) is compiled block by
    #    block instead, where it has repeated blocks.
    try:
        entry, key, cache_hit, source = _find_or_build(module, calls, options, device, cache, hub, exclusive,
                                                       fallbacks, remember_failure, on_stage)
    except ExportFailed as exc:
        try:
            find_blocks(module)
        except ValueError:
            raise exc.__cause__ or exc from None
        fallbacks.append(f"whole module -> regional: {exc}")
        log.warning("aoti: %s", fallbacks[-1])
        return _compile_regional(module, calls, options, cache, exclusive, hub, fallbacks, on_stage)
    artifact = _artifact(entry, cache, module, fallbacks, cache_hit, source)
    log.info("aoti: %s %s (%d graphs, key %s)", "loaded" if cache_hit else "compiled", type(module).__name__,
             artifact.status.graphs, key)
    return artifact


def _compile_regional(module: torch.nn.Module, calls: list[CapturedCall], options: CompileOptions, cache: Cache,
                      exclusive: contextlib.AbstractContextManager, hub: HubSource | None,
                      fallbacks: list[str], on_stage: OnStage) -> RegionalArtifact:
    """One package per distinct block signature: each block's inputs captured by re-running the module
    on the captured calls, then compiled like a whole module."""
    start = time.perf_counter()
    on_stage("capture each block kind's inputs", None)
    groups = group_blocks(module)
    representatives = [module.get_submodule(names[0]) for names in groups]
    with exclusive, contextlib.ExitStack() as stack:
        recorders = [stack.enter_context(capture(block, stop=False)) for block in representatives]
        with eager(module), torch.no_grad():
            for call in calls:
                module(*call.args, **call.kwargs)
    parts: list[tuple[list[str], Artifact]] = []
    status = Status(runtime="eager", reason="regional, not applied yet", cache_hit=None)
    for index, (names, block, recorded) in enumerate(zip(groups, representatives, recorders)):
        if not recorded.calls:
            fallbacks.append(f"regional: {len(names)} block(s) like {names[0]} never ran on the captured calls; they stay eager")
            log.warning("aoti: %s", fallbacks[-1])
            continue
        block_stage = functools.partial(_in_block, on_stage, f"block kind {index + 1} of {len(groups)}")
        artifact = compile(block, recorded, options, cache=cache, exclusive=exclusive, hub=hub, on_stage=block_stage)
        assert isinstance(artifact, Artifact)
        parts.append((names, artifact))
        status.merge(artifact.status)
    status.key = "+".join(a.key[:8] for _, a in parts)
    status.quantization = quantization_of(module)
    status.transforms = record_of(module).notes
    status.fallbacks[:0] = [f for f in fallbacks if f not in status.fallbacks]
    log.info("regional: %d packages for %d blocks in %.1f s", len(parts), sum(len(g) for g in groups), time.perf_counter() - start)
    return RegionalArtifact(parts, status)


def _in_block(on_stage: OnStage, block: str, stage: str, estimate_s: float | None) -> None:
    on_stage(f"{block}: {stage}", estimate_s)


class ExportFailed(RuntimeError):
    """``torch.export`` could not trace the module's own code (the cause is chained)."""


def _artifact(entry: Entry, cache: Cache, module: torch.nn.Module, fallbacks: list[str], cache_hit: bool,
              source: str) -> Artifact:
    """An artifact for a verified cache entry (found in ``source``, or built now); its status stays
    "eager" until `apply`."""
    manifest = entry.manifest
    status = Status(
        runtime="eager",
        reason=f"from the {source}" if cache_hit else "compiled now",
        key=entry.key,
        cache_hit=cache_hit,
        compile_s=None if cache_hit else manifest["compile_s"],
        artifact_bytes=manifest["package_bytes"],
        graphs=len(manifest["graphs"]),
        quantization=quantization_of(module),
        transforms=record_of(module).notes,
        fallbacks=fallbacks,
    )
    return Artifact(entry, status, cache)


def load(module: torch.nn.Module, ref: dict[str, Any], *, cache: Cache | None = None) -> Artifact | RegionalArtifact:
    """The artifact that ``ref`` (from `Artifact.ref`) names, for ``module``, from the local cache:
    no capture, no export, no build. Pass the result to `aoti.apply`.

    This is how another process (a ZeroGPU worker, a restarted server) binds a package that was
    compiled elsewhere. ``module`` must carry the transforms the package was built with
    (`transforms_for`). Raises ``LookupError`` when the package is not in the cache for this
    environment (other versions, another GPU generation) and ``ValueError`` when ``module`` is another
    model or was transformed otherwise.

    Example::

        ref = aoti.compile(model, calls).ref()              # in one process: plain data
        aoti.transform(model, aoti.transforms_for(ref))      # in another, on its own copy of the weights
        aoti.apply(aoti.load(model, ref), model)
    """
    cache = cache or Cache()
    wanted = tuple(transforms_for(ref))
    if transforms_of(module) != wanted:
        raise ValueError(f"{type(module).__name__} runs the transforms {list(transforms_of(module))}; the package "
                         f"was built with {list(wanted)}. Apply `aoti.transforms_for(ref)` first.")
    if "parts" in ref:
        parts = [(list(names), load(module.get_submodule(names[0]), {"key": key, "transforms": ref.get("transforms", [])},
                                    cache=cache)) for names, key in ref["parts"]]
        status = Status(runtime="eager", reason="regional, from the local cache", cache_hit=True)
        for _, part in parts:
            status.merge(part.status)
        status.key = "+".join(part.key[:8] for _, part in parts)
        status.quantization, status.transforms = quantization_of(module), record_of(module).notes
        return RegionalArtifact(parts, status)  # type: ignore[arg-type]
    key = ref["key"]
    device = module_device(module)
    entry, damage = cache.lookup(key, fingerprint(device))
    if entry is None and damage:
        raise LookupError(f"package {key} in {cache} was damaged ({damage}) and is removed; compile it again.")
    if entry is None:
        raise LookupError(f"package {key} is not in {cache} for this environment ({device.type}); compile it here first.")
    identity = json.loads(json.dumps(_identity(module), sort_keys=True, default=str))
    if identity != entry.manifest["key_fields"]["model"]:
        raise ValueError(f"package {key} was built for another model than this {type(module).__name__} "
                         "(its class, config or tensors differ).")
    return _artifact(entry, cache, module, list(record_of(module).fallbacks), True, "local cache")


def _find_or_build(module: torch.nn.Module, calls: list[CapturedCall], options: CompileOptions, device: torch.device,
                   cache: Cache, hub: HubSource | None, exclusive: contextlib.AbstractContextManager,
                   fallbacks: list[str], remember_failure: bool = False,
                   on_stage: OnStage = _no_stage) -> tuple[Entry, str, bool, str]:
    """The package for these calls and options: from the local cache, the Hub, or built now.
    Returns the entry, its key, whether it was found rather than built, and where it was found
    (``remember_failure``: see `compile`)."""
    on_stage("plan the graphs and look up the cache", None)
    plans = plan_graphs(calls, options, module)
    key, fields = cache_key(module, options, plans)
    entry, damage = cache.lookup(key, fields["env"])
    if damage:
        fallbacks.append(f"cache -> rebuild: the cached package was damaged ({damage})"[:300])
    cache_hit, source = entry is not None, "local cache"
    if entry is None and hub is not None:
        on_stage(f"download from {hub.repo_id}", None)
        try:
            entry, cache_hit, source = hub_pull(hub, key, cache, fields["env"]), True, f"hub {hub.repo_id}"
        except HubRefused as exc:
            fallbacks.append(f"hub -> compile: {exc}")
            log.warning("aoti: %s", fallbacks[-1])
    if entry is None and remember_failure and (earlier := cache.failed_build(key)) is not None:
        raise RuntimeError(f"an earlier build of package {key} failed: {earlier}")
    if entry is None:
        try:
            with cache.lock(key):
                entry = cache.get(key, fields["env"])
                cache_hit = entry is not None
                if entry is None:
                    try:
                        estimate = cache.build_time(key) or cache.build_time(similar_key(fields))
                        entry = _build(module, plans, options, device, cache, key, fields, exclusive,
                                       functools.partial(_with_estimate, on_stage, estimate))
                        cache.record_build_time([key, similar_key(fields)], entry.manifest["compile_s"])
                    except Exception as exc:
                        if remember_failure and not _transient(exc) and not storage_fault(exc):
                            cache.record_failed_build(key, first_error_line(exc))
                        raise
                    _maybe_push(cache, key, fallbacks)
        except Exception as exc:
            if refused := storage_fault(exc):  # read-only, no permission, no room: say where and what to do
                raise cache.unwritable(refused, exc) from exc
            raise
    return entry, key, cache_hit, source


def _with_estimate(on_stage: OnStage, estimate_s: float | None, stage: str, _: float | None = None) -> None:
    on_stage(stage, estimate_s)


def _transient(exc: BaseException) -> bool:
    """A failure the same build may not meet again: out of memory (host or device), a timeout."""
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, (MemoryError, TimeoutError, torch.OutOfMemoryError)) or "out of memory" in text or "timed out" in text


def first_error_line(exc: Exception) -> str:
    """The line of a (long) build error that names the problem: a compiler's "error:" line if any."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    named = next((line for line in lines if "error:" in line), lines[0] if lines else "")
    return f"{type(exc).__name__}: {named}"[:300]


def _maybe_push(cache: Cache, key: str, fallbacks: list[str]) -> None:
    """Push a fresh compile to the user's writable repository, if one is configured."""
    repo = os.environ.get(ENV_PUSH_REPO)
    if not repo:
        return
    try:
        push(cache, [key], repo, token=os.environ.get("HF_TOKEN"))
    except Exception as exc:  # the compile succeeded; a failed upload is recorded, not fatal
        fallbacks.append(f"push to {repo} failed: {type(exc).__name__}: {exc}"[:300])
        log.warning("aoti: %s", fallbacks[-1])


@contextlib.contextmanager
def _staging(cache: Cache) -> Iterator[Path]:
    """A private build folder; removed if the build fails, moved into place by `Cache.publish`."""
    staged = cache.staging()
    try:
        yield staged
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@dataclass
class _BuiltGraph:
    """One planned graph, exported and compiled: its Inductor files and its manifest entry."""

    files: list[str]
    entry: dict[str, Any]  # the manifest's: name, guard, constants, example inputs, constant prefix
    extra_constants: dict[str, torch.Tensor]  # tensors the graph made that the module does not hold
    op_modules: set[str]  # the Python modules registering the custom ops it calls
    export_s: float


def _build(
    module: torch.nn.Module,
    plans: list[GraphPlan],
    options: CompileOptions,
    device: torch.device,
    cache: Cache,
    key: str,
    fields: dict[str, Any],
    exclusive: contextlib.AbstractContextManager,
    on_stage: OnStage = _no_stage,
) -> Entry:
    """Export and compile every planned graph (`_export_graph`, `_compile_graph`), write them as one
    package in a staging folder (`_write_package`), then publish it with its manifest (`_manifest`)."""
    toolchain = prepare_inductor()
    if toolchain.missing:
        raise RuntimeError(toolchain.missing)
    start = time.perf_counter()
    one_pass = options.one_pass_rows and device.type == "cuda"
    with _staging(cache) as staged, lifetimes.forget_build(module):
        built = []
        for index, plan in enumerate(plans):
            of = f"graph {index + 1} of {len(plans)}"
            on_stage(f"export {of}", None)
            ep, prefix, export_s = _export_graph(module, plan, options, exclusive, one_pass)
            on_stage(f"build {of} (Inductor, C++)", None)
            built.append(_compile_graph(module, ep, prefix, plan, f"graph{index}", options, device, one_pass, export_s))
        _write_package(staged, built)
        manifest = _manifest(built, options.replace(one_pass_rows=one_pass), device, fields, toolchain.note,
                             time.perf_counter() - start)
        return cache.publish(key, staged, manifest)


def _export_graph(module: torch.nn.Module, plan: GraphPlan, options: CompileOptions,
                  exclusive: contextlib.AbstractContextManager, one_pass: bool) -> tuple[torch.export.ExportedProgram, str, float]:
    """torch.export of the module's eager method for one planned call, holding ``exclusive``:
    (the program, the prefix its constants carry, seconds)."""
    start = time.perf_counter()
    with (exclusive, eager(module, options.method), torch.no_grad(), attention.pinned(options.attention),
          fp8_rows.used(one_pass)):
        target = exportable(module)
        prefix = ""
        if options.method != "forward":
            target, prefix = _MethodAsForward(target, options.method), "inner."
        dynamic = export_dynamic_shapes(module, options.method, plan.call, plan.dynamic)
        try:
            ep = torch.export.export(target, plan.call.args, plan.call.kwargs, dynamic_shapes=dynamic, strict=options.strict)
        except Exception as exc:
            raise ExportFailed(f"export failed: {first_error_line(exc)}") from exc
    return ep, prefix, time.perf_counter() - start


def _compile_graph(module: torch.nn.Module, ep: torch.export.ExportedProgram, prefix: str, plan: GraphPlan, name: str,
                   options: CompileOptions, device: torch.device, one_pass: bool, export_s: float) -> _BuiltGraph:
    """AOTInductor on one exported program (its weights left outside the package)."""
    from .passes import fp8_producers, reductions  # import Inductor

    known = set(constants_map(module))
    extra = {f"{name}/{raw.removeprefix(prefix)}": tensor.detach().cpu() for raw, tensor in ep.constants.items()
             if isinstance(tensor, torch.Tensor) and raw.removeprefix(prefix) not in known}
    configs = {**options.inductor_configs(device.type), "aot_inductor.package": True}
    with (attention.pinned("auto" if options.attention == "fp8" else options.attention),  # fp8: in the graph already
          reductions.one_pass_rows(one_pass)):
        graph_module = ep.module()
        _constants_as_buffers(graph_module, [n for n, t in ep.constants.items() if isinstance(t, torch.Tensor)])
        if one_pass and (moved := fp8_producers.fuse_producers(graph_module)):
            log.info("%s: %d GELU producers moved into the FP8 quantization kernel", name, moved)
        files = torch._inductor.aot_compile(graph_module, plan.call.args, plan.call.kwargs, options=configs)
        del graph_module  # binds the model's weights
    leaves = [(list(t.shape), str(t.dtype)) for t in torch.utils._pytree.tree_leaves((plan.call.args, plan.call.kwargs))
              if isinstance(t, torch.Tensor)]
    entry = {"name": name, "guard": Guard.from_exported(ep, plan.call).to_json(), "constants": _constant_specs(ep, prefix),
             "example_inputs": leaves, "constant_prefix": prefix}
    return _BuiltGraph(files, entry, extra, custom_op_modules(ep.graph), export_s)


def _write_package(staged: Path, built: list[_BuiltGraph]) -> None:
    """The graphs as one AOTI package (and the extra constants beside it) in ``staged``."""
    from torch._inductor.package import package_aoti

    files = {graph.entry["name"]: graph.files for graph in built}
    extra = {k: v for graph in built for k, v in graph.extra_constants.items()}
    # torch's package writer aborts the whole process when a write fails mid-file (a full disk): room
    # for what it will write is checked first, so that a full disk is an error and not a crash.
    ensure_room(staged, sum(os.path.getsize(f) for paths in files.values() for f in paths if os.path.isfile(f))
                + sum(t.nbytes for t in extra.values()))
    package_aoti(str(staged / PACKAGE_FILE), files)
    if extra:
        torch.save(extra, staged / EXTRA_CONSTANTS_FILE)


def _manifest(built: list[_BuiltGraph], options: CompileOptions, device: torch.device, fields: dict[str, Any],
              toolchain: str, compile_s: float) -> dict[str, Any]:
    """What the package holds and how it was made (``options``: what the build did, a CUDA-only pass
    off elsewhere); its key fields let a stale or foreign package be told apart."""
    return {
        "key_fields": fields,
        "device": device.type,
        "options": options.to_dict(),
        "graphs": [graph.entry for graph in built],
        "compile_s": round(compile_s, 3),
        "export_s": round(sum(graph.export_s for graph in built), 3),
        "toolchain": toolchain,
        "transforms": fields["transforms"],
        "module_class": fields["model"]["class"],
        "op_modules": sorted(set().union(*(graph.op_modules for graph in built))),
    }


_BUILTIN_NAMESPACES = {"aten", "prims", "_c10d_functional", "c10d_functional", "_quantized", "quantized", "higher_order", "profiler"}


def custom_op_modules(graph: torch.fx.Graph) -> set[str]:
    """The Python modules that register the custom operators ``graph`` calls (their definition or fake
    implementation). A process must import them before it loads a package that calls them, or loading
    fails with "Could not find schema"."""
    from torch._library import custom_ops, simple_registry

    modules = set()
    for node in graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or target.namespace in _BUILTIN_NAMESPACES:
            continue
        qualname = f"{target.namespace}::{target._opname}"
        opdef = custom_ops.OPDEFS.get(qualname)
        fake = simple_registry.singleton.find(qualname).fake_impl.kernel
        function = opdef._init_fn if opdef is not None else getattr(fake, "func", None) if fake is not None else None
        module = getattr(function, "__module__", None)
        if module and module != "__main__":
            modules.add(module)
    return modules


def import_op_modules(manifest: dict[str, Any]) -> None:
    """Import what registers the custom operators of a package (recorded at build), before loading it."""
    import importlib

    for module in manifest.get("op_modules", []):
        importlib.import_module(module)


def _constants_as_buffers(graph_module: torch.nn.Module, names: list[str]) -> None:
    """Register the exported program's lifted tensor constants (a model's plain tensor attributes, such
    as some rotary tables) as non-persistent buffers of the graph module: Inductor names a plain
    attribute ``_tensor_constantN`` in the package and a buffer by its path, which is the name the
    manifest, the probe and `aoti.apply` know it by."""
    for name in names:
        path, _, attr = name.rpartition(".")
        owner = graph_module.get_submodule(path) if path else graph_module
        tensor = owner.__dict__.get(attr)
        if isinstance(tensor, torch.Tensor):
            delattr(owner, attr)
            owner.register_buffer(attr, tensor, persistent=False)


def _constant_specs(ep: torch.export.ExportedProgram, prefix: str) -> dict[str, list[Any]]:
    """Names, shapes and dtypes of the tensors the compiled graph expects to be given."""
    specs: dict[str, list[Any]] = {}
    for name, tensor in list(ep.state_dict.items()) + list(ep.constants.items()):
        if isinstance(tensor, torch.Tensor):
            specs[name.removeprefix(prefix)] = [list(tensor.shape), str(tensor.dtype)]
    return specs

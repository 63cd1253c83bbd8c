"""Hot-swap a module's method with compiled graphs bound to the module's own weights; restore eager."""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any

import torch
from torch.utils import _pytree as pytree

from . import lifetimes
from .cache import MANIFEST_FILE, PROBE_FILE
from .compile import EXTRA_CONSTANTS_FILE, Artifact, RegionalArtifact, import_op_modules
from .cuda_graphs import CUDAGraphRunner, StepGraph, is_static
from .env import fingerprint
from .module_record import update
from .passes.toolchain import prepare_inductor
from .probe import probe_package
from .shapes import Guard
from .status import Status
from .swap import CompiledMethod, install, unswap
from .transforms import undo_transforms
from .weights import constants_map

log = logging.getLogger(__name__)

ENV_PROBE = "AOTI_PROBE"


def preload() -> None:
    """Import and settle what binding a package needs (Inductor's package loader, the toolchain
    checks), so that processes forked from this one (ZeroGPU's GPU workers) bind at once."""
    import torch._inductor.package  # noqa: F401

    prepare_inductor()


def verify_loadable(artifact: Artifact | RegionalArtifact) -> tuple[bool, str]:
    """The cached crash-probe verdict for this package on this machine, probing once (in a child
    process) if needed, for each of its packages (a regional artifact's parts). `apply` calls it;
    call it first to keep the probe out of a critical section."""
    verdicts = [_verify_package(package) for package in artifact.packages()]
    bad = [reason for ok, reason in verdicts if not ok]
    return (not bad, bad[0] if bad else verdicts[0][1] if len(verdicts) == 1 else "all parts loadable")


def _verify_package(artifact: Artifact) -> tuple[bool, str]:
    if os.environ.get(ENV_PROBE, "1") == "0":
        return True, "probe disabled (AOTI_PROBE=0)"
    env = fingerprint(torch.device(artifact.manifest["device"]))
    verdict = artifact.cache.read_json(artifact.key, PROBE_FILE)
    kept = verdict is not None and verdict.get("env") == env
    if not kept or not verdict.get("sound", verdict.get("ok")):  # none yet, or an inconclusive one: probe (again)
        failures = verdict.get("failures", 0) if kept else 0
        result = probe_package(artifact.package, artifact.entry.dir / MANIFEST_FILE)
        verdict = {**result.to_dict(), "env": env, "failures": failures + (not result.sound)}
        try:
            artifact.cache.write_json(artifact.key, PROBE_FILE, verdict)
        except OSError as exc:  # a read-only cache: the verdict holds for this process only
            log.warning("aoti: could not keep the probe verdict of %s (%s)", artifact.key, exc)
        log.log(logging.INFO if result.sound else logging.WARNING, "aoti: probe of %s: %s", artifact.key, result.reason)
    if not verdict["sound"]:
        return False, (f"{verdict['reason']} (inconclusive, {verdict['failures']} time(s) so far: the next load "
                       "probes it again)")
    return bool(verdict["ok"]), str(verdict["reason"])


def _bind(artifact: Artifact, module: torch.nn.Module, status: Status, cuda_graphs: bool = False,
          single_threaded: bool = False) -> tuple[list[tuple[Any, ...]], dict[str, torch.Tensor]]:
    from torch._inductor.package import load_package

    prepare_inductor()  # a fresh process would otherwise re-run Inductor's slow CPU checks here
    import_op_modules(artifact.manifest)
    available = constants_map(module)
    extra_path = artifact.entry.dir / EXTRA_CONSTANTS_FILE
    extra = torch.load(extra_path, weights_only=True) if extra_path.exists() else {}
    device = torch.device(artifact.manifest["device"])
    graphs, weights = [], {}
    for graph in artifact.manifest["graphs"]:
        name, prefix = graph["name"], graph.get("constant_prefix", "")
        graphed = cuda_graphs and is_static(graph["guard"])
        # single-threaded runners skip the container's event bookkeeping, which a CUDA graph can't capture
        runner = load_package(str(artifact.package), name, run_single_threaded=graphed or single_threaded)
        bound: dict[str, torch.Tensor] = {}
        missing = []
        for fqn in runner.get_constant_fqns():
            clean = fqn.removeprefix(prefix)
            tensor = available.get(clean)
            if tensor is None and f"{name}/{clean}" in extra:
                tensor = extra[f"{name}/{clean}"].to(device)
            if tensor is None:
                missing.append(clean)
                continue
            bound[fqn] = tensor.detach()  # the runtime's own handle: it never lets it go (aoti.lifetimes)
        if missing:
            raise RuntimeError(
                f"the compiled graph needs tensors the module does not have: {missing[:8]}"
                f"{' ...' if len(missing) > 8 else ''} (was it compiled for another model or quantization?)"
            )
        wrong = [f for f, t in bound.items() if t.device.type != device.type]
        if wrong:
            raise RuntimeError(f"weights {wrong[:4]} are not on {device.type}; move the module there first.")
        runner.load_constants(bound, check_full_update=True, user_managed=True)
        in_spec, out_spec = (pytree.treespec_loads(s) for s in runner.loader.get_call_spec())
        guard = Guard.from_json(graph["guard"]).compiled()
        launcher = CUDAGraphRunner(runner.loader, status) if graphed else runner.loader
        status.cuda_graphs += graphed
        graphs.append((guard, launcher, in_spec, out_spec))
        weights.update({f"{name}/{k}": v for k, v in bound.items()})
    return graphs, weights


def apply(artifact: Artifact | RegionalArtifact, module: torch.nn.Module, *, method: str | None = None,
          cuda_graphs: bool = False) -> Status:
    """Swap ``module.<method>`` for the compiled graphs, bound to the module's own weights (no copy).

    The module keeps its attributes (``config``, ``dtype``, ``device``). Inputs outside the compiled
    shapes run eagerly and are counted. A package that crashes the probe process is not loaded: the
    module stays eager and the returned status says why. ``cuda_graphs`` replays each static CUDA
    graph as a CUDA graph (see `CUDAGraphRunner`; for decode steps); elsewhere it is ignored, visibly.
    """
    if isinstance(artifact, RegionalArtifact):
        return _apply_regional(artifact, module, cuda_graphs)
    method = method or artifact.manifest["options"].get("method", "forward")
    unswap(module, method)
    lifetimes.release_orphans()  # e.g. the float weights of a model quantized since its last package
    return _apply_one(artifact, module, method, cuda_graphs)


def _apply_one(artifact: Artifact, module: torch.nn.Module, method: str, cuda_graphs: bool,
               single_threaded: bool = False) -> Status:
    """`apply` of one package to a module whose method is eager (no garbage collection here: a regional
    apply binds dozens of blocks, and a full collection per block adds seconds to a large model's load).
    ``single_threaded``: runners a CUDA graph around the caller can capture (a regional step's)."""
    status = copy.deepcopy(artifact.status)
    ok, reason = verify_loadable(artifact)
    if not ok:
        status.runtime, status.reason = "eager", f"package rejected: {reason}"
        status.fallbacks.append(f"aoti -> eager: {reason}")
        log.error("aoti: %s stays eager: %s", type(module).__name__, reason)
        return status
    if cuda_graphs and artifact.manifest["device"] != "cuda":
        status.fallbacks.append(f"cuda graphs -> off: the graphs run on {artifact.manifest['device']}")
        cuda_graphs = False
    start = time.perf_counter()
    graphs, weights = _bind(artifact, module, status, cuda_graphs, single_threaded)
    status.load_s = round(time.perf_counter() - start, 4)
    status.runtime = "aoti"
    install(module, method, CompiledMethod(module, method, graphs, weights, status))
    return status


def _apply_regional(artifact: RegionalArtifact, module: torch.nn.Module, cuda_graphs: bool) -> Status:
    status = copy.deepcopy(artifact.status)
    status.runtime, status.load_s = "aoti", 0.0
    devices = {part.manifest["device"] for _, part in artifact.parts}
    if cuda_graphs and devices != {"cuda"}:
        status.fallbacks.append(f"cuda graphs -> off: the graphs run on {', '.join(sorted(devices))}")
        cuda_graphs = False
    unswap(module, "forward")
    lifetimes.release_orphans()
    rejected = []
    for names, part in artifact.parts:
        for name in names:
            block = module.get_submodule(name)
            part_status = _apply_one(part, block, part.manifest["options"].get("method", "forward"), cuda_graphs=False,
                                     single_threaded=cuda_graphs)
            if part_status.runtime != "aoti":
                rejected.append(part_status.reason)
                continue
            status.load_s += part_status.load_s or 0.0
            block.forward.status = status  # one shared live record for every block
    if rejected:
        status.runtime = "eager" if len(rejected) == sum(len(n) for n, _ in artifact.parts) else "aoti"
        status.fallbacks.append(f"aoti -> eager for {len(rejected)} blocks: {rejected[0]}")
    status.reason = f"regional: {len(artifact.parts)} packages for {sum(len(n) for n, _ in artifact.parts)} blocks"
    if cuda_graphs and not rejected:  # the whole step as one CUDA graph, captured at its first call
        install(module, "forward", StepGraph(module.forward, status))
    elif cuda_graphs:
        status.fallbacks.append("cuda graph of the step -> off: some blocks run eagerly")
    update(module, regional=status)
    return status


def restore(module: torch.nn.Module, *, method: str = "forward", transforms: bool = True) -> Status:
    """The module as it was before `aoti.transform` and `aoti.apply`: the eager method back (every
    regional block's too) and every transform undone, float weights included. Returns the eager status.

    Example::

        aoti.transform(model, [aoti.Float8Rowwise()])
        aoti.apply(aoti.compile(model, calls), model)
        aoti.restore(model)          # bf16 weights and eager forward again: no reload

    ``transforms=False`` only unbinds the graphs (for a module about to be dropped: no weights rebuilt).
    """
    unswap(module, method)
    undone = undo_transforms(module) if transforms else 0
    if undone:
        lifetimes.release_orphans()  # weights the graphs of the transformed module were loaded with
    return Status(runtime="eager", reason="restored")

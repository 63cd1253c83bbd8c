"""Each model's state, with one owner: `States`, the only writer, through named transitions.

A `ModelState` is a frozen snapshot: the side panel and the API read a consistent record, and nothing
outside this module can change one (a transition replaces it). The engine, the Studio and the ZeroGPU
ledger say what happened (`loaded`, `compiling`, `compiled`, `failed`, `observed`, `from_worker`, ...);
`States` decides what that means for the record, in one place. A fallback is recorded once, here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any

import aoti

from .recipes import Switches


class Phase(StrEnum):
    """Where a model is in its life; the API's and the panel's ``state``."""

    NOT_LOADED = "not loaded"
    UNAVAILABLE = "unavailable"  # asked for, but it can't be loaded here (the reason says why)
    EAGER = "eager"
    COMPILING = "compiling"  # serving what it served before (eager, or the previous graphs) meanwhile
    AOTI = "aoti"
    FALLBACK = "fallback"  # asked to run compiled graphs and could not: eager, with the reason
    DISTRIBUTED = "distributed"


@dataclass(frozen=True)
class Build:
    """What the last compile (or bind) gave: where the graphs came from and what fell back."""

    compile_s: float | None = None
    load_s: float | None = None
    cache_hit: bool | None = None
    quantization: str = "none"
    cuda_graphs: int = 0
    fallbacks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Progress:
    """A compile that is running: its stage, when it started (time.time()), the last such build's time."""

    stage: str = ""
    started: float | None = None
    estimate_s: float | None = None


@dataclass(frozen=True)
class Speed:
    """How fast the model is. ``measured``: the compiled graphs timed against eager when they were
    bound, on the model's own inputs, with the spread (`aoti.Speedup.to_dict`): the figure shown first.
    Then what requests saw: seconds per unit (a decoded token, a denoising step), the best per runtime
    (a first call's warm-up never lowers a best); ``compared``: the last visitor's own A/B ("Compare
    with eager": seconds per unit, "aoti" and "eager")."""

    measured: dict[str, Any] | None = None
    eager_latency_s: float | None = None
    aoti_latency_s: float | None = None
    compared: dict[str, float] | None = None
    speculative_tokens_per_s: float | None = None  # the last speculative request's decode speed,
    acceptance: float | None = None  # and the share of its drafted tokens kept

    @property
    def speedup(self) -> float | None:
        if self.eager_latency_s and self.aoti_latency_s:
            return round(self.eager_latency_s / self.aoti_latency_s, 2)
        return None


@dataclass(frozen=True)
class Guard:
    """The compiled graphs' shape guard: calls it sent to eager (and why, the last time), layout copies."""

    guard_fallbacks: int = 0
    last_guard_reason: str | None = None
    layout_copies: int = 0


@dataclass(frozen=True)
class Adapter:
    """The LoRA adapter the last request ran with (`aoti.fuse_lora`): its id ("" for none), scale, and
    the seconds its switch took (0 where it was fused already)."""

    lora: str = ""
    lora_scale: float = 1.0
    lora_switch_s: float | None = None


@dataclass(frozen=True)
class ModelState:
    """One model's record, as the side panel and `/compile_status` show it (`as_row`)."""

    model: str
    phase: Phase = Phase.NOT_LOADED
    reason: str = ""
    switches: Switches | None = None  # what the last compile was asked with
    compiles: int = 0  # compiles started since the process started
    ref: dict[str, Any] | None = None  # the compiled artifact (`aoti.Artifact.ref`) GPU workers bind
    placement: str = ""  # what of the loaded model is not on the device, and why ("": all of it is)
    build: Build = field(default_factory=Build)
    progress: Progress = field(default_factory=Progress)
    speed: Speed = field(default_factory=Speed)
    guard: Guard = field(default_factory=Guard)
    adapter: Adapter = field(default_factory=Adapter)

    def as_row(self) -> dict[str, Any]:
        """The flat row of the API (`/compile_status`): ``state`` is the phase's name."""
        row: dict[str, Any] = {"model": self.model, "state": str(self.phase), "reason": self.reason,
                               "requested": self.switches.as_dict() if self.switches else None,
                               "compiles": self.compiles, "ref": self.ref, "placement": self.placement}
        for part in (self.build, self.progress, self.speed, self.guard, self.adapter):
            row.update(asdict(part))
        row["fallbacks"] = list(self.build.fallbacks)
        row["speedup"] = self.speed.speedup
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ModelState:
        """A record from its row (`as_row`), as a GPU worker returns it."""
        def part(kind):
            return kind(**{f.name: row[f.name] for f in fields(kind) if f.name in row})

        requested = row.get("requested")
        return cls(row["model"], Phase(row["state"]), row.get("reason", ""),
                   Switches(**requested) if requested else None, row.get("compiles", 0), row.get("ref"),
                   row.get("placement", ""), replace(part(Build), fallbacks=tuple(row.get("fallbacks") or ())),
                   part(Progress), part(Speed), part(Guard), part(Adapter))


class States(Mapping[str, ModelState]):
    """Every catalog model's state, by id; read like a dict, written only through the transitions
    below (each replaces a model's record under one lock)."""

    def __init__(self, model_ids: list[str], observe_locally: bool = True) -> None:
        self._records = {m: ModelState(m) for m in model_ids}
        self._lock = threading.Lock()
        # Where requests run: in this process (their guard counters are read live, `live`), or in
        # ZeroGPU workers, whose reports are the truth (`from_worker`).
        self.observe_locally = observe_locally

    def __getitem__(self, model_id: str) -> ModelState:
        return self._records[model_id]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._records))

    def __len__(self) -> int:
        return len(self._records)

    def rows(self) -> list[dict[str, Any]]:
        return [record.as_row() for record in list(self._records.values())]

    def _set(self, model_id: str, **changes: Any) -> ModelState:
        with self._lock:
            record = self._records[model_id] = replace(self._records[model_id], **changes)
        return record

    # --- the model's life ----------------------------------------------------------------------------

    def loaded(self, model_id: str, seconds: float, placement: str) -> ModelState:
        """Built and serving eager; what outlives a load is kept (the switches, the count of compiles,
        and on ZeroGPU the graphs' reference: workers bind them again, as before the switch)."""
        old = self[model_id]
        kept = old.ref if not self.observe_locally else None  # (in this process: rebound by the engine)
        phase, reason = Phase.EAGER, f"loaded in {seconds:.1f} s"
        if kept is not None:
            phase, reason = Phase.AOTI, "bound in each GPU worker from the cache, as before it was switched out"
        with self._lock:
            record = self._records[model_id] = ModelState(model_id, phase, reason, old.switches, old.compiles, kept, placement)
        return record

    def unloaded(self, model_id: str, freed_mib: float) -> ModelState:
        old = self[model_id]
        with self._lock:
            record = self._records[model_id] = ModelState(model_id, Phase.NOT_LOADED, f"unloaded, freed {freed_mib:.1f} MiB",
                                                          old.switches, old.compiles, old.ref)
        return record

    def unavailable(self, model_id: str, reason: str) -> ModelState:
        """Asked for and can't be loaded here: its card says why (never dropped silently)."""
        return self._set(model_id, phase=Phase.UNAVAILABLE, reason=reason)

    def distributed(self, model_id: str, reason: str) -> ModelState:
        return self._set(model_id, phase=Phase.DISTRIBUTED, reason=reason)

    # --- compiling -------------------------------------------------------------------------------------

    def compiling(self, model_id: str, switches: Switches | None, reason: str, stage: str,
                  estimate_s: float | None = None) -> ModelState:
        """A compile started (the model keeps serving what it served meanwhile)."""
        old = self[model_id]
        return self._set(model_id, phase=Phase.COMPILING, reason=reason, switches=switches or old.switches,
                         compiles=old.compiles + 1, progress=Progress(stage, time.time(), estimate_s))

    def stage(self, model_id: str, stage: str, estimate_s: float | None) -> ModelState:
        """A running compile reached ``stage`` (`aoti.OnStage`)."""
        progress = self[model_id].progress
        return self._set(model_id, progress=replace(progress, stage=stage,
                                                    estimate_s=estimate_s if estimate_s is not None else progress.estimate_s))

    def compiled(self, model_id: str, status: aoti.Status, ref: dict[str, Any] | None) -> ModelState:
        """A compile, cache load or bind finished: the graphs run (`status.runtime == "aoti"`), or the
        model serves eager with the status's reason."""
        build = Build(status.compile_s, status.load_s, status.cache_hit, status.quantization, status.cuda_graphs,
                      tuple(status.fallbacks))
        phase = Phase.AOTI if status.runtime == "aoti" else Phase.FALLBACK
        speed = replace(self[model_id].speed, measured=status.measured if phase == Phase.AOTI else None)
        return self._set(model_id, phase=phase, reason=status.reason, ref=ref, build=build, progress=Progress(), speed=speed)

    def failed(self, model_id: str, reason: str, fallback: str) -> ModelState:
        """Compiled graphs were asked for and can't run: the model serves eager, ``reason`` on its card,
        ``fallback`` ("aoti -> eager: ...") in its list."""
        build = replace(self[model_id].build, fallbacks=(fallback[:300],))
        return self._set(model_id, phase=Phase.FALLBACK, reason=reason[:500], ref=None, build=build, progress=Progress())

    def switched_off(self, model_id: str) -> ModelState:
        """AOTI off (the owner's A/B): eager, and eager again after a switch out and back in."""
        phase = Phase.EAGER if self[model_id].phase != Phase.NOT_LOADED else Phase.NOT_LOADED
        reason = "AOTI switched off" if phase == Phase.EAGER else self[model_id].reason
        return self._set(model_id, phase=phase, reason=reason, ref=None, progress=Progress())

    def recorded(self, worker: ModelState) -> ModelState:
        """A compile that ran in a GPU worker (`serve_compile`): its record, keeping what this process
        measured (speeds) and counted (compiles)."""
        old = self[worker.model]
        phase = Phase.EAGER if worker.phase == Phase.NOT_LOADED else worker.phase  # the worker loaded it; this process did not
        with self._lock:
            speed = replace(old.speed, measured=worker.speed.measured)  # measured in the worker, at its bind
            record = self._records[worker.model] = replace(worker, phase=phase, speed=speed, compiles=old.compiles)
        return record

    # --- what requests saw ------------------------------------------------------------------------

    def observed(self, model_id: str, seconds: float, runtime: str) -> ModelState:
        """A request's seconds per unit (token or step) under the runtime that served it; each runtime
        keeps its best."""
        speed = self[model_id].speed
        key = "aoti_latency_s" if runtime == "aoti" else "eager_latency_s"
        best = getattr(speed, key)
        return self._set(model_id, speed=replace(speed, **{key: seconds if best is None else min(best, seconds)}))

    def adapter_used(self, model_id: str, lora: str, scale: float, switch_s: float | None) -> ModelState:
        """The adapter a request ran with, and what switching to it cost."""
        return self._set(model_id, adapter=Adapter(lora, scale, switch_s))

    def compared(self, model_id: str, compared: dict[str, float]) -> ModelState:
        """A visitor's A/B of one request ("Compare with eager"): shown as it was measured."""
        return self._set(model_id, speed=replace(self[model_id].speed, compared=dict(compared)))

    def speculative(self, model_id: str, tokens_per_s: float, acceptance: float) -> ModelState:
        """A speculative request's speed and acceptance: shown apart from the compiled-vs-eager speeds."""
        return self._set(model_id, speed=replace(self[model_id].speed, speculative_tokens_per_s=round(tokens_per_s, 2),
                                                  acceptance=acceptance))

    def live(self, model_id: str, status: aoti.Status) -> ModelState:
        """The compiled graphs' live counters, where requests run in this process."""
        changes: dict[str, Any] = {"guard": Guard(status.guard_fallbacks, status.last_guard_reason, status.layout_copies)}
        if status.runtime == "aoti":  # a CUDA-graph capture happens (or fails) at the first call
            changes["build"] = replace(self[model_id].build, cuda_graphs=status.cuda_graphs, fallbacks=tuple(status.fallbacks))
        return self._set(model_id, **changes)

    def from_worker(self, report) -> ModelState:
        """What a GPU worker ran (`RunReport`): its counters add up, its fallbacks replace the list, and
        a model asked to run graphs that served eager becomes a fallback with the worker's reason."""
        old = self[report.model_id]
        guard = Guard(old.guard.guard_fallbacks + report.guard_fallbacks,  # (a report counts its own call's)
                      report.last_guard_reason or old.guard.last_guard_reason,
                      old.guard.layout_copies + report.layout_copies)
        build = replace(old.build, cuda_graphs=report.cuda_graphs)
        if report.runtime == "aoti" or report.fallbacks:
            build = replace(build, fallbacks=tuple(report.fallbacks))
        changes: dict[str, Any] = {"guard": guard, "build": build}
        if old.phase == Phase.AOTI and report.runtime != "aoti":  # asked to bind graphs, and could not
            changes.update(phase=Phase.FALLBACK, reason=f"a GPU worker served eager: {report.reason}"[:500])
        return self._set(report.model_id, **changes)

"""A model's state has one owner: `engines.state.States`, through named transitions."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import aoti
from engines.recipes import Switches
from engines.state import ModelState, Phase, States
from engines.workers import RunReport

ROOT = Path(__file__).resolve().parents[2]
API_KEYS = {"model", "state", "reason", "compile_s", "load_s", "cache_hit", "speedup", "guard_fallbacks", "last_guard_reason",
            "layout_copies", "cuda_graphs", "fallbacks", "eager_latency_s", "aoti_latency_s", "quantization", "ref",
            "requested", "compiles", "stage", "started", "estimate_s", "placement", "speculative_tokens_per_s", "acceptance",
            "measured", "compared", "lora", "lora_scale", "lora_switch_s"}


def test_only_engines_state_makes_or_changes_a_model_state():
    """Frozen records, a read-only mapping, and no other module that builds or replaces one."""
    states = States(["m"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        states["m"].phase = Phase.AOTI  # type: ignore[misc]
    with pytest.raises(TypeError):
        states["m"] = ModelState("m")  # type: ignore[index]
    writers = []
    for path in [*(ROOT / "engines").glob("*.py"), ROOT / "app.py", ROOT / "panel.py"]:
        if path.name == "state.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if _writes_a_state(node):
                writers.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:80]}")
    assert writers == []


def _writes_a_state(node: ast.AST) -> bool:
    """A record built (``ModelState(...)``), copied with changes (``replace(state, ...)``), forced
    (``object.__setattr__``), or the owner's private parts reached (``._records``, ``._set``)."""
    if isinstance(node, ast.Attribute) and node.attr in ("_records", "_set"):
        return True
    if not isinstance(node, ast.Call):
        return False
    name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
    if name in ("ModelState", "__setattr__"):
        return True
    return name == "replace" and bool(node.args) and "state" in ast.unparse(node.args[0]).lower()


def test_the_api_row_keeps_its_keys_and_reads_back():
    states = States(["m"])
    states.compiling("m", Switches(fp8=True), "compiling", "export")
    states.adapter_used("m", "outline", 0.5, 0.012)
    row = states["m"].as_row()
    assert set(row) == API_KEYS and row["state"] == "compiling" and row["requested"] == {"aoti": True, "fp8": True, "regional": False}
    assert ModelState.from_row(row) == states["m"] and (row["lora"], row["lora_scale"]) == ("outline", 0.5)


def test_transitions_say_what_happened_once():
    states = States(["m"])
    states.loaded("m", 1.5, "")
    assert (states["m"].phase, states["m"].reason) == ("eager", "loaded in 1.5 s")
    states.compiling("m", Switches(), "exporting", "waiting")
    states.stage("m", "compile", 12.0)
    assert states["m"].compiles == 1 and states["m"].progress.stage == "compile" and states["m"].progress.estimate_s == 12.0
    status = aoti.Status(runtime="aoti", reason="compiled", compile_s=3.0, cache_hit=False, fallbacks=["fa3 -> sdpa: x"])
    states.compiled("m", status, {"key": "k"})
    m = states["m"]
    assert m.phase == "aoti" and m.build.compile_s == 3.0 and m.build.fallbacks == ("fa3 -> sdpa: x",) and m.progress.started is None
    states.failed("m", "the bind failed", "aoti -> eager: OSError")
    assert states["m"].phase == "fallback" and states["m"].ref is None and states["m"].build.fallbacks == ("aoti -> eager: OSError",)
    states.loaded("m", 0.2, "")  # a load keeps the switches and the count of compiles
    assert states["m"].switches == Switches() and states["m"].compiles == 1


def test_speeds_keep_the_best_per_runtime_and_worker_counters_add_up():
    states = States(["m"], observe_locally=False)
    for seconds, runtime in ((0.02, "eager"), (0.03, "eager"), (0.005, "aoti"), (0.004, "aoti")):
        states.observed("m", seconds, runtime)
    assert (states["m"].speed.eager_latency_s, states["m"].speed.aoti_latency_s, states["m"].speed.speedup) == (0.02, 0.004, 5.0)
    states.compiled("m", aoti.Status(runtime="aoti"), {"key": "k"})
    for _ in range(2):
        states.from_worker(RunReport("m", "aoti", guard_fallbacks=1, last_guard_reason="16x16", layout_copies=2))
    assert (states["m"].guard.guard_fallbacks, states["m"].guard.layout_copies) == (2, 4)
    states.from_worker(RunReport("m", "eager", reason="no package"))
    assert states["m"].phase == "fallback" and "a GPU worker served eager: no package" in states["m"].reason
    states.loaded("m", 0.1, "")  # on ZeroGPU a model loaded back keeps its graphs' reference: workers bind them
    assert (states["m"].phase, states["m"].ref) == ("aoti", {"key": "k"})

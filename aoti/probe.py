"""Crash-isolated probing: load and run a package once in a child process before the server does.

A package built by a broken toolchain segfaults inside ``aoti_load_package``; a Python ``try`` cannot
catch that. The child gets the package and its manifest, binds random constants of the recorded
shapes (one set, shared by the package's graphs), runs every graph once on the example shapes and
exits; a graph that can't run for lack of GPU memory beside the serving process is reported, not
rejected (it loaded). The serving process only loads packages whose verdict is ok.

Only two outcomes are sound verdicts, kept beside the package: a clean run, and a crash by a signal
(what a broken toolchain does, every time). A time-out or a failing exit may be the machine's moment
(a busy host, no memory for the child's imports), so it refuses the package this time only and the
next load probes again.

Run by hand: ``python -m aoti.probe PACKAGE MANIFEST``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .passes.toolchain import child_env

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = float(os.environ.get("AOTI_PROBE_TIMEOUT_S", "600"))


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    reason: str
    seconds: float
    sound: bool = True  # a verdict to keep: a clean run or a crash by a signal (False: a time-out, a failing exit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_package(package: str | os.PathLike, manifest_path: str | os.PathLike, timeout: float | None = None) -> ProbeResult:
    """Load and run ``package`` once in a child process (at most ``timeout`` seconds, default
    `PROBE_TIMEOUT_S`); never crashes the caller."""
    timeout = PROBE_TIMEOUT_S if timeout is None else timeout
    start = time.perf_counter()
    env = {**os.environ, "PYTHONFAULTHANDLER": "1", **child_env()}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "aoti.probe", str(package), str(manifest_path)],
            capture_output=True, text=True, timeout=timeout, env=env,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, f"probe timed out after {timeout:.0f} s", time.perf_counter() - start, sound=False)
    seconds = time.perf_counter() - start
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        fatal = next((ln.strip() for ln in proc.stderr.splitlines() if ln.startswith("Fatal Python error")), "")
        log.error("probe of %s crashed (%s); child stderr:\n%s", package, name, proc.stderr[-4000:])
        return ProbeResult(False, f"package crashed the probe process ({name}) while loading or running it. {fatal}".strip(), seconds)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return ProbeResult(False, f"probe failed (exit {proc.returncode}): {tail[0][:300]}", seconds, sound=False)
    timing = proc.stdout.strip().splitlines()[-1:] or [""]
    return ProbeResult(True, f"loaded and ran in a child process {timing[0]}".strip(), seconds)


def _random_tensor(shape: list[int], dtype_name: str, device: str) -> Any:
    import torch

    dtype = getattr(torch, dtype_name.removeprefix("torch."))
    if dtype.is_floating_point:
        return torch.randn(shape, device=device).to(dtype)
    if dtype == torch.bool:
        return torch.ones(shape, dtype=dtype, device=device)
    return torch.zeros(shape, dtype=dtype, device=device)


def _run_child(package: str, manifest_path: str, started: float) -> None:
    import torch
    from torch._inductor.package import load_package

    from aoti.compile import import_op_modules
    from aoti.passes.toolchain import settle_vec_isa

    settle_vec_isa()
    manifest = json.loads(Path(manifest_path).read_text())
    import_op_modules(manifest)  # what registers the package's custom operators
    imported = time.perf_counter()
    device = manifest["device"]
    load_s = 0.0
    shared: dict[str, Any] = {}  # graphs of one package share their weights (prefill + decode), as in serving
    skipped = []
    for graph in manifest["graphs"]:
        t0 = time.perf_counter()
        compiled = load_package(package, graph["name"])  # a broken toolchain's package crashes here
        load_s += time.perf_counter() - t0
        specs = graph["constants"]
        prefix = graph.get("constant_prefix", "")
        try:
            constants = {
                fqn: shared.setdefault(fqn, _random_tensor(*specs[fqn.removeprefix(prefix)], device))
                for fqn in compiled.get_constant_fqns()
            }
            compiled.load_constants(constants, check_full_update=True, user_managed=True)
            inputs = [_random_tensor(shape, dtype, device) for shape, dtype in graph["example_inputs"]]
            compiled.loader.run(inputs)
            if device == "cuda":
                torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            # The serving process already holds the real weights; a second copy may not fit beside
            # them. The package loaded, which is what a bad toolchain breaks: don't reject it for this.
            skipped.append(graph["name"])
            shared.clear()
            torch.cuda.empty_cache()
        del compiled
    done = time.perf_counter()
    note = f", not run for lack of GPU memory: {', '.join(skipped)}" if skipped else ""
    print(f"(import {imported - started:.1f} s, load {load_s:.2f} s, total {done - started:.1f} s{note})")


if __name__ == "__main__":
    _run_child(sys.argv[1], sys.argv[2], time.perf_counter())

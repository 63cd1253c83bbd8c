"""Faults a serving machine meets, each survived: a cache folder that can't be written (read-only, no
room) and a process killed in the middle of a compile. Each runs in a child process, as the real fault
would happen: a folder whose mode forbids writing (root's child drops its override capability), a file
size limit (RLIMIT_FSIZE, what a full disk answers a writer), a SIGKILL."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

import aoti
from tests import tiny

ROOT = Path(__file__).resolve().parents[2]

_MLP = """
import json, sys, torch, aoti
from tests import tiny
def mlp_call(rows=4):
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(rows, 32))
    return model, call
"""


def _child(code: str, tmp_path: Path, *args: str, prelude: str = "", preexec=None, wait: bool = True):
    """Run ``code`` in a fresh interpreter with this checkout importable and its own writable temp and
    Inductor folders (readable and writable by any user)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    scratch.chmod(0o777)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(scratch), "TMPDIR": str(scratch),
           "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"), "HF_HUB_OFFLINE": "1"}
    popen = subprocess.Popen([sys.executable, "-c", prelude + _MLP + textwrap.dedent(code), *args], cwd=ROOT, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec)
    if not wait:
        return popen
    out, err = popen.communicate(timeout=600)
    assert popen.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


# Prepended to a child's code: file modes apply to it. Root keeps its uid (its Python may live in /root)
# but drops its effective capabilities (CAP_DAC_OVERRIDE: writing where the mode says no), as a user's
# would be. (In the child itself: an exec gives root its capabilities back.)
_UNPRIVILEGED = """
import ctypes, os
if os.getuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()
    assert libc.capget(header, data) == 0
    data[0] = data[3] = 0  # the effective set (both words); permitted and inheritable kept
    assert libc.capset(header, data) == 0, ctypes.get_errno()
"""


def test_a_read_only_cache_serves_what_it_holds_and_a_build_says_why_it_cannot(tmp_path):
    root = tmp_path / "cache"
    model = tiny.MLP()
    aoti.compile(model, _capture(model), cache=aoti.Cache(root))  # one package in it, then nobody may write it
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    result = _child("""
        from engines import registry
        from engines.device import discover
        from engines.lightweight import LightweightEngine
        from engines.text import SamplingParams
        cache = aoti.Cache(sys.argv[1])
        model, call = mlp_call()
        held = aoti.compile(model, call, cache=cache)  # what the cache holds: loaded
        runtime = aoti.apply(held, model).runtime
        other, call = mlp_call(rows=8)
        try:
            aoti.compile(other, call, cache=cache)
            refused = None
        except aoti.CacheUnwritable as exc:
            refused = str(exc)
        engine = LightweightEngine(discover(), cache)  # the app's engine on that cache
        state = engine.optimize("tiny-llama-pydoc", background=False)
        text = list(engine.generate_text("tiny-llama-pydoc", "If the file", SamplingParams(max_new_tokens=5, temperature=0)))[-1].text
        print(json.dumps(dict(hit=held.status.cache_hit, runtime=runtime, refused=refused, state=state.state,
                              reason=state.reason, text=text)))
    """, tmp_path, str(root), prelude=_UNPRIVILEGED)
    assert result["hit"] is True and result["runtime"] == "aoti"
    assert result["refused"] and str(root) in result["refused"] and "AOTI_CACHE_DIR" in result["refused"]
    assert "Permission denied" in result["refused"] or "Read-only" in result["refused"]
    assert result["state"] == "fallback" and "CacheUnwritable" in result["reason"] and str(root) in result["reason"]
    assert len(result["text"]) > 0  # serving eager
    assert not (root / "failed").exists()  # a machine's condition, not remembered against the model


def _capture(model: torch.nn.Module) -> aoti.CapturedCalls:
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    return call


def _no_room():
    """In the child: what a full disk answers a writer (files may not grow past 4 KiB)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))


def test_a_full_disk_is_a_clear_message_and_not_remembered(tmp_path):
    root = tmp_path / "cache"
    result = _child("""
        import resource
        cache = aoti.Cache(sys.argv[1])
        model, call = mlp_call()
        try:
            aoti.compile(model, call, cache=cache, remember_failure=True)
            refused = None
        except aoti.CacheUnwritable as exc:
            refused = str(exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))  # room again
        again = aoti.compile(model, call, cache=cache, remember_failure=True)
        print(json.dumps(dict(refused=refused, hit=again.status.cache_hit, runtime=aoti.apply(again, model).runtime)))
    """, tmp_path, str(root), preexec=_no_room)
    assert result["refused"] and "AOTI_CACHE_DIR" in result["refused"] and str(root) in result["refused"]
    assert "File too large" in result["refused"] or "File size limit exceeded" in result["refused"]
    assert result["hit"] is False and result["runtime"] == "aoti"  # built once there was room: not remembered
    assert not any((root / "staging").iterdir())


def test_a_compile_killed_midway_leaves_nothing_loadable_and_runs_again(tmp_path):
    root = tmp_path / "cache"
    child = _child("""
        model, call = mlp_call()
        aoti.compile(model, call, cache=aoti.Cache(sys.argv[1]))
    """, tmp_path, str(root), wait=False)
    staging = root / "staging"
    deadline = time.monotonic() + 300
    while not (staging.exists() and any(staging.iterdir())):  # the build has started writing
        assert child.poll() is None and time.monotonic() < deadline, "the child ended before building"
        time.sleep(0.05)
    time.sleep(1.0)  # in the middle of Inductor's work
    os.kill(child.pid, signal.SIGKILL)
    child.wait(30)
    left = [p.name for p in staging.iterdir()]
    assert left and all(name.startswith(f"{child.pid}-") for name in left)  # the dead build's folder

    cache = aoti.Cache(root)
    assert cache.entries() == []  # nothing published
    model = tiny.MLP()
    artifact = aoti.compile(model, _capture(model), cache=cache)  # the lock died with the child
    assert artifact.status.cache_hit is False and cache.problems(artifact.key) == []
    assert aoti.apply(artifact, model).runtime == "aoti"
    x = torch.randn(4, 32)
    torch.testing.assert_close(model(x), model.forward.eager(x))
    assert not any(staging.iterdir())  # the dead build's folder was swept

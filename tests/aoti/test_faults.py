"""Faults a serving machine meets, each survived: a cache folder that can't be written (read-only, no
room) and a process killed in the middle of a compile. Each runs in a child process, as the real fault
would happen: a folder whose mode forbids writing (root's child drops its override capability), a file
file system too small for the package (a tmpfs mounted privately over the cache folder), a SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
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


def _child(code: str, tmp_path: Path, *args: str, prelude: str = "", preexec=None, wait: bool = True, unshare: bool = False):
    """Run ``code`` in a fresh interpreter with this checkout importable and its own writable temp and
    Inductor folders (readable and writable by any user); with ``unshare``, in a mount namespace of its
    own (what it mounts is gone when it exits)."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    scratch.chmod(0o777)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": str(scratch), "TMPDIR": str(scratch),
           "TORCHINDUCTOR_CACHE_DIR": str(scratch / "inductor"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-c", prelude + _MLP + textwrap.dedent(code), *args]
    if unshare:
        command = ["unshare", "--mount", "--propagation", "private", *command]
    popen = subprocess.Popen(command, cwd=ROOT, env=env,
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
        print(json.dumps(dict(hit=held.status.cache_hit, runtime=runtime, refused=refused, state=str(state.phase),
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


FULL_DISK_KB = 64  # a file system with room for the cache's lock files and little else: the package won't fit


def _small_filesystem_possible() -> bool:
    """Whether this machine lets a test mount a tmpfs in a mount namespace of its own (root, `unshare`)."""
    import shutil

    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                            "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _small_filesystem_possible(), reason="needs root and unshare to mount a small tmpfs privately")
def test_a_full_disk_under_the_cache_is_named_and_not_remembered(tmp_path):
    """The cache folder is a file system of 64 KiB (a tmpfs mounted in the child's own mount namespace,
    so nothing outside sees it); the compiler's work folders have room, and the toolchain is settled
    before the build. The build's write into the cache fails for lack of space: the error names that
    folder and says what to do; once the file system has room again, the same build succeeds (the
    fault was not remembered against the model)."""
    root = tmp_path / "cache"
    root.mkdir()
    result = _child("""
        import subprocess
        from aoti.passes.toolchain import prepare_inductor
        prepare_inductor()  # the compiler checks, in the work folders: settled before the cache fills
        root = sys.argv[1]
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dk" % int(sys.argv[2]), "tmpfs", root], check=True)
        cache = aoti.Cache(root)
        model, call = mlp_call()
        try:
            aoti.compile(model, call, cache=cache, remember_failure=True)
            refused = None
        except aoti.CacheUnwritable as exc:
            refused = str(exc)
        subprocess.run(["mount", "-o", "remount,size=64m", root], check=True)  # room again
        again = aoti.compile(model, call, cache=cache, remember_failure=True)
        staged = sorted(p.name for p in (cache.root / "staging").iterdir())
        print(json.dumps(dict(refused=refused, hit=again.status.cache_hit, runtime=aoti.apply(again, model).runtime,
                              staged=staged)))
    """, tmp_path, str(root), str(FULL_DISK_KB), unshare=True)
    refused = result["refused"]
    assert refused and "No space left on device" in refused, refused
    assert f"{root}/staging" in refused and "AOTI_CACHE_DIR" in refused  # the folder that refused the write
    assert result["hit"] is False and result["runtime"] == "aoti"  # built once there was room: not remembered
    assert result["staged"] == []


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

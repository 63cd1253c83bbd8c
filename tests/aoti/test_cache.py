import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import aoti
from aoti.cache import MANIFEST_FILE, PACKAGE_FILE
from tests import tiny

ROOT = Path(__file__).resolve().parents[2]

_COMPILE_MLP = textwrap.dedent("""
    import json, sys, torch, aoti
    from tests import tiny
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    art = aoti.compile(model, call, cache=aoti.Cache(sys.argv[1]))
    print(json.dumps(dict(key=art.key, hit=art.status.cache_hit)))
""")


@pytest.fixture(scope="module")
def raced_cache(tmp_path_factory):
    """Two processes compile the same key at the same time into one fresh cache."""
    root = tmp_path_factory.mktemp("race")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _COMPILE_MLP, str(root)], stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=600)[0].strip().splitlines()[-1]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    return root, results


def test_two_processes_compiling_one_key_leave_one_valid_artifact(raced_cache):
    root, results = raced_cache
    cache = aoti.Cache(root)
    assert results[0]["key"] == results[1]["key"]
    assert sorted(r["hit"] for r in results) == [False, True]  # one compiled, the other waited and loaded
    assert [e.key for e in cache.entries()] == [results[0]["key"]]
    assert cache.problems(results[0]["key"]) == []
    assert not any((root / "staging").iterdir())


def test_truncated_artifact_is_detected_and_rebuilt(raced_cache):
    root, results = raced_cache
    cache = aoti.Cache(root)
    package = cache.entry_dir(results[0]["key"]) / PACKAGE_FILE
    package.write_bytes(package.read_bytes()[: package.stat().st_size // 2])
    assert any("truncated" in p for p in cache.problems(results[0]["key"]))
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    artifact = aoti.compile(model, call, cache=cache)
    assert artifact.key == results[0]["key"] and artifact.status.cache_hit is False
    assert aoti.apply(artifact, model).runtime == "aoti"
    x = torch.randn(4, 32)
    torch.testing.assert_close(model(x), model.forward.eager(x))


def test_foreign_environment_is_refused(mlp_artifact, tmp_path):
    _, artifact = mlp_artifact
    env = artifact.manifest["key_fields"]["env"]
    issues = artifact.cache.problems(artifact.key, {**env, "torch": "0.0.1"})
    assert any("another environment" in i for i in issues)


def _fake_entry(cache: aoti.Cache, key: str, size: int) -> None:
    staged = cache.staging()
    (staged / PACKAGE_FILE).write_bytes(os.urandom(size))
    with cache.lock(key):
        cache.publish(key, staged, {"key_fields": {}, "graphs": []})


def test_size_cap_evicts_least_recently_used(tmp_path):
    cache = aoti.Cache(tmp_path, max_bytes=25_000)
    for key in ("a" * 32, "b" * 32):
        _fake_entry(cache, key, 10_000)
        time.sleep(0.05)
    assert cache.get("a" * 32) is not None  # touch: "a" is now the most recently used
    time.sleep(0.05)
    _fake_entry(cache, "c" * 32, 10_000)
    assert sorted(e.key[0] for e in cache.entries()) == ["a", "c"]


def test_cli_lists_inspects_verifies_and_clears(tmp_path):
    cache = aoti.Cache(tmp_path)
    _fake_entry(cache, "d" * 32, 100)
    _fake_entry(cache, "e" * 32, 100)
    (cache.entry_dir("e" * 32) / PACKAGE_FILE).write_bytes(b"x")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "aoti", "--cache-dir", str(tmp_path), *args],
                              capture_output=True, text=True, cwd=ROOT)

    listed = cli("list")
    assert listed.returncode == 0 and "d" * 32 in listed.stdout and "e" * 32 in listed.stdout
    inspected = cli("inspect", "ddd")
    assert json.loads(inspected.stdout)["key"] == "d" * 32
    verified = cli("verify")
    assert verified.returncode == 1 and "BAD" in verified.stdout and f"{'d' * 32}  ok" in verified.stdout
    assert cli("verify", "--fix").returncode == 0 and [e.key for e in cache.entries()] == ["d" * 32]
    assert "removed 1" in cli("clear").stdout and cache.entries() == []


def test_manifest_records_what_makes_the_artifact_valid(mlp_artifact):
    _, artifact = mlp_artifact
    manifest = json.loads((artifact.entry.dir / MANIFEST_FILE).read_text())
    for field in ("key", "key_fields", "options", "graphs", "compile_s", "package_bytes", "package_sha256", "toolchain"):
        assert field in manifest
    assert manifest["key_fields"]["env"]["torch"] == torch.__version__
    assert {"model", "options", "env", "graphs"} <= set(manifest["key_fields"])


def test_key_of_a_wrapped_model_follows_its_config_and_attention_implementation():
    from aoti.compile import cache_key

    def key(**config) -> str:
        model = tiny.llama()
        for name, value in config.items():
            setattr(model.config, name, value)
        return cache_key(tiny.static_cache_decoder(model, max_cache_len=16), aoti.CompileOptions(), [])[0]

    base = key()
    assert key() == base
    assert key(rms_norm_eps=1e-3) != base  # same tensors, another model: never the same package
    assert key(_attn_implementation="eager") != base  # another attention, another graph


def test_a_transient_build_failure_is_tried_again_and_a_real_one_is_remembered(tmp_path, monkeypatch):
    """`remember_failure` keeps a failed build from being paid for twice, except when the failure may
    not happen again (out of memory): that build is tried again next time."""
    from unittest import mock

    compile_module = sys.modules["aoti.compile"]  # (`aoti.compile` the attribute is the function)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with aoti.capture(model) as call:
        model(torch.randn(2, 4))
    cache = aoti.Cache(tmp_path)
    for error, remembered in ((torch.OutOfMemoryError("CUDA out of memory"), False), (RuntimeError("g++: error: x"), True)):
        with mock.patch.object(compile_module, "_build", side_effect=error) as build:
            for _ in range(2):
                with pytest.raises(RuntimeError):
                    aoti.compile(model, call, aoti.CompileOptions(preset="tuned" if remembered else "default"),
                                 cache=cache, remember_failure=True)
        assert build.call_count == (1 if remembered else 2), error

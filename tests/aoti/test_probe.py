"""A package that segfaults at load (as every package did on the GPU machine before the toolchain fix)
is caught by the probe in a child process; the serving process stays alive and eager."""

import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch

import aoti
from aoti.cache import PACKAGE_FILE, PROBE_FILE, sha256_file
from aoti.toolchain import links_libstdcxx_dynamically

_CRASH_ON_LOAD = '#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGSEGV); }\n'


def _crashing_copy(artifact: aoti.Artifact, root: Path) -> aoti.Artifact:
    """A copy of ``artifact`` in a new cache whose wrapper.so raises SIGSEGV when it is loaded."""
    src = root / "crash.c"
    src.write_text(_CRASH_ON_LOAD)
    so = root / "crash.so"
    subprocess.run(["gcc", "-shared", "-fPIC", str(src), "-o", str(so)], check=True)
    cache = aoti.Cache(root / "cache")
    staged = cache.staging()
    with zipfile.ZipFile(artifact.package) as zin, zipfile.ZipFile(staged / PACKAGE_FILE, "w") as zout:
        for item in zin.infolist():
            data = so.read_bytes() if item.filename.endswith(".so") else zin.read(item.filename)
            zout.writestr(item, data)
    manifest = {k: v for k, v in artifact.manifest.items() if k not in ("package_bytes", "package_sha256")}
    with cache.lock(artifact.key):
        entry = cache.publish(artifact.key, staged, manifest)
    assert entry.manifest["package_sha256"] == sha256_file(entry.package)
    return aoti.Artifact(entry, artifact.status, cache)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the crashing library")
def test_crashing_package_is_reported_and_the_module_stays_eager(mlp_artifact, tmp_path):
    model, artifact = mlp_artifact
    crashing = _crashing_copy(artifact, tmp_path)

    verdict = aoti.probe_package(crashing.package, crashing.entry.dir / "manifest.json")
    assert not verdict.ok and "SIGSEGV" in verdict.reason

    status = aoti.apply(crashing, model)  # would kill this process without the probe
    assert status.runtime == "eager" and "crashed" in status.reason and "SIGSEGV" in status.reason
    assert "forward" not in model.__dict__
    assert model(torch.randn(2, 32)).shape == (2, 16)
    assert crashing.cache.read_json(crashing.key, PROBE_FILE)["ok"] is False  # the verdict is cached


def test_sound_package_passes_the_probe_and_its_verdict_is_cached(mlp_artifact):
    model, artifact = mlp_artifact
    assert aoti.apply(artifact, model).runtime == "aoti"
    verdict = artifact.cache.read_json(artifact.key, PROBE_FILE)
    assert verdict["ok"] is True and verdict["env"]["torch"] == torch.__version__


def test_toolchain_check_finds_a_dynamic_libstdcxx_here(mlp_artifact):
    chain = aoti.ensure_toolchain()
    assert chain.static_libstdcxx is False and chain.fixed_from is None  # nothing to fix on this machine
    _, artifact = mlp_artifact
    with zipfile.ZipFile(artifact.package) as z:
        so = next(n for n in z.namelist() if n.endswith(".so"))
        assert b"libstdc++.so" in z.read(so)
    assert links_libstdcxx_dynamically(__import__("torch").__file__.replace("__init__.py", "lib/libtorch_cpu.so"))


_SETTLE = """
import sys, json
from torch._inductor import cpu_vec_isa
from aoti.toolchain import settle_vec_isa
builds = []
original = cpu_vec_isa.VecISA.check_build
cpu_vec_isa.VecISA.check_build = lambda self, code: builds.append(str(self)) or original(self, code)
note = settle_vec_isa(sys.argv[1])
print(json.dumps({"note": note, "builds": builds, "picked": str(cpu_vec_isa.pick_vec_isa()),
                  "isas": [str(i) for i in cpu_vec_isa.valid_vec_isa_list()]}))
"""


def _settle_in_fresh_process(state_dir):
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "AOTI_VEC_ISAS"}
    out = subprocess.run([sys.executable, "-c", _SETTLE, str(state_dir)], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cpu_isa_check_runs_once_per_machine_and_is_reused(tmp_path):
    first = _settle_in_fresh_process(tmp_path)
    assert "checked now" in first["note"] and list(tmp_path.glob("vec-isa-*.json"))
    second = _settle_in_fresh_process(tmp_path)
    assert "checked before" in second["note"]
    assert second["builds"] == []  # no test library built or loaded this time
    assert second["isas"] == first["isas"] and second["picked"] == first["picked"]

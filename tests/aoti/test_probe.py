"""A package that segfaults at load (as every package did on the GPU machine before the toolchain fix)
is caught by the probe in a child process; the serving process stays alive and eager."""

import os
import shutil
import zipfile

import pytest
import torch

import aoti
from aoti.cache import PROBE_FILE
from aoti.passes.toolchain import links_libstdcxx_dynamically
from tests.crash import crashing_copy

pytestmark = pytest.mark.probe  # the crash probe's own tests: it stays on (tests/aoti/conftest.py)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the crashing library")
def test_crashing_package_is_reported_and_the_module_stays_eager(mlp_artifact, tmp_path):
    model, artifact = mlp_artifact
    crashing = crashing_copy(artifact, tmp_path)

    verdict = aoti.probe_package(crashing.package, crashing.entry.dir / "manifest.json")
    assert not verdict.ok and "SIGSEGV" in verdict.reason

    status = aoti.apply(crashing, model)  # would kill this process without the probe
    assert status.runtime == "eager" and "crashed" in status.reason and "SIGSEGV" in status.reason
    assert "forward" not in model.__dict__
    assert model(torch.randn(2, 32)).shape == (2, 16)
    kept = crashing.cache.read_json(crashing.key, PROBE_FILE)
    assert kept["ok"] is False and kept["sound"] is True  # a crash by a signal is a verdict: cached


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
import json
from torch._inductor import config, cpu_vec_isa
import aoti.passes.toolchain as toolchain
builds, compiles = [], []
check_build, links = cpu_vec_isa.VecISA.check_build, toolchain._links_statically
cpu_vec_isa.VecISA.check_build = lambda self, code: builds.append(str(self)) or check_build(self, code)
toolchain._links_statically = lambda compiler: compiles.append(compiler) or links(compiler)
chain = toolchain.prepare_inductor()
print(json.dumps({"note": toolchain.settle_vec_isa(), "builds": builds, "compiles": compiles, "cxx": str(config.cpp.cxx),
                  "fixed_from": chain.fixed_from, "picked": str(cpu_vec_isa.pick_vec_isa()),
                  "isas": [str(i) for i in cpu_vec_isa.valid_vec_isa_list()]}))
"""


def _prepare_in_fresh_process(inductor_cache):
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "AOTI_VEC_ISAS"}
    env["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache)
    out = subprocess.run([sys.executable, "-c", _SETTLE], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_compiler_and_cpu_isa_checks_run_once_per_machine_and_are_reused(tmp_path):
    first = _prepare_in_fresh_process(tmp_path)
    assert "checked now" in first["note"] and first["compiles"]
    assert {p.name.split("-")[0] for p in tmp_path.glob("*.json")} == {"toolchain", "vec"}
    second = _prepare_in_fresh_process(tmp_path)
    assert "checked before" in second["note"]
    assert second["builds"] == [] and second["compiles"] == []  # nothing built or loaded this time
    assert (second["isas"], second["picked"], second["cxx"], second["fixed_from"]) == (
        first["isas"], first["picked"], first["cxx"], first["fixed_from"])


def test_the_probe_imports_what_registers_a_packages_custom_ops(cache):
    """The package calls an operator that only `tests.custom_op_model` registers; the probe child (and
    any process that loads the package) imports that module first, found from the graph itself."""
    import torch

    import aoti
    from tests.custom_op_model import CustomOpModel

    torch.manual_seed(0)
    model = CustomOpModel().eval()
    with aoti.capture(model) as call, torch.no_grad():
        model(torch.randn(2, 8))
    artifact = aoti.compile(model, call, cache=cache)
    assert artifact.manifest["op_modules"] == ["tests.custom_op_model"]
    status = aoti.apply(artifact, model)
    assert status.runtime == "aoti", status.reason
    x = torch.randn(2, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward.eager(x))


def test_a_missing_compiler_is_a_clear_error_and_never_a_remembered_good_verdict(monkeypatch, tmp_path):
    """No C++ compiler: a build stops at once with what to install (the engine then serves eager with
    that reason); nothing is cached, so installing one is enough."""
    import aoti.passes.toolchain as toolchain

    monkeypatch.setattr(toolchain, "_state_dir", lambda: tmp_path)
    monkeypatch.setattr(toolchain, "configured_compiler", lambda: "no-such-compiler++")
    monkeypatch.setattr(toolchain, "_prepared", None)  # settled once per process: as in a process started without one
    chain = toolchain.ensure_toolchain()
    assert chain.missing and "no working C++ compiler" in chain.missing and "install g++" in chain.missing
    assert not list(tmp_path.rglob("*toolchain*"))  # no verdict written
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with aoti.capture(model) as call:
        model(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="no working C\\+\\+ compiler"):
        aoti.compile(model, call, cache=aoti.Cache(tmp_path / "cache"))
    assert toolchain._prepared is None  # a missing compiler is never kept: checked again next time


def test_a_probe_that_times_out_is_not_kept_as_a_verdict_and_runs_again(mlp_artifact, monkeypatch):
    """A time-out says nothing about the package (a busy host): this load serves eager with the reason,
    the verdict file counts the inconclusive attempt, and the next load probes again and binds."""
    import aoti.probe

    model, artifact = mlp_artifact
    aoti.restore(model)
    artifact.cache.entry_dir(artifact.key).joinpath(PROBE_FILE).unlink(missing_ok=True)
    monkeypatch.setattr(aoti.probe, "PROBE_TIMEOUT_S", 0.01)
    status = aoti.apply(artifact, model)
    assert status.runtime == "eager" and "timed out" in status.reason and "probes it again" in status.reason
    kept = artifact.cache.read_json(artifact.key, PROBE_FILE)
    assert kept["sound"] is False and kept["failures"] == 1
    monkeypatch.setattr(aoti.probe, "PROBE_TIMEOUT_S", 600.0)
    assert aoti.apply(artifact, model).runtime == "aoti"
    kept = artifact.cache.read_json(artifact.key, PROBE_FILE)
    assert kept["ok"] is True and kept["sound"] is True
    aoti.restore(model)

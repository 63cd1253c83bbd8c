"""Precompiled graphs from the Hub, against a repository laid out in a local HF cache (offline)."""

import json
import shutil

import pytest
import torch

import aoti
from aoti.cache import MANIFEST_FILE, PACKAGE_FILE
from aoti.env import fingerprint
from aoti.hub import HubRefused, HubSource, pull, push_operations
from tests import tiny

REPO = "acme/aoti-graphs"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_repo(mlp_artifact, tmp_path, monkeypatch):
    """The MLP artifact published as `acme/aoti-graphs` at COMMIT in a local Hugging Face cache."""
    import huggingface_hub.constants

    _, artifact = mlp_artifact
    hub_cache = tmp_path / "hf"
    repo = hub_cache / "models--acme--aoti-graphs"
    folder = repo / "snapshots" / COMMIT / "aoti" / artifact.key
    folder.mkdir(parents=True)
    for name in (PACKAGE_FILE, MANIFEST_FILE):
        shutil.copyfile(artifact.entry.dir / name, folder / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return artifact, folder


def _env():
    return fingerprint(torch.device("cpu"))


def test_pull_from_an_allowed_pinned_repo_then_compile_loads_it(hub_repo, tmp_path):
    artifact, _ = hub_repo
    cache = aoti.Cache(tmp_path / "fresh")
    entry = pull(HubSource(REPO, COMMIT), artifact.key, cache, _env(), allow=[REPO])
    assert entry.key == artifact.key and cache.problems(artifact.key) == []
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    again = aoti.compile(model, call, cache=cache)
    assert again.status.cache_hit is True and aoti.apply(again, model).runtime == "aoti"


def test_compile_takes_the_hub_when_the_local_cache_misses(hub_repo, tmp_path, monkeypatch):
    artifact, _ = hub_repo
    monkeypatch.setenv("AOTI_HUB_ALLOW", REPO)
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    result = aoti.compile(model, call, cache=aoti.Cache(tmp_path / "fresh"), hub=HubSource(REPO, COMMIT))
    assert result.key == artifact.key and result.status.cache_hit is True
    assert result.status.compile_s is None and f"hub {REPO}" in result.status.reason


def test_tampered_file_is_refused(hub_repo, tmp_path):
    artifact, folder = hub_repo
    data = bytearray((folder / PACKAGE_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / PACKAGE_FILE).write_bytes(bytes(data))
    with pytest.raises(HubRefused, match="sha256"):
        pull(HubSource(REPO, COMMIT), artifact.key, aoti.Cache(tmp_path / "c"), _env(), allow=[REPO])


def test_unpinned_revision_is_refused(hub_repo, tmp_path):
    artifact, _ = hub_repo
    with pytest.raises(HubRefused, match="not pinned"):
        pull(HubSource(REPO, "main"), artifact.key, aoti.Cache(tmp_path / "c"), _env(), allow=[REPO])


def test_repo_that_is_not_allow_listed_is_refused(hub_repo, tmp_path, monkeypatch):
    artifact, _ = hub_repo
    monkeypatch.delenv("AOTI_HUB_ALLOW", raising=False)
    with pytest.raises(HubRefused, match="not allow-listed"):
        pull(HubSource(REPO, COMMIT), artifact.key, aoti.Cache(tmp_path / "c"), _env())


def test_foreign_key_is_refused(hub_repo, tmp_path):
    artifact, folder = hub_repo
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["key_fields"]["env"]["torch"] = "2.99.0"
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(HubRefused, match="another machine"):
        pull(HubSource(REPO, COMMIT), artifact.key, aoti.Cache(tmp_path / "c"), _env(), allow=[REPO])


def test_a_refusal_falls_back_to_compiling_with_the_reason(hub_repo, tmp_path, monkeypatch):
    monkeypatch.delenv("AOTI_HUB_ALLOW", raising=False)
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    result = aoti.compile(model, call, cache=aoti.Cache(tmp_path / "fresh"), hub=HubSource(REPO, COMMIT))
    assert result.status.cache_hit is False and result.status.compile_s is not None
    assert any(f.startswith("hub -> compile:") and "allow-listed" in f for f in result.status.fallbacks)


def test_push_builds_one_add_per_artifact_file(mlp_artifact):
    _, artifact = mlp_artifact
    artifact.cache.write_json(artifact.key, "probe.json", {"ok": True})  # local-only: never pushed
    operations = push_operations(artifact.cache, [artifact.key])
    paths = sorted(op.path_in_repo for op in operations)
    assert paths == [f"aoti/{artifact.key}/{MANIFEST_FILE}", f"aoti/{artifact.key}/{PACKAGE_FILE}"]
    manifest = json.loads((artifact.entry.dir / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {PACKAGE_FILE}

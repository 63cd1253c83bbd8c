"""Precompiled graphs on the Hugging Face Hub: push, pull, trust.

Repository layout (one folder per cache key, the same files as the local cache)::

    aoti/<key>/package.pt2
    aoti/<key>/manifest.json
    aoti/<key>/extra_constants.pt     (only when the graph has constants the module doesn't own)

A package is native code. `pull` loads from a repository only when the user allow-listed it
(``AOTI_HUB_ALLOW`` or the ``allow`` argument), only at a revision pinned to a commit (40 hex digits),
only when every file's sha256 matches the manifest, and only when the manifest's key and environment
match this machine. Anything else raises `HubRefused` with the reason; callers fall back to compiling.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import LAST_USED_FILE, MANIFEST_FILE, PROBE_FILE, Cache, Entry, sha256_file

log = logging.getLogger(__name__)

HUB_ROOT = "aoti"
ENV_ALLOW = "AOTI_HUB_ALLOW"  # comma-separated repo ids
ENV_REPO = "AOTI_HUB_REPO"  # "owner/name@<commit>" to pull from at startup
ENV_PUSH_REPO = "AOTI_HUB_PUSH_REPO"  # writable repo to push new compiles to (needs HF_TOKEN)
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_LOCAL_ONLY = (LAST_USED_FILE, PROBE_FILE)


class HubRefused(RuntimeError):
    """A Hub artifact was not loaded; the message says why."""


@dataclass(frozen=True)
class HubSource:
    """Where to look for precompiled graphs: a repository pinned to a commit."""

    repo_id: str
    revision: str

    @classmethod
    def from_env(cls) -> HubSource | None:
        value = os.environ.get(ENV_REPO)
        if not value:
            return None
        repo_id, _, revision = value.partition("@")
        return cls(repo_id, revision or "main")


def allowed_repos(allow: list[str] | None = None) -> set[str]:
    if allow is not None:
        return set(allow)
    return {r.strip() for r in os.environ.get(ENV_ALLOW, "").split(",") if r.strip()}


def check_trust(source: HubSource, allow: list[str] | None = None) -> None:
    """Refuse a repository the user didn't allow, or a revision that isn't a commit."""
    if source.repo_id not in allowed_repos(allow):
        raise HubRefused(
            f"{source.repo_id} is not allow-listed for precompiled graphs (native code); "
            f"add it to {ENV_ALLOW} to trust it"
        )
    if not _COMMIT.match(source.revision):
        raise HubRefused(
            f"revision {source.revision!r} of {source.repo_id} is not pinned: give the full 40-character commit hash"
        )


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """Every file the manifest lists must be present with its sha256; nothing else may be there."""
    expected: dict[str, str] = manifest.get("files", {})
    if not expected:
        raise HubRefused("the manifest lists no file checksums")
    present = {p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE}
    if present - set(expected):
        raise HubRefused(f"files not in the manifest: {sorted(present - set(expected))}")
    for name, digest in expected.items():
        path = folder / name
        if not path.exists():
            raise HubRefused(f"{name} is missing")
        if sha256_file(path) != digest:
            raise HubRefused(f"{name} does not match its sha256 in the manifest (tampered or damaged)")


def pull(
    source: HubSource, key: str, cache: Cache, expected_env: dict[str, Any], *, allow: list[str] | None = None
) -> Entry:
    """Download the artifact for ``key`` from ``source`` into ``cache`` after every trust check."""
    from huggingface_hub import snapshot_download

    check_trust(source, allow)
    try:
        snapshot = Path(snapshot_download(source.repo_id, revision=source.revision, allow_patterns=[f"{HUB_ROOT}/{key}/*"]))
    except Exception as exc:
        raise HubRefused(f"could not fetch {source.repo_id}@{source.revision[:12]}: {type(exc).__name__}: {exc}") from None
    folder = snapshot / HUB_ROOT / key
    if not (folder / MANIFEST_FILE).exists():
        raise HubRefused(f"{source.repo_id}@{source.revision[:12]} has no artifact for key {key}")
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    if manifest.get("key") != key:
        raise HubRefused(f"the manifest is for key {manifest.get('key')}, not {key}")
    theirs = manifest.get("key_fields", {}).get("env")
    if theirs != expected_env:
        diff = {k: (theirs or {}).get(k) for k in expected_env if (theirs or {}).get(k) != expected_env[k]}
        raise HubRefused(f"built for another machine or software: {diff}")
    verify_files(folder, manifest)
    staged = cache.staging()
    for path in folder.iterdir():
        if path.name != MANIFEST_FILE:
            shutil.copyfile(path, staged / path.name)
    with cache.lock(key):
        entry = cache.publish(key, staged, {k: v for k, v in manifest.items() if k not in ("package_bytes", "package_sha256", "created", "files")})
    if entry.manifest["package_sha256"] != manifest.get("package_sha256"):
        cache.remove(key)
        raise HubRefused("the copied package does not match the manifest")
    log.info("hub: pulled %s from %s@%s", key, source.repo_id, source.revision[:12])
    return entry


def push_operations(cache: Cache, keys: list[str]) -> list[Any]:
    """The commit operations that upload these cache entries in the Hub layout."""
    from huggingface_hub import CommitOperationAdd

    operations = []
    for key in keys:
        problems = cache.problems(key)
        if problems:
            raise ValueError(f"cache entry {key} is not sound: {'; '.join(problems)}")
        for path in sorted(cache.entry_dir(key).iterdir()):
            if path.is_file() and path.name not in _LOCAL_ONLY:
                operations.append(CommitOperationAdd(path_in_repo=f"{HUB_ROOT}/{key}/{path.name}", path_or_fileobj=str(path)))
    return operations


def push(cache: Cache, keys: list[str], repo_id: str, *, token: str | None = None) -> str:
    """Commit the artifacts to ``repo_id``; returns the commit hash to pin in `HubSource`."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=True)
    info = api.create_commit(repo_id, push_operations(cache, keys), commit_message=f"aoti: {len(keys)} precompiled artifact(s)")
    log.info("hub: pushed %d artifacts to %s@%s", len(keys), repo_id, info.oid)
    return info.oid

"""Content-addressed artifact store on local disk.

Layout (names are constants below)::

    $AOTI_CACHE_DIR/
      artifacts/<key>/package.pt2     the compiled graphs (no weights)
      artifacts/<key>/manifest.json   key fields, versions, options, guards, sizes, sha256
      artifacts/<key>/probe.json      crash-probe verdict for this machine
      artifacts/<key>/last_used       touched on every load (LRU order)
      staging/                        artifacts being written; renamed into place when complete
      locks/<key>.lock                one compile per key across processes

The key is the sha256 of everything that makes an artifact valid (`key_fields`). A manifest whose key,
environment or checksum does not match is treated as absent and the entry is rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # 2: guards record the input strides; lifted constants keep their names in the package
PACKAGE_FILE = "package.pt2"
MANIFEST_FILE = "manifest.json"
PROBE_FILE = "probe.json"
LAST_USED_FILE = "last_used"
ARTIFACTS_DIR = "artifacts"
STAGING_DIR = "staging"
FAILED_DIR = "failed"  # builds that failed, by key, so that a fallback does not retry them every start
BUILDS_DIR = "builds"  # how long builds took, by key and by similar key: a running build's estimate
LOCKS_DIR = "locks"
ENV_CACHE_DIR = "AOTI_CACHE_DIR"
ENV_CACHE_MAX_BYTES = "AOTI_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 50 * 1024**3


class CacheUnwritable(RuntimeError):
    """The cache folder cannot take a package (read-only, no permission, no room): nothing was built.
    A condition of the machine, not of the model: it is never remembered as a failed build."""


# errno values and the texts a compiler or a wrapped exception carries for them: a folder that can't be written
_STORAGE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_STORAGE_TEXTS = ("no space left on device", "file too large", "file size limit exceeded", "disk quota exceeded", "read-only file system",
                  "permission denied")


def storage_fault(exc: BaseException | None) -> str | None:
    """What the file system refused, if ``exc`` (or its cause) is a refused write rather than a build
    error: the `OSError`, or the line of a tool's output that says so; else None."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
            return f"{type(exc).__name__}: {exc}"
        for line in str(exc).splitlines():
            if any(text in line.lower() for text in _STORAGE_TEXTS):
                return line.strip()[:300]
        exc = exc.__cause__ or exc.__context__
    return None


def ensure_room(folder: Path, need_bytes: int) -> None:
    """An ENOSPC `OSError` naming ``folder`` unless its file system has room for ``need_bytes`` (and a
    margin): for writers that abort the process rather than raise when the disk fills mid-file."""
    free = shutil.disk_usage(folder).free
    need = int(need_bytes * 1.1) + 2**20
    if free < need:
        raise OSError(errno.ENOSPC, f"No space left on device (needs {need / 2**20:.1f} MiB, {free / 2**20:.1f} MiB free)",
                      str(folder))


def refused_folder(exc: BaseException | None) -> Path | None:
    """The folder of the file a refused write named, if ``exc`` (or its cause) names one."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS and exc.filename:
            path = Path(os.fsdecode(exc.filename))
            return path if path.is_dir() else path.parent
        exc = exc.__cause__ or exc.__context__
    return None


def default_cache_dir() -> Path:
    """``$AOTI_CACHE_DIR``, else the user's cache dir (``~/.cache/aoti-studio`` on Linux)."""
    if os.environ.get(ENV_CACHE_DIR):
        return Path(os.environ[ENV_CACHE_DIR]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("aoti-studio"))


def key_of(fields: dict[str, Any]) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, **fields}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Entry:
    """A verified artifact on disk."""

    key: str
    dir: Path
    manifest: dict[str, Any]

    @property
    def package(self) -> Path:
        return self.dir / PACKAGE_FILE


class Cache:
    """A local store of compiled packages keyed by content; safe across processes."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        env_max = os.environ.get(ENV_CACHE_MAX_BYTES)
        self.max_bytes = max_bytes if max_bytes is not None else int(env_max) if env_max else DEFAULT_MAX_BYTES
        try:
            for sub in (ARTIFACTS_DIR, STAGING_DIR, LOCKS_DIR):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a read-only cache still serves what it holds; compiles say why they can't
            log.warning("cache: %s is not writable (%s): packages can be loaded from it, not built into it", self.root, exc)

    def unwritable(self, refused: str, exc: BaseException | None = None) -> CacheUnwritable:
        """The error a build that the file system refused (`storage_fault`) raises: the folder that
        refused the write (where ``exc`` names one) and what to do."""
        folder = refused_folder(exc)
        if folder is not None and not folder.resolve().is_relative_to(self.root.resolve()):
            return CacheUnwritable(f"the compiled package could not be built: {folder} refused a write ({refused}); it is "
                                   f"not the AOTI cache ({self.root}) but a work folder of the compiler: free space there, or "
                                   "point TMPDIR and TORCHINDUCTOR_CACHE_DIR to another folder")
        where = f"{folder} refused a write ({refused})" if folder is not None else f"the file system refused a write ({refused})"
        return CacheUnwritable(f"the compiled package could not be written: {where}; the AOTI cache is {self.root}: "
                               f"make it writable, free space, or set {ENV_CACHE_DIR} to another folder")

    def __repr__(self) -> str:
        return f"Cache({str(self.root)!r})"

    def entry_dir(self, key: str) -> Path:
        return self.root / ARTIFACTS_DIR / key

    @contextlib.contextmanager
    def lock(self, key: str, timeout: float = 3600) -> Iterator[None]:
        """Hold the per-key lock: one process compiles a key, the others wait and then load it."""
        with FileLock(str(self.root / LOCKS_DIR / f"{key}.lock"), timeout=timeout):
            yield

    # --- reading -----------------------------------------------------------------------------------

    def problems(self, key: str, expected_env: dict[str, Any] | None = None) -> list[str]:
        """Why the entry for ``key`` must not be loaded (empty when it is sound)."""
        directory = self.entry_dir(key)
        manifest_path, package = directory / MANIFEST_FILE, directory / PACKAGE_FILE
        if not directory.exists():
            return ["missing"]
        try:
            manifest = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            return [f"manifest unreadable: {exc}"]
        issues = []
        if manifest.get("key") != key:
            issues.append(f"manifest is for key {manifest.get('key')}, not {key}")
        if manifest.get("format") != CACHE_FORMAT:
            issues.append(f"cache format {manifest.get('format')} is not {CACHE_FORMAT}")
        if expected_env is not None and manifest.get("key_fields", {}).get("env") != expected_env:
            issues.append(f"built for another environment: {manifest.get('key_fields', {}).get('env')}")
        if not package.exists():
            issues.append("package file missing")
        else:
            size = package.stat().st_size
            if size != manifest.get("package_bytes"):
                issues.append(f"package is {size} bytes, manifest says {manifest.get('package_bytes')} (truncated?)")
            elif sha256_file(package) != manifest.get("package_sha256"):
                issues.append("package checksum does not match the manifest")
        return issues

    def get(self, key: str, expected_env: dict[str, Any] | None = None) -> Entry | None:
        """The verified entry, or None (`lookup` also says what was wrong with a damaged one)."""
        return self.lookup(key, expected_env)[0]

    def lookup(self, key: str, expected_env: dict[str, Any] | None = None) -> tuple[Entry | None, str]:
        """The verified entry and "", or None and, for an entry that was there but damaged (removed,
        so that it gets rebuilt), what was wrong with it, for the caller to record."""
        issues = self.problems(key, expected_env)
        if issues == ["missing"]:
            return None, ""
        if issues:
            log.warning("cache: entry %s is unusable (%s); rebuilding", key, "; ".join(issues))
            self.remove(key)
            return None, "; ".join(issues)
        directory = self.entry_dir(key)
        with contextlib.suppress(OSError):  # a read-only cache: no LRU stamp
            (directory / LAST_USED_FILE).touch()
        return Entry(key, directory, json.loads((directory / MANIFEST_FILE).read_text())), ""

    def entries(self) -> list[Entry]:
        found = []
        if not (self.root / ARTIFACTS_DIR).is_dir():
            return found
        for directory in sorted((self.root / ARTIFACTS_DIR).iterdir()):
            try:
                manifest = json.loads((directory / MANIFEST_FILE).read_text())
            except (OSError, ValueError):
                manifest = {}
            found.append(Entry(directory.name, directory, manifest))
        return found

    def size_bytes(self, key: str) -> int:
        return sum(p.stat().st_size for p in self.entry_dir(key).rglob("*") if p.is_file())

    def last_used(self, key: str) -> float:
        marker = self.entry_dir(key) / LAST_USED_FILE
        return marker.stat().st_mtime if marker.exists() else 0.0

    # --- writing -----------------------------------------------------------------------------------

    def staging(self) -> Path:
        """A fresh private folder to build an artifact in before `publish` (the folders of builds whose
        process died, killed mid-compile, are removed first: never published, never loaded)."""
        self.sweep_staging()
        path = self.root / STAGING_DIR / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        path.mkdir(parents=True)
        return path

    def sweep_staging(self) -> list[str]:
        """Remove the staging folders of processes on this machine that are gone; returns their names."""
        removed = []
        for folder in (self.root / STAGING_DIR).glob("*-*"):
            pid = folder.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder.name)
                log.info("cache: removed %s, left by a build whose process died", folder.name)
        return removed

    def publish(self, key: str, staged: Path, manifest: dict[str, Any]) -> Entry:
        """Complete ``manifest`` (sizes, checksum), write it, and move the staged folder into place
        atomically. Call under `lock(key)`."""
        package = staged / PACKAGE_FILE
        files = {
            p.name: sha256_file(p) for p in sorted(staged.iterdir())
            if p.is_file() and p.name not in (MANIFEST_FILE, PROBE_FILE, LAST_USED_FILE)
        }
        manifest = {
            **manifest,
            "key": key,
            "format": CACHE_FORMAT,
            "package_bytes": package.stat().st_size,
            "package_sha256": files[PACKAGE_FILE],
            "files": files,
            "created": time.time(),
        }
        tmp = staged / (MANIFEST_FILE + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        os.replace(tmp, staged / MANIFEST_FILE)
        (staged / LAST_USED_FILE).touch()
        target = self.entry_dir(key)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staged, target)
        self.evict(keep=key)
        return Entry(key, target, manifest)

    def write_json(self, key: str, name: str, data: dict[str, Any]) -> None:
        """Atomically write a side file (e.g. the probe verdict) into an entry."""
        _write_json_atomically(self.entry_dir(key) / name, data)

    def read_json(self, key: str, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.entry_dir(key) / name).read_text())
        except (OSError, ValueError):
            return None

    def record_failed_build(self, key: str, error: str) -> None:
        """Remember that building ``key`` failed (a caller that has a fallback skips it next time)."""
        path = self.root / FAILED_DIR / f"{key}.json"
        try:
            path.parent.mkdir(exist_ok=True)
            _write_json_atomically(path, {"key": key, "error": error})
        except OSError as exc:
            log.warning("cache: could not remember the failed build of %s (%s)", key, exc)

    def failed_build(self, key: str) -> str | None:
        """The error of an earlier failed build of ``key``, or None."""
        try:
            return json.loads((self.root / FAILED_DIR / f"{key}.json").read_text())["error"]
        except (OSError, ValueError, KeyError):
            return None

    def record_build_time(self, names: list[str], seconds: float) -> None:
        """Remember how long a build took under each of ``names`` (its key, a key of similar builds);
        outlives the package, so a rebuild after eviction or a version change has an estimate."""
        try:
            (self.root / BUILDS_DIR).mkdir(exist_ok=True)
            for name in names:
                _write_json_atomically(self.root / BUILDS_DIR / f"{name}.json", {"seconds": round(seconds, 3), "at": time.time()})
        except OSError as exc:
            log.warning("cache: could not record the build time (%s)", exc)

    def build_time(self, name: str) -> float | None:
        """The seconds the last build recorded under ``name`` took, or None."""
        try:
            return float(json.loads((self.root / BUILDS_DIR / f"{name}.json").read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remove(self, key: str) -> None:
        shutil.rmtree(self.entry_dir(key), ignore_errors=True)

    def evict(self, keep: str | None = None) -> list[str]:
        """Remove least recently used entries until the store fits ``max_bytes``."""
        sizes = {e.key: self.size_bytes(e.key) for e in self.entries()}
        total = sum(sizes.values())
        removed = []
        for key in sorted(sizes, key=self.last_used):
            if total <= self.max_bytes:
                break
            if key == keep:
                continue
            self.remove(key)
            total -= sizes[key]
            removed.append(key)
            log.info("cache: evicted %s (%d bytes) to stay under %d bytes", key, sizes[key], self.max_bytes)
        return removed

    def clear(self) -> int:
        entries = self.entries()
        for entry in entries:
            self.remove(entry.key)
        shutil.rmtree(self.root / STAGING_DIR, ignore_errors=True)
        shutil.rmtree(self.root / FAILED_DIR, ignore_errors=True)
        (self.root / STAGING_DIR).mkdir(exist_ok=True)
        return len(entries)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as JSON so that a reader in another process sees the old file or the new one."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)

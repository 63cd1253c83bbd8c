"""A compiled package that segfaults when it is loaded, made from a sound one: what the probe child
exists for (every package did this on the GPU machine before the toolchain fix)."""

import shutil
import subprocess
import zipfile
from pathlib import Path

import aoti
from aoti.cache import PACKAGE_FILE, sha256_file

_CRASH_ON_LOAD = '#include <signal.h>\n__attribute__((constructor)) static void crash(void) { raise(SIGSEGV); }\n'


def crashing_copy(artifact: aoti.Artifact, root: Path, sound: tuple[str, ...] = ()) -> aoti.Artifact:
    """A copy of ``artifact`` in a new cache whose wrapper.so raises SIGSEGV when it is loaded; the packages
    named in ``sound`` (a draft model's) are copied there as they are, so that nothing is built beside it."""
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
    for key in sound:
        shutil.copytree(artifact.cache.entry_dir(key), cache.entry_dir(key))
    return aoti.Artifact(entry, artifact.status, cache)

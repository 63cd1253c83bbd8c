"""The C++ compiler Inductor builds packages with, and the fix for one that links libstdc++ statically.

On the GPU test machine `CXX` points to a relocated gcc whose search path has only the static
``libstdc++.a``. Every package it built embedded its own libstdc++ and segfaulted at load time
(shared/FACTS.md). We detect that condition by building a one-line shared object with the configured
compiler and reading what it links; only then do we switch Inductor (``torch._inductor.config.cpp.cxx``)
to a compiler on the machine that links libstdc++ dynamically. Elsewhere nothing changes.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_PROBE_SOURCE = '#include <string>\nextern "C" int aoti_probe(const char* s) { return (int)std::string(s).size(); }\n'
ENV_FIX = "AOTI_TOOLCHAIN_FIX"  # "0" turns the check off (to reproduce the crash)
_FALLBACK_COMPILERS = ("/usr/bin/g++", "/usr/bin/c++", "g++", "clang++")


@dataclass(frozen=True)
class Toolchain:
    """What Inductor compiles with, and why."""

    compiler: str
    static_libstdcxx: bool
    fixed_from: str | None = None  # the compiler we replaced, when the fix applied

    @property
    def note(self) -> str:
        if self.fixed_from:
            return f"{self.fixed_from} links libstdc++ statically (packages crash at load); using {self.compiler}"
        return f"{self.compiler}"


def links_libstdcxx_dynamically(shared_object: str | os.PathLike) -> bool:
    """True when a shared object names libstdc++.so as a dependency (its DT_NEEDED string)."""
    return b"libstdc++.so" in Path(shared_object).read_bytes()


def _links_statically(compiler: str) -> bool | None:
    """Build a tiny C++ shared object; None if the compiler could not build it."""
    resolved = shutil.which(compiler)
    if resolved is None:
        return None
    with tempfile.TemporaryDirectory(prefix="aoti-toolchain-") as tmp:
        src, out = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        src.write_text(_PROBE_SOURCE)
        result = subprocess.run(
            [resolved, "-shared", "-fPIC", "-O0", str(src), "-o", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0 or not out.exists():
            log.debug("toolchain: %s could not build the probe: %s", compiler, result.stderr[-400:])
            return None
        return not links_libstdcxx_dynamically(out)


@functools.lru_cache(maxsize=1)
def ensure_toolchain() -> Toolchain:
    """Check Inductor's compiler once per process; switch it only if it links libstdc++ statically."""
    from torch._inductor import config

    configured = config.cpp.cxx
    current = next((c for c in (configured if isinstance(configured, tuple) else (configured,)) if c), "g++")
    if not sys.platform.startswith("linux") or os.environ.get(ENV_FIX, "1") == "0":
        return Toolchain(current, static_libstdcxx=False)
    static = _links_statically(current)
    if not static:
        return Toolchain(current, static_libstdcxx=False)
    for candidate in _FALLBACK_COMPILERS:
        resolved = shutil.which(candidate)
        if resolved and os.path.realpath(resolved) != os.path.realpath(shutil.which(current) or current):
            if _links_statically(resolved) is False:
                config.cpp.cxx = (None, resolved)
                chain = Toolchain(resolved, static_libstdcxx=False, fixed_from=current)
                log.warning("toolchain: %s", chain.note)
                return chain
    log.error("toolchain: %s links libstdc++ statically and no other compiler was found; packages may crash", current)
    return Toolchain(current, static_libstdcxx=True)

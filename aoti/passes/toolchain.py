"""The C++ compiler Inductor builds packages with, and the fix for one that links libstdc++ statically.

On the GPU test machine `CXX` points to a relocated gcc whose search path has only the static
``libstdc++.a``. Every package it built embedded its own libstdc++ and segfaulted at load time
(shared/FACTS.md). We detect that condition by building a one-line shared object with the configured
compiler and reading what it links; only then do we switch Inductor (``torch._inductor.config.cpp.cxx``)
to a compiler on the machine that links libstdc++ dynamically. Elsewhere nothing changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
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
    missing: str | None = None  # why no package can be built here (no working C++ compiler)

    @property
    def note(self) -> str:
        if self.missing:
            return self.missing
        if self.fixed_from:
            return f"{self.fixed_from} links libstdc++ statically (packages crash at load); using {self.compiler}"
        return f"{self.compiler}"


def links_libstdcxx_dynamically(shared_object: str | os.PathLike) -> bool:
    """True when a shared object names libstdc++.so as a dependency (its DT_NEEDED string)."""
    return b"libstdc++.so" in Path(shared_object).read_bytes()


def _links_statically(compiler: str) -> bool | str:
    """Build a tiny C++ shared object: whether it embeds libstdc++, or why it could not be built."""
    resolved = shutil.which(compiler)
    if resolved is None:
        return f"{compiler} is not installed"
    with tempfile.TemporaryDirectory(prefix="aoti-toolchain-") as tmp:
        src, out = Path(tmp) / "probe.cpp", Path(tmp) / "probe.so"
        src.write_text(_PROBE_SOURCE)
        result = subprocess.run(
            [resolved, "-shared", "-fPIC", "-O0", str(src), "-o", str(out)],
            capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0 or not out.exists():
            log.debug("toolchain: %s could not build the probe: %s", compiler, result.stderr[-400:])
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            return next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no output")[:200]
        return not links_libstdcxx_dynamically(out)


def _state_dir() -> Path:
    """Where per-machine verdicts live: next to Inductor's own build cache."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir())


def _marker(prefix: str, identity: object, state_dir: Path | None = None) -> Path:
    import hashlib

    return (state_dir or _state_dir()) / f"{prefix}-{hashlib.sha256(repr(identity).encode()).hexdigest()[:16]}.json"


def _compiler_identity(compiler: str) -> object:
    """Path, size and mtime of the compiler and of each fallback: a changed toolchain is re-checked."""
    def stat(name: str) -> object:
        resolved = shutil.which(name)
        if resolved is None:
            return (name, None)
        st = os.stat(resolved)
        return (os.path.realpath(resolved), st.st_size, int(st.st_mtime))

    return (stat(compiler), *(stat(c) for c in _FALLBACK_COMPILERS))


@functools.lru_cache(maxsize=1)
def configured_compiler() -> str:
    """The C++ compiler Inductor is set to build with (``torch._inductor.config.cpp.cxx``, else g++)."""
    from torch._inductor import config

    configured = config.cpp.cxx
    return next((c for c in (configured if isinstance(configured, tuple) else (configured,)) if c), "g++")


def ensure_toolchain() -> Toolchain:
    """Check Inductor's compiler once per machine (the verdict is kept next to Inductor's cache, keyed
    by the compilers' paths, sizes and mtimes); switch it only if it links libstdc++ statically."""
    from torch._inductor import config

    current = configured_compiler()
    if not sys.platform.startswith("linux") or os.environ.get(ENV_FIX, "1") == "0":
        return Toolchain(current, static_libstdcxx=False)
    marker = _marker("toolchain", _compiler_identity(current))
    try:
        if shutil.which(current) is None:
            raise OSError(f"{current} is not installed")  # whatever an older verdict said
        chain = Toolchain(**json.loads(marker.read_text()))
    except (OSError, ValueError, TypeError):
        chain = _check_toolchain(current)
    if chain.missing:  # never remembered: installing a compiler must be enough
        log.error("toolchain: %s", chain.missing)
        return chain
    if not marker.exists():
        with contextlib.suppress(OSError):
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(dataclasses.asdict(chain)))
    if chain.fixed_from:
        config.cpp.cxx = (None, chain.compiler)
        log.warning("toolchain: %s", chain.note)
    elif chain.static_libstdcxx:
        log.error("toolchain: %s links libstdc++ statically and no other compiler was found; packages may crash", current)
    return chain


def _check_toolchain(current: str) -> Toolchain:
    """Build a one-line shared object with ``current`` (and, if it embeds libstdc++, with the fallbacks)."""
    static = _links_statically(current)
    if isinstance(static, str):
        return Toolchain(current, static_libstdcxx=False, missing=(
            f"no working C++ compiler: {current!r} could not build a test library ({static}); AOTInductor needs "
            "one to build packages (install g++, or set CXX; a full disk fails this way too). Cached packages still load."))
    if not static:
        return Toolchain(current, static_libstdcxx=False)
    for candidate in _FALLBACK_COMPILERS:
        resolved = shutil.which(candidate)
        if resolved and os.path.realpath(resolved) != os.path.realpath(shutil.which(current) or current):
            if _links_statically(resolved) is False:
                return Toolchain(resolved, static_libstdcxx=False, fixed_from=current)
    return Toolchain(current, static_libstdcxx=True)


ENV_VEC_ISAS = "AOTI_VEC_ISAS"  # the settled list, handed to probe children ("|"-separated)


def _vec_isa_marker(state_dir: Path | None) -> Path:
    import platform

    import torch
    from torch._inductor import config

    flags = ""
    with contextlib.suppress(OSError):
        flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
    return _marker("vec-isa", (torch.__version__, config.cpp.cxx, platform.machine(), flags), state_dir)


def _reuse(names: list[str]) -> None:
    """Make Inductor's ``valid_vec_isa_list`` answer ``names`` without building anything."""
    from torch._inductor import cpu_vec_isa

    known = {str(isa): isa for isa in cpu_vec_isa.supported_vec_isa_list}
    isas = [known[n] for n in names if n in known]
    cpu_vec_isa.valid_vec_isa_list = functools.cache(lambda: list(isas))  # `pick_vec_isa` looks it up per call


@functools.lru_cache(maxsize=1)
def settle_vec_isa(state_dir: str | None = None) -> str:
    """Check the CPU vector ISAs once per machine, not once per process.

    Inductor decides which vector ISAs (AMX, AVX-512, AVX2, ...) it may use by compiling a test library
    for each and loading it in a fresh Python process that imports torch. It does so in every process
    that builds or loads a package: 25-45 s on the GPU machine, paid again by each crash-probe child
    and each restarted server. The answer depends only on the CPU, the compiler and torch, so the first
    process runs Inductor's own check and records the list; later processes (and probe children,
    through ``AOTI_VEC_ISAS``) get the same list without the builds. Returns what happened.
    """
    from torch._inductor import cpu_vec_isa

    handed = os.environ.get(ENV_VEC_ISAS)
    if handed is not None:
        _reuse([n for n in handed.split("|") if n])
        return f"vector ISAs {handed.split('|')} handed over by the parent process"
    marker = _vec_isa_marker(Path(state_dir) if state_dir else None)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        names = json.loads(marker.read_text())["valid"]
        _reuse(names)
        return f"vector ISAs {names} checked before on this machine ({marker.name})"
    names = [str(isa) for isa in cpu_vec_isa.valid_vec_isa_list()]  # Inductor's own build-and-load checks
    with contextlib.suppress(OSError):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"valid": names}))
    return f"vector ISAs {names} checked now"


_prepared: Toolchain | None = None


def prepare_inductor() -> Toolchain:
    """Everything Inductor needs before building or loading a package in this process (once it
    succeeds: a missing compiler, or a full disk that failed the check, is checked again next time)."""
    global _prepared
    from .inductor_fixes import apply_fixes

    if _prepared is not None:
        return _prepared
    chain = ensure_toolchain()
    if chain.missing:  # nothing below can run without a compiler; `compile` raises with the reason
        return chain
    note = settle_vec_isa()
    apply_fixes()
    log.info("toolchain: %s; %s", chain.note, note)
    _prepared = chain
    return chain


def child_env() -> dict[str, str]:
    """Environment for a child process that loads packages: this process's settled CPU ISA list
    (after `prepare_inductor`), so the child does not repeat the checks."""
    from torch._inductor import cpu_vec_isa

    prepare_inductor()
    return {ENV_VEC_ISAS: "|".join(str(isa) for isa in cpu_vec_isa.valid_vec_isa_list())}

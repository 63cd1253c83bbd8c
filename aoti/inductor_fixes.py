"""Work-arounds for Inductor bugs that our builds meet, each applied once per process and guarded so
that a torch without the code it fixes is left alone.

`keep_int_array_writers_alive`: AOTInductor's C++ wrapper declares each size/stride array once
(``const int64_t int_array_7[] = {1};``) and caches the variable by ``id()`` of the code buffer it was
written to (`CppWrapperCpu.codegen_int_array_var`). Memory planning writes some allocations into
buffers that are then dropped; Python reuses a dropped buffer's id for a new one, the cache then hands
back a variable that was declared only in the dropped buffer, and g++ fails with "'int_array_348' was
not declared in this scope" (tests/aoti/test_inductor_fixes.py reproduces the cache's part). Keeping
every buffer the cache has keyed alive for the wrapper's lifetime makes those ids unique again.
That error is what builds of Qwen2.5-7B geometry with `aoti.gemv` in the decode graph met on an H200
(torch 2.11), one build in two; an 8-layer build still failed with this fix applied, so this defect is
not the whole cause, and `aoti.compile` falls back to a build without the kernel.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def keep_int_array_writers_alive() -> bool:
    """Patch `CppWrapperCpu.codegen_int_array_var` (once); returns whether the patch is in place."""
    try:
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    except ImportError:
        return False
    original = getattr(CppWrapperCpu, "codegen_int_array_var", None)
    if original is None:
        return False
    if getattr(original, "_aoti_keeps_writers", False):
        return True

    @functools.wraps(original)
    def codegen_int_array_var(self, int_array, writeline, *args, **kwargs):
        owner = getattr(writeline, "__self__", writeline)
        self.__dict__.setdefault("_aoti_writers", {})[id(owner)] = owner  # alive while the cache may hold its id
        return original(self, int_array, writeline, *args, **kwargs)

    codegen_int_array_var._aoti_keeps_writers = True
    CppWrapperCpu.codegen_int_array_var = codegen_int_array_var
    log.debug("inductor fix: int array declarations cached per live code buffer")
    return True


@functools.lru_cache(maxsize=1)
def apply_fixes() -> dict[str, bool]:
    """Apply every fix; returns which are in place."""
    return {"keep_int_array_writers_alive": keep_int_array_writers_alive()}

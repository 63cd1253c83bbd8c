"""Work-arounds for Inductor bugs that our builds meet, each applied once per process and guarded so
that a torch without the code it fixes is left alone.

`declare_int_arrays_where_used`: AOTInductor's C++ wrapper declares size/stride arrays
(``static constexpr int64_t int_array_7[] = {1L, };``) through the code buffer of the line that uses
them, and caches each variable by ``id()`` of that buffer's ``writeline``: of the bound method itself
in torch 2.11 (a new object at every attribute access, whose id the next one reuses), of the buffer
in later versions (whose id a new buffer reuses once it is dropped). Either way the cache can hand back
a variable declared in another place, later in the function or in a dropped buffer, and g++ fails
with "'int_array_167' was not declared in this scope". Builds of Qwen2.5-7B geometry with `aoti.kernels.gemv`
in the decode graph met that on an H200 (torch 2.11) in about half of the builds (the kernel's
arguments are views, declared by array). The cache only saves repeated declarations, so the fix
skips it: every use declares its array where torch's own code writes it.
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)


def declare_int_arrays_where_used() -> bool:
    """Patch `CppWrapperCpu.codegen_int_array_var` (once) to declare a fresh array at every use;
    returns whether the patch is in place."""
    try:
        from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
    except ImportError:
        return False
    original = getattr(CppWrapperCpu, "codegen_int_array_var", None)
    declare = getattr(CppWrapperCpu, "_codegen_int_array_var_impl", None)
    if original is None or declare is None:
        return False
    if getattr(original, "_aoti_declares_at_use", False):
        return True

    @functools.wraps(original)
    def codegen_int_array_var(self, int_array, writeline, known_statically=False, *args, **kwargs):
        return declare(self, int_array, writeline, known_statically)

    codegen_int_array_var._aoti_declares_at_use = True
    CppWrapperCpu.codegen_int_array_var = codegen_int_array_var
    log.debug("inductor fix: int arrays declared at every use")
    return True


@functools.lru_cache(maxsize=1)
def apply_fixes() -> dict[str, bool]:
    """Apply every fix; returns which are in place."""
    return {"declare_int_arrays_where_used": declare_int_arrays_where_used()}

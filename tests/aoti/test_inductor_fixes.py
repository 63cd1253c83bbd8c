"""aoti.inductor_fixes: the C++ wrapper's int-array cache no longer hands out variables declared in a
code buffer that was dropped (the "'int_array_N' was not declared" build failure)."""

from __future__ import annotations

from itertools import count

from torch._inductor.codegen.common import IndentedBuffer
from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
from torch.utils._ordered_set import OrderedSet

from aoti.inductor_fixes import apply_fixes


def test_each_code_buffer_declares_the_arrays_it_uses():
    assert apply_fixes()["keep_int_array_writers_alive"]
    wrapper = object.__new__(CppWrapperCpu)  # just the state the int-array cache uses
    wrapper.int_array_id = count()
    wrapper.declared_int_array_vars = OrderedSet()
    wrapper.codegen_int_array_var_cache = {}
    for _ in range(50):  # buffers made and dropped, as memory planning's passes do
        code = IndentedBuffer()
        var = wrapper.codegen_int_array_var("{1}", code.writeline)
        assert f"{var}[] = {{1}};" in code.getvalue()
        del code

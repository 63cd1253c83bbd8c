"""aoti.inductor_fixes: the C++ wrapper's int-array declarations always land in the code buffer of
the line that uses them (the "'int_array_N' was not declared" build failure)."""

from __future__ import annotations

from itertools import count

from torch._inductor.codegen.common import IndentedBuffer
from torch._inductor.codegen.cpp_wrapper_cpu import CppWrapperCpu
from torch.utils._ordered_set import OrderedSet

from aoti.passes.inductor_fixes import apply_fixes


def test_each_code_buffer_declares_the_arrays_it_uses():
    assert apply_fixes()["declare_int_arrays_where_used"]
    wrapper = object.__new__(CppWrapperCpu)  # just the state the int-array code uses
    wrapper.int_array_id = count()
    wrapper.declared_int_array_vars = OrderedSet()
    wrapper.codegen_int_array_var_cache = {}
    kept = [IndentedBuffer(), IndentedBuffer()]
    for i in range(50):
        dropped = IndentedBuffer()  # buffers made and dropped, as memory planning's passes do
        for code in (dropped, kept[i % 2]):  # and live ones, through a new bound `writeline` each time
            var = wrapper.codegen_int_array_var("{1}", code.writeline)
            assert f"{var}[] = {{1}};" in code.getvalue()
        del dropped

"""Inductor-level changes, applied while a graph is lowered (never to a module).

| module | does |
|---|---|
| `toolchain` | the C++ compiler and CPU ISA checks Inductor needs, settled once per machine |
| `inductor_fixes` | upstream Inductor bugs worked around (each names its issue) |
| `reductions` | row reductions kept in one pass up to 16384 values (`CompileOptions.one_pass_rows`) |
| `fp8_producers` | GELU producers moved into the FP8 row-quantization kernel (`one_pass_rows`) |
"""

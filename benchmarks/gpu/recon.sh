#!/usr/bin/env bash
# One-off reconnaissance of the GPU machine's toolchain (where does -static-libstdc++ come from?).
set -x
python3 -c "import torch,sys; print(torch.__version__, torch.version.cuda, sys.version)"
T=$(python3 -c "import torch,os; print(os.path.dirname(torch.__file__))")
grep -n "static-libstdc\|static-libgcc\|def _get_libstdcxx\|libstdc" $T/_inductor/cpp_builder.py | head -20
which g++ gcc c++; g++ --version | head -1; echo "CXX=$CXX"
python3 - <<'PY'
import torch._inductor.config as c
print({k: getattr(c, k) for k in dir(c) if 'cxx' in k.lower() or 'compiler' in k.lower()})
print({k: getattr(c.aot_inductor, k) for k in dir(c.aot_inductor) if 'link' in k.lower() or 'static' in k.lower() or 'libstd' in k.lower()})
print({k: getattr(c.cpp, k) for k in dir(c.cpp) if 'cxx' in k.lower() or 'flag' in k.lower()})
PY

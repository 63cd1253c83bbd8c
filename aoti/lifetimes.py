"""References torch keeps to a model's weights after AOTInductor builds and loads, and their release.

A model whose weights are replaced in the process (quantized, fused, unloaded for another model)
should give their memory back. Three things in torch 2.11 (and 2.13) kept it, and this module is
where they are undone:

1. After a build, records of the last trace (``forget_build``).
2. After a build, module trees that export and Inductor made and bind the model's tensors
   (``forget_build`` empties them).
3. After a package is loaded with the model's own tensors as its constants (``user_managed=True``,
   no copy), the AOTI runtime never lets them go, even once its runner is gone (pytorch/pytorch#194480,
   fixed after 2.13). `aoti.apply` hands the runtime handles of its own (``detach()``) and passes them
   to `orphan_on_death`; once the compiled method is gone, `release_orphans` points each at an empty
   storage, so the runtime's leftover reference no longer keeps the memory (which goes when the model
   lets go of it too).

Measured on an H200 (`python -m benchmarks memory --layers 4 --bf16-build-first`): after a bf16
build, quantizing to FP8 kept all 17 bf16 weights (4.05 GB) alive through (2) and (3).
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import threading
import warnings
import weakref
from collections.abc import Iterable, Iterator

import torch

log = logging.getLogger(__name__)

_orphans: list[torch.Tensor] = []  # tensors of compiled methods that are gone
_owners = 0  # compiled methods whose tensors are not adopted yet (alive, or garbage in a cycle)
_lock = threading.RLock()  # finalizers run inside gc.collect(), which release_orphans calls holding it


@contextlib.contextmanager
def forget_build(module: torch.nn.Module) -> Iterator[None]:
    """Around a build of ``module``: let the traced model go when it ends, as if it had never been compiled.

    Two module-level records in torch keep the last traced graph, and through its module the traced
    model's weights, alive after a build: `torch.fx.experimental.proxy_tensor` keeps the nodes of the
    last make_fx trace (for export's fake-tensor leak check), and Dynamo's strict export installs each
    captured graph as a ``__compiled_fn_*`` global of `torch._dynamo.functional_export`. Both are
    private: a torch that lacks them is left alone. The trace's graphs and exported programs also leave
    reference cycles that hold the weights until Python's cyclic collector happens to run, so the
    cycles are collected, and module trees of the build that still bind the model's tensors are
    emptied (`unbind_build_trees`)."""
    from torch.fx.experimental import proxy_tensor

    try:
        from torch._dynamo import functional_export
    except ImportError:
        functional_export = None
    installed_before = set(vars(functional_export)) if functional_export else set()
    try:
        yield
    finally:
        last_trace = getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", None)
        if isinstance(last_trace, dict):
            last_trace.clear()
        if functional_export is not None:
            for name in set(vars(functional_export)) - installed_before:
                if name.startswith("__compiled_fn"):
                    delattr(functional_export, name)
        gc.collect()
        unbind_build_trees(module)
        release_orphans()


def unbind_build_trees(module: torch.nn.Module) -> int:
    """Empty the module trees a build made that still bind ``module``'s parameters and buffers;
    returns how many modules were emptied.

    Export and Inductor bind the traced model's tensors to trees of their own (``ExportedProgram.module()``,
    Inductor's unlifted graph: `torch.fx.GraphModule` roots, plain ``nn.Module`` parents, made by
    `torch.export.unflatten._assign_attr`), and one stays alive after an AOT compile: on an H200, every
    bf16 weight of a 4-layer Qwen2.5-7B-geometry build outlived its model's FP8 quantization, held by
    such a tree. Only objects of exactly those two classes are touched: a model's own modules are
    subclasses (``nn.Linear``, ...) and are left alone, ``module``'s tree as well."""
    tensors = {id(t) for t in itertools.chain(module.parameters(), module.buffers())}
    own = {id(m) for m in module.modules()}
    emptied = 0
    for obj in gc.get_objects():
        if type(obj) in (torch.nn.Module, torch.fx.GraphModule) and id(obj) not in own:
            bound = itertools.chain(obj.__dict__.get("_parameters", {}).values(), obj.__dict__.get("_buffers", {}).values())
            if any(id(t) in tensors for t in bound):
                obj._parameters.clear()
                obj._buffers.clear()
                emptied += 1
    if emptied:
        log.info("unbound %d modules of a finished build from %s's tensors", emptied, type(module).__name__)
    return emptied


def orphan_on_death(owner: object, tensors: Iterable[torch.Tensor]) -> None:
    """Once ``owner`` (a compiled method) is garbage, hand ``tensors`` (the constants its packages
    were loaded with) to `release_orphans`. They must be handles of their own (``t.detach()``), not
    the model's parameter and buffer objects, which `release_orphans` would empty."""
    global _owners
    with _lock:
        _owners += 1
    weakref.finalize(owner, _adopt, list(tensors))


def _adopt(tensors: list[torch.Tensor]) -> None:
    global _owners
    with _lock:
        _owners -= 1
        _orphans.extend(tensors)


def _storage_ptr(tensor: torch.Tensor) -> int | None:
    from torch._subclasses.fake_tensor import FakeTensor

    if isinstance(tensor, FakeTensor) or tensor.is_meta:
        return None
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):  # subclass tensors without one storage
        return None


def bytes_still_held(storages: dict[int, int]) -> int:
    """Of ``storages`` (address -> bytes, taken while a model was alive), the bytes some live tensor
    still holds: after unloading the model, what was not given back."""
    gc.collect()
    live: set[int] = set()
    with warnings.catch_warnings():  # touching every object trips some libraries' deprecation warnings
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            if isinstance(obj, torch.Tensor) and (ptr := _storage_ptr(obj)) in storages and obj.untyped_storage().nbytes():
                live.add(ptr)
    return sum(storages[ptr] for ptr in live)


@torch.no_grad()
def release_orphans() -> int:
    """Point every orphaned constant (see `orphan_on_death`) at an empty storage, so that its memory
    goes as soon as nothing else uses it (the model, another package: they hold their own
    references); returns how many bytes the orphans referenced. Without orphans or compiled methods
    that could become ones it does nothing (a fresh process's first `apply`: no garbage collection)."""
    with _lock:
        if not _orphans and not _owners:
            return 0
        gc.collect()  # compiled methods in reference cycles: their finalizers adopt their tensors
        pending = _orphans[:]
        _orphans.clear()
    referenced = 0
    for tensor in pending:
        referenced += tensor.untyped_storage().nbytes()
        tensor.set_(torch.empty(0, dtype=tensor.dtype, device=tensor.device))
    if pending:
        log.info("let go of %d tensors (%.1f MB) that compiled graphs no longer use", len(pending), referenced / 1e6)
    return referenced

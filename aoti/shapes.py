"""Shapes: which dims are dynamic, how calls group into graphs, and the guard that checks a call.

The guard is read off the exported program, not off our guesses, so a dim that export specialized is
guarded as static and a derived dim (``s0 * s1``) is checked against its expression.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .capture import CapturedCall
from .options import CompileOptions

_SCALARS = (type(None), bool, int, float, str)


def flatten_call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], pytree.TreeSpec]:
    return pytree.tree_flatten((tuple(args), dict(kwargs)))


def shape_signature(call: CapturedCall) -> tuple[Any, ...]:
    """Hashable description of a call: tree structure, tensor shapes/dtypes and scalar values."""
    leaves, spec = flatten_call(call.args, call.kwargs)
    sig: list[Any] = [str(spec)]
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            sig.append((tuple(leaf.shape), str(leaf.dtype)))
        else:
            sig.append(repr(leaf))
    return tuple(sig)


@dataclass
class GraphPlan:
    """One graph to compile: its example call and the per-leaf dynamic dims (leaf index -> {dim: hint})."""

    call: CapturedCall
    dynamic: dict[int, dict[int, Any]]


def plan_graphs(calls: Sequence[CapturedCall], options: CompileOptions, module: torch.nn.Module) -> list[GraphPlan]:
    """Turn captured calls into the list of graphs the options ask for."""
    if not calls:
        raise ValueError("`calls` is empty: capture at least one call of the module first.")
    distinct: dict[tuple[Any, ...], CapturedCall] = {}
    for call in calls:
        distinct.setdefault(shape_signature(call), call)
    unique = list(distinct.values())

    if options.dynamic_dims:
        return [GraphPlan(calls[0], _explicit_dims(calls[0], options, module))]
    if options.dispatch == "static":
        return [GraphPlan(calls[0], {})]
    if options.dispatch == "buckets":
        return [GraphPlan(call, {}) for call in unique]
    return _dynamic_plans(unique, {1, *options.static_sizes})


def _explicit_dims(call: CapturedCall, options: CompileOptions, module: torch.nn.Module) -> dict[int, dict[int, Any]]:
    names = _argument_names(module, options.method, call)
    leaves, _ = flatten_call(call.args, call.kwargs)
    dynamic: dict[int, dict[int, Any]] = {}
    for path, dim, rng in options.dynamic_dims:
        index = names.get(path)
        if index is None:
            raise ValueError(
                f"`dynamic_dims` names input {path!r}, but the captured call has {sorted(names)}."
            )
        if not isinstance(leaves[index], torch.Tensor) or dim >= leaves[index].dim():
            raise ValueError(f"`dynamic_dims`: input {path!r} has no tensor dim {dim}.")
        dynamic.setdefault(index, {})[dim] = torch.export.Dim.AUTO(min=rng.min, max=rng.max)
    return dynamic


def _argument_names(module: torch.nn.Module, method: str, call: CapturedCall) -> dict[str, int]:
    """Map positional indices ("0") and keyword names of top-level tensor inputs to flat leaf indices."""
    leaves, _ = flatten_call(call.args, call.kwargs)
    names: dict[str, int] = {}
    offset = 0
    for i, arg in enumerate(call.args):
        n = len(pytree.tree_leaves(arg))
        if n == 1:
            names[str(i)] = offset
        offset += n
    sig_names = list(inspect.signature(getattr(module, method)).parameters)
    for i in range(len(call.args)):
        if i < len(sig_names) and str(i) in names:
            names[sig_names[i]] = names[str(i)]
    for key, value in call.kwargs.items():
        n = len(pytree.tree_leaves(value))
        if n == 1:
            names[key] = offset
        offset += n
    assert offset == len(leaves)
    return names


def _dynamic_plans(calls: list[CapturedCall], static_sizes: set[int]) -> list[GraphPlan]:
    """Dims that vary across calls become dynamic; calls where a varying dim is 1 (or another of
    ``static_sizes``) get a static graph each, tried before the dynamic one."""
    by_structure: dict[str, list[CapturedCall]] = {}
    for call in calls:
        by_structure.setdefault(shape_signature(call)[0], []).append(call)
    plans: list[GraphPlan] = []
    for group in by_structure.values():
        flat = [flatten_call(c.args, c.kwargs)[0] for c in group]
        varying: list[tuple[int, int]] = []
        for i, leaf in enumerate(flat[0]):
            if isinstance(leaf, torch.Tensor):
                for d in range(leaf.dim()):
                    if len({f[i].shape[d] if f[i].dim() == leaf.dim() else -1 for f in flat}) > 1:
                        varying.append((i, d))
        if not varying:
            plans.append(GraphPlan(group[0], {}))
            continue
        static = [any(f[i].shape[d] in static_sizes for i, d in varying) for f in flat]
        rest = [(c, f) for c, f, s in zip(group, flat, static) if not s]
        plans.extend(GraphPlan(c, {}) for c, s in zip(group, static) if s)
        if len(rest) == 1:
            plans.append(GraphPlan(rest[0][0], {}))
        elif rest:
            dynamic: dict[int, dict[int, Any]] = {}
            for i, d in varying:
                sizes = [f[i].shape[d] for _, f in rest]
                dynamic.setdefault(i, {})[d] = torch.export.Dim.AUTO(min=max(2, min(sizes)), max=max(sizes))
            plans.append(GraphPlan(rest[0][0], dynamic))
    return plans


def export_dynamic_shapes(
    module: torch.nn.Module, method: str, call: CapturedCall, dynamic: dict[int, dict[int, Any]]
) -> dict[str, Any] | None:
    """The ``dynamic_shapes`` argument of `torch.export.export` for a plan, keyed by parameter name."""
    if not dynamic:
        return None
    bound = inspect.signature(getattr(module, method)).bind(*call.args, **call.kwargs)
    result: dict[str, Any] = {}
    offset = 0
    # Leaves are numbered in (args, kwargs) order; walk the call the same way.
    values = [("arg", i, v) for i, v in enumerate(call.args)] + [("kw", k, v) for k, v in call.kwargs.items()]
    leaf_specs: dict[tuple[str, Any], Any] = {}
    for kind, name, value in values:
        leaves, spec = pytree.tree_flatten(value)
        per_leaf = [dynamic.get(offset + j) if isinstance(leaf, torch.Tensor) else None for j, leaf in enumerate(leaves)]
        leaf_specs[(kind, name)] = pytree.tree_unflatten(per_leaf, spec) if leaves else None
        offset += len(leaves)
    params = list(bound.signature.parameters.values())
    for i, _ in enumerate(call.args):
        param = params[min(i, len(params) - 1)]
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            result.setdefault(param.name, []).append(leaf_specs[("arg", i)])
        else:
            result[param.name] = leaf_specs[("arg", i)]
    var_kw = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    for key in call.kwargs:
        if key in bound.signature.parameters:
            result[key] = leaf_specs[("kw", key)]
        elif var_kw is not None:
            result.setdefault(var_kw, {})[key] = leaf_specs[("kw", key)]
    for name, value in list(result.items()):
        if isinstance(value, list):
            result[name] = tuple(value)
    return result


# --- the guard -------------------------------------------------------------------------------------


@dataclass
class Guard:
    """Accepts exactly the calls a compiled graph was built for.

    ``leaves`` holds, per flattened input: ``["tensor", dtype, device_type, dims, strides]`` where each
    dim and stride is an int, a symbol name, or an expression over symbols; or ``["const", value]`` for
    a scalar that export specialized. ``ranges`` maps symbol names to ``[min, max]``.

    The strides are the layout the graph was built for: a compiled graph reads its inputs with them,
    so an input with the right shape but another layout (a transposed view, an expanded tensor) would
    give wrong numbers. `fit` copies such an input into the built layout first.
    """

    treespec: str
    leaves: list[list[Any]]
    ranges: dict[str, list[float]]

    def to_json(self) -> dict[str, Any]:
        return {"treespec": self.treespec, "leaves": self.leaves, "ranges": self.ranges}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Guard:
        return cls(data["treespec"], data["leaves"], {k: list(v) for k, v in data["ranges"].items()})

    @classmethod
    def from_exported(cls, ep: torch.export.ExportedProgram, call: CapturedCall) -> Guard:
        leaves, spec = flatten_call(call.args, call.kwargs)
        user_inputs = set(ep.graph_signature.user_inputs)
        placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user_inputs]
        tensor_metas = [n.meta["val"] for n in placeholders if isinstance(n.meta.get("val"), torch.Tensor)]
        ranges: dict[str, list[float]] = {}
        for sym, vr in ep.range_constraints.items():
            upper = float(vr.upper) if vr.upper.is_finite else math.inf
            ranges[str(sym)] = [int(vr.lower), upper]
        out: list[list[Any]] = []
        metas = iter(tensor_metas)
        for leaf in leaves:
            if isinstance(leaf, torch.Tensor):
                meta = next(metas)
                dims, strides = ([int(s) if not isinstance(s, torch.SymInt) else str(s.node.expr) for s in sizes]
                                 for sizes in (meta.shape, meta.stride()))
                out.append(["tensor", str(leaf.dtype), leaf.device.type, dims, strides])
            elif isinstance(leaf, _SCALARS):
                out.append(["const", leaf])
            else:
                raise TypeError(f"Unsupported input of type {type(leaf).__name__} in a compiled call.")
        return cls(str(spec), out, ranges)

    def compiled(self) -> _CompiledGuard:
        return _CompiledGuard(self)


class _CompiledGuard:
    """The hot-path form of a Guard: per-leaf checks prepared once."""

    def __init__(self, guard: Guard) -> None:
        self.treespec = guard.treespec
        self.ranges = guard.ranges
        self.checks: list[tuple[Any, ...]] = []
        self.exprs: list[tuple[int, int, Any]] = []
        self.strides: list[list[int | Any]] = []  # per tensor leaf: each dim's built stride, an int or code
        for i, leaf in enumerate(guard.leaves):
            if leaf[0] == "const":
                self.checks.append(("const", leaf[1]))
                continue
            dtype = getattr(torch, leaf[1].removeprefix("torch."))
            static, symbols = [], []
            for d, size in enumerate(leaf[3]):
                if isinstance(size, int):
                    static.append((d, size))
                elif size.isidentifier():
                    symbols.append((d, size))
                else:
                    self.exprs.append((i, d, _code(size)))
            self.checks.append(("tensor", dtype, leaf[2], len(leaf[3]), tuple(static), tuple(symbols)))
            # Packages built before strides were recorded read their inputs contiguous, as captured.
            built = leaf[4] if len(leaf) > 4 else None
            self.strides.append([s if isinstance(s, int) else _code(s) for s in built] if built is not None else None)

    def __call__(self, leaves: list[Any], spec: pytree.TreeSpec) -> str | None:
        """None when the call is accepted, else the reason it is not."""
        return self.check(leaves, spec)[0]

    def fit(self, tensors: list[torch.Tensor], bound: dict[str, int]) -> tuple[list[torch.Tensor], int]:
        """The call's tensors in the layout the graph was built for: an input whose strides differ (in a
        dim of more than one element) is copied into that layout. Returns them and how many were copied."""
        fitted, copies = [], 0
        for tensor, built in zip(tensors, self.strides):
            expected = _contiguous_strides(tensor.shape) if built is None else [
                s if isinstance(s, int) else int(_eval(s, bound)) for s in built]
            if any(n > 1 and have != want for n, have, want in zip(tensor.shape, tensor.stride(), expected)):
                tensor = torch.empty_strided(tensor.shape, expected, dtype=tensor.dtype, device=tensor.device).copy_(tensor)
                copies += 1
            fitted.append(tensor)
        return fitted, copies

    def check(self, leaves: list[Any], spec: pytree.TreeSpec) -> tuple[str | None, dict[str, int]]:
        """(None, the symbols' values) when the call is accepted, else (the reason it is not, {})."""
        if len(leaves) != len(self.checks) or str(spec) != self.treespec:
            return "input structure differs from the compiled call", {}
        bound: dict[str, int] = {}
        for leaf, check in zip(leaves, self.checks):
            if check[0] == "const":
                if isinstance(leaf, torch.Tensor) or leaf != check[1]:
                    return f"argument value {leaf!r} differs from the compiled {check[1]!r}", {}
                continue
            _, dtype, device, ndim, static, symbols = check
            if not isinstance(leaf, torch.Tensor) or leaf.dtype != dtype or leaf.device.type != device:
                return "tensor dtype or device differs from the compiled graph", {}
            shape = leaf.shape
            if len(shape) != ndim:
                return f"tensor rank {len(shape)} differs from the compiled {ndim}", {}
            for d, size in static:
                if shape[d] != size:
                    return f"shape {tuple(shape)} outside the compiled sizes (dim {d} must be {size})", {}
            for d, name in symbols:
                value = shape[d]
                if bound.setdefault(name, value) != value:
                    return f"shape {tuple(shape)}: dim {d} must equal the other inputs' {name}={bound[name]}", {}
                low, high = self.ranges.get(name, (2, math.inf))
                if not low <= value <= high:
                    return f"shape {tuple(shape)} outside the compiled range {name} in [{low}, {high}]", {}
        for i, d, code in self.exprs:
            try:
                expected = _eval(code, bound)
            except Exception:  # an expression over a symbol no input bound
                return "a derived dim could not be checked", {}
            if leaves[i].shape[d] != expected:
                return f"dim {d} of input {i} must be {expected}", {}
        return None, bound


def _code(expr: str) -> Any:
    return compile(expr.replace("^", "**"), "<guard>", "eval")


def _eval(code: Any, bound: dict[str, int]) -> Any:
    return eval(code, {"__builtins__": {}, "floor": math.floor, "ceiling": math.ceil}, bound)  # noqa: S307


def _contiguous_strides(shape: torch.Size) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return strides[::-1]

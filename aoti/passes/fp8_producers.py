"""An FX pass over an exported graph: a tanh-GELU producer (and a concatenation in front of it) moved
into `aoti.kernels.fp8_rows`'s quantization op, so the wide row is read once.

    fuse_producers(graph_module)  # rowwise_fp8(cat([a, gelu(b)])) -> rowwise_fp8(b, lead=a, gelu=True)
"""

from __future__ import annotations

import torch

from ..kernels import fp8_rows  # noqa: F401  (registers torch.ops.aoti_studio.rowwise_fp8)
from ..kernels.support import available

_ROW_VIEWS = ("view.default", "reshape.default", "_unsafe_view.default")


def _aten(node: torch.fx.Node, name: str) -> bool:
    return node.op == "call_function" and str(node.target) == f"aten.{name}"


def _one_user(node: torch.fx.Node) -> bool:
    return len(node.users) == 1


def _width(node: torch.fx.Node) -> int | None:
    value = node.meta.get("val")
    return value.shape[-1] if isinstance(value, torch.Tensor) and value.dim() else None


def _passes_through(node: torch.fx.Node) -> bool:
    """A view, or an inference-mode dropout (diffusers' FeedForward has one after its GELU)."""
    inference_dropout = _aten(node, "dropout.default") and not (node.args[2] if len(node.args) > 2 else node.kwargs.get("train"))
    return (inference_dropout or any(_aten(node, view) for view in _ROW_VIEWS)) and _one_user(node)


def _producer(node: torch.fx.Node) -> tuple[torch.fx.Node | None, torch.fx.Node] | None:
    """``(lead, pre_gelu)`` where the op's input ``node`` is ``[lead | gelu(pre_gelu)]`` (``lead`` None
    for plain ``gelu(pre_gelu)``) behind views that keep the row, else None."""
    width = _width(node)
    while _passes_through(node):
        node = node.args[0]
    if width is None or _width(node) != width:
        return None
    lead = None
    if _aten(node, "cat.default") and _one_user(node) and len(node.args[0]) == 2:
        rank = node.meta["val"].dim()
        if (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % rank != rank - 1:
            return None
        lead, node = node.args[0]
    if (_aten(node, "gelu.default") and _one_user(node) and node.kwargs.get("approximate") == "tanh"
            and _width(node.args[0]) and (lead is None or _width(lead))):
        return lead, node.args[0]
    return None


def _erase_unused(graph: torch.fx.Graph, node: torch.fx.Node) -> None:
    """Erase ``node`` and the producers only it used (dead code elimination keeps a dropout: random ops
    count as impure)."""
    if node.op != "call_function" or node.users:
        return
    inputs = list(node.all_input_nodes)
    graph.erase_node(node)
    for arg in inputs:
        _erase_unused(graph, arg)


def fuse_producers(graph_module: torch.fx.GraphModule) -> int:
    """Move GELU (tanh) producers into the quantization kernel: ``rowwise_fp8(gelu(x))`` and
    ``rowwise_fp8(cat([lead, gelu(x)], -1))`` (a FLUX.1 double block's MLP output and a single block's
    `proj_out` input) become one kernel call that reads ``x`` (and ``lead``) once, where Inductor
    would write the GELU's bf16 output and the kernel read it back. Returns how many calls changed."""
    if not available():
        return 0
    op, graph, fused = torch.ops.aoti_studio.rowwise_fp8.default, graph_module.graph, 0
    for node in list(graph.nodes):
        if node.target is not op or len(node.args) != 1 or node.kwargs or (found := _producer(node.args[0])) is None:
            continue
        lead, pre_gelu = found
        replaced = node.args[0]
        with graph.inserting_before(node):
            rows = [graph.call_function(torch.ops.aten.reshape.default, (t, [-1, _width(t)])) if t is not None else None
                    for t in (pre_gelu, lead)]
            node.args, node.kwargs = (rows[0],), {"lead": rows[1], "gelu": True}
        _erase_unused(graph, replaced)
        fused += 1
    if fused:
        graph_module.recompile()
    return fused

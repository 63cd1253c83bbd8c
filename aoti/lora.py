"""LoRA adapters fused into the weights a module's compiled graphs read: switch adapters per call,
never rebuild.

A compiled graph here reads the module's own weight tensors (`apply` binds them), so an adapter fused
into those tensors in place (W += scale · alpha/r · B A) is what the graph computes with from its next
call; each touched layer's own weight is copied to host memory once and copied back by `unfuse_lora`,
bit for bit. An FP8 layer (`Float8Rowwise`) is quantized again from its float weight plus the delta,
into its own bits and scales. No
tensor is replaced (a CUDA graph holds their addresses), so regional builds and CUDA graphs go on as
they were.

    adapter = aoti.LoraAdapter.from_diffusers(FluxPipeline, "user/flux-lora", weight_name="lora.safetensors")
    aoti.fuse_lora(pipe.transformer, adapter, scale=0.8)
    image = pipe("a cat").images[0]          # the compiled graphs, with the adapter
    aoti.unfuse_lora(pipe.transformer)       # the weights as they were, bit for bit

Reading an adapter is diffusers' own `lora_state_dict` (kohya, xlabs and the other formats it
converts); the scale of each layer follows peft's rule (``lora_alpha / r``, per-layer alphas where
the file has them).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .module_record import record_of, update
from .transforms.fuse import ProjectionSlice
from .transforms.quantize import RowwiseFloat8Linear
from .weights import pinned_copies

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter as plain data: per linear layer (its qualified name in the module it adapts), the
    down and up matrices (``A``: r x in, ``B``: out x r) and the layer's alpha / r."""

    name: str
    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]

    @classmethod
    def from_state_dict(cls, name: str, state_dict: dict[str, torch.Tensor], prefix: str = "transformer",
                        alphas: dict[str, float] | None = None, metadata: dict[str, Any] | None = None) -> LoraAdapter:
        """From peft-format keys (``{prefix}.<layer>.lora_A.weight`` / ``lora_B.weight``), as diffusers'
        ``lora_state_dict`` returns them. ``metadata``: the peft config saved with the file
        (``{prefix}.lora_alpha``, ``alpha_pattern``, ``use_rslora``); ``alphas``: kohya-style
        per-layer alphas (``{prefix}.<layer>.alpha``). Neither: alpha = the most common rank, as peft."""
        lead = f"{prefix}." if prefix else ""
        pairs: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in state_dict.items():
            if not key.startswith(lead):
                continue
            match = re.fullmatch(r"(.+)\.lora_([AB])\.weight", key[len(lead):])
            if match is None:
                raise ValueError(f"adapter {name}: {key!r} is not a LoRA matrix this library fuses (DoRA, biases and "
                                 "other tuners are not supported)")
            pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
        if not pairs:
            raise ValueError(f"adapter {name}: no LoRA layers for {prefix or 'the module'} in it")
        incomplete = [layer for layer, ab in pairs.items() if set(ab) != {"A", "B"}]
        if incomplete:
            raise ValueError(f"adapter {name}: {incomplete[0]} has only one of its two matrices")
        config = {k[len(lead):]: v for k, v in (metadata or {}).items() if k.startswith(lead)} if metadata else {}
        ranks = [ab["A"].shape[0] for ab in pairs.values()]
        common_rank = max(set(ranks), key=ranks.count)
        default_alpha = float(config.get("lora_alpha", common_rank))
        patterns = config.get("alpha_pattern") or {}
        rslora = bool(config.get("use_rslora", False))
        layers = {}
        for layer, ab in pairs.items():
            alpha = next((float(v) for p, v in patterns.items() if re.match(rf"(.*\.)?({p})$", layer)), None)
            if alpha is None and alphas:
                alpha = alphas.get(f"{lead}{layer}.alpha")
            rank = ab["A"].shape[0]
            alpha = default_alpha if alpha is None else float(alpha)
            layers[layer] = (ab["A"], ab["B"], alpha / (rank**0.5 if rslora else rank))
        return cls(name, layers)

    @classmethod
    def from_peft(cls, folder: str | Path, name: str | None = None) -> LoraAdapter:
        """Read a peft adapter folder (``adapter_config.json`` and ``adapter_model.safetensors``, as
        ``PeftModel.save_pretrained`` writes them, e.g. for a transformers causal LM): the layers are named
        as in the model peft wrapped (``model.layers.0.self_attn.q_proj``)."""
        import json

        from safetensors.torch import load_file

        folder = Path(folder)
        config = json.loads((folder / "adapter_config.json").read_text())
        if config.get("peft_type", "LORA") != "LORA" or config.get("use_dora"):
            raise ValueError(f"adapter {name or folder}: {config.get('peft_type')} adapters (or DoRA) are not fused by this library")
        state_dict = load_file(folder / "adapter_model.safetensors")
        metadata = {f"base_model.model.{k}": v for k, v in config.items()
                    if k in ("lora_alpha", "alpha_pattern", "use_rslora")}
        return cls.from_state_dict(name or folder.name, state_dict, "base_model.model", metadata=metadata)

    @classmethod
    def from_diffusers(cls, loader: Any, source: str | Path | dict, name: str | None = None, prefix: str = "transformer",
                       **kwargs: Any) -> LoraAdapter:
        """Read an adapter with ``loader.lora_state_dict`` (a diffusers pipeline class or its LoRA loader
        mixin, e.g. ``FluxPipeline``): a local file or folder, a Hub repo (``weight_name=``, ``revision=``)
        or a state dict."""
        state_dict, alphas, metadata = loader.lora_state_dict(source, return_alphas=True, return_lora_metadata=True, **kwargs)
        return cls.from_state_dict(name or str(source), state_dict, prefix, alphas, metadata)


@dataclass(frozen=True)
class FusedLora:
    """The adapter fused into a module's weights now: its name, scale, the linear layers it changed (a
    fused projection's once), and the seconds its fusing took."""

    name: str
    scale: float
    layers: tuple[str, ...]
    seconds: float


@dataclass
class LoraState:
    """On a module (its `ModuleRecord`): host copies of its own weights for every layer an adapter has
    touched (taken at the first fuse of each layer, kept for the next switches: a float layer's weight,
    an FP8 layer's bits and scales) and what is fused now."""

    stash: dict[str, tuple[torch.Tensor, ...]]
    fused: FusedLora | None = None


def _own_tensors(linear: torch.nn.Module) -> tuple[torch.Tensor, ...]:
    """What an adapter changes in a layer, in place: a float weight, or an FP8 layer's bits and scales."""
    if isinstance(linear, RowwiseFloat8Linear):
        return linear.weight, linear.weight_scale
    return (linear.weight,)


def _target(module: torch.nn.Module, layer: str) -> tuple[str, torch.nn.Module, slice | None]:
    """Where an adapter's ``layer`` lives: the linear layer holding its weight (its qualified name and
    itself) and, for a projection fused with its siblings (`aoti.FuseProjections`: q/k/v, gate/up), the
    rows of the fused weight that are its own; None where the layer is itself the linear."""
    sub = module.get_submodule(layer)
    if isinstance(sub, ProjectionSlice):
        parent = layer.rpartition(".")[0]
        fused = f"{parent}.{sub.fused_name}" if parent else sub.fused_name
        return fused, module.get_submodule(fused), slice(sub.start, sub.stop, sub.step)
    return layer, sub, None


def check_lora(module: torch.nn.Module, adapter: LoraAdapter) -> None:
    """A ValueError naming what in ``adapter`` doesn't fit ``module`` (a layer it lacks, a layer that is
    neither a float linear nor an FP8 one made by `Float8Rowwise`, a shape that differs); nothing changes."""
    for layer, (down, up, _) in adapter.layers.items():
        try:
            _, linear, rows = _target(module, layer)
        except AttributeError:
            raise ValueError(f"adapter {adapter.name}: {type(module).__name__} has no layer {layer}") from None
        weight = getattr(linear, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise ValueError(f"adapter {adapter.name}: {layer} is not a linear layer")
        if isinstance(linear, RowwiseFloat8Linear):
            if linear.source is None:
                raise ValueError(f"adapter {adapter.name}: {layer} is FP8 without its float weight to fuse into")
        elif not weight.is_floating_point() or weight.element_size() < 2:
            raise ValueError(f"adapter {adapter.name}: {layer} holds {weight.dtype} weights; LoRA fuses into float "
                             "(bf16/fp16/fp32) and FP8 weights only: switch this quantization off for this model")
        shape = (len(range(weight.shape[0])[rows]) if rows else weight.shape[0], weight.shape[1])
        if (up.shape[0], down.shape[1]) != shape or up.shape[1] != down.shape[0]:
            raise ValueError(f"adapter {adapter.name}: {layer} is {shape}, the adapter's product is "
                             f"{(up.shape[0], down.shape[1])}")


@torch.no_grad()
def fuse_lora(module: torch.nn.Module, adapter: LoraAdapter, scale: float = 1.0) -> FusedLora:
    """Fuse ``adapter`` at ``scale`` into ``module``'s weights in place (an adapter fused before is
    taken out: its layers that the new one leaves get their own weights back, the others are written
    from them); returns what is now fused. A layer's own tensors are copied to host memory the first
    time an adapter touches it (kept for later switches: `unfuse_lora` copies them back). An FP8 layer
    (`Float8Rowwise`) is quantized again, as it was, from its float weight plus the adapter's product.
    A ValueError (`check_lora`) leaves the module as it was. Hold the module's lock: its weights change
    in place."""
    check_lora(module, adapter)
    start = time.perf_counter()
    # Per linear layer: itself and the adapter's (rows, down, up, scale) for it; a fused projection has several.
    targets: dict[str, tuple[torch.nn.Module, list[tuple[slice | None, torch.Tensor, torch.Tensor, float]]]] = {}
    for layer, (down, up, layer_scale) in adapter.layers.items():
        name, linear, rows = _target(module, layer)
        targets.setdefault(name, (linear, []))[1].append((rows, down, up, scale * layer_scale))
    _restore(module, keep=set(targets))  # the layers the new adapter fuses into are written over whole below
    state = record_of(module).lora or LoraState({})
    _stash_new(state, {name: linear for name, (linear, _) in targets.items()})
    cuda = False
    for name, (linear, parts) in targets.items():  # one layer's product at a time: a model's worth would not fit
        weight = linear.weight
        cuda = cuda or weight.is_cuda
        delta = _product(parts, weight)
        if isinstance(linear, RowwiseFloat8Linear):
            # To the device as it is, widened there: ``.to(device, float32)`` would widen in host memory first.
            linear.requantize_(linear.source.to(weight.device, non_blocking=True).float() + delta)
        else:
            own = state.stash[name][0]  # the layer's own weight: it may hold the adapter switched from
            weight.copy_((own.to(weight.device, non_blocking=True).float() + delta).to(weight.dtype))
    if cuda:
        torch.cuda.synchronize()  # the switch's time is the device's
    state.fused = FusedLora(adapter.name, scale, tuple(targets), time.perf_counter() - start)
    update(module, lora=state)
    log.info("aoti: LoRA %s fused at %.2f into %d layers of %s in %.3f s", adapter.name, scale, len(adapter.layers),
             type(module).__name__, state.fused.seconds)
    return state.fused


def _product(parts: list[tuple[slice | None, torch.Tensor, torch.Tensor, float]], weight: torch.Tensor) -> torch.Tensor:
    """The adapter's scaled product for one linear layer, fp32 on its device: up @ down, or for a fused
    projection each part's in its own rows of the fused weight."""
    device = weight.device
    if len(parts) == 1 and parts[0][0] is None:
        _, down, up, scale = parts[0]
        return (up.to(device, torch.float32) @ down.to(device, torch.float32)) * scale
    full = torch.zeros(weight.shape, dtype=torch.float32, device=device)
    for rows, down, up, scale in parts:
        full[rows] += (up.to(device, torch.float32) @ down.to(device, torch.float32)) * scale
    return full


def _stash_new(state: LoraState, linears: dict[str, torch.nn.Module]) -> None:
    """Host copies of the own tensors of each layer in ``linears`` not stashed yet. On a GPU they are
    page-locked, and so are the FP8 layers' float weights (moved in place: the same tensor objects, which
    the FP8 transform's own stash holds too), so that each switch copies them at the bus's speed."""
    new = {name: linear for name, linear in linears.items() if name not in state.stash}
    own = {name: _own_tensors(linear) for name, linear in new.items()}
    if not any(tensors[0].is_cuda for tensors in own.values()):
        state.stash.update({name: tuple(t.clone() for t in tensors) for name, tensors in own.items()})
        return
    copies = iter(pinned_copies([t for tensors in own.values() for t in tensors]))
    state.stash.update({name: tuple(next(copies) for _ in tensors) for name, tensors in own.items()})
    sources = [linear.source for linear in new.values() if isinstance(linear, RowwiseFloat8Linear)
               and linear.source.device.type == "cpu" and not linear.source.is_pinned()]
    for source, pinned in zip(sources, pinned_copies(sources), strict=True):
        source.set_(pinned)


def _restore(module: torch.nn.Module, keep: Collection[str] = ()) -> str | None:
    """Put the module's own weights back (from the host copies) in every layer the fused adapter
    touched except those in ``keep`` (a switch writes those over anyway); the adapter's name, or None."""
    state = record_of(module).lora
    fused = state.fused if state else None
    if fused is None:
        return None
    cuda = False
    for layer in fused.layers:
        if layer in keep:
            continue
        own = _own_tensors(module.get_submodule(layer))  # (the linear layers themselves: `FusedLora.layers`)
        cuda = cuda or own[0].is_cuda
        for tensor, saved in zip(own, state.stash[layer], strict=True):
            tensor.copy_(saved, non_blocking=True)
    if cuda:
        torch.cuda.synchronize()
    state.fused = None
    log.info("aoti: LoRA %s unfused from %s", fused.name, type(module).__name__)
    return fused.name


@torch.no_grad()
def unfuse_lora(module: torch.nn.Module, keep: bool = True) -> str | None:
    """The module's own weights back where an adapter was fused, bit for bit, in the same tensors; the
    name of the adapter taken out (None where none was). ``keep=False`` also drops the host copies (call
    it before the weights change another way: a transform, a rebuild)."""
    state = record_of(module).lora
    if state is None:
        return None
    name = _restore(module)
    update(module, lora=state if keep else None)
    return name


def lora_of(module: torch.nn.Module) -> FusedLora | None:
    """The adapter fused into ``module`` now (None: its own weights)."""
    state = record_of(module).lora
    return state.fused if state else None

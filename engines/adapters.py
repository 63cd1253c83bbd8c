"""The LoRA adapter a model runs with: which one is fused into its hot module's weights now, and the
adapters read recently (kept in host memory for the next switch). One per loaded model; a request
asks for an adapter and the switch happens before it runs (`aoti.fuse_lora`: no rebuild)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

import torch

import aoti

from . import registry

ADAPTERS_KEPT = 4  # adapters read recently, kept in host memory for the next switch
LORA_SCALE_MAX = 2.0


def check_adapter_request(model_id: str, lora: str, scale: float) -> None:
    """A ValueError a visitor can act on for an adapter ``model_id`` does not offer (naming those it
    does) or a scale out of range."""
    if lora:
        registry.adapter(model_id, lora)
    if not 0 <= scale <= LORA_SCALE_MAX:
        raise ValueError(f"`lora_scale` must be between 0 and {LORA_SCALE_MAX:g}, got {scale}.")


class AdapterSlot:
    """``module``'s fused adapter; ``read`` turns an offered adapter (`registry.AdapterSpec`) into
    an `aoti.LoraAdapter` with the model family's own loader (diffusers' or peft's)."""

    def __init__(self, model_id: str, module: torch.nn.Module,
                 read: Callable[[registry.AdapterSpec], aoti.LoraAdapter]) -> None:
        self.model_id, self.module, self._read = model_id, module, read
        self.kept: OrderedDict[str, aoti.LoraAdapter] = OrderedDict()  # read recently, the latest last

    def use(self, adapter_id: str, scale: float = 1.0) -> float:
        """Fuse adapter ``adapter_id`` at ``scale`` ("": none), unless it is fused so already; the
        seconds the switch took (0 where nothing changed). Compiled graphs read those weights."""
        fused = aoti.lora_of(self.module)
        now = (fused.name, fused.scale) if fused else ("", 1.0)
        if now == (adapter_id, scale if adapter_id else 1.0):
            return 0.0
        start = time.perf_counter()
        if adapter_id:
            aoti.fuse_lora(self.module, self._adapter(adapter_id), scale)
        else:
            aoti.unfuse_lora(self.module)
        return time.perf_counter() - start

    def drop(self) -> None:
        """The module's own weights back and the host copies dropped: call before its weights change
        another way (a transform, a rebuild, a bind); the next request fuses again."""
        aoti.unfuse_lora(self.module, keep=False)

    def _adapter(self, adapter_id: str) -> aoti.LoraAdapter:
        adapter = self.kept.pop(adapter_id, None)
        if adapter is None:
            adapter = self._read(registry.adapter(self.model_id, adapter_id))
        self.kept[adapter_id] = adapter
        while len(self.kept) > ADAPTERS_KEPT:
            self.kept.popitem(last=False)
        return adapter

"""The embedded default image model's pipeline: a label-conditioned UNet2DModel + DDIM, 32x32.

Prompts name a colour, a shape and a position ("a red circle, top left"); `check_inputs` maps free
wording onto the trained labels and says which words it knows when it can't.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

StepCallback = Callable[[int, int], None]


@functools.lru_cache(maxsize=8)
def _meta(path: str | Path) -> dict:
    return json.loads((Path(path) / "labels.json").read_text())


def labels_at(path: str | Path) -> list[str]:
    """The trained labels of the model saved at ``path`` ("a red circle, top left", ...), without its weights."""
    return list(_meta(path)["labels"])


def vocabulary(labels: list[str]) -> str:
    """The words a prompt for this model may use, as a person reads them."""
    colors = sorted({label.split()[1] for label in labels})
    shapes = sorted({label.split()[2].rstrip(",") for label in labels})
    positions = sorted({label.split(", ")[1] for label in labels})
    return f"colours: {', '.join(colors)} · shapes: {', '.join(shapes)} · positions: {', '.join(positions)}"


def label_for(prompt: str, labels: list[str]) -> int:
    """The label id ``prompt`` names (free wording: a colour, a shape, a position, center by default);
    a ValueError that lists the known words otherwise."""
    colors = sorted({label.split()[1] for label in labels})
    shapes = sorted({label.split()[2].rstrip(",") for label in labels})
    positions = sorted({label.split(", ")[1] for label in labels})
    text = " ".join(re.findall(r"[a-z]+", prompt.lower()))
    color = next((c for c in colors if re.search(rf"\b{c}\b", text)), None)
    shape = next((s for s in shapes if re.search(rf"\b{s}\b", text)), None)
    position = next((p for p in sorted(positions, key=len, reverse=True) if p in text), None)
    missing = [name for name, value in (("colour", color), ("shape", shape)) if value is None]
    if missing:
        raise ValueError(
            f"this model draws a colour ({', '.join(colors)}) and a shape ({', '.join(shapes)}) "
            f"at a position ({', '.join(positions)}); the prompt names no {' and no '.join(missing)}."
        )
    return labels.index(f"a {color} {shape}, {position or 'center'}")


class ShapesPipeline:
    """``ShapesPipeline.from_pretrained(path)`` then ``pipe(prompt, num_inference_steps=20)``."""

    def __init__(self, unet: torch.nn.Module, scheduler: object, labels: list[str], size: int) -> None:
        self.unet, self.scheduler, self.labels, self.size = unet, scheduler, labels, size

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> ShapesPipeline:
        from diffusers import DDIMScheduler, UNet2DModel

        path = Path(path)
        unet = UNet2DModel.from_pretrained(path / "unet", torch_dtype=torch_dtype).eval()
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
        meta = _meta(path)
        return cls(unet, scheduler, meta["labels"], meta["size"])

    def to(self, device: str) -> ShapesPipeline:
        self.unet.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def check_inputs(self, prompt: str) -> int:
        """The label id for ``prompt``; a ValueError that lists the known words otherwise."""
        return label_for(prompt, self.labels)

    @torch.no_grad()
    def __call__(
        self, prompt: str, num_inference_steps: int = 20, generator: torch.Generator | None = None,
        height: int | None = None, width: int | None = None, callback: StepCallback | None = None,
    ) -> Image.Image:
        if (height or self.size) != self.size or (width or self.size) != self.size:
            raise ValueError(f"this model draws {self.size}x{self.size} images only.")
        label = torch.tensor([self.check_inputs(prompt)], device=self.device)
        dtype = next(self.unet.parameters()).dtype
        sample = torch.randn((1, 3, self.size, self.size), generator=generator, device=self.device, dtype=dtype)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for i, t in enumerate(self.scheduler.timesteps):
            noise = self.unet(sample, t.reshape(1), class_labels=label, return_dict=False)[0]
            sample = self.scheduler.step(noise, t, sample, generator=generator).prev_sample
            if callback is not None:
                callback(i, num_inference_steps)
        pixels = ((sample[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(pixels))

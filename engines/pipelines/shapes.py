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

# What the embedded image models were trained to draw (assets/train_image_model.py draws it).
SIZE = 32
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"top left": (9, 9), "top right": (9, 23), "bottom left": (23, 9), "bottom right": (23, 23), "center": (16, 16)}


def draws(image: Image.Image, caption: str) -> bool:
    """Whether ``image`` shows ``caption`` ("a red circle, top left") recognisably: a blob of the
    caption's colour (20+ pixels) centred within 4.5 pixels of the named position, and any other
    colour of the palette at most a quarter of it. (The shape is not judged: at 32x32 the UNet's
    circles fill their box as its squares do.)"""
    color, rest = caption[2:].split(" ", 1)
    position = rest.split(", ")[1]
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)

    def near(rgb: tuple[int, int, int]) -> np.ndarray:
        return np.abs(pixels - np.array(rgb)).sum(-1) < 90

    mask = near(COLORS[color])
    if mask.sum() < 20 or any(near(rgb).sum() > mask.sum() / 4 for name, rgb in COLORS.items() if name != color):
        return False
    rows, cols = np.nonzero(mask)
    cy, cx = POSITIONS[position]
    return abs(rows.mean() - cy) <= 4.5 and abs(cols.mean() - cx) <= 4.5


def outlined(image: Image.Image, caption: str) -> bool:
    """Whether ``image`` draws ``caption``'s shape as an outline (the embedded DiT adapter's style): the
    3x3 pixels at the centre of the caption's colour are less than a third that colour (a filled
    shape's are all of it)."""
    color = caption[2:].split(" ", 1)[0]
    pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    mask = np.abs(pixels - np.array(COLORS[color])).sum(-1) < 90
    rows, cols = np.nonzero(mask)
    if len(rows) < 10:
        return False
    cy, cx = int(round(rows.mean())), int(round(cols.mean()))
    return mask[max(cy - 1, 0): cy + 2, max(cx - 1, 0): cx + 2].mean() < 1 / 3


@functools.lru_cache(maxsize=8)
def read_meta(path: str | Path) -> dict:
    """A saved model's labels.json: its labels, in class-id order, and its image size."""
    return json.loads((Path(path) / "labels.json").read_text())


def labels_at(path: str | Path) -> list[str]:
    """The trained labels of the model saved at ``path`` ("a red circle, top left", ...), without its weights."""
    return list(read_meta(path)["labels"])


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


class LabelPipeline:
    """What the embedded pipelines share: the labels a prompt is mapped onto, one square size, the
    denoiser (the first of `components`), and the call: a prompt's label in, an image out. A subclass
    samples in ``_denoise(label, num_inference_steps, generator, callback)`` -> (1, 3, size, size)."""

    def __init__(self, labels: list[str], size: int) -> None:
        self.labels, self.size = labels, size

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        raise NotImplementedError

    def to(self, device: str) -> LabelPipeline:
        for module in self.components.values():
            module.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(next(iter(self.components.values())).parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(next(iter(self.components.values())).parameters()).dtype

    def check_inputs(self, prompt: str) -> int:
        """The label id for ``prompt``; a ValueError that lists the known words otherwise."""
        return label_for(prompt, self.labels)

    def check_size(self, height: int | None, width: int | None) -> None:
        if (height or self.size) != self.size or (width or self.size) != self.size:
            raise ValueError(f"this model draws {self.size}x{self.size} images only.")

    @staticmethod
    def to_image(sample: torch.Tensor) -> Image.Image:
        """A (1, 3, H, W) sample in [-1, 1] as an RGB image."""
        pixels = ((sample[0].float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(np.ascontiguousarray(pixels))

    def _denoise(self, label: torch.Tensor, steps: int, generator: torch.Generator | None,
                 callback: StepCallback | None) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(
        self, prompt: str, num_inference_steps: int = 20, generator: torch.Generator | None = None,
        height: int | None = None, width: int | None = None, callback: StepCallback | None = None,
    ) -> Image.Image:
        self.check_size(height, width)
        label = torch.tensor([self.check_inputs(prompt)], device=self.device)
        return self.to_image(self._denoise(label, num_inference_steps, generator, callback))


class ShapesPipeline(LabelPipeline):
    """``ShapesPipeline.from_pretrained(path)`` then ``pipe(prompt, num_inference_steps=20)``: a
    label-conditioned UNet2DModel and DDIM."""

    def __init__(self, unet: torch.nn.Module, scheduler: object, labels: list[str], size: int) -> None:
        super().__init__(labels, size)
        self.unet, self.scheduler = unet, scheduler

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> ShapesPipeline:
        from diffusers import DDIMScheduler, UNet2DModel

        path = Path(path)
        unet = UNet2DModel.from_pretrained(path / "unet", torch_dtype=torch_dtype).eval()
        scheduler = DDIMScheduler.from_pretrained(path / "scheduler")
        meta = read_meta(path)
        return cls(unet, scheduler, meta["labels"], meta["size"])

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {"unet": self.unet}

    def _denoise(self, label: torch.Tensor, steps: int, generator: torch.Generator | None,
                 callback: StepCallback | None) -> torch.Tensor:
        sample = torch.randn((1, 3, self.size, self.size), generator=generator, device=self.device, dtype=self.dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        for i, t in enumerate(self.scheduler.timesteps):
            noise = self.unet(sample, t.reshape(1), class_labels=label, return_dict=False)[0]
            sample = self.scheduler.step(noise, t, sample, generator=generator).prev_sample
            if callback is not None:
                callback(i, steps)
        return sample

"""Train the embedded default image model: a label-conditioned diffusers UNet2DModel that draws
coloured shapes at a named position on 32x32 pixels ("a red circle, top left"). Training images are
drawn procedurally here, so nothing is downloaded.

    python assets/train_image_model.py           # writes assets/tiny-shapes-unet/

Fixed seed and step count: the same machine gives the same weights.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger("train_image")
OUT = Path(__file__).resolve().parent / "tiny-shapes-unet"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engines.pipelines.shapes import COLORS, POSITIONS, SHAPES, SIZE  # noqa: E402  (what the models draw)


def labels() -> list[str]:
    """Every caption the model knows, in class-id order."""
    return [f"a {c} {s}, {p}" for c in COLORS for s in SHAPES for p in POSITIONS]


def draw(caption: str, rng: np.random.Generator, outline: bool = False) -> np.ndarray:
    """A 32x32 RGB image (uint8) of the caption, with a little jitter in place and size; with
    ``outline``, only the shape's 2-pixel edge (the style the DiT's adapter learns)."""
    color, rest = caption[2:].split(" ", 1)
    shape, position = rest.split(", ")
    cy, cx = POSITIONS[position]
    cy, cx = cy + rng.integers(-2, 3), cx + rng.integers(-2, 3)
    r = rng.integers(5, 8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    if shape == "circle":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    elif shape == "square":
        mask = (abs(yy - cy) <= r - 1) & (abs(xx - cx) <= r - 1)
    else:
        mask = (yy >= cy - r) & (yy <= cy + r) & (abs(xx - cx) <= (yy - (cy - r)) / 2)
    if outline:
        inner = mask.copy()
        for _ in range(2):  # eroded twice: what is left of the mask is its edge
            inner = inner & np.roll(inner, 1, 0) & np.roll(inner, -1, 0) & np.roll(inner, 1, 1) & np.roll(inner, -1, 1)
        mask = mask & ~inner
    img = np.full((SIZE, SIZE, 3), 245, dtype=np.uint8)
    img[mask] = COLORS[color]
    return img


def command_line(description: str, steps: int, out: Path) -> tuple[argparse.Namespace, np.random.Generator]:
    """A training script's command line (--steps, --batch, --out), its logging, and the fixed seeds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--batch", type=int, default=48)
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(0)
    return args, np.random.default_rng(0)


def set_lr(opt: torch.optim.Optimizer, step: int, steps: int, peak: float, warmup: int = 100) -> None:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``peak`` down to zero at ``steps``."""
    for group in opt.param_groups:
        group["lr"] = peak * min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def main() -> None:
    args, rng = command_line(__doc__, 2500, OUT)

    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    names = labels()
    unet = UNet2DModel(
        sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64, 96), norm_num_groups=8,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        num_class_embeds=len(names),
    )
    log.info("parameters: %.2f M, %d labels", sum(p.numel() for p in unet.parameters()) / 1e6, len(names))
    # The model predicts the clean image ("sample"): at this size it gives flat, noise-free backgrounds,
    # where an epsilon-predicting model of the same size left visible grain after 1500 steps.
    noise_scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="sample")
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.01)
    start = time.time()
    for step in range(args.steps):
        set_lr(opt, step, args.steps, 2e-3)
        ids = rng.integers(0, len(names), args.batch)
        images = np.stack([draw(names[i], rng) for i in ids])
        x0 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (args.batch,))
        pred = unet(noise_scheduler.add_noise(x0, noise, t), t, class_labels=torch.from_numpy(ids)).sample
        loss = torch.nn.functional.mse_loss(pred, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - start)
    args.out.mkdir(parents=True, exist_ok=True)
    unet.eval().save_pretrained(args.out / "unet", safe_serialization=True)
    DDIMScheduler.from_config(noise_scheduler.config).save_pretrained(args.out / "scheduler")
    (args.out / "labels.json").write_text(json.dumps({"labels": names, "size": SIZE}, indent=1))
    log.info("done in %.0f s", time.time() - start)


if __name__ == "__main__":
    sys.exit(main())

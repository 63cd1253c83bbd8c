"""Train the embedded DiT's LoRA adapter "outline": `tiny-shapes-dit` draws its shapes as 2-pixel
outlines instead of filled. Rank 16 on every linear layer of the transformer, the base weights frozen, flow matching on outline drawings (assets/train_image_model.py), saved in diffusers'
LoRA format with its peft config, as `FluxPipeline.save_lora_weights` writes it.

    python assets/train_dit_lora.py           # writes assets/tiny-shapes-dit-outline/

At the end the adapter is fused the way the app fuses it (`aoti.fuse_lora`) and every label is
drawn: at least 60 % must be outlines (`engines.pipelines.shapes.outlined`: the centre empty) of the
right colour at the right place (`draws`) — 41 of 60 here (1500 steps, 776 s on 2 cores; squares
nearly always, circles and small triangles often broken); the drawings go to
assets/shapes-dit-outline-samples.png.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from train_image_model import SIZE, command_line, draw, labels, set_lr  # noqa: E402

log = logging.getLogger("train_dit_lora")
OUT = HERE / "tiny-shapes-dit-outline"
RANK, ALPHA = 16, 16.0


def main() -> None:
    args, rng = command_line(__doc__, 1500, OUT)

    from diffusers import FluxPipeline

    import aoti
    from engines.pipelines.shapes import draws, outlined
    from engines.pipelines.shapes_dit import ShapesDiTPipeline, image_ids, pack

    pipe = ShapesDiTPipeline.from_pretrained(HERE / "tiny-shapes-dit")
    model, encoder = pipe.transformer, pipe.label_encoder
    for p in [*model.parameters(), *encoder.parameters()]:
        p.requires_grad_(False)
    targets = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    lora = {}
    for name, linear in targets.items():  # peft's initialization: A random, B zero (the adapter starts as a no-op)
        down = torch.nn.Parameter(torch.empty(RANK, linear.in_features))
        torch.nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        lora[name] = (down, torch.nn.Parameter(torch.zeros(linear.out_features, RANK)))
        linear.register_forward_hook(lambda m, a, out, ab=lora[name]: out + (ALPHA / RANK) * (a[0] @ ab[0].T) @ ab[1].T)
    params = [p for ab in lora.values() for p in ab]
    log.info("adapter: %d layers, %.2f M parameters", len(lora), sum(p.numel() for p in params) / 1e6)
    opt = torch.optim.AdamW(params, lr=3e-3, weight_decay=0.0)
    names = labels()
    ids, text_ids = image_ids(SIZE), torch.zeros(encoder.config.tokens, 3)
    start = time.time()
    for step in range(args.steps):
        set_lr(opt, step, args.steps, 3e-3, warmup=50)
        label_ids = rng.integers(0, len(names), args.batch)
        x0 = pack(torch.from_numpy(np.stack([draw(names[i], rng, outline=True) for i in label_ids])).permute(0, 3, 1, 2).float() / 127.5 - 1)
        noise = torch.randn_like(x0)
        sigma = torch.sigmoid(torch.randn(args.batch))
        tokens, pooled = encoder(torch.from_numpy(label_ids))
        velocity = model(hidden_states=(1 - sigma[:, None, None]) * x0 + sigma[:, None, None] * noise, encoder_hidden_states=tokens,
                         pooled_projections=pooled, timestep=sigma, img_ids=ids, txt_ids=text_ids, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(velocity, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps - 1:
            log.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - start)
    layers = {}
    for name, (down, up) in lora.items():
        layers[f"{name}.lora_A.weight"], layers[f"{name}.lora_B.weight"] = down.detach().clone(), up.detach().clone()
    FluxPipeline.save_lora_weights(str(args.out), transformer_lora_layers=layers, transformer_lora_adapter_metadata={
        "r": RANK, "lora_alpha": ALPHA, "target_modules": sorted(lora), "lora_dropout": 0.0, "bias": "none"})

    pipe = ShapesDiTPipeline.from_pretrained(HERE / "tiny-shapes-dit")  # fresh, fused as the app fuses
    aoti.fuse_lora(pipe.transformer, aoti.LoraAdapter.from_diffusers(FluxPipeline, args.out / "pytorch_lora_weights.safetensors"))
    images = [pipe(name, num_inference_steps=20, generator=torch.Generator().manual_seed(i)) for i, name in enumerate(names)]
    styled = sum(outlined(image, name) and draws(image, name) for name, image in zip(names, images))
    sheet = Image.new("RGB", (15 * SIZE, 4 * SIZE))
    for i, image in enumerate(images):
        sheet.paste(image, ((i % 15) * SIZE, (i // 15) * SIZE))
    sheet.resize((sheet.width * 2, sheet.height * 2), Image.NEAREST).save(HERE / "shapes-dit-outline-samples.png")
    log.info("done in %.0f s; %d of %d labels drawn as outlines in place", time.time() - start, styled, len(names))
    if styled < 0.6 * len(names):
        sys.exit(f"only {styled} of {len(names)} labels drawn as outlines: train longer")


if __name__ == "__main__":
    logging.getLogger("aoti").setLevel(logging.WARNING)
    main()

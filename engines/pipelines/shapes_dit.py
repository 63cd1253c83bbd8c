"""The embedded transformer image model's pipeline: diffusers' FLUX transformer (joint-stream and
single-stream blocks, rotary positions, flow matching), small and conditioned on a label, drawing the
shapes the UNet draws on 32x32 pixels.

The pixels are the latents (no VAE): 4x4 patches packed into 64 tokens of 48 channels, as FLUX packs
2x2 patches of its VAE latents; a `LabelEncoder` stands in for FLUX's T5 and CLIP (prompt tokens and a
pooled vector from the label the prompt names); `FlowMatchEulerDiscreteScheduler` integrates the
predicted velocity as FLUX's pipeline does.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.loaders import FluxLoraLoaderMixin

from .shapes import LabelPipeline, StepCallback, read_meta

PATCH = 4  # pixels a token's side covers


def pack(pixels: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, C * p * p): one token a patch, rows first."""
    b, c, h, w = pixels.shape
    x = pixels.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, size: int, channels: int = 3, patch: int = PATCH) -> torch.Tensor:
    """The inverse of `pack` for a ``size`` x ``size`` image."""
    b, n = tokens.shape[:2]
    side = size // patch
    x = tokens.reshape(b, side, side, channels, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, channels, size, size)


def image_ids(size: int, patch: int = PATCH) -> torch.Tensor:
    """FLUX's position ids of the image tokens: (0, row, column) per token."""
    side = size // patch
    ids = torch.zeros(side, side, 3)
    ids[..., 1] = torch.arange(side)[:, None]
    ids[..., 2] = torch.arange(side)[None, :]
    return ids.reshape(side * side, 3)


class LabelEncoder(ModelMixin, ConfigMixin):
    """A label's prompt tokens (``tokens`` x ``dim``) and pooled vector (``pooled_dim``): the learned
    stand-in for FLUX's T5 and CLIP encoders, saved and loaded as a diffusers model."""

    @register_to_config
    def __init__(self, num_labels: int, tokens: int = 4, dim: int = 64, pooled_dim: int = 64) -> None:
        super().__init__()
        self.token_table = torch.nn.Embedding(num_labels, tokens * dim)
        self.pooled_table = torch.nn.Embedding(num_labels, pooled_dim)

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.token_table(labels).reshape(labels.shape[0], self.config.tokens, self.config.dim)
        return tokens, self.pooled_table(labels)


class ShapesDiTPipeline(LabelPipeline, FluxLoraLoaderMixin):
    """``ShapesDiTPipeline.from_pretrained(path)`` then ``pipe(prompt, num_inference_steps=20)``. Reads
    LoRA adapters as FLUX's pipeline does (`lora_state_dict`): its transformer is FLUX's."""

    def __init__(self, transformer: torch.nn.Module, label_encoder: LabelEncoder, scheduler: object,
                 labels: list[str], size: int) -> None:
        super().__init__(labels, size)
        self.transformer, self.label_encoder, self.scheduler = transformer, label_encoder, scheduler

    @classmethod
    def from_pretrained(cls, path: str | Path, torch_dtype: torch.dtype = torch.float32) -> ShapesDiTPipeline:
        from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

        path = Path(path)
        transformer = FluxTransformer2DModel.from_pretrained(path / "transformer", torch_dtype=torch_dtype).eval()
        label_encoder = LabelEncoder.from_pretrained(path / "label_encoder", torch_dtype=torch_dtype).eval()
        scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(path / "scheduler")
        meta = read_meta(path)
        return cls(transformer, label_encoder, scheduler, meta["labels"], meta["size"])

    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return {"transformer": self.transformer, "label_encoder": self.label_encoder}

    def _denoise(self, label: torch.Tensor, steps: int, generator: torch.Generator | None,
                 callback: StepCallback | None) -> torch.Tensor:
        dtype = self.dtype
        prompt_tokens, pooled = self.label_encoder(label)
        text_ids = torch.zeros(prompt_tokens.shape[1], 3, device=self.device, dtype=dtype)
        ids = image_ids(self.size).to(self.device, dtype)
        noise = torch.randn((1, 3, self.size, self.size), generator=generator, device=self.device, dtype=dtype)
        latents = pack(noise)
        self.scheduler.set_timesteps(steps, device=self.device)
        for i, t in enumerate(self.scheduler.timesteps):
            velocity = self.transformer(
                hidden_states=latents, encoder_hidden_states=prompt_tokens.to(dtype), pooled_projections=pooled.to(dtype),
                timestep=(t / 1000).expand(1).to(dtype), img_ids=ids, txt_ids=text_ids, return_dict=False,
            )[0]
            latents = self.scheduler.step(velocity, t, latents).prev_sample
            if callback is not None:
                callback(i, steps)
        return unpack(latents, self.size)

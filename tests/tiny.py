"""Tiny models of real architectures (random weights) and their inputs, shared by the tests."""

from __future__ import annotations

import torch


def flux(num_layers: int = 1, num_single_layers: int = 1) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    ).eval()


def flux_inputs(img: int = 16, txt: int = 8) -> dict:
    return dict(
        hidden_states=torch.randn(1, img, 4), encoder_hidden_states=torch.randn(1, txt, 32),
        pooled_projections=torch.randn(1, 32), timestep=torch.rand(1),
        img_ids=torch.randn(img, 3), txt_ids=torch.zeros(txt, 3), return_dict=False,
    )


def unet() -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=4,
    ).eval()


def unet_inputs() -> dict:
    return dict(sample=torch.randn(1, 4, 8, 8), timestep=torch.tensor(10), encoder_hidden_states=torch.randn(1, 6, 16), return_dict=False)


def llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, use_cache=False,
    )
    return LlamaForCausalLM(config).eval()


def token_ids(seq: int) -> torch.Tensor:
    return torch.randint(0, 128, (1, seq))


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.gelu(self.up(x)))

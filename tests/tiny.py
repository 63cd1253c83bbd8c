"""Tiny models of real architectures (random weights) and their inputs, shared by the tests."""

from __future__ import annotations

import torch


def flux(num_layers: int = 1, num_single_layers: int = 1, head_dim: int = 16) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=num_layers, num_single_layers=num_single_layers,
        attention_head_dim=head_dim, num_attention_heads=2, joint_attention_dim=32,
        pooled_projection_dim=32, axes_dims_rope=[head_dim // 4, head_dim // 4, head_dim // 2],
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


def qwen2() -> torch.nn.Module:
    """Qwen2: q/k/v with biases, grouped-query attention (4 query heads, 2 KV heads)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    return Qwen2ForCausalLM(config).eval()


def static_cache_decoder(model: torch.nn.Module, max_cache_len: int = 32) -> torch.nn.Module:
    """transformers' static-cache export wrapper around a causal LM (what the text engine compiles)."""
    from transformers.integrations.executorch import TorchExportableModuleWithStaticCache

    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    return TorchExportableModuleWithStaticCache(model, batch_size=1, max_cache_len=max_cache_len, device="cpu")


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


def flux_pipeline_dir(path) -> str:
    """A complete FLUX pipeline of tiny random components (CLIP + T5 text encoders, VAE, transformer,
    flow-matching scheduler) saved with `save_pretrained`, loadable with `DiffusionPipeline`. The
    tokenizers are the embedded text model's (no tokenizer files can be downloaded here)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from engines.registry import ASSETS

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama-pydoc")
    tokenizer.pad_token, tokenizer.model_max_length = tokenizer.eos_token, 16
    vocab = len(tokenizer)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                          down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                          shift_factor=0.0609, scaling_factor=0.3611),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, max_position_embeddings=16, projection_dim=32, eos_token_id=2)),
        tokenizer=tokenizer,
        text_encoder_2=T5EncoderModel(T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2)),
        tokenizer_2=tokenizer,
        transformer=FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                           num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 6, 6]),
    )
    pipe.save_pretrained(str(path))
    return str(path)

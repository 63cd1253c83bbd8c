"""Breadth: tiny models of architectures this project never chose, compiled and compared with eager.

Each case builds a diffusers denoiser or a transformers causal LM with random weights from a small
configuration of its real class, captures one call, compiles it with `aoti.compile` (defaults; the
CPU), applies it, and compares compiled against eager on fresh inputs of the captured shapes and on
the same values in another layout (every floating-point input seen through a transpose, the LMs' ids
too). `tests/aoti/test_breadth.py` runs a few in CI; the whole set:

    python -m tests.breadth            # prints the table that aoti/README.md shows
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

TOLERANCE = 1e-4  # relative error (norm of the difference over the norm of eager), float32


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "denoiser" | "causal-lm"
    build: Callable[[], torch.nn.Module]
    inputs: Callable[[], dict[str, Any]]


def _seeded(build: Callable[[], torch.nn.Module]) -> Callable[[], torch.nn.Module]:
    def seeded() -> torch.nn.Module:
        torch.manual_seed(0)
        return build().eval()
    return seeded


def _diffusers(cls: str, **config: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import diffusers

        return getattr(diffusers, cls)(**config)
    return _seeded(build)


def _lm(config_cls: str, model_cls: str, **config: Any) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import transformers

        model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config))
        return _Logits(model)
    return _seeded(build)


class _Logits(torch.nn.Module):
    """A causal LM's forward as a serving step sees it: ids in, logits out (no cache)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def _ids() -> dict[str, Any]:
    return {"input_ids": torch.randint(0, 96, (2, 8))}


LM = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
          max_position_embeddings=64)

CASES: tuple[Case, ...] = (
    Case("SD3Transformer2DModel", "denoiser", _diffusers(
        "SD3Transformer2DModel", sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=16,
        out_channels=4, pos_embed_max_size=16),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 6, 16),
                     pooled_projections=torch.randn(1, 16), timestep=torch.tensor([10.0]), return_dict=False)),
    Case("PixArtTransformer2DModel", "denoiser", _diffusers(
        "PixArtTransformer2DModel", sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
        num_attention_heads=2, in_channels=4, out_channels=8, cross_attention_dim=16, caption_channels=16,
        norm_num_groups=2, use_additional_conditions=False),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 6, 16),
                     timestep=torch.tensor([10]), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                     return_dict=False)),
    Case("DiTTransformer2DModel", "denoiser", _diffusers(
        "DiTTransformer2DModel", sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8,
        num_attention_heads=2, in_channels=4, out_channels=8, norm_num_groups=2),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), timestep=torch.tensor([10]),
                     class_labels=torch.tensor([3]), return_dict=False)),
    Case("AuraFlowTransformer2DModel", "denoiser", _diffusers(
        "AuraFlowTransformer2DModel", sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=1,
        num_single_dit_layers=1, attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
        caption_projection_dim=16, out_channels=4, pos_embed_max_size=64),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 6, 16),
                     timestep=torch.tensor([10.0]), return_dict=False)),
    Case("SanaTransformer2DModel", "denoiser", _diffusers(
        "SanaTransformer2DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16,
        caption_channels=16, sample_size=8, patch_size=1),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 6, 16),
                     timestep=torch.tensor([10.0]), return_dict=False)),
    Case("CogView3PlusTransformer2DModel", "denoiser", _diffusers(
        "CogView3PlusTransformer2DModel", patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, out_channels=4, text_embed_dim=16, time_embed_dim=8, condition_dim=2,
        pos_embed_max_size=8, sample_size=8),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 6, 16),
                     timestep=torch.tensor([10]), original_size=torch.tensor([[8.0, 8.0]]),
                     target_size=torch.tensor([[8.0, 8.0]]), crop_coords=torch.tensor([[0.0, 0.0]]),
                     return_dict=False)),
    Case("Lumina2Transformer2DModel", "denoiser", _diffusers(
        "Lumina2Transformer2DModel", sample_size=8, patch_size=2, in_channels=4, hidden_size=24, num_layers=2,
        num_refiner_layers=1, num_attention_heads=3, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 2, 2),
        axes_lens=(64, 32, 32), cap_feat_dim=16),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), timestep=torch.tensor([0.5]),
                     encoder_hidden_states=torch.randn(1, 6, 16),
                     encoder_attention_mask=torch.ones(1, 6, dtype=torch.bool), return_dict=False)),
    Case("HunyuanDiT2DModel", "denoiser", _diffusers(
        "HunyuanDiT2DModel", sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, hidden_size=16, cross_attention_dim=16, cross_attention_dim_t5=16,
        pooled_projection_dim=8, text_len=6, text_len_t5=6, learn_sigma=True),
        lambda: dict(hidden_states=torch.randn(1, 4, 8, 8), timestep=torch.tensor([10.0]),
                     encoder_hidden_states=torch.randn(1, 6, 16), text_embedding_mask=torch.ones(1, 6),
                     encoder_hidden_states_t5=torch.randn(1, 6, 16), text_embedding_mask_t5=torch.ones(1, 6),
                     image_meta_size=torch.tensor([[8.0, 8.0, 8.0, 8.0, 0.0, 0.0]]), style=torch.tensor([0]),
                     image_rotary_emb=(torch.randn(16, 8), torch.randn(16, 8)), return_dict=False)),
    Case("WanTransformer3DModel", "denoiser", _diffusers(
        "WanTransformer3DModel", patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32),
        lambda: dict(hidden_states=torch.randn(1, 4, 2, 8, 8), timestep=torch.tensor([10]),
                     encoder_hidden_states=torch.randn(1, 6, 16), return_dict=False)),
    Case("LTXVideoTransformer3DModel", "denoiser", _diffusers(
        "LTXVideoTransformer3DModel", in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=1, caption_channels=16),
        lambda: dict(hidden_states=torch.randn(1, 2 * 4 * 4, 4), encoder_hidden_states=torch.randn(1, 6, 16),
                     timestep=torch.tensor([10]), encoder_attention_mask=torch.ones(1, 6), num_frames=2, height=4,
                     width=4, return_dict=False)),
    Case("ChromaTransformer2DModel", "denoiser", _diffusers(
        "ChromaTransformer2DModel", patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8),
        approximator_num_channels=8, approximator_hidden_dim=16, approximator_layers=1),
        lambda: dict(hidden_states=torch.randn(1, 16, 4), encoder_hidden_states=torch.randn(1, 6, 32),
                     timestep=torch.tensor([0.5]), img_ids=torch.randn(16, 3), txt_ids=torch.zeros(6, 3),
                     return_dict=False)),
    Case("Mistral", "causal-lm", _lm("MistralConfig", "MistralForCausalLM", num_key_value_heads=2, **LM), _ids),
    Case("Gemma", "causal-lm", _lm("GemmaConfig", "GemmaForCausalLM", num_key_value_heads=1, head_dim=8, **LM), _ids),
    Case("Gemma2", "causal-lm", _lm("Gemma2Config", "Gemma2ForCausalLM", num_key_value_heads=2, head_dim=8, **LM), _ids),
    Case("Phi3", "causal-lm", _lm("Phi3Config", "Phi3ForCausalLM", num_key_value_heads=2, pad_token_id=0, **LM), _ids),
    Case("Qwen3", "causal-lm", _lm("Qwen3Config", "Qwen3ForCausalLM", num_key_value_heads=2, head_dim=8, **LM), _ids),
    Case("GPT2", "causal-lm", _lm("GPT2Config", "GPT2LMHeadModel", vocab_size=96, n_embd=32, n_layer=2, n_head=4,
                                  n_positions=64), _ids),
    Case("GPTNeoX", "causal-lm", _lm("GPTNeoXConfig", "GPTNeoXForCausalLM", **LM), _ids),
    Case("StableLm", "causal-lm", _lm("StableLmConfig", "StableLmForCausalLM", num_key_value_heads=2, **LM), _ids),
    Case("Starcoder2", "causal-lm", _lm("Starcoder2Config", "Starcoder2ForCausalLM", num_key_value_heads=2, **LM), _ids),
    Case("Olmo", "causal-lm", _lm("OlmoConfig", "OlmoForCausalLM", num_key_value_heads=2, pad_token_id=0, **LM), _ids),
    Case("Granite", "causal-lm", _lm("GraniteConfig", "GraniteForCausalLM", num_key_value_heads=2, **LM), _ids),
    Case("Qwen3Moe", "causal-lm", _lm("Qwen3MoeConfig", "Qwen3MoeForCausalLM", num_key_value_heads=2, head_dim=8,
                                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, **LM), _ids),
)
CI_CASES = ("SD3Transformer2DModel", "WanTransformer3DModel", "Gemma2", "Qwen3Moe")


def other_layout(value: Any) -> Any:
    """The same values seen through a transpose of the last two dims (strides differ, shapes do not)."""
    if isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[-1] > 1 and value.shape[-2] > 1:
        return value.transpose(-1, -2).contiguous().transpose(-1, -2)
    if isinstance(value, dict):
        return {k: other_layout(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(other_layout(v) for v in value)
    return value


def _first(output: Any) -> torch.Tensor:
    while not isinstance(output, torch.Tensor):
        output = output[0]
    return output


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12))


def run(case: Case, cache: Any = None) -> dict[str, Any]:
    """Compile ``case`` and compare it with eager; a row of the table (never raises)."""
    import aoti

    row: dict[str, Any] = {"model": case.name, "kind": case.kind}
    try:
        model = case.build()
        with aoti.capture(model) as call, torch.no_grad():
            model(**case.inputs())
        start = time.perf_counter()
        artifact = aoti.compile(model, call, cache=cache)
        status = aoti.apply(artifact, model)
        row["compile_s"] = round(time.perf_counter() - start, 1)
        row["runtime"] = status.runtime
        row["regional"] = isinstance(artifact, aoti.RegionalArtifact)
        row["fallbacks"] = list(status.fallbacks)
        torch.manual_seed(1)
        fresh = case.inputs()
        with torch.no_grad():
            eager = _first(model.forward.eager(**fresh)) if not row["regional"] else None
            if row["regional"]:
                compiled = _first(model(**fresh))
                aoti.restore(model)
                eager = _first(model(**fresh))
                aoti.apply(artifact, model)
            else:
                compiled = _first(model(**fresh))
            row["error_fresh"] = _rel_error(compiled, eager)
            compiled_other = _first(model(**other_layout(fresh)))
            row["error_other_layout"] = _rel_error(compiled_other, eager)
        live = aoti.status_of(model)
        row["guard_fallbacks"], row["layout_copies"] = live.guard_fallbacks, live.layout_copies
        ok = status.runtime == "aoti" and max(row["error_fresh"], row["error_other_layout"]) < TOLERANCE
        row["result"] = "matches" if ok else "eager" if status.runtime != "aoti" else "MISMATCH"
        if status.runtime != "aoti":
            row["error"] = status.reason
    except Exception as exc:  # a row says what failed; the table goes on
        row["result"], row["error"] = "failed", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
    return row


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | kind | result | rel. error (fresh / other layout) | compile s | notes |", "|---|---|---|---|---|---|"]
    for r in rows:
        errors = (f"{r['error_fresh']:.1e} / {r['error_other_layout']:.1e}" if "error_other_layout" in r else "–")
        notes = "; ".join(([r["error"]] if r.get("error") else []) + (["regional (whole-module export failed)"] if r.get("regional") else [])
                          + ([f"{r['layout_copies']} inputs copied into the built layout"] if r.get("layout_copies") else []))
        lines.append(f"| {r['model']} | {r['kind']} | {r['result']} | {errors} | {r.get('compile_s', '–')} | {notes} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    import tempfile

    import aoti

    cache = aoti.Cache(tempfile.mkdtemp(prefix="aoti-breadth-"))
    rows = []
    for case in CASES:
        rows.append(run(case, cache))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))

"""aoti.gemv inside AOTInductor packages on a GPU: bf16 with and without bias, FP8, compiled and
compared with eager on fresh inputs; each case's full error (if any) goes to the results file.

    python -m benchmarks.kernels gemv-aoti --out results.json
"""

from __future__ import annotations

import argparse
import re
import tempfile

import torch

import aoti
from benchmarks.common import Recorder, error_record, rel_error


class Block(torch.nn.Module):
    """Two shapes that get different launch configs (two specializations of the kernel in one graph)."""

    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.up = torch.nn.Linear(256, 2048, bias=bias)
        self.down = torch.nn.Linear(2048, 256, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(x)))


def check(bias: bool, quantization: str, cache: aoti.Cache) -> dict:
    torch.manual_seed(0)
    model = Block(bias).cuda().to(torch.bfloat16)
    x = torch.randn(1, 1, 256, device="cuda", dtype=torch.bfloat16)
    with aoti.capture(model) as call:
        model(x)
    transforms = [aoti.Float8Rowwise()] if quantization == "fp8_rowwise" else []
    aoti.transform(model, [*transforms, aoti.OneRowKernels()])
    try:
        artifact = aoti.compile(model, call, cache=cache)
    except Exception as exc:  # keep the compiler's own words
        return error_record(exc)
    fresh = torch.randn(1, 1, 256, device="cuda", dtype=torch.bfloat16)
    eager = model(fresh)  # routed layers run the kernel eagerly too
    status = aoti.apply(artifact, model)
    out = model(fresh)
    return {"runtime": status.runtime, "rel_error_vs_eager": rel_error(out, eager),
            "kernel_in_package": bool(re.search("gemv", artifact.wrapper_source() or "")),
            "routed": [type(m).__name__ for m in model.modules()][1:]}


def text_engine(cache: aoti.Cache) -> dict:
    """The text engine's own path: a 2-layer Qwen2 of mid width (strict export, a dynamic prefill graph
    and a static decode graph in one package, the "decode" preset, a CUDA-graph decode step), against
    the same model eager: greedy text, and the prefill and one decode step's logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from aoti.integrations.transformers import fused_layers
    from benchmarks.tasks.llm_decode import prefill_and_step_logits
    from engines.recipes import text_recipe
    from engines.registry import ASSETS, ModelSpec
    from engines.text import SamplingParams, TextModel

    config = Qwen2Config(hidden_size=1024, intermediate_size=4096, num_attention_heads=8, num_key_value_heads=2,
                         vocab_size=2048, num_hidden_layers=2, max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval().requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama-pydoc")
    spec = ModelSpec(id="qwen2-mid", task="text", source="random-weights", compile_module="decoder",
                     max_new_tokens=32, max_prompt_tokens=128)
    text = TextModel(spec, "cuda", model=model, tokenizer=tokenizer)
    params = SamplingParams(max_new_tokens=32, temperature=0, ignore_eos=True)
    prompt = "def add(a, b):\n    return a + b\n"
    ids = text.tokenizer(prompt, return_tensors="pt").input_ids.cuda()
    eager = text.tokenizer(list(text.generate(prompt, params))[-1].text).input_ids
    eager_logits = prefill_and_step_logits(text, ids)
    try:
        status = text.optimize(text_recipe(decode_kernels=True, preset="decode"), cache)
    except Exception as exc:
        return error_record(exc)
    compiled = text.tokenizer(list(text.generate(prompt, params))[-1].text).input_ids
    logits = prefill_and_step_logits(text, ids)
    return {"runtime": status.runtime, "fallbacks": status.fallbacks, "fused_layers": fused_layers(model),
            "prefill_logits_rel_error_vs_eager": rel_error(logits[0], eager_logits[0]),
            "decode_step_logits_rel_error_vs_eager": rel_error(logits[1], eager_logits[1]),
            "greedy_tokens_equal": eager == compiled,
            "first_differing_token": next((i for i, (a, b) in enumerate(zip(eager, compiled)) if a != b), None)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rec = Recorder(args.out, "cuda")
    cache = aoti.Cache(tempfile.mkdtemp())
    for name, bias, quantization in (("bf16", False, "none"), ("bf16_bias", True, "none"), ("fp8", True, "fp8_rowwise")):
        rec.variant(name, check(bias, quantization, cache))
    rec.variant("text_engine", text_engine(cache))
    rec.save()


if __name__ == "__main__":
    main()

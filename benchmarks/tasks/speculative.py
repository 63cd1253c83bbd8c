"""Speculative decoding's mechanism at Qwen2.5-7B geometry with a Qwen2.5-0.5B-geometry draft, both
compiled through `TextModel.optimize` (the engine's GPU recipe), per weight format (bf16, FP8).

Random weights make the draft's acceptance meaningless, so this measures what acceptance multiplies:
the target's one-token decode step, its (k + 1)-token verify step, and the draft's step, each timed
on the compiled graphs at the same cache position. From them, the decode speed speculation gives at
acceptance rates 0.5-1.0 (each draft kept with probability a, independently):

    tokens per round = (1 - a^(k+1)) / (1 - a)          (k + 1 at a = 1)
    seconds per round = k * draft + verify + a^k * draft  (the draft catches up when all were kept)

and, end to end through `TextModel.generate` (greedy, EOS ignored), plain decoding against speculative
decoding with this random draft (its measured acceptance: the near-zero floor).

    python -m benchmarks speculative --out results/speculative.json
    python -m benchmarks speculative --tiny --out /tmp/spec.json      # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

import torch

import aoti
from benchmarks.common import Recorder, measure
from benchmarks.tasks.llm_decode import QWEN25_7B, TINY, prompt_of
from engines.recipes import text_recipe
from engines.registry import ASSETS, ModelSpec
from engines.text import SamplingParams, TextModel

QWEN25_05B = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2, num_hidden_layers=24,
                  vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=True)
TINY_DRAFT = {**TINY, "hidden_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "num_hidden_layers": 1}
ACCEPTANCE = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def build(config: dict[str, Any], layers: int | None, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(0)
    settings = {**config, **({"num_hidden_layers": layers} if layers else {})}
    with torch.device(device):
        return AutoModelForCausalLM.from_config(Qwen2Config(**settings), dtype=dtype).eval().requires_grad_(False)


def modeled(decode_ms: float, verify_ms: float, draft_ms: float, k: int) -> dict[str, dict[str, float]]:
    """Tokens/s speculation gives at each acceptance rate, from the measured step costs, and its ratio to plain decoding."""
    out = {}
    for a in ACCEPTANCE:
        tokens = k + 1 if a == 1.0 else (1 - a ** (k + 1)) / (1 - a)
        round_ms = k * draft_ms + verify_ms + a**k * draft_ms
        out[str(a)] = {"tokens_per_s": round(1e3 * tokens / round_ms, 1), "speedup": round(tokens * decode_ms / round_ms, 2)}
    return out


def step_costs(text: TextModel, position: int, k: int, device: str) -> dict[str, float]:
    """Median ms at ``position`` of the target's decode step, its (k + 1)-token verify step (a static graph of
    its own), k + 2 tokens through the prefill graph (what a verify step cost before it had its own graph),
    and the draft's step."""
    assert text.draft is not None
    one = torch.zeros(1, 1, dtype=torch.long, device=device)
    block, longer = (torch.zeros(1, n, dtype=torch.long, device=device) for n in (k + 1, k + 2))
    at = torch.arange(position, position + k + 2, device=device)
    return {
        "decode_ms": measure(lambda: text.decoder(input_ids=one, cache_position=at[:1]), device, iters=30)["median_ms"],
        "verify_ms": measure(lambda: text.decoder(input_ids=block, cache_position=at[:-1]), device, iters=30)["median_ms"],
        "prefill_graph_k2_ms": measure(lambda: text.decoder(input_ids=longer, cache_position=at), device, iters=30)["median_ms"],
        "draft_ms": measure(lambda: text.draft.decoder(input_ids=one, cache_position=at[:1]), device, iters=30)["median_ms"],
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="bf16,fp8", help="weight formats: bf16, fp8")
    parser.add_argument("--layers", type=int, default=28, help="the target's depth (28 = Qwen2.5-7B)")
    parser.add_argument("--draft-layers", type=int, default=None, help="the draft's depth (default 24 = Qwen2.5-0.5B)")
    parser.add_argument("--draft-tokens", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cache", default=os.environ.get("AOTI_CACHE_DIR", "/tmp/aoti-bench-cache"))
    parser.add_argument("--budget-s", type=float, default=1e9)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    from transformers import AutoTokenizer

    args = parse(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama-pydoc")  # any tokenizer: ids < both vocabularies
    prompt = prompt_of(tokenizer, args.prompt_tokens)
    n = tokenizer(prompt, return_tensors="pt").input_ids.shape[1]
    rec = Recorder(args.out, device)
    rec.meta.update(geometry={"target": "tiny" if args.tiny else "Qwen2.5-7B", "target_layers": args.layers,
                              "draft": "tiny" if args.tiny else "Qwen2.5-0.5B", "draft_layers": args.draft_layers, "draft_tokens": args.draft_tokens,
                              "prompt_tokens": n, "new_tokens": args.new_tokens})
    rec.save()
    k, cache = args.draft_tokens, aoti.Cache(args.cache)
    os.environ.setdefault("AOTI_PROBE", "0")

    def spec(name: str, params_b: float) -> ModelSpec:
        return ModelSpec(id=name, task="text", source="random-weights", params_b=params_b, dtype=str(dtype).removeprefix("torch."),
                         compile_module="decoder", max_new_tokens=args.new_tokens, max_prompt_tokens=n,
                         draft=f"{name}-draft", draft_tokens=k)

    def run_one(name: str) -> None:
        target = build(TINY if args.tiny else QWEN25_7B, args.layers, device, dtype)
        draft = build(TINY_DRAFT if args.tiny else QWEN25_05B, args.draft_layers, device, dtype)
        draft_text = TextModel(dataclasses.replace(spec("draft", 0.5), draft=""), device, model=draft, tokenizer=tokenizer)
        text = TextModel(spec("target", 7.6), device, model=target, tokenizer=tokenizer, draft=draft_text)
        recipe = text_recipe(fp8=name == "fp8", decode_kernels=device == "cuda", preset="decode" if device == "cuda" else "default")
        status = text.optimize(recipe, cache)
        costs = step_costs(text, n, k, device)
        plain = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
        fast = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True, speculative=True)
        list(text.generate(prompt, plain)), list(text.generate(prompt, fast))  # first calls at these shapes
        plain_steps, fast_steps = list(text.generate(prompt, plain)), list(text.generate(prompt, fast))
        last = fast_steps[-1]
        rec.variant(name, {
            **costs, "verify_over_decode": round(costs["verify_ms"] / costs["decode_ms"], 2),
            "graphs": text.status.graphs, "cuda_graphs": text.status.cuda_graphs,
            "draft_over_decode": round(costs["draft_ms"] / costs["decode_ms"], 3),
            "modeled": modeled(costs["decode_ms"], costs["verify_ms"], costs["draft_ms"], k),
            "plain_tokens_per_s": round(plain_steps[-1].decode_tokens_per_s, 1),
            "speculative_random_draft": {"tokens_per_s": round(last.decode_tokens_per_s, 1),
                                         "acceptance": round(last.accepted / max(1, last.drafted), 3)},
            "same_greedy_text": plain_steps[-1].text == last.text,
        }, runtime=status.runtime, draft_runtime=aoti.status_of(text.draft.hot_module).runtime, compile_s=status.compile_s,
            fallbacks=status.fallbacks)
        del text, draft_text, target, draft
        if device == "cuda":
            torch.cuda.empty_cache()

    rec.run(args.variants.split(","), run_one, args.budget_s)


if __name__ == "__main__":
    main()

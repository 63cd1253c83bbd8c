"""LLM prefill and decode at Qwen2.5-7B geometry, side by side: HF `generate` eager, HF static cache
(which torch.compiles the forward), our decode loop eager, our loop on AOTI graphs, and with FP8 weights.

Random weights (Qwen2Config of Qwen2.5-7B: hidden 3584, 28 heads / 4 KV heads, MLP 18944, vocab
152064; depth set by --layers, 28 = the real model), bf16, batch 1, a 512-token prompt, 256 new
tokens (EOS ignored). The floor is the bytes a decode step must read (every weight but the embedding
table, plus the KV cache) over this card's measured copy bandwidth.

    python -m benchmarks llm-decode --out results.json
    python -m benchmarks llm-decode --tiny --out /tmp/llm.json      # CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

import aoti
from aoti.integrations.transformers import use_gqa_decode_attention
from benchmarks.common import Recorder, json_from_fresh_process, kernel_profile, measure, memory_bandwidth_gbs, rel_error, sync
from engines.recipes import Recipe, text_recipe
from engines.registry import ASSETS, ModelSpec
from engines.text import SamplingParams, TextModel

QWEN25_7B = dict(hidden_size=3584, intermediate_size=18944, num_attention_heads=28, num_key_value_heads=4,
                 vocab_size=152064, max_position_embeddings=32768, rope_theta=1e6, tie_word_embeddings=False)
TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, vocab_size=2048,
            max_position_embeddings=2048, tie_word_embeddings=False)


# Our loop's AOTI variants, as recipes (all but "ours_aoti" replay the decode step as a CUDA graph).
# "ours_gemv" is what the text engine runs on a GPU (`engines.text.text_recipe` with the decode kernels);
# "ours_gemv_separate" keeps separate projections and transformers' SDPA attention (which repeats the
# KV heads), as the engine did before the fusions.
DECODE_OPTIONS = text_recipe(preset="decode").options
VARIANT_RECIPES = {
    "ours_aoti": text_recipe(),
    "ours_aoti_graphs": text_recipe(),
    "ours_aoti_max": text_recipe(preset="max-autotune"),  # Triton GEMV/GEMM autotuning
    "ours_aoti_decode": text_recipe(preset="decode"),  # one-row matmuls as tuned Triton reductions
    "ours_gemv": text_recipe(decode_kernels=True, preset="decode"),  # one-row linears through aoti.kernels.gemv
    # the same without the preset's coordinate-descent tuning and combo kernels: what they cost in build time
    "ours_gemv_default": text_recipe(decode_kernels=True, preset="default"),
    "ours_gemv_separate": Recipe((aoti.OneRowKernels(),), DECODE_OPTIONS),
    "ours_fp8": text_recipe(fp8=True),  # one-row FP8 through _scaled_mm
    "ours_fp8_gemv": text_recipe(fp8=True, decode_kernels=True, preset="decode"),  # FP8 weight-only one-row kernel
    # Inductor's own reductions of wide rows (`one_pass_rows=False`)
    "ours_gemv_two_pass": Recipe(text_recipe(decode_kernels=True).transforms, DECODE_OPTIONS.replace(one_pass_rows=False)),
}
REPEATED_KV = {"ours_gemv_separate"}  # transformers' own SDPA attention


def build(args: argparse.Namespace, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(num_hidden_layers=args.layers, **(TINY if args.tiny else QWEN25_7B))
    torch.manual_seed(0)  # the same random weights in every process
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def decode_bytes(model: torch.nn.Module, context: int) -> int:
    """Bytes one decode step reads: all weights except the embedding table (one row), and the KV cache."""
    from aoti.weights import constants_map

    weights = sum(t.numel() * t.element_size() for n, t in constants_map(model).items() if "embed_tokens" not in n)
    cfg = model.config
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * context * 2
    return weights + kv


def allocated_gb(device: str) -> float | None:
    """GPU memory held by live tensors after a garbage collection (what a variant keeps alive)."""
    if not device.startswith("cuda"):
        return None
    import gc

    gc.collect()
    return round(torch.cuda.memory_allocated() / 1e9, 2)


def prompt_of(tokenizer, tokens: int) -> str:
    """A text that the tokenizer turns into about ``tokens`` tokens."""
    ids = tokenizer("def f(x):\n    return x + 1  # add one\n" * tokens).input_ids[:tokens]
    return tokenizer.decode(ids)


def steps_summary(steps) -> dict[str, Any]:
    last = steps[-1]
    return {"tokens": last.tokens, "ttft_ms": round(last.ttft_s * 1e3, 2),
            "decode_tokens_per_s": round(last.decode_tokens_per_s, 1)}


def hf_generate(model, ids, new_tokens: int, device: str, **kwargs) -> dict[str, Any]:
    """Time HF `generate` (greedy, exactly ``new_tokens``); decode rate excludes a separately timed prefill."""
    def run():
        return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, **kwargs)

    t0 = time.perf_counter()
    with torch.no_grad():
        run()
    sync(device)
    first = time.perf_counter() - t0
    prefill = measure(lambda: model(ids), device, iters=5)["median_ms"]
    total = measure(run, device, iters=1, warmup=0)["median_ms"]
    return {"first_call_s": round(first, 2), "prefill_ms": prefill, "total_ms": total,
            "decode_tokens_per_s": round((new_tokens - 1) / ((total - prefill) / 1e3), 1)}


def ours(text: TextModel, prompt: str, new_tokens: int, device: str, run: int = 0) -> dict[str, Any]:
    """Our loop: a first request, a timed one, prefill timing, first calls at new lengths (``run``
    shifts them so that each variant of a process meets lengths no earlier variant has run)."""
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    first = list(text.generate(prompt, params))  # pays any first-call-at-this-length cost
    steps = list(text.generate(prompt, params))
    ids = text.tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    prefill = measure(lambda: text.decoder(input_ids=ids, cache_position=torch.arange(ids.shape[1], device=device)), device, iters=5)
    result = {**steps_summary(steps), "first_request": steps_summary(first), "prefill_ms": prefill["median_ms"],
              "prefill_first_call_ms": first_calls(text, ids.shape[1], device, run),
              "ttft_new_lengths_ms": ttft_at_new_lengths(text, ids.shape[1], run),
              "peak_mem_gb": prefill.get("peak_mem_gb"), "token_ids": text.tokenizer(steps[-1].text).input_ids[:32]}
    if device == "cuda":  # one decode step: GPU kernel time vs the loop's time per token
        token, position = torch.zeros(1, 1, dtype=torch.long, device=device), torch.tensor([ids.shape[1]], device=device)
        result["decode_step_profile"] = kernel_profile(lambda: text.decoder(input_ids=token, cache_position=position))
        result["loop_ms_per_token"] = round(1e3 / result["decode_tokens_per_s"], 3)
    return result


def prefill_and_step_logits(text: TextModel, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The prompt's logits (prefill graph) and the next position's after feeding token 0 (decode step)."""
    n, device = ids.shape[1], ids.device
    with torch.no_grad():
        prefill = text.decoder(input_ids=ids, cache_position=torch.arange(n, device=device)).clone()
        step = text.decoder(input_ids=ids[:, :1], cache_position=torch.tensor([n], device=device)).clone()
    return prefill, step


def ttft_at_new_lengths(text: TextModel, max_length: int, run: int = 0) -> dict[int, float]:
    """Time to the first token through `TextModel.generate` for prompts of lengths no request of this
    process had (padded to a bucket the optimize step warmed): what a user's new prompt meets."""
    params = SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True)
    times = {}
    for length in sorted({max(2, max_length // f + 3 + run) for f in (5, 3, 2)}):
        step = list(text.generate(prompt_of(text.tokenizer, length), params))[-1]
        times[length] = round(step.ttft_s * 1e3, 2)
    return times


def first_calls(text: TextModel, max_length: int, device: str, run: int = 0) -> dict[int, float]:
    """Prefill time at prompt lengths not seen before in this process, called on the decoder directly
    (the first call at a new length pays per-shape setup, e.g. attention plans and cuBLAS heuristics;
    `TextModel` pads prompts to a few bucket lengths and warms them when it optimizes, so that its
    requests don't pay it)."""
    times = {}
    for length in sorted({max(2, max_length // f + 1 + run) for f in (5, 3, 2)}):
        ids = torch.zeros(1, length, dtype=torch.long, device=device)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            text.decoder(input_ids=ids, cache_position=torch.arange(length, device=device))
        sync(device)
        times[length] = round((time.perf_counter() - start) * 1e3, 2)
    return times


def keep_failed_sources(fallbacks: list[str], out_dir: Path, name: str) -> None:
    """Copy the C++ file of a build that failed (named in a fallback) next to the results, to read later."""
    import re
    import shutil

    for match in re.finditer(r"(/\S+\.cpp):\d+", " ".join(fallbacks)):
        source = Path(match.group(1))
        if source.exists():
            shutil.copy(source, out_dir / f"{name}_failed_{source.name}")


def warm_load_in_fresh_process(args: argparse.Namespace) -> dict[str, Any]:
    """A new process with the cache filled: build the model (random weights, not timed), then time
    `TextModel.optimize` (capture, cache lookup, apply) and the first request."""
    code = f"""
import json, sys, time, torch
sys.argv = {["llm_decode.py", *sys.argv[1:]]!r}
import aoti
from benchmarks.tasks.llm_decode import model_and_prompt, parse
from engines.registry import ModelSpec
from engines.text import SamplingParams, TextModel
args = parse()
device, model, tokenizer, prompt = model_and_prompt(args)
n = tokenizer(prompt, return_tensors="pt").input_ids.shape[1]
spec = ModelSpec(id="qwen2.5-7b-geometry", task="text", source="random-weights", compile_module="decoder",
                 max_new_tokens=args.new_tokens, max_prompt_tokens=n)
text = TextModel(spec, device, model=model, tokenizer=tokenizer)
torch.cuda.synchronize()
t0 = time.perf_counter()
status = text.optimize(cache=aoti.Cache(args.cache))
t1 = time.perf_counter()
steps = list(text.generate(prompt, SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)))
t2 = time.perf_counter()
print(json.dumps(dict(optimize_s=t1 - t0, first_request_s=t2 - t1, ttft_s=steps[-1].ttft_s, load_s=status.load_s,
                      cache_hit=status.cache_hit, runtime=status.runtime, fallbacks=status.fallbacks)))
"""
    return json_from_fresh_process(code, env={"AOTI_PROBE": "1"})


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="hf_eager,hf_static,ours_eager,ours_aoti,ours_aoti_graphs,ours_fp8",
                        help=f"of hf_eager, hf_static, ours_eager, {', '.join(VARIANT_RECIPES)}, warm_load")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cache", default=os.environ.get("AOTI_CACHE_DIR", "/tmp/aoti-bench-cache"))
    parser.add_argument("--budget-s", type=float, default=1e9)
    return parser.parse_args(argv)


def model_and_prompt(args: argparse.Namespace) -> tuple[str, torch.nn.Module, Any, str]:
    """The device, the random-weight model on it (bf16 on a GPU), a tokenizer, and a prompt of about
    ``args.prompt_tokens`` tokens."""
    from transformers import AutoTokenizer

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    model = build(args, device, torch.bfloat16 if device == "cuda" else torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(ASSETS / "tiny-llama-pydoc")  # any tokenizer: ids < its vocab
    return device, model, tokenizer, prompt_of(tokenizer, args.prompt_tokens)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device, model, tokenizer, prompt = model_and_prompt(args)
    dtype = model.dtype
    rec = Recorder(args.out, device)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    mean_context = ids.shape[1] + args.new_tokens // 2  # the KV cache a decode step reads, on average
    rec.meta.update(geometry={"config": "tiny" if args.tiny else "Qwen2.5-7B", "layers": args.layers,
                              "prompt_tokens": ids.shape[1], "new_tokens": args.new_tokens},
                    params_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3))
    if device == "cuda":
        rec.meta["copy_bandwidth_gbs"] = memory_bandwidth_gbs()
        step_bytes = decode_bytes(model, mean_context)
        rec.meta["floor_tokens_per_s"] = {"bf16": round(rec.meta["copy_bandwidth_gbs"] * 1e9 / step_bytes, 1)}
        rec.meta["decode_gb_per_token"] = round(step_bytes / 1e9, 3)
    rec.save()
    spec = ModelSpec(id="qwen2.5-7b-geometry", task="text", source="random-weights", params_b=rec.meta["params_b"],
                     dtype=str(dtype).removeprefix("torch."), compile_module="decoder",
                     max_new_tokens=args.new_tokens, max_prompt_tokens=ids.shape[1])
    cache = aoti.Cache(args.cache)
    os.environ.setdefault("AOTI_PROBE", "0")  # the crash probe's cost is measured in flux_step.py
    state: dict[str, Any] = {"text": None, "reference_logits": None}

    def run_one(name: str) -> None:
        if name == "hf_eager":
            rec.variant(name, hf_generate(model, ids, args.new_tokens, device))
        elif name == "hf_static":
            rec.variant(name, hf_generate(model, ids, args.new_tokens, device, cache_implementation="static"))
            torch._dynamo.reset()
        elif name == "ours_eager":
            text = state["text"] = TextModel(spec, device, model=model, tokenizer=tokenizer)
            state["reference_logits"] = prefill_and_step_logits(text, ids)
            rec.variant(name, ours(text, prompt, args.new_tokens, device, run=len(rec.variants)))
        elif name in VARIANT_RECIPES:
            text = state["text"] = state["text"] or TextModel(spec, device, model=model, tokenizer=tokenizer)
            if name in REPEATED_KV:
                model.set_attn_implementation("sdpa")
            else:
                use_gqa_decode_attention(model)
            before_gb = allocated_gb(device)
            t0 = time.perf_counter()
            status = text.optimize(VARIANT_RECIPES[name], cache, cuda_graphs=name != "ours_aoti")
            optimize_s = time.perf_counter() - t0
            memory = {"allocated_gb_before_optimize": before_gb, "allocated_gb_after_optimize": allocated_gb(device)}
            result = ours(text, prompt, args.new_tokens, device, run=len(rec.variants))
            if state["reference_logits"] is not None:
                logits = prefill_and_step_logits(text, ids)
                result["prefill_logits_rel_error_vs_eager"] = rel_error(logits[0], state["reference_logits"][0])
                result["decode_step_logits_rel_error_vs_eager"] = rel_error(logits[1], state["reference_logits"][1])
            if name.startswith("ours_fp8") and device == "cuda":
                fp8_bytes = decode_bytes(model, mean_context)
                rec.meta["floor_tokens_per_s"]["fp8_weights"] = round(rec.meta["copy_bandwidth_gbs"] * 1e9 / fp8_bytes, 1)
            rec.variant(name, result, **memory, optimize_s=round(optimize_s, 2), compile_s=status.compile_s, load_s=status.load_s,
                        runtime=status.runtime, reason=status.reason, fallbacks=status.fallbacks, graphs=status.graphs)
            keep_failed_sources(status.fallbacks, Path(args.out).parent, name)
            text.restore()
        elif name == "warm_load":
            rec.variant(name, warm_load_in_fresh_process(args))
        else:
            raise ValueError(f"unknown variant {name}")

    rec.run(args.variants.split(","), run_one, args.budget_s)


if __name__ == "__main__":
    main()

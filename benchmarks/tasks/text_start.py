"""A text model from a local Hugging Face cache through the product: its cold build and its warm start.

Qwen2.5-7B-Instruct's geometry with random weights is written into a Hub cache (`harness.hub_cache`),
found there by the registry's ``qwen2.5-7b-instruct``, loaded as the engine loads it (`engines.TextModel`
with the placement `engines.select.choose` makes here) and optimized with the app's recipe
(`engines.recipes.recipe_for`).

Variants, in this order:
  cold   this process, an empty AOTI cache: the load, then `optimize` stage by stage (transform and
         capture, export and build of each graph, the swap, the warm-up of the prompt buckets), then
         greedy tokens: time to first token and the decode rate
  warm   a fresh process with that cache: each mark from the process's start (imports, weights on the
         device, graphs bound and warmed, the first token), then the decode rate

    python -m benchmarks text-start --out results/text_start_h200.json      # GPU: 15 GB into --hf-home
    python -m benchmarks text-start --tiny --out /tmp/text_start.json       # CPU smoke run: the embedded model
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Recorder, json_from_fresh_process


class Marks:
    """Seconds from a start (the process's, for a warm start), by name; `stage` is an `aoti.OnStage`."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        self.seconds.setdefault(name, round(time.time() - self.t0, 2))

    def stage(self, stage: str, estimate_s: float | None = None) -> None:
        self(f"stage: {stage}")


def model_id(tiny: bool) -> str:
    return "tiny-llama-pydoc" if tiny else "qwen2.5-7b-instruct"


def load_and_optimize(tiny: bool, cache_dir: str, marks: Marks) -> tuple[Any, Any]:
    """The engine's load and optimize of the model, with ``marks`` at each step."""
    import aoti
    from engines import Studio, registry
    from engines.recipes import Switches, recipe_for
    from engines.select import choose
    from engines.text import TextModel

    marks("imported")
    studio = Studio(cache=aoti.Cache(cache_dir))
    spec = registry.get(model_id(tiny))
    decision = choose(spec, studio.device)
    model = TextModel(spec, studio.device.torch_device, without_draft="" if decision.draft else decision.reason)
    marks("loaded")
    status = model.optimize(recipe_for(spec, studio.device, Switches()), studio.engine.cache, on_stage=marks.stage)
    marks("optimized")
    return model, status


def first_request(model, marks: Marks, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    """Greedy tokens for a prompt of about ``prompt_tokens``: the first token's mark, then the rate."""
    from benchmarks.tasks.llm_decode import prompt_of
    from engines.text import SamplingParams

    prompt = prompt_of(model.tokenizer, prompt_tokens)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0, ignore_eos=True)
    steps = iter(model.generate(prompt, params))
    last = next(steps)
    marks("first_token")
    for last in steps:  # noqa: B007 (the last step holds the request's figures)
        pass
    again = list(model.generate(prompt, params))[-1]  # a second request: the steady rate
    return {"first_request_tokens_per_s": round(last.decode_tokens_per_s or 0, 1),
            "decode_tokens_per_s": round(again.decode_tokens_per_s or 0, 1), "ttft_ms": round(again.ttft_s * 1e3, 2)}


def status_numbers(status) -> dict[str, Any]:
    return {"runtime": status.runtime, "reason": status.reason, "cache_hit": status.cache_hit, "compile_s": status.compile_s,
            "load_s": status.load_s, "graphs": status.graphs, "cuda_graphs": status.cuda_graphs, "fallbacks": status.fallbacks}


def warm_start(args: argparse.Namespace) -> dict[str, Any]:
    """This (fresh) process: every mark from its start."""
    import psutil

    marks = Marks(psutil.Process().create_time())
    import torch  # noqa: F401

    marks("torch_imported")
    model, status = load_and_optimize(args.tiny, args.cache, marks)
    result = first_request(model, marks, args.prompt_tokens, args.new_tokens)
    return {"marks_s": marks.seconds, **status_numbers(status), **result}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="cold,warm")
    parser.add_argument("--tiny", action="store_true", help="the embedded model on the CPU (no Hub cache written)")
    parser.add_argument("--prompt-tokens", type=int, default=512)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--hf-home", default="/tmp/text-hf", help="the Hugging Face cache the model is written to")
    parser.add_argument("--cache", default="/tmp/aoti-text-start", help="the AOTI cache (emptied first when the cold build is timed)")
    parser.add_argument("--warm-start", action="store_true", help=argparse.SUPPRESS)  # the fresh process's side
    parser.add_argument("--budget-s", type=float, default=1e9)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ.update(HF_HOME=args.hf_home, HF_HUB_OFFLINE="1", AOTI_HUB_ALLOW="0")  # before huggingface_hub is imported
    if args.warm_start:
        print(json.dumps(warm_start(args)))
        return
    import torch

    from benchmarks.harness.hub_cache import snapshot_dir, write_qwen_7b

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    rec = Recorder(args.out, device)
    rec.meta.update(model=model_id(args.tiny), prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens)
    if "cold" in args.variants.split(","):
        shutil.rmtree(args.cache, ignore_errors=True)
    if not args.tiny and not snapshot_dir(Path(args.hf_home), "Qwen/Qwen2.5-7B-Instruct").joinpath("config.json").exists():
        rec.meta["write_s"] = round(write_qwen_7b(Path(args.hf_home), device), 1)

    def run_one(name: str) -> None:
        if name == "cold":
            marks = Marks(time.time())
            model, status = load_and_optimize(args.tiny, args.cache, marks)
            result = first_request(model, marks, args.prompt_tokens, args.new_tokens)
            rec.variant(name, {"marks_s": marks.seconds, **status_numbers(status), **result})
            del model
        elif name == "warm":
            command = ["--warm-start", "--out", "-", "--hf-home", args.hf_home, "--cache", args.cache,
                       "--prompt-tokens", str(args.prompt_tokens), "--new-tokens", str(args.new_tokens)]
            code = f"from benchmarks.tasks.text_start import main; main({[*command, *(['--tiny'] if args.tiny else [])]!r})"
            rec.variant(name, json_from_fresh_process(code, timeout=1800))
        else:
            raise ValueError(f"unknown variant {name}")

    rec.run(args.variants.split(","), run_one, args.budget_s)
    print(json.dumps(rec.variants, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()

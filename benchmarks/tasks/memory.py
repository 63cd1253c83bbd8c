"""GPU memory a text model holds at each stage of FP8 quantization, compilation and serving: are the
replaced bf16 weights really released, and what else stays allocated?

At each stage: `torch.cuda.memory_allocated()` after a garbage collection, and the CUDA tensors Python
can still reach, summed by dtype (what Python holds vs what only native code holds). Qwen2.5-7B
geometry with --layers layers (random weights), as in llm_decode.py.

    python -m benchmarks memory --layers 4 --out results.json
    python -m benchmarks memory --layers 4 --bf16-build-first --out results.json
    python -m benchmarks memory --tiny --out /tmp/mem.json     # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import warnings
import weakref
from typing import Any

import torch

import aoti
from benchmarks.common import Recorder
from benchmarks.tasks.llm_decode import model_and_prompt
from engines.recipes import Recipe, text_recipe
from engines.registry import ModelSpec
from engines.text import SamplingParams, TextModel


def reachable_gb(device: str) -> dict[str, float]:
    """GB of distinct tensor storages on ``device`` that Python objects still reference, by dtype."""
    storages: dict[int, tuple[str, int]] = {}
    with warnings.catch_warnings():  # touching every object trips deprecation warnings of some libraries
        warnings.simplefilter("ignore")
        for obj in gc.get_objects():
            try:
                if isinstance(obj, torch.Tensor) and obj.device.type == device and not obj.is_meta:
                    storage = obj.untyped_storage()
                    storages[storage.data_ptr()] = (str(obj.dtype).removeprefix("torch."), storage.nbytes())
            except Exception:  # noqa: S112 - some tensor subclasses refuse; they are not what we count
                continue
    by_dtype: dict[str, float] = {}
    for dtype, nbytes in storages.values():
        by_dtype[dtype] = by_dtype.get(dtype, 0.0) + nbytes / 1e9
    return {k: round(v, 6) for k, v in sorted(by_dtype.items())}


def holders(obj: object, depth: int = 4, skip: tuple = ()) -> list[str]:
    """What keeps ``obj`` alive: one chain of referrers per direct referrer, ``depth`` levels up
    (type names, with a dict's first keys), leaving out ``skip`` and this function's own frames."""
    import inspect

    chains: list[str] = []
    direct = gc.get_referrers(obj)
    ignored = {id(s) for s in skip} | {id(direct), id(chains)}
    for ref in direct:
        if id(ref) in ignored or inspect.isframe(ref):
            continue
        chain, current = [], ref
        for _ in range(depth):
            chain.append(type(current).__name__ + (f"{list(current)[:4]}" if isinstance(current, dict) else ""))
            up = gc.get_referrers(current)
            ignored.add(id(up))  # this list refers to ``current`` too
            up = [r for r in up if id(r) not in ignored and not inspect.isframe(r)]
            ignored.add(id(up))
            if not up:
                break
            current = up[0]
        chains.append(" <- ".join(chain))
    return chains[:8]


def snapshot(device: str) -> dict[str, Any]:
    gc.collect()
    result: dict[str, Any] = {"python_reachable_gb": reachable_gb(device)}
    if device == "cuda":
        torch.cuda.synchronize()
        result["allocated_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3)
        result["reserved_gb"] = round(torch.cuda.memory_reserved() / 1e9, 3)
    return result


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--bf16-build-first", action="store_true",
                        help="build and serve the bf16 model first (the text engine's preset), as llm_decode.py's variants do")
    parser.add_argument("--cache", default=os.environ.get("AOTI_CACHE_DIR", "/tmp/aoti-bench-cache"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device, model, tokenizer, prompt = model_and_prompt(args)
    rec = Recorder(args.out, device)
    n = tokenizer(prompt, return_tensors="pt").input_ids.shape[1]
    spec = ModelSpec(id="qwen2.5-7b-geometry", task="text", source="random-weights", compile_module="decoder",
                     max_new_tokens=args.new_tokens, max_prompt_tokens=n)
    text = TextModel(spec, device, model=model, tokenizer=tokenizer)
    del model
    rec.meta["layers"] = args.layers
    rec.variant("built_bf16", snapshot(device))
    os.environ.setdefault("AOTI_PROBE", "0")
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    if args.bf16_build_first:  # an FP8 build after a bf16 one kept the bf16 weights (BENCHMARKS.md, session 8)
        status = text.optimize(text_recipe(decode_kernels=device == "cuda", preset="decode"), aoti.Cache(args.cache))
        list(text.generate(prompt, params))
        text.restore()
        rec.variant("bf16_built_served_restored", {**snapshot(device), "runtime": status.runtime, "fallbacks": status.fallbacks})
    old = [weakref.ref(m.weight) for m in text.decoder.modules() if isinstance(m, torch.nn.Linear)]
    # FP8 as the text engine applies it (on the CPU smoke run: torch's reference `_scaled_mm`)
    fp8 = Recipe((aoti.FuseProjections(), aoti.Float8Rowwise(emulate=device == "cpu")), text_recipe().options)
    aoti.transform(text.decoder, fp8.transforms)
    gc.collect()
    alive = [r() for r in old if r() is not None]
    rec.variant("quantized", {**snapshot(device), "old_weights_alive": len(alive),
                              "holders_of_one": holders(alive[0], skip=(alive,), depth=14) if alive else []})
    del alive
    status = text.optimize(fp8, aoti.Cache(args.cache), cuda_graphs=False)
    rec.variant("compiled_applied", {**snapshot(device), "runtime": status.runtime, "fallbacks": status.fallbacks})
    list(text.generate(prompt, params))
    rec.variant("served", snapshot(device))
    text.restore()
    rec.variant("restored", snapshot(device))
    status = text.optimize(fp8, aoti.Cache(args.cache), cuda_graphs=device == "cuda")
    list(text.generate(prompt, params))
    rec.variant("served_cuda_graphs", {**snapshot(device), "cuda_graphs": status.cuda_graphs})
    rec.save()


if __name__ == "__main__":
    main()

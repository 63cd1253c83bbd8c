"""GPU check of the engines: the embedded text and image models on CUDA (bf16), eager vs AOTI through
the same `TextModel` / `ImageModel` code the app uses. Writes JSON.

    python -m benchmarks engines --out results.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import aoti
from engines import registry
from engines.device import discover
from engines.image import ImageModel, ImageParams
from engines.text import SamplingParams, TextModel

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")


def text_case(cache: aoti.Cache) -> dict:
    model = TextModel(registry.get("tiny-llama-pydoc"), "cuda")
    prompts = ["If the file", "Return the number of", "The socket module"]
    greedy = SamplingParams(max_new_tokens=100, temperature=0)

    def run(prompt: str) -> tuple[str, float, float]:
        steps = list(model.generate(prompt, greedy))
        last = steps[-1]
        return last.text, last.ttft_s, last.decode_tokens_per_s

    for p in prompts:
        run(p)  # warm-up
    eager = [run(p) for p in prompts]
    status = model.optimize(cache=cache)
    compiled = [run(p) for p in prompts]
    return {
        "status": status.to_dict(),
        "same_greedy_text": [a[0] == b[0] for a, b in zip(eager, compiled)],
        "eager_tokens_per_s": statistics.median(r[2] for r in eager),
        "aoti_tokens_per_s": statistics.median(r[2] for r in compiled),
        "eager_ttft_ms": statistics.median(r[1] for r in eager) * 1e3,
        "aoti_ttft_ms": statistics.median(r[1] for r in compiled) * 1e3,
        "live": aoti.status_of(model.decoder).to_dict(),
    }


def image_case(cache: aoti.Cache) -> dict:
    model = ImageModel(registry.get("tiny-shapes-unet"), "cuda")
    params = ImageParams(32, 32, steps=20, seed=0)
    model.generate("a red circle, top left", params)
    eager = [model.generate("a red circle, top left", params) for _ in range(3)]
    status = model.optimize(cache=cache)
    compiled = [model.generate("a red circle, top left", params) for _ in range(3)]
    diff = np.abs(np.asarray(eager[0].image, dtype=int) - np.asarray(compiled[0].image, dtype=int))
    return {
        "status": status.to_dict(),
        "eager_step_ms": statistics.median(statistics.median(r.step_ms) for r in eager),
        "aoti_step_ms": statistics.median(statistics.median(r.step_ms) for r in compiled),
        "max_pixel_diff": int(diff.max()), "mean_pixel_diff": float(diff.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", default="/tmp/aoti-gpu-engines")
    args = parser.parse_args(argv)
    info = discover()
    results = {"device": info.label, "capability": info.capability, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    cache = aoti.Cache(args.cache_dir)
    for name, case in (("text", text_case), ("image", image_case)):
        start = time.perf_counter()
        try:
            results[name] = {**case(cache), "wall_s": round(time.perf_counter() - start, 1)}
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(json.dumps(results[name], default=str)[:2000], flush=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

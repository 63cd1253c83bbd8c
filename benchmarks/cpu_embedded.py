"""CPU benchmark: the embedded default models eager vs AOTI, cold compile vs warm load, and regional
vs whole-model compile on a tiny FLUX transformer. Each variant is measured side by side in one run.

    python benchmarks/cpu_embedded.py --out benchmarks/results/cpu_embedded.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import aoti  # noqa: E402
from engines import registry  # noqa: E402
from engines.image import ImageModel, ImageParams  # noqa: E402
from engines.text import SamplingParams, TextModel  # noqa: E402
from tests import tiny  # noqa: E402


def text_bench(cache: aoti.Cache, tokens: int) -> dict:
    model = TextModel(registry.get("tiny-llama-pydoc"))
    params = SamplingParams(max_new_tokens=tokens, temperature=0)
    prompt = "If the file"

    def run() -> tuple[float, float, int]:
        steps = list(model.generate(prompt, params))
        last = steps[-1]
        return last.ttft_s, (last.tokens - 1) / (last.elapsed_s - last.ttft_s), last.tokens

    eager = [run() for _ in range(3)]
    start = time.perf_counter()
    status = model.optimize(cache=cache)
    cold = time.perf_counter() - start
    compiled = [run() for _ in range(3)]
    model.restore()
    start = time.perf_counter()
    warm_status = model.optimize(cache=cache)
    warm = time.perf_counter() - start
    return {
        "model": "tiny-llama-pydoc", "tokens": compiled[-1][2],
        "eager_tokens_per_s": statistics.median(r[1] for r in eager), "aoti_tokens_per_s": statistics.median(r[1] for r in compiled),
        "eager_ttft_ms": statistics.median(r[0] for r in eager) * 1e3, "aoti_ttft_ms": statistics.median(r[0] for r in compiled) * 1e3,
        "cold_optimize_s": cold, "compile_s": status.compile_s, "warm_optimize_s": warm, "warm_load_s": warm_status.load_s,
        "warm_cache_hit": warm_status.cache_hit,
    }


def image_bench(cache: aoti.Cache) -> dict:
    model = ImageModel(registry.get("tiny-shapes-unet"))
    params = ImageParams(32, 32, steps=20, seed=0)

    def run() -> float:
        return statistics.median(model.generate("a red circle, top left", params).step_ms)

    eager = statistics.median(run() for _ in range(3))
    start = time.perf_counter()
    status = model.optimize(cache=cache)
    cold = time.perf_counter() - start
    compiled = statistics.median(run() for _ in range(3))
    return {"model": "tiny-shapes-unet", "eager_step_ms": eager, "aoti_step_ms": compiled,
            "cold_optimize_s": cold, "compile_s": status.compile_s}


def regional_bench(cache: aoti.Cache, layers: int) -> dict:
    model = tiny.flux(num_layers=layers, num_single_layers=layers)
    with aoti.capture(model) as call, torch.no_grad():
        model(**tiny.flux_inputs())
    inputs = tiny.flux_inputs()
    with torch.no_grad():
        eager = model(**inputs)[0]
    results = {"model": f"tiny FLUX {layers}+{layers} blocks"}
    for name, options in (("whole", aoti.CompileOptions()), ("regional", aoti.CompileOptions(regional=True))):
        start = time.perf_counter()
        artifact = aoti.compile(model, call, options, cache=cache)
        results[f"{name}_compile_s"] = time.perf_counter() - start
        aoti.apply(artifact, model)
        with torch.no_grad():
            results[f"{name}_max_abs_diff"] = (model(**inputs)[0] - eager).abs().max().item()
        aoti.restore(model)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_embedded.json"))
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    cache = aoti.Cache(tempfile.mkdtemp(prefix="aoti-bench-"))  # cold: nothing compiled yet
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
        "text": text_bench(cache, args.tokens), "image": image_bench(cache), "regional": regional_bench(cache, args.layers),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

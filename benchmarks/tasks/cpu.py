"""CPU benchmark: the embedded default models eager vs AOTI, cold compile vs warm load, and regional
vs whole-model compile on a tiny FLUX transformer. Each variant is measured side by side in one run.

    python -m benchmarks cpu --out benchmarks/results/cpu_embedded.json
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

import aoti
from benchmarks.common import ROOT
from benchmarks.tasks.flux_step import build, make_inputs
from engines import registry
from engines.image import ImageModel, ImageParams
from engines.text import SamplingParams, TextModel


def text_bench(cache: aoti.Cache, tokens: int) -> dict:
    model = TextModel(registry.get("tiny-llama-pydoc"))
    params = SamplingParams(max_new_tokens=tokens, temperature=0)
    prompt = "If the file"

    def run() -> tuple[float, float, int]:
        steps = list(model.generate(prompt, params))
        last = steps[-1]
        return last.ttft_s, last.decode_tokens_per_s, last.tokens

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
    geometry = argparse.Namespace(tiny=True, double=layers, single=layers, image_tokens=16, text_tokens=8)
    model = build(geometry, "cpu", torch.float32)
    with aoti.capture(model) as call, torch.no_grad():
        model(**make_inputs(model, geometry, 0))
    inputs = make_inputs(model, geometry, 1)
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


_PROCESS = """
import json, sys, time
t0 = time.perf_counter()
import aoti
from benchmarks.common import ROOT
from benchmarks.tasks.flux_step import build, make_inputs
from engines import registry
from engines.text import SamplingParams, TextModel
model = TextModel(registry.get("tiny-llama-pydoc"))
if {aoti!r}:
    model.optimize(cache=aoti.Cache({cache!r}))
steps = list(model.generate("If the file", SamplingParams(max_new_tokens={tokens}, temperature=0)))
last = steps[-1]
print(json.dumps({{"first_token_after_start_s": time.perf_counter() - t0 - last.elapsed_s + last.ttft_s,
                   "runtime": model.status.runtime, "tokens": last.tokens}}))
"""


def process_bench(cache: aoti.Cache, tokens: int) -> dict:
    """Whole processes under `/usr/bin/time -v`: start Python, import, load the text model, (load its
    cached AOTI graphs,) generate. Wall time and peak RSS of the whole process."""
    import re
    import subprocess

    results = {}
    for name, use_aoti in (("eager", False), ("aoti_warm_cache", True)):
        code = _PROCESS.format(aoti=use_aoti, cache=str(cache.root), tokens=tokens)
        timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
        proc = subprocess.run([*timer, sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", proc.stderr)
        rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        if wall:
            h, m, sec = wall.groups()
            result["process_wall_s"] = int(h or 0) * 3600 + int(m) * 60 + float(sec)
        if rss:
            result["max_rss_mb"] = int(rss.group(1)) / 1024
        results[name] = result
    return results


def switch_bench(cache: aoti.Cache, rounds: int = 3) -> dict:
    """Switching between two cached models where only one fits (``max_loaded=1``, as on a small MIG
    slice): each switch unloads the other model, loads this one from disk, swaps in its cached AOTI
    graphs and serves a first output. Medians over ``rounds`` switches each way."""
    from engines.device import discover
    from engines.lightweight import LightweightEngine

    engine = LightweightEngine(discover(), cache, max_loaded=1)
    text_id, image_id = "tiny-llama-pydoc", "tiny-shapes-unet"
    first_output = {
        text_id: lambda: list(engine.generate_text(text_id, "If the file", SamplingParams(max_new_tokens=1, temperature=0))),
        image_id: lambda: engine.generate_image(image_id, "a red circle, top left", ImageParams(32, 32, 1)),
    }
    for model_id in (text_id, image_id):  # fill the cache (after text_bench/image_bench: hits)
        engine.optimize(model_id, background=False)
    times: dict[str, list[float]] = {text_id: [], image_id: []}
    for _ in range(rounds):
        for model_id in (text_id, image_id):
            start = time.perf_counter()
            state = engine.optimize(model_id, background=False)
            first_output[model_id]()
            assert state.phase == "aoti" and state.build.cache_hit, state
            times[model_id].append(time.perf_counter() - start)
    return {f"switch_to_{k}_s": statistics.median(v) for k, v in times.items()} | {"rounds": rounds, "max_loaded": 1}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu_embedded.json"))
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args(argv)
    cache = aoti.Cache(tempfile.mkdtemp(prefix="aoti-bench-"))  # cold: nothing compiled yet
    results = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads", "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"), "command": " ".join(["python", *sys.argv]),
        "text": text_bench(cache, args.tokens), "image": image_bench(cache), "regional": regional_bench(cache, args.layers),
    }
    results["process"] = process_bench(cache, args.tokens)  # after text_bench: the cache holds its graphs
    results["switch"] = switch_bench(cache)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

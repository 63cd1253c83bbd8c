"""Two GPUs: a text model above one card's (emulated) budget is routed by selection to the
tensor-parallel engine; greedy text and tokens/s compared with one GPU (both eager).

    AOTI_MEMORY_CAP_GB=0.003 python -m benchmarks tp --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import aoti
from engines import Studio, registry
from engines.device import discover
from engines.select import choose
from engines.text import SamplingParams, TextModel

PROMPTS = ["If the file", "Return the number of", "The socket module"]
GREEDY = SamplingParams(max_new_tokens=100, temperature=0)


def tokens_per_s(steps) -> float:
    return steps[-1].decode_tokens_per_s


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    model_id = "tiny-llama-pydoc"
    device = discover(apply_cap=False)  # the cap decides selection; it must not limit this process
    studio = Studio(device=device, cache=aoti.Cache("/tmp/aoti-tp"))
    decision = choose(registry.get(model_id), studio.device)
    result = {"device": device.label, "gpus": device.count, "cap_gb": os.environ.get("AOTI_MEMORY_CAP_GB"),
              "decision": {"engine": decision.engine, "reason": decision.reason}}
    start = time.perf_counter()
    tp_runs = [list(studio.generate_text(model_id, p, GREEDY)) for p in PROMPTS]  # first call starts the workers
    result["tp_first_request_s"] = round(time.perf_counter() - start, 2)
    tp_runs = [list(studio.generate_text(model_id, p, GREEDY)) for p in PROMPTS]
    result["runtime"] = studio.runtime_of(model_id)
    single = TextModel(registry.get(model_id), "cuda")
    eager = [list(single.generate(p, GREEDY)) for p in PROMPTS]
    eager = [list(single.generate(p, GREEDY)) for p in PROMPTS]
    result.update(
        same_greedy_text_as_one_gpu=[a[-1].text == b[-1].text for a, b in zip(tp_runs, eager)],
        tp2_tokens_per_s=statistics.median(map(tokens_per_s, tp_runs)),
        one_gpu_eager_tokens_per_s=statistics.median(map(tokens_per_s, eager)),
        sample=tp_runs[0][-1].text,
    )
    for engine in studio.distributed.values():
        engine.shutdown()
    result["workers_left"] = sum(len(e.processes) for e in studio.distributed.values())
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    torch.multiprocessing.set_start_method("spawn", force=True)
    main()

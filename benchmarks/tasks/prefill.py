"""Prefill latency of the embedded text model on CUDA, eager vs AOTI, per prompt length: first call
and the median of 10 warm calls (to locate the time-to-first-token gap seen in engines_roundtrip).

    python -m benchmarks prefill --out results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import aoti
from engines import registry
from engines.text import TextModel


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1e3


def measure(model: TextModel, lengths: list[int]) -> dict:
    out = {}
    for n in lengths:
        ids = torch.randint(0, 2000, (1, n), device="cuda")
        pos = torch.arange(n, device="cuda")
        def call(ids: torch.Tensor = ids, pos: torch.Tensor = pos) -> None:
            model.decoder(input_ids=ids, cache_position=pos)

        first = timed(call)
        warm = [timed(call) for _ in range(10)]
        out[n] = {"first_ms": round(first, 3), "warm_median_ms": round(statistics.median(warm), 3)}
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    lengths = [3, 5, 16, 64, 128]
    model = TextModel(registry.get("tiny-llama-pydoc"), "cuda")
    with torch.no_grad():
        measure(model, [4])
        eager = measure(model, lengths)
        status = model.optimize(cache=aoti.Cache("/tmp/aoti-prefill"))
        compiled = measure(model, lengths)
        decode_ids, decode_pos = torch.zeros(1, 1, dtype=torch.long, device="cuda"), torch.tensor([130], device="cuda")
        decode = statistics.median(timed(lambda: model.decoder(input_ids=decode_ids, cache_position=decode_pos)) for _ in range(20))
    result = {"device": torch.cuda.get_device_name(), "status": status.to_dict(), "eager": eager, "aoti": compiled,
              "aoti_decode_ms": round(decode, 3), "live": aoti.status_of(model.decoder).to_dict()}
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({"eager": eager, "aoti": compiled, "aoti_decode_ms": decode}, indent=1))


if __name__ == "__main__":
    main()

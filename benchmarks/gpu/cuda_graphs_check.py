"""AOTI decode step with and without CUDA-graph replay, on the embedded text model: greedy text must
be identical; tokens/s side by side (3 prompts, 100 tokens, second run of each).

    python benchmarks/gpu/cuda_graphs_check.py --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import aoti  # noqa: E402
from engines import registry  # noqa: E402
from engines.text import SamplingParams, TextModel  # noqa: E402

PROMPTS = ("If the file", "Return the number of", "The socket")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache", default="/tmp/aoti-bench-cache")
    args = parser.parse_args()
    params = SamplingParams(max_new_tokens=100, temperature=0, ignore_eos=True)
    out: dict = {}
    for graphs in (False, True):
        model = TextModel(registry.get("tiny-llama-pydoc"), "cuda")
        status = model.optimize(aoti.CompileOptions(), aoti.Cache(args.cache), cuda_graphs=graphs)
        runs = [[list(model.generate(p, params))[-1] for p in PROMPTS] for _ in range(2)][-1]
        out[str(graphs)] = {
            "texts": [r.text for r in runs],
            "tok_s": [round(r.decode_tokens_per_s, 1) for r in runs],
            "fallbacks": status.fallbacks,
        }
    out["same_text"] = out["False"]["texts"] == out["True"]["texts"]
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(out["same_text"], out["False"]["tok_s"], out["True"]["tok_s"], out["True"]["fallbacks"])


if __name__ == "__main__":
    main()

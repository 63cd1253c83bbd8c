"""GPU memory a text model holds at each stage of FP8 quantization, compilation and serving: are the
replaced bf16 weights really released, and what else stays allocated?

At each stage: `torch.cuda.memory_allocated()` after a garbage collection, and the CUDA tensors Python
can still reach, summed by dtype (what Python holds vs what only native code holds). Qwen2.5-7B
geometry with --layers layers (random weights), as in llm_decode.py.

    python benchmarks/gpu/quantized_memory.py --layers 4 --out results.json
    python benchmarks/gpu/quantized_memory.py --tiny --out /tmp/mem.json     # CPU smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import aoti  # noqa: E402
from aoti.quant import quantize  # noqa: E402
from benchmarks.common import Recorder  # noqa: E402
from benchmarks.gpu.llm_decode import model_and_prompt  # noqa: E402
from engines.registry import ModelSpec  # noqa: E402
from engines.text import SamplingParams, TextModel  # noqa: E402


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


def snapshot(device: str) -> dict[str, Any]:
    gc.collect()
    result: dict[str, Any] = {"python_reachable_gb": reachable_gb(device)}
    if device == "cuda":
        torch.cuda.synchronize()
        result["allocated_gb"] = round(torch.cuda.memory_allocated() / 1e9, 3)
        result["reserved_gb"] = round(torch.cuda.memory_reserved() / 1e9, 3)
    return result


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--cache", default=os.environ.get("AOTI_CACHE_DIR", "/tmp/aoti-bench-cache"))
    return parser.parse_args()


def main() -> None:
    args = parse()
    device, model, tokenizer, prompt = model_and_prompt(args)
    rec = Recorder(args.out, device)
    n = tokenizer(prompt, return_tensors="pt").input_ids.shape[1]
    spec = ModelSpec(id="qwen2.5-7b-geometry", task="text", source="random-weights", compile_module="decoder",
                     max_new_tokens=args.new_tokens, max_prompt_tokens=n)
    text = TextModel(spec, device, model=model, tokenizer=tokenizer)
    del model
    rec.meta["layers"] = args.layers
    rec.variant("built_bf16", snapshot(device))
    old = [weakref.ref(m.weight) for m in text.decoder.modules() if isinstance(m, torch.nn.Linear)]
    quantize(text.decoder, "fp8_rowwise")
    rec.variant("quantized", {**snapshot(device), "old_weights_alive": sum(r() is not None for r in old)})
    os.environ.setdefault("AOTI_PROBE", "0")
    status = text.optimize(aoti.CompileOptions(quantization="fp8_rowwise"), aoti.Cache(args.cache), cuda_graphs=False)
    rec.variant("compiled_applied", {**snapshot(device), "runtime": status.runtime, "fallbacks": status.fallbacks})
    params = SamplingParams(max_new_tokens=args.new_tokens, temperature=0, ignore_eos=True)
    list(text.generate(prompt, params))
    rec.variant("served", snapshot(device))
    text.restore()
    rec.variant("restored", snapshot(device))
    status = text.optimize(aoti.CompileOptions(quantization="fp8_rowwise"), aoti.Cache(args.cache), cuda_graphs=device == "cuda")
    list(text.generate(prompt, params))
    rec.variant("served_cuda_graphs", {**snapshot(device), "cuda_graphs": status.cuda_graphs})
    rec.save()


if __name__ == "__main__":
    main()

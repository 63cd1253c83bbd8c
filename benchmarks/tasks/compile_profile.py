"""Where an AOTI build's time goes: cProfile one `aoti.compile` of the FLUX.1-dev geometry.

    python -m benchmarks compile-profile --out-dir /tmp/prof --double 1 --single 1 --quantization fp8_rowwise
    python -m benchmarks compile-profile --tiny --out-dir /tmp/prof                 # CPU smoke run

Writes ``profile.txt`` (the top functions by cumulative and by own time) and ``phases.json`` (wall
time of quantization, export and the Inductor build, from the profile).
"""

from __future__ import annotations

import argparse
import cProfile
import faulthandler
import io
import json
import os
import pstats
import time
from pathlib import Path

import torch

import aoti
from benchmarks.tasks.flux_step import build, make_inputs

PHASES = {"quantize": "quant.py", "export": "export/__init__.py", "aot_compile": "_inductor/__init__.py"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--double", type=int, default=1)
    parser.add_argument("--single", type=int, default=1)
    parser.add_argument("--image-tokens", type=int, default=4096)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--quantization", default="none")
    parser.add_argument("--preset", default="default")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--stacks-every", type=float, default=60.0, help="print every thread's stack this often (s)")
    args = parser.parse_args(argv)
    faulthandler.dump_traceback_later(args.stacks_every, repeat=True)  # a build killed by a time limit still says where it was
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    if args.tiny:
        args.image_tokens, args.text_tokens = 64, 16
    model = build(args, device, torch.bfloat16 if device == "cuda" else torch.float32)
    with aoti.capture(model) as call, torch.no_grad():
        model(**make_inputs(model, args, 0))
    if args.quantization == "fp8_rowwise":
        aoti.transform(model, [aoti.Float8Rowwise()])
    options = aoti.CompileOptions(preset=args.preset)
    cache = aoti.Cache(Path(args.out_dir) / "cache")
    aoti.passes.toolchain.prepare_inductor()  # the once-per-machine checks are not what is profiled
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    artifact = aoti.compile(model, call, options, cache=cache)
    profiler.disable()
    faulthandler.cancel_dump_traceback_later()
    total = time.perf_counter() - start
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("cumulative").print_stats(60)
    stats.sort_stats("tottime").print_stats(30)
    (out / "profile.txt").write_text(text.getvalue())
    phases = {name: max((v[3] for k, v in stats.stats.items() if marker in k[0] and k[2] in ("quantize", "export", "aot_compile")), default=0.0)
              for name, marker in PHASES.items()}
    result = {"total_s": round(total, 2), "phases_s": {k: round(v, 2) for k, v in phases.items()},
              "options": options.to_dict(), "fallbacks": artifact.status.fallbacks, "device": device,
              "geometry": {"double": args.double, "single": args.single}}
    (out / "phases.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("AOTI_PROBE", "0")
    main()

"""The speedup the side panel shows first: each embedded model's compiled graphs timed against its
eager forward when they are bound (`aoti.measure_speedup`, through the app's own `Studio.startup`),
and how stable that figure is: the model's graphs bound again from the cache ``--repeats`` times, each
bind measuring afresh.

    python -m benchmarks load-speedup --out benchmarks/results/load_speedup_cpu.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

from benchmarks.common import Recorder

MODELS = ("tiny-llama-pydoc", "tiny-shapes-unet", "tiny-shapes-dit")


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks load-speedup", description=__doc__)
    parser.add_argument("--out", default="load_speedup.json")
    parser.add_argument("--repeats", type=int, default=5, help="binds from the cache, each measured")
    parser.add_argument("--budget-s", type=float, default=1.5, help="seconds each measurement may take (AOTI_MEASURE_S)")
    parser.add_argument("--cache", default=None, help="an AOTI cache folder (default: a fresh one)")
    parser.add_argument("--variants", default=",".join(MODELS))
    parser.add_argument("--tiny", action="store_true", help="(the embedded models are tiny already)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    os.environ["AOTI_MEASURE_S"] = str(args.budget_s)
    os.environ.setdefault("AOTI_COMPILE_RATE", "1000")  # every repeat is a compile request (a cache hit)
    import aoti
    from engines import Studio, Switches

    studio = Studio(cache=aoti.Cache(args.cache or tempfile.mkdtemp(prefix="aoti-load-speedup-")))
    rec = Recorder(args.out, studio.device.torch_device)
    rec.meta["budget_s"] = args.budget_s

    def run_one(model_id: str) -> None:
        studio.startup([model_id], background=False)  # the app's start: load, compile (or cache), bind, measure
        first = studio.states[model_id]
        binds = []
        for _ in range(args.repeats):  # bound again from the cache, as a restarted server or a switch back does
            studio.engine.set_eager(model_id)
            studio.set_optimization(model_id, Switches())
            studio.engine.wait(model_id)
            binds.append(studio.states[model_id].speed.measured)
        ratios = [m["ratio"] for m in binds if m]
        rec.variant(model_id, {
            "phase": str(first.phase), "compile_s": first.build.compile_s, "first": first.speed.measured, "binds": binds,
            "ratio_median": statistics.median(ratios) if ratios else None,
            "ratio_range": [min(ratios), max(ratios)] if ratios else None,
            "verdicts": [m["verdict"] for m in binds if m],
        })

    rec.run(args.variants.split(","), run_one)


if __name__ == "__main__":
    main()

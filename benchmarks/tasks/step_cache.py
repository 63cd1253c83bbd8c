"""Step caching's quality and speed where its thresholds mean something: the embedded DiT
(`tiny-shapes-dit`, a trained FLUX transformer), compiled as the app compiles it (regional), drawing
each of its labels at every level of `engines.image.STEP_CACHE`.

Per level: the steps reused, the image against the uncached one (PSNR, largest pixel difference),
whether it still shows its prompt (`engines.pipelines.shapes.draws`), and its time against the
uncached image's. The levels run interleaved, label by label (the order rotating), after a warm-up
of each, so a drift of the machine falls on all of them; the time ratio is a median over labels
with its 10th-90th percentile spread.

    python -m benchmarks step-cache --out benchmarks/results/step_cache_dit_cpu.json
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from benchmarks.common import Recorder


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="off,fast,faster", help="levels of engines.image.STEP_CACHE; 'off' first")
    parser.add_argument("--labels", type=int, default=60, help="how many of the model's labels to draw (all: 60)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cache", default=None, help="the AOTI cache (default: the app's)")
    parser.add_argument("--tiny", action="store_true", help="a smoke run: 4 labels (the model is tiny already)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.labels = min(args.labels, 4)
    return args


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else round(10 * math.log10(255**2 / mse), 1)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    import aoti
    from engines import registry
    from engines.device import discover
    from engines.image import ImageModel, ImageParams
    from engines.pipelines.shapes import draws
    from engines.recipes import default_switches, recipe_for

    levels = args.variants.split(",")
    if levels[0] != "off":
        raise SystemExit("--variants: 'off' first (the others are compared with it)")
    device = discover()
    rec = Recorder(args.out, device.torch_device)
    spec = registry.get("tiny-shapes-dit")
    model = ImageModel(spec, device.torch_device)
    status = model.optimize(recipe_for(spec, device, default_switches(spec)), aoti.Cache(args.cache))
    rec.meta.update(model=spec.id, runtime=status.runtime, build=status.reason, steps=args.steps)
    labels = model.pipe.labels[: args.labels]
    for level in levels:  # warm-up, apart
        model.generate(labels[0], ImageParams(32, 32, args.steps, seed=0, step_cache=level))
    runs: dict[str, list] = {level: [] for level in levels}
    for i, label in enumerate(labels):
        order = levels[i % len(levels):] + levels[: i % len(levels)]
        for level in order:
            runs[level].append(model.generate(label, ImageParams(32, 32, args.steps, seed=i, step_cache=level)))
    uncached = [np.asarray(r.image, dtype=np.float64) for r in runs["off"]]
    for level in levels:
        results = runs[level]
        ratios = [off.latency_s / r.latency_s for off, r in zip(runs["off"], results)]
        scores = [psnr(ref, np.asarray(r.image, dtype=np.float64)) for ref, r in zip(uncached, results)]
        finite = [s for s in scores if math.isfinite(s)]
        rec.variant(level, {
            "images": len(results),
            "steps_cached_mean": round(float(np.mean([len(r.cached_steps) for r in results])), 2),
            "drawn_recognisably": int(sum(draws(r.image, label) for r, label in zip(results, labels))),
            "identical_to_off": sum(not math.isfinite(s) for s in scores),
            "psnr_db_min": min(finite) if finite else math.inf,
            "psnr_db_median": round(float(np.median(finite)), 1) if finite else math.inf,
            "max_pixel_diff": int(max(np.abs(ref - np.asarray(r.image, dtype=np.float64)).max() for ref, r in zip(uncached, results))),
            "image_ms_median": round(1e3 * float(np.median([r.latency_s for r in results])), 2),
            "speedup_vs_off": round(float(np.median(ratios)), 3),
            "speedup_p10_p90": [round(float(np.percentile(ratios, 10)), 3), round(float(np.percentile(ratios, 90)), 3)],
        })
    rec.save()


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()

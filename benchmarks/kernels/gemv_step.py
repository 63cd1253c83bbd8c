"""The one-row products of a whole Qwen2.5-7B decode step, replayed as one CUDA graph: how close
`aoti.gemv` comes to the copy bandwidth when its kernels run back to back, as they do in the text
engine's decode graph, and which launch config each shape should use.

Per shape, a graph of 28 calls on 28 distinct weights (a decode step's calls of that shape; none of
them sits in L2) times every candidate config. Then the step (per layer: fused q/k/v with bias, o,
fused gate/up, down; and the LM head), 14.1 GB of bf16 weights, runs with `gemv.default_config` and
with the best config of each shape. (results/gpu_gemv_step_sweep*_h200.json also swept split-K, a
version of the kernel that gained at most 0.5 µs a call and was dropped.)

``--fused`` times the calls as `aoti.integrations.transformers` makes them: q/k/v and gate/up read their input
RMS-normalized, gate/up applies SiLU·mul to its row pairs, o and down add the residual.

    python -m benchmarks.kernels gemv-step --out results.json [--fp8] [--fused]
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch

from aoti.kernels import gemv
from aoti.kernels.fp8_rows import rowwise_fp8
from benchmarks.common import Recorder, graph_replay_ms, memory_bandwidth_gbs, rel_error

LAYERS = 28
# (name, out_features, in_features, has bias, calls per step)
# Swept in this order (the budget may end the sweep): the shapes furthest from the bandwidth first.
SHAPES = [("down", 3584, 18944, False, LAYERS), ("o", 3584, 3584, False, LAYERS), ("qkv", 4608, 3584, True, LAYERS),
          ("gate_up", 37888, 3584, False, LAYERS), ("lm_head", 152064, 3584, False, 1)]


def fusions(fused: bool, k: int, device: str = "cuda") -> dict[str, dict]:
    """Per shape, the extra `gemv.launch` arguments of a fused decoder layer's call (none unless ``fused``)."""
    if not fused:
        return {name: {} for name, *_ in SHAPES}
    norm = torch.rand(k, device=device, dtype=torch.bfloat16) + 0.5
    residual = torch.randn(k, device=device, dtype=torch.bfloat16)
    return {"qkv": {"norm_weight": norm}, "o": {"residual": residual}, "gate_up": {"norm_weight": norm, "glu": True},
            "down": {"residual": residual}, "lm_head": {}}


def reference(x, w, scale, bias, extra: dict) -> torch.Tensor:
    """The call's result in float32, computed without the kernel (the norm, SiLU·mul and residual of
    ``extra`` as `gemv.launch` documents them)."""
    xf = x.float()
    if extra.get("norm_weight") is not None:
        xf = xf * torch.rsqrt(xf.pow(2).mean() + 1e-6) * extra["norm_weight"].float()
    out = (w.float() @ xf) * (scale if scale is not None else 1) + (bias.float() if bias is not None else 0)
    if extra.get("glu"):
        out = torch.nn.functional.silu(out[0::2]) * out[1::2]
    return out + (extra["residual"].float() if extra.get("residual") is not None else 0)


def candidates(weight_bytes: int) -> list[gemv.GemvConfig]:
    """Tiles of 4–16 KB, 4 or 8 warps, 3 or 4 stages."""
    configs = []
    for bn, bk, warps, stages in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048, 4096), (4, 8), (3, 4)):
        tile = bn * bk * weight_bytes
        if 4096 <= tile <= 16384 and bk * weight_bytes <= 4096:
            configs.append(gemv.GemvConfig(bn, bk, warps, stages))
    return configs


def timing_row(ms: float, config: gemv.GemvConfig, calls: int, call_bytes: float, copy_gbs: float) -> dict:
    """One config's result (``ms`` for ``calls`` calls): µs per call, the weight bytes' rate, and that
    rate against the copy bandwidth."""
    us = ms * 1e3 / calls
    gbs = call_bytes / (us / 1e6) / 1e9
    return {"us_per_call": round(us, 2), "gbs": round(gbs, 1), "pct_of_copy": round(100 * gbs / copy_gbs, 1), **config.__dict__}


def calls_of(weights, x, config, extra):
    return [lambda w=w, s=s, b=b: gemv.launch(x, w, s, b, config=config, **extra) for w, s, b in weights]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gemv_step.json")
    parser.add_argument("--fp8", action="store_true", help="e4m3 weights scaled per row, instead of bf16")
    parser.add_argument("--fused", action="store_true", help="the calls of a fused decoder layer (norm, SiLU·mul, residual)")
    parser.add_argument("--shapes", default=",".join(name for name, *_ in SHAPES), help="the shapes to sweep")
    parser.add_argument("--budget-s", type=float, default=300, help="stop sweeping after this many seconds")
    args = parser.parse_args(argv)
    rec = Recorder(args.out, "cuda")
    copy_gbs = memory_bandwidth_gbs()
    rec.meta.update(copy_bandwidth_gbs=copy_gbs, weights="fp8" if args.fp8 else "bf16", layers=LAYERS, fused=args.fused)
    deadline = time.perf_counter() + args.budget_s
    torch.manual_seed(0)
    shapes = {}
    for name, n, k, has_bias, calls in SHAPES:
        weights = []
        for _ in range(calls):
            w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
            scale = None
            if args.fp8:
                w, scale = rowwise_fp8(w)
                scale = scale.reshape(-1).contiguous()
            bias = torch.randn(n, device="cuda", dtype=torch.bfloat16) if has_bias else None
            weights.append((w, scale, bias))
        x = torch.randn(k, device="cuda", dtype=torch.bfloat16)
        shapes[name] = (n, k, weights, x)
    extras = fusions(args.fused, 3584)
    nbytes = {name: sum(w.numel() * w.element_size() for w, _, _ in weights) for name, (_, _, weights, _) in shapes.items()}
    total_bytes = sum(nbytes.values())

    best = {}
    for name, (n, k, weights, x) in shapes.items():
        if name not in args.shapes.split(","):
            continue
        w, scale, bias = weights[0]
        extra = extras[name]
        default = gemv.default_config(n, k, w.element_size(), gemv.fusion_kind(extra.get("norm_weight"), extra.get("residual")))
        expected = reference(x, w, scale, bias, extra)
        assert rel_error(gemv.launch(x, w, scale, bias, config=default, **extra), expected) < 1e-2
        timings = {default: graph_replay_ms(calls_of(weights, x, default, extra))}
        for config in candidates(w.element_size()):
            if time.perf_counter() > deadline:
                break
            if config in timings or config.block_k > gemv.max_block_k(k):
                continue
            try:
                if extra.get("glu") and config.block_n == 1:
                    continue  # launched as block_n 2
                error = rel_error(gemv.launch(x, w, scale, bias, config=config, **extra), expected)
                assert error < 1e-2, f"{config}: error {error}"
                timings[config] = graph_replay_ms(calls_of(weights, x, config, extra))
            except Exception as exc:  # an infeasible tile (shared memory, registers) is skipped
                print(f"skip {name} {config}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        ranked = sorted(timings.items(), key=lambda item: item[1])
        best[name] = ranked[0][0]
        per_call = nbytes[name] / len(weights)
        rec.variant(name, {"n": n, "k": k, "mb_per_call": round(per_call / 1e6, 1), "configs_timed": len(timings),
                           "default": timing_row(timings[default], default, len(weights), per_call, copy_gbs),
                           "best": [timing_row(ms, c, len(weights), per_call, copy_gbs) for c, ms in ranked[:6]],
                           "all_us_per_call": [[timing_row(ms, c, len(weights), per_call, copy_gbs)["us_per_call"], *c.__dict__.values()]
                                               for c, ms in ranked]})
        print(name, rec.variants[name]["default"], rec.variants[name]["best"][:2], flush=True)

    step = {}
    for label, table in (("default", {name: None for name in shapes}), ("best", {name: None for name in shapes} | best)):
        calls = []
        for layer in range(LAYERS):
            for name in ("qkv", "o", "gate_up", "down"):
                n, k, weights, x = shapes[name]
                w, s, b = weights[layer]
                calls.append(lambda w=w, s=s, b=b, x=x, c=table[name], e=extras[name]: gemv.launch(x, w, s, b, config=c, **e))
        n, k, weights, x = shapes["lm_head"]
        calls.append(lambda w=weights[0][0], s=weights[0][1], x=x, c=table["lm_head"]: gemv.launch(x, w, s, None, config=c))
        ms = graph_replay_ms(calls)
        step[label] = {"ms": round(ms, 4), "gbs": round(total_bytes / (ms / 1e3) / 1e9, 1),
                       "pct_of_copy": round(100 * total_bytes / (ms / 1e3) / 1e9 / copy_gbs, 1)}
    step["floor_ms"] = round(total_bytes / (copy_gbs * 1e9) * 1e3, 4)
    step["gb"] = round(total_bytes / 1e9, 3)
    rec.meta["step"] = step
    print("step", step, flush=True)
    rec.save()


if __name__ == "__main__":
    main()

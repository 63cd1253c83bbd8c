"""One-row matrix products at Qwen2.5-7B's shapes: cuBLAS, Inductor's tuned reduction ("decode"
preset), `_scaled_mm` FP8 and `aoti.gemv` (bf16 and FP8 weights), with a sweep of launch configs.

Each time is Triton's `do_bench` median with the L2 cache flushed before every call (the weights of
a decode step never sit in L2). GB/s counts the weight bytes read. The per-step sum weighs each shape
by how often a 28-layer decode step runs it (q, k, v, o, gate, up, down per layer, and the LM head).

    python -m benchmarks.kernels gemv --out results.json
"""

from __future__ import annotations

import argparse
import functools
import itertools
import time

import torch
import torch.nn.functional as F

from aoti.kernels import gemv
from aoti.kernels.fp8_rows import rowwise_fp8
from benchmarks.common import Recorder, memory_bandwidth_gbs, rel_error

# (name, out_features, in_features, calls per 28-layer decode step)
SHAPES = [("q", 3584, 3584, 28), ("k_or_v", 512, 3584, 56), ("o", 3584, 3584, 28), ("gate_or_up", 18944, 3584, 56),
          ("down", 3584, 18944, 28), ("lm_head", 152064, 3584, 1), ("qkv_fused", 4608, 3584, 0),
          ("gate_up_fused", 37888, 3584, 0), ("flux_modulation", 18432, 3072, 0)]


def sweep_configs(weight_bytes: int) -> list[gemv.GemvConfig]:
    configs = []
    for bn, bk, warps, stages in itertools.product((1, 2, 4, 8, 16), (256, 512, 1024, 2048), (4, 8), (1, 3, 4)):
        tile_bytes = bn * bk * weight_bytes
        if 2048 <= tile_bytes <= 16384 and bk * weight_bytes >= 512 * warps // 4 and bk * weight_bytes <= 4096:
            configs.append(gemv.GemvConfig(bn, bk, warps, stages))
    return configs


def bench(fn) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40, return_mode="median")


def gbs(ms: float, nbytes: int) -> float:
    return round(nbytes / (ms / 1e3) / 1e9, 1)


def measure_shape(n: int, k: int, calls: int, inductor, deadline: float) -> dict:
    """Every method on one ``(n, k)`` weight, and the sweep of kernel configs (until ``deadline``)."""
    x = torch.randn(k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    w8, scale = rowwise_fp8(w)
    scale_col = scale.reshape(-1).contiguous()
    x8, xs = rowwise_fp8(x[None])
    result = {"n": n, "k": k, "calls_per_step": calls,
              "cublas_ms": bench(functools.partial(F.linear, x[None], w)),
              "inductor_decode_ms": bench(functools.partial(inductor, x[None], w)),
              "scaled_mm_fp8_ms": bench(functools.partial(torch._scaled_mm, x8, w8.t(), scale_a=xs, scale_b=scale.reshape(1, -1),
                                                          out_dtype=torch.bfloat16, use_fast_accum=True))}
    bf16_bytes, fp8_bytes = n * k * 2, n * k
    references = {"bf16": w.float() @ x.float(), "fp8": (w8.float() @ x.float()) * scale_col}
    for label, weight, sc, nbytes in (("bf16", w, None, bf16_bytes), ("fp8", w8, scale_col, fp8_bytes)):
        result[f"gemv_{label}_rel_error"] = rel_error(gemv.launch(x, weight, sc), references[label])
        result[f"gemv_{label}_default_ms"] = bench(functools.partial(gemv.launch, x, weight, sc))
        result[f"gemv_{label}_default_gbs"] = gbs(result[f"gemv_{label}_default_ms"], nbytes)
        timings = []
        for config in sweep_configs(weight.element_size()):
            if time.perf_counter() > deadline:
                break
            try:
                timings.append((bench(functools.partial(gemv.launch, x, weight, sc, config=config)), config))
            except Exception as exc:  # an infeasible tile (shared memory) is skipped
                print(f"skip {config}: {type(exc).__name__}", flush=True)
        timings.sort(key=lambda t: t[0])
        result[f"gemv_{label}_best"] = [{"ms": round(ms, 4), "gbs": gbs(ms, nbytes), **c.__dict__} for ms, c in timings[:5]]
    for key in ("cublas", "inductor_decode"):
        result[f"{key}_gbs"] = gbs(result[f"{key}_ms"], bf16_bytes)
    result["scaled_mm_fp8_gbs"] = gbs(result["scaled_mm_fp8_ms"], fp8_bytes)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gemv.json")
    parser.add_argument("--budget-s", type=float, default=360)
    parser.add_argument("--shapes", default=",".join(s[0] for s in SHAPES))
    args = parser.parse_args(argv)
    rec = Recorder(args.out, "cuda")
    rec.meta["copy_bandwidth_gbs"] = memory_bandwidth_gbs()
    started = time.perf_counter()
    torch.manual_seed(0)
    inductor = torch.compile(F.linear, options={"coordinate_descent_tuning": True, "max_autotune_gemm_backends": "ATEN"})
    wanted = args.shapes.split(",")
    deadline = started + args.budget_s
    for name, n, k, calls in SHAPES:
        if name in wanted:
            rec.variant(name, measure_shape(n, k, calls, inductor, deadline))
    step = {}
    for key in ("cublas_ms", "inductor_decode_ms", "scaled_mm_fp8_ms", "gemv_bf16_default_ms", "gemv_fp8_default_ms"):
        step[key] = round(sum(v[key] * v["calls_per_step"] for v in rec.variants.values() if key in v), 3)
    for label in ("bf16", "fp8"):
        step[f"gemv_{label}_best_ms"] = round(sum(v[f"gemv_{label}_best"][0]["ms"] * v["calls_per_step"]
                                                  for v in rec.variants.values() if v.get(f"gemv_{label}_best")), 3)
    rec.meta["per_28_layer_step"] = step
    print("per step", step, flush=True)
    rec.save()


if __name__ == "__main__":
    main()

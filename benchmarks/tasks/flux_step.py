"""One FLUX.1-dev denoising step, side by side: eager, torch.compile and AOTI variants.

FLUX.1-dev transformer geometry (full width: 24 heads x 128, joint dim 4096), reduced depth (default
4 double + 8 single blocks of the real 19 + 38), 1024x1024 (4096 image + 512 text tokens), bf16,
batch 1, random weights. Every variant runs in this one process on the same module and is checked
against eager on a fresh input. Results are written after each variant (a killed run keeps them).

    python -m benchmarks flux-step --out results.json --variants eager,aoti,aoti_cudnn,compile,regional
    python -m benchmarks flux-step --tiny --out /tmp/flux.json     # CPU smoke run

Variants: eager, compile (torch.compile default), compile_max (max-autotune-no-cudagraphs),
compile_cudagraphs (reduce-overhead), aoti (our default), aoti_graphs (aoti replayed as a CUDA
graph), aoti_cudnn (cuDNN attention), aoti_max (max-autotune preset), regional (one package per block
signature), fp8 (FP8 linears and the fused q/k norm + rotary kernel: AOTI, then the same module
eager), fp8_graphs (fp8 replayed as a CUDA graph), and FP8 replayed as CUDA graphs with one change
each: fp8_attention_graphs (FP8 attention too), fp8_two_pass_graphs (`one_pass_rows=False`),
fp8_inductor_rope_graphs (no `FuseFluxNormRope`: Inductor's q/k norm and rotary kernels),
fp8_tuned_graphs (preset "tuned"). Every variant starts from the bf16 module (`aoti.restore`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import torch

import aoti
from benchmarks.common import (
    Recorder,
    back_to_back_ms,
    cuda_peak_tflops,
    json_from_fresh_process,
    kernel_profile,
    measure,
    rel_error,
)

FULL = dict(patch_size=1, in_channels=64, attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
            pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
TINY = dict(patch_size=1, in_channels=16, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
            pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6))


def build(args: argparse.Namespace, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import FluxTransformer2DModel

    config = TINY if args.tiny else FULL
    torch.manual_seed(0)  # the same random weights in every process
    with torch.device(device):
        model = FluxTransformer2DModel(num_layers=args.double, num_single_layers=args.single, **config)
    return model.to(dtype).eval().requires_grad_(False)


def make_inputs(model: torch.nn.Module, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    cfg, device, dtype = model.config, model.device, model.dtype
    g = torch.Generator(device).manual_seed(seed)
    return dict(
        hidden_states=torch.randn(1, args.image_tokens, cfg.in_channels, generator=g, device=device).to(dtype),
        encoder_hidden_states=torch.randn(1, args.text_tokens, cfg.joint_attention_dim, generator=g, device=device).to(dtype),
        pooled_projections=torch.randn(1, cfg.pooled_projection_dim, generator=g, device=device).to(dtype),
        timestep=torch.tensor([0.5], device=device, dtype=dtype),
        img_ids=torch.randn(args.image_tokens, 3, generator=g, device=device).to(dtype),
        txt_ids=torch.zeros(args.text_tokens, 3, device=device, dtype=dtype),
        guidance=torch.tensor([3.5], device=device, dtype=dtype),
        return_dict=False,
    )


def step_flops(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[str, float]:
    """FLOPs of one step, split into matmuls and attention (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(**inputs)
    per_op = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    attention = sum(n for op, n in per_op.items() if "attention" in op)
    return {"total_tflop": sum(per_op.values()) / 1e12, "attention_tflop": attention / 1e12,
            "matmul_tflop": (sum(per_op.values()) - attention) / 1e12}


def aoti_variant(model, call, options, cache, check, rec: Recorder, name: str, probe: bool = False,
                 cuda_graphs: bool = False, transforms: tuple = ()) -> None:
    """Transform, compile (or load), crash-probe only if asked (it costs a fresh CUDA process), apply
    (replaying the step as a CUDA graph if asked), measure."""
    aoti.restore(model)
    aoti.transform(model, transforms)
    t0 = time.perf_counter()
    artifact = aoti.compile(model, call, options, cache=cache)
    built = time.perf_counter() - t0
    os.environ["AOTI_PROBE"] = "1" if probe else "0"
    t0 = time.perf_counter()
    with ChildWatcher() as children:
        verdict = aoti.verify_loadable(artifact)
    probe_s = time.perf_counter() - t0
    status = aoti.apply(artifact, model, cuda_graphs=cuda_graphs)
    rec.variant(name, check(model), compile_s=round(built, 2), probe_s=round(probe_s, 2), probe=verdict[1],
                probe_children=children.seen, load_s=status.load_s, runtime=status.runtime, reason=status.reason,
                fallbacks=status.fallbacks, key=status.key, cuda_graphs=status.cuda_graphs,
                graph_kernels=kernel_names(artifact) if probe else None)


class ChildWatcher:
    """Which programs this process starts meanwhile (is the crash probe compiling something?)."""

    def __enter__(self) -> ChildWatcher:
        import threading

        import psutil

        self.seen: dict[str, float] = {}
        self._stop = threading.Event()

        def poll() -> None:
            me, start = psutil.Process(), time.perf_counter()
            while not self._stop.wait(0.25):
                for child in me.children(recursive=True):
                    try:
                        name = " ".join(child.cmdline())[:120]
                    except psutil.Error:
                        continue
                    self.seen.setdefault(name, round(time.perf_counter() - start, 2))

        self._thread = threading.Thread(target=poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def kernel_names(artifact: aoti.Artifact) -> list[str]:
    """Extern kernels the wrapper calls (which attention kernel was chosen, for one)."""
    import re

    source = artifact.wrapper_source()
    return sorted(set(re.findall(r"aoti_torch_cuda_(\w+)\(", source)) | set(re.findall(r"aoti_torch_cpu_(\w+)\(", source)))


def warm_load_in_fresh_process(args: argparse.Namespace, options: aoti.CompileOptions, cache_dir: str) -> dict[str, Any]:
    """Time a cache hit in a new process: build the module (random weights, not timed), capture,
    compile (= cache lookup) and apply."""
    code = f"""
import json, sys, time, torch
sys.argv = {["flux_step.py", *sys.argv[1:]]!r}
import aoti
from benchmarks.tasks.flux_step import build, make_inputs, parse
args = parse()
model = build(args, "cuda", torch.bfloat16)
torch.cuda.synchronize()
t0 = time.perf_counter()
with aoti.capture(model) as call, torch.no_grad():
    model(**make_inputs(model, args, 0))
t1 = time.perf_counter()
artifact = aoti.compile(model, call, aoti.CompileOptions.from_dict(json.loads({options.to_json()!r})), cache=aoti.Cache({cache_dir!r}))
status = aoti.apply(artifact, model)
with torch.no_grad():
    model(**make_inputs(model, args, 1)); torch.cuda.synchronize()
t2 = time.perf_counter()
print(json.dumps(dict(capture_s=t1 - t0, lookup_apply_first_step_s=t2 - t1, load_s=status.load_s, cache_hit=status.cache_hit, runtime=status.runtime)))
"""
    return json_from_fresh_process(code)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="eager,aoti,aoti_cudnn,compile,regional")
    parser.add_argument("--double", type=int, default=4)
    parser.add_argument("--single", type=int, default=8)
    parser.add_argument("--image-tokens", type=int, default=4096)
    parser.add_argument("--text-tokens", type=int, default=512)
    parser.add_argument("--iters", type=int, default=15)
    parser.add_argument("--tiny", action="store_true", help="tiny width (CPU smoke run)")
    parser.add_argument("--cache", default=os.environ.get("AOTI_CACHE_DIR", "/tmp/aoti-bench-cache"))
    parser.add_argument("--warm-load", action="store_true", help="time a cache hit in a fresh process")
    parser.add_argument("--budget-s", type=float, default=1e9, help="skip variants once this much time is spent")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if args.tiny:
        args.image_tokens, args.text_tokens = min(args.image_tokens, 64), min(args.text_tokens, 16)
    rec = Recorder(args.out, device)
    model = build(args, device, dtype)
    rec.meta.update(geometry={"double_blocks": args.double, "single_blocks": args.single, "image_tokens": args.image_tokens,
                              "text_tokens": args.text_tokens, "width": "tiny" if args.tiny else "FLUX.1-dev"},
                    params_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3))
    with torch.no_grad():
        reference_inputs = make_inputs(model, args, 1)
        reference = model(**reference_inputs)[0].float()
        if device == "cuda":  # a float32 run of the same weights: how far is each variant from exact?
            exact = model.float()(**{k: v.float() if torch.is_tensor(v) else v for k, v in reference_inputs.items()})[0]
            model.to(dtype)

    def error_vs_fp32(out: torch.Tensor) -> dict[str, float]:
        return {"rel_error_vs_fp32": rel_error(out, exact)} if device == "cuda" else {}

    def check(fn) -> dict[str, Any]:
        with torch.no_grad():
            out = fn(**reference_inputs)[0].float()
            timing = measure(lambda: fn(**make_inputs(model, args, 2)), device, iters=args.iters)
        gpu = {"back_to_back_ms": back_to_back_ms(lambda: fn(**reference_inputs)),
               "profile": kernel_profile(lambda: fn(**reference_inputs), calls=3)} if device == "cuda" else {}
        return {**timing, "rel_error_vs_eager": rel_error(out, reference), **error_vs_fp32(out), **gpu}

    rec.meta["flops"] = step_flops(model, reference_inputs)
    if device == "cuda":
        rec.meta["peak_tflops"] = cuda_peak_tflops()
        floor = rec.meta["flops"]["total_tflop"] / rec.meta["peak_tflops"]["bf16"] * 1e3
        fp8_floor = (rec.meta["flops"]["matmul_tflop"] / rec.meta["peak_tflops"]["fp8"]
                     + rec.meta["flops"]["attention_tflop"] / rec.meta["peak_tflops"]["bf16"]) * 1e3
        rec.meta["floor_ms"] = {"bf16": round(floor, 2), "fp8_matmuls": round(fp8_floor, 2)}
    rec.save()

    with aoti.capture(model) as call, torch.no_grad():
        model(**make_inputs(model, args, 0))
    cache = aoti.Cache(args.cache)

    def clean_up() -> None:
        aoti.restore(model)
        torch._dynamo.reset()

    rec.run(args.variants.split(","), lambda name: run_variant(name, model, call, cache, check, rec, args, device),
            args.budget_s, after=clean_up)


# The app's FLUX recipe with FP8 on a GPU (`engines.recipes.image_recipe(fp8=True, flux_attention=True)`),
# with cuDNN attention pinned.
FP8 = aoti.CompileOptions(attention="cudnn")
FP8_TRANSFORMS = (aoti.FuseFluxNormRope(), aoti.Float8Rowwise())
FP8_GRAPH_VARIANTS = {  # name -> (transforms, option changes) against FP8 (all replayed as CUDA graphs)
    "fp8_attention_graphs": ((aoti.FuseFluxNormRope(fp8_attention=True), aoti.Float8Rowwise()), {"attention": "fp8"}),
    "fp8_two_pass_graphs": (FP8_TRANSFORMS, {"one_pass_rows": False}),  # Inductor's looping reductions of wide rows
    "fp8_inductor_rope_graphs": ((aoti.Float8Rowwise(),), {}),  # q/k norms and rotary embedding by Inductor
    "fp8_tuned_graphs": (FP8_TRANSFORMS, {"preset": "tuned"}),  # Inductor's kernels tuned by coordinate descent
}


def run_variant(name, model, call, cache, check, rec, args, device) -> None:
    if name == "eager":
        rec.variant(name, check(model))
    elif name.startswith("compile"):
        mode = {"compile": None, "compile_max": "max-autotune-no-cudagraphs", "compile_cudagraphs": "reduce-overhead"}[name]
        compiled = torch.compile(model, mode=mode)
        t0 = time.perf_counter()
        with torch.no_grad():
            compiled(**make_inputs(model, args, 0))
        first = time.perf_counter() - t0
        rec.variant(name, check(compiled), compile_s=round(first, 2))
    elif name in ("aoti", "aoti_graphs", "aoti_cudnn", "aoti_max", "regional"):
        options = {"aoti": aoti.CompileOptions(), "aoti_graphs": aoti.CompileOptions(),
                   "aoti_cudnn": aoti.CompileOptions(attention="cudnn"),
                   "aoti_max": aoti.CompileOptions(attention="cudnn", preset="max-autotune"),
                   "regional": aoti.CompileOptions(attention="cudnn", regional=True)}[name]
        aoti_variant(model, call, options, cache, check, rec, name, probe=name == "aoti", cuda_graphs=name == "aoti_graphs")
        if name == "aoti" and args.warm_load and device == "cuda":
            rec.variant("aoti_warm_load_fresh_process", warm_load_in_fresh_process(args, options, str(cache.root)))
    elif name == "fp8":  # FP8 compiled, then the same FP8 module eager
        aoti_variant(model, call, FP8, cache, check, rec, "fp8_aoti", transforms=FP8_TRANSFORMS)
        with aoti.eager(model):
            rec.variant("fp8_eager", check(model))
    elif name == "fp8_graphs":  # the fp8 package (a cache hit after "fp8"), replayed as a CUDA graph
        aoti_variant(model, call, FP8, cache, check, rec, name, cuda_graphs=True, transforms=FP8_TRANSFORMS)
    elif name in FP8_GRAPH_VARIANTS:  # FP8 matmuls, CUDA-graph replay, and one change
        transforms, changes = FP8_GRAPH_VARIANTS[name]
        aoti_variant(model, call, FP8.replace(**changes), cache, check, rec, name, cuda_graphs=True, transforms=transforms)
    else:
        raise ValueError(f"unknown variant {name}")


if __name__ == "__main__":
    main()

"""The whole FLUX.1-dev image through the product: every component at its real size with random
weights (CLIP-L and T5-XXL text encoders, the 19 + 38 block transformer, the VAE), saved into a local
Hugging Face cache as the Hub would leave it, found there by the registry's ``flux.1-dev``, loaded by
`engines.ImageModel` with the placement `engines.select.choose` makes for this device, optimized with
the recipe the app uses here (`engines.recipes.recipe_for`: FP8 weights, FLUX's fused norm + rotary
kernel, FP8 attention, regional compile, the whole step replayed as one CUDA graph on a GPU)
and timed end to end, stage by stage.

Variants, in this order, on the one loaded pipeline:
  eager  bf16 end to end
  ours   the app's recipe: the cold build (an empty cache) timed, then the image
  warm   a fresh process with the cache warm: process start to the first denoising step and to the image
  cached_40, cached_60   the app's build with step caching (`aoti.step_cache`) at a fixed schedule: that share
         of the steps reuses the blocks' residual (random weights make a threshold meaningless; the
         thresholds' quality is measured on the embedded DiT); the cached and the full step's times apart
  lora_eager  eager bf16 with a random rank-16 adapter fused into every linear layer of the blocks
         (`aoti.fuse_lora`): the first fuse, a switch to a second adapter and the unfuse timed, and the image
  lora   the same on the 'ours' build (FP8: the adapted layers quantized again), its image against lora_eager's
  ours_launches  the 'ours' build bound again with its blocks launched one by one (no CUDA graph of the step)
  ours_sdpa  the app's recipe with PyTorch's bf16 attention kernel instead of FP8 attention (a rebuild)
  peer_bf16  diffusers' `compile_repeated_blocks` (torch.compile per block), bf16 (also on the CPU, for --tiny)
  peer   torchao FP8 (dynamic row-wise) + `compile_repeated_blocks`, where torchao is installed; the
         peers rewrite the transformer, so they run last

Each image is compared with eager's (same prompt and seed): the largest pixel difference and PSNR.

    python -m benchmarks flux-image --out results/flux_image_h200.json          # GPU: ~34 GB into --hf-home
    python -m benchmarks flux-image --tiny --out /tmp/flux_image.json            # CPU smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import Recorder, json_from_fresh_process
from benchmarks.harness.hub_cache import TOKENIZER, new_snapshot, snapshot_dir

REPO = "black-forest-labs/FLUX.1-dev"
PROMPT = "a photo of a red fox in the snow, golden hour"

# FLUX.1-dev's components (their configs on the Hub), and a toy of each for the CPU smoke run.
FULL = {
    "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                        num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                        axes_dims_rope=(16, 56, 56)),
    "clip": dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", eos_token_id=2),
    "t5": dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
               feed_forward_proj="gated-gelu", relative_attention_num_buckets=32),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
                sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
    "t5_tokens": 512,
}
TINY = {
    "transformer": dict(patch_size=1, in_channels=16, num_layers=1, num_single_layers=2, attention_head_dim=16,
                        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                        axes_dims_rope=(4, 6, 6)),
    "clip": dict(vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=32, eos_token_id=2),
    "t5": dict(vocab_size=2048, d_model=32, d_kv=16, d_ff=64, num_layers=1, num_heads=2),
    "vae": dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4,
                scaling_factor=0.3611, shift_factor=0.1159),
    "t5_tokens": 64,
}


def write_pipeline(hf_home: Path, geometry: dict[str, Any], device: str) -> float:
    """FLUX.1-dev's pipeline with random weights in ``hf_home``'s Hub cache (built on ``device``:
    initializing 17 B parameters on a CPU takes long). The tokenizers are the embedded text model's
    (none can be downloaded here; its ids are below both vocabularies; CLIP's eos_token_id=2 takes the
    pooled output at the last real token, as CLIP's own tokenizer gives it). Returns the seconds it took."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    start = time.perf_counter()
    snapshot = new_snapshot(hf_home, REPO)
    torch.manual_seed(0)
    with torch.device("meta"):
        modules = {
            "transformer": FluxTransformer2DModel(**geometry["transformer"]),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**geometry["clip"])),
            "text_encoder_2": T5EncoderModel(T5Config(**geometry["t5"])),
            "vae": AutoencoderKL(**geometry["vae"]),
        }
    for name, module in modules.items():
        module = modules[name] = module.to_empty(device=device).to(torch.bfloat16)
        with torch.no_grad():
            for pname, p in [*module.named_parameters(), *module.named_buffers()]:
                if pname.endswith("bias"):
                    p.zero_()
                elif p.dim() == 1 and p.is_floating_point():  # norms' scales
                    p.fill_(1.0)
                elif p.is_floating_point():
                    p.normal_(0, 0.02)
            for bname, buffer in module.named_buffers():  # position ids: a buffer to_empty left unset
                if bname.endswith("position_ids"):
                    buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    tokenizers = []
    for length in (geometry["clip"]["max_position_embeddings"], geometry["t5_tokens"]):
        tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
        tokenizer.pad_token, tokenizer.model_max_length = tokenizer.eos_token, length
        tokenizers.append(tokenizer)
    scheduler = FlowMatchEulerDiscreteScheduler(base_image_seq_len=256, base_shift=0.5, max_image_seq_len=4096, max_shift=1.15,
                                                shift=3.0, use_dynamic_shifting=True)
    pipe = FluxPipeline(scheduler=scheduler, tokenizer=tokenizers[0], tokenizer_2=tokenizers[1], **modules)
    pipe.save_pretrained(str(snapshot))
    del pipe, modules
    if device == "cuda":
        torch.cuda.empty_cache()
    return time.perf_counter() - start


def spec_for(size: int, steps: int, tiny: bool = False):
    """The registry's FLUX.1-dev at one size (a build per size bucket: the benchmark times one); with
    ``tiny``, the toy's parameter counts (the memory placement is decided from them)."""
    from engines import registry

    spec = dataclasses.replace(registry.get("flux.1-dev"), sizes=((size, size),), steps=steps)
    return dataclasses.replace(spec, params_b=0.001, encoders_b=0.0005) if tiny else spec


def placements(spec, caps_gb: list[float]) -> dict[str, dict[str, Any]]:
    """What `engines.select.choose` decides for ``spec`` on this device with its memory capped at each
    of ``caps_gb`` (the emulation of a smaller slice the app uses: ``AOTI_MEMORY_CAP_GB``)."""
    from engines.device import ENV_MEMORY_CAP_GB, discover
    from engines.select import choose

    before, out = os.environ.get(ENV_MEMORY_CAP_GB), {}
    try:
        for cap in caps_gb:
            os.environ[ENV_MEMORY_CAP_GB] = str(cap)
            decision = choose(spec, discover(apply_cap=False))
            out[f"{cap:g} GiB"] = {"engine": decision.engine, "quantization": decision.quantization,
                                   "offload_encoders": decision.offload_encoders, "reason": decision.reason}
    finally:
        if before is None:
            os.environ.pop(ENV_MEMORY_CAP_GB, None)
        else:
            os.environ[ENV_MEMORY_CAP_GB] = before
    return out


def psnr_db(pixels: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of ``pixels`` against ``reference`` (0-255), to 0.1 dB; inf where they are equal."""
    mse = float(((pixels - reference) ** 2).mean())
    return round(10 * math.log10(255**2 / mse), 1) if mse else math.inf


def image_numbers(result, reference: np.ndarray | None) -> dict[str, Any]:
    """Seconds per image, stage by stage, and the difference from eager's image."""
    pixels = np.asarray(result.image, dtype=np.float64)
    out: dict[str, Any] = {"image_s": round(result.latency_s, 3), "stages_s": result.stages_s,
                           "median_step_ms": round(float(np.median(result.step_ms)), 2)}
    if reference is not None:
        out["vs_eager"] = {"max_pixel_diff": int(np.abs(pixels - reference).max()), "psnr_db": psnr_db(pixels, reference)}
    return out


def generate(model, params, device: str, repeats: int, step_cache=None):
    """The image of the median of ``repeats`` runs (after one warm-up), with the peak memory."""
    from engines.metrics import peak_mb, reset_peak_memory

    model.generate(PROMPT, dataclasses.replace(params, steps=2))  # first calls at these shapes
    reset_peak_memory(device)
    runs = sorted((model.generate(PROMPT, params, step_cache=step_cache) for _ in range(repeats)), key=lambda r: r.latency_s)
    return runs[len(runs) // 2], peak_mb(device)


def cache_schedule(steps: int, share: float) -> tuple[bool, ...]:
    """``share`` of ``steps`` cached, spread evenly after a full first step (which the others reuse)."""
    cached = min(round(share * steps), steps - 1)
    picks = {1 + math.floor(i * (steps - 1) / cached) for i in range(cached)} if cached else set()
    return tuple(i in picks for i in range(steps))


def random_adapter(transformer: torch.nn.Module, seed: int, rank: int = 16) -> Any:
    """A random rank-``rank`` adapter on every linear layer of the transformer's blocks (attention,
    feed-forward, modulation: as FLUX LoRAs trained on all linears cover them)."""
    import aoti

    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for name, layer in transformer.named_modules():
        features = (getattr(layer, "out_features", None), getattr(layer, "in_features", None))
        if "transformer_blocks." in name and None not in features and getattr(layer, "weight", None) is not None:
            # About 9 % of a random weight's spread in each entry: an FP8 ulp, so that the adapter shows
            down = torch.randn(rank, features[1], generator=generator) * 0.02
            up = torch.randn(features[0], rank, generator=generator) * 0.02
            layers[name] = (down, up, 1.0)
    return aoti.LoraAdapter(f"random-r{rank}-{seed}", layers)


def lora_numbers(model, params, device: str, repeats: int, reference: dict[str, np.ndarray]) -> dict[str, Any]:
    """Switch times of two random adapters on the model as it is bound now (first fuse, a switch, the
    unfuse) and the image with the first; eager's image with it is kept as the compiled one's reference."""
    import aoti

    first, second = random_adapter(model.denoiser, 0), random_adapter(model.denoiser, 1)
    out: dict[str, Any] = {"layers": len(first.layers), "rank": 16,
                           "quantization": aoti.quantization_of(model.denoiser)}
    out["first_fuse_s"] = round(aoti.fuse_lora(model.denoiser, first).seconds, 3)  # with the host copies' first taking
    result, peak = generate(model, params, device, repeats)
    start = time.perf_counter()
    aoti.fuse_lora(model.denoiser, second)  # the first unfused, the second fused
    out["switch_s"] = round(time.perf_counter() - start, 3)
    start = time.perf_counter()
    aoti.unfuse_lora(model.denoiser)
    out["unfuse_s"] = round(time.perf_counter() - start, 3)
    image = np.asarray(result.image, dtype=np.float64)
    out.update(image_numbers(result, reference.get("image")), peak_mb=peak)
    if "lora_image" in reference:
        out["vs_lora_eager"] = {"psnr_db": psnr_db(image, reference["lora_image"]),
                                "speedup": round(reference["lora_image_s"] / result.latency_s, 2)}
    else:
        reference.update(lora_image=image, lora_image_s=result.latency_s)
    aoti.unfuse_lora(model.denoiser, keep=False)  # the host copies go: the next variant starts clean
    return out


def step_times(result) -> dict[str, Any]:
    """A cached run's steps: the full and the cached step's median ms, and what a cached step costs."""
    cached = [ms for i, ms in enumerate(result.step_ms) if i in set(result.cached_steps)]
    full = [ms for i, ms in enumerate(result.step_ms) if i not in set(result.cached_steps)]
    out: dict[str, Any] = {"cached_steps": len(cached), "full_step_ms": round(float(np.median(full)), 2)}
    if cached:
        out["cached_step_ms"] = round(float(np.median(cached)), 2)
        out["cached_over_full"] = round(out["cached_step_ms"] / out["full_step_ms"], 3)
    return out


def warm_start(size: int, steps: int, cache_dir: str, tiny: bool) -> dict[str, Any]:
    """In this (fresh) process: imports, the pipeline's load, each stage of binding the compiled graphs
    from the cache (`aoti.OnStage`), the first denoising step and the image, each from the process's start."""
    import psutil

    from benchmarks.tasks.text_start import Marks

    marks = Marks(psutil.Process().create_time())
    marks("torch_imported")
    import aoti
    from engines import Studio
    from engines.image import ImageModel, ImageParams
    from engines.recipes import Switches, recipe_for
    from engines.select import choose

    marks("engines_imported")
    studio = Studio(cache=aoti.Cache(cache_dir))
    spec = spec_for(size, steps, tiny)
    model = ImageModel(spec, studio.device.torch_device, offload_encoders=choose(spec, studio.device).offload_encoders)
    marks("loaded")
    status = model.optimize(recipe_for(spec, studio.device, Switches(fp8=studio.device.fp8, regional=True)), studio.engine.cache,
                            on_stage=marks.stage)
    marks("bound")
    result = model.generate(PROMPT, ImageParams(size, size, steps, seed=0, guidance=spec.guidance),
                            progress=lambda *a, **k: marks("first_step_done"))
    marks("image")
    return {"marks_s": marks.seconds, "cache_hit": status.cache_hit, "runtime": status.runtime, "load_s": status.load_s,
            "cuda_graphs": status.cuda_graphs, "fallbacks": status.fallbacks, "image_alone_s": round(result.latency_s, 3)}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variants", default="eager,lora_eager,ours,cached_40,cached_60,lora,ours_launches,ours_sdpa,warm,peer_bf16,peer")
    parser.add_argument("--size", type=int, default=None, help="image side (1024; 64 with --tiny)")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--hf-home", default="/tmp/flux-hf", help="the Hugging Face cache the pipeline is written to")
    parser.add_argument("--cache", default="/tmp/aoti-flux-image", help="the AOTI cache (emptied first: the build is cold)")
    parser.add_argument("--warm-start", action="store_true", help=argparse.SUPPRESS)  # the fresh process's side
    parser.add_argument("--caps", default="70,48,24,16", help="memory caps (GiB) whose placement is recorded")
    parser.add_argument("--budget-s", type=float, default=1e9)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    size = args.size or (64 if args.tiny else 1024)
    os.environ.update(HF_HOME=args.hf_home, HF_HUB_OFFLINE="1", AOTI_HUB_ALLOW="0")  # before huggingface_hub is imported
    if args.warm_start:
        print(json.dumps(warm_start(size, args.steps, args.cache, args.tiny)))
        return
    import shutil

    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_CACHE == str(Path(args.hf_home) / "hub"), "huggingface_hub was imported too early"
    import aoti
    from engines import Studio
    from engines.image import ImageModel, ImageParams
    from engines.recipes import Switches, recipe_for
    from engines.select import choose

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    rec = Recorder(args.out, device)
    shutil.rmtree(args.cache, ignore_errors=True)
    if not snapshot_dir(Path(args.hf_home), REPO).joinpath("model_index.json").exists():
        rec.meta["write_s"] = round(write_pipeline(Path(args.hf_home), TINY if args.tiny else FULL, device), 1)
    studio = Studio(cache=aoti.Cache(args.cache))
    spec = spec_for(size, args.steps, args.tiny)
    decision = choose(spec, studio.device)
    start = time.perf_counter()
    model = ImageModel(spec, studio.device.torch_device, offload_encoders=decision.offload_encoders)
    rec.meta.update(geometry={"model": "tiny FLUX" if args.tiny else "FLUX.1-dev (19 + 38 blocks, CLIP-L, T5-XXL)",
                              "size": size, "steps": args.steps, "prompt": PROMPT},
                    placement=decision.reason, load_s=round(time.perf_counter() - start, 1),
                    placements_under_caps=placements(spec_for(size, args.steps), [float(c) for c in args.caps.split(",") if c]))
    params = ImageParams(size, size, args.steps, seed=0, guidance=spec.guidance)
    reference: dict[str, np.ndarray] = {}

    app_recipe = recipe_for(spec, studio.device, Switches(fp8=studio.device.fp8, regional=True))

    peers_ran: list[str] = []

    def run_one(name: str) -> None:
        if (name in ("lora", "ours_launches") or name.startswith("cached_")) and model.ref is None:
            rec.variant(name, {"skipped": "runs on the 'ours' build: list it first"})
            return
        if name == "lora_eager" and model.ref is not None:
            rec.variant(name, {"skipped": "runs on the eager model: list it before 'ours'"})
            return
        if name in ("ours", "ours_sdpa", "lora") and peers_ran:
            rec.variant(name, {"skipped": f"{peers_ran[0]} left torchao's weights in the transformer: list the peers last"})
            return
        if name == "eager":
            result, peak = generate(model, params, device, args.repeats)
            reference["image"] = np.asarray(result.image, dtype=np.float64)
            rec.variant(name, {**image_numbers(result, None), "peak_mb": peak})
        elif name == "ours":
            status = model.optimize(app_recipe, studio.engine.cache)
            result, peak = generate(model, params, device, args.repeats)
            rec.variant(name, {**image_numbers(result, reference.get("image")), "peak_mb": peak},
                        build_s=status.compile_s, runtime=status.runtime, transforms=status.transforms,
                        cuda_graphs=status.cuda_graphs, fallbacks=status.fallbacks)
        elif name in ("lora", "lora_eager"):
            rec.variant(name, lora_numbers(model, params, device, args.repeats, reference))
        elif name == "ours_launches":
            status = model.bind(model.ref, studio.engine.cache, cuda_graphs=False)
            result, peak = generate(model, params, device, args.repeats)
            rec.variant(name, {**image_numbers(result, reference.get("image")), "peak_mb": peak},
                        cuda_graphs=status.cuda_graphs, fallbacks=status.fallbacks)
        elif name == "ours_sdpa":
            recipe = dataclasses.replace(app_recipe, options=app_recipe.options.replace(attention="auto"))
            status = model.optimize(recipe, studio.engine.cache)
            result, peak = generate(model, params, device, args.repeats)
            rec.variant(name, {**image_numbers(result, reference.get("image")), "peak_mb": peak},
                        build_s=status.compile_s, cuda_graphs=status.cuda_graphs, fallbacks=status.fallbacks)
        elif name.startswith("cached_"):
            schedule = cache_schedule(args.steps, int(name.removeprefix("cached_")) / 100)
            result, peak = generate(model, params, device, args.repeats, aoti.StepCacheConfig(schedule=schedule))
            rec.variant(name, {**image_numbers(result, reference.get("image")), "peak_mb": peak, **step_times(result)},
                        schedule="".join("c" if c else "f" for c in schedule))
        elif name == "warm":
            command = ["--warm-start", "--size", str(size), "--steps", str(args.steps), "--hf-home", args.hf_home,
                       "--cache", args.cache, "--out", "-"] + (["--tiny"] if args.tiny else [])
            code = f"import sys; from benchmarks.tasks.flux_image import main; main({command!r})"
            rec.variant(name, json_from_fresh_process(code, timeout=1800))
        elif name in ("peer", "peer_bf16"):
            model.restore()  # (the peers start from the eager transformer)
            peers_ran.append(name)
            rec.variant(name, peer(model, params, device, args, reference.get("image"), fp8=name == "peer"))
        else:
            raise ValueError(f"unknown variant {name}")

    rec.run(args.variants.split(","), run_one, args.budget_s)
    if {"eager", "ours"} <= rec.variants.keys() and "image_s" in rec.variants["ours"]:
        eager, ours = rec.variants["eager"], rec.variants["ours"]
        rec.meta["speedup_end_to_end"] = round(eager["image_s"] / ours["image_s"], 2)
        rec.meta["speedup_step"] = round(eager["median_step_ms"] / ours["median_step_ms"], 2)
        for name in [v for v in rec.variants if v.startswith("cached_") and "image_s" in rec.variants[v]]:
            rec.meta[f"speedup_end_to_end_{name}"] = round(eager["image_s"] / rec.variants[name]["image_s"], 2)
        rec.save()
    print(json.dumps({k: rec.meta.get(k) for k in ("speedup_end_to_end", "speedup_step")}), file=sys.stderr)


def peer(model, params, device: str, args: argparse.Namespace, reference: np.ndarray | None, fp8: bool = True) -> dict[str, Any]:
    """diffusers' and torchao's own recipe: torch.compile of each repeated block
    (`ModelMixin.compile_repeated_blocks`), after torchao FP8 (dynamic activations, row-wise) on the
    transformer's linears with ``fp8``."""
    if fp8:
        if device != "cuda":
            return {"skipped": "the FP8 peer is measured on a GPU"}
        try:
            from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_
        except ImportError as exc:
            return {"skipped": f"torchao is not installed ({exc})"}
        if torch.cuda.get_device_capability() < (8, 9):
            return {"skipped": "torchao's FP8 needs a GPU with FP8 tensor cores"}
    transformer = model.denoiser
    torch._dynamo.reset()  # nothing carried over from an earlier peer
    start = time.perf_counter()
    if fp8:
        quantize_(transformer, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
    transformer.compile_repeated_blocks(fullgraph=True)
    model.generate(PROMPT, dataclasses.replace(params, steps=2))  # torch.compile builds at the first call
    build_s = time.perf_counter() - start
    result, peak = generate(model, params, device, args.repeats)
    return {**image_numbers(result, reference), "peak_mb": peak, "build_s": round(build_s, 1)}


if __name__ == "__main__":
    main()

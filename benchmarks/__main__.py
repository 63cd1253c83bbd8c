"""One driver for every benchmark task: ``python -m benchmarks TASK [--variants a,b,...] [--out FILE] ...``.

Each task writes one JSON file (card, versions, command, one entry per variant) that BENCHMARKS.md's
tables are read from. ``python -m benchmarks TASK --help`` lists a task's options and variants;
``--tiny`` runs any model task at toy width on the CPU (the smoke tests do).

    python -m benchmarks flux-step --variants eager,fp8_graphs,fp8_attention_graphs --out results/flux.json
    python -m benchmarks llm-decode --variants ours_eager,ours_gemv,ours_fp8_gemv --out results/llm.json
    python -m benchmarks.kernels gemv --out results/gemv.json      # kernel microbenchmarks
"""

from __future__ import annotations

from benchmarks.common import dispatch

# task -> (module, what it measures)
TASKS: dict[str, tuple[str, str]] = {
    "flux-step": ("benchmarks.tasks.flux_step", "one FLUX.1-dev denoising step: eager, torch.compile, AOTI, FP8, CUDA graphs"),
    "flux-image": ("benchmarks.tasks.flux_image", "the whole FLUX.1-dev image through the product: stages, build, warm start, peer"),
    "llm-decode": ("benchmarks.tasks.llm_decode", "LLM decode at Qwen2.5-7B geometry: HF, our loop eager, AOTI, decode kernels, FP8"),
    "text-start": ("benchmarks.tasks.text_start", "a text model from a Hub cache through the product: cold build and warm start by stage"),
    "speculative": ("benchmarks.tasks.speculative", "speculative decoding's step costs at 7B with a 0.5B draft, and the speed they give"),
    "prefill": ("benchmarks.tasks.prefill", "time to first token over prompt lengths, with and without prompt buckets"),
    "memory": ("benchmarks.tasks.memory", "GPU memory through FP8 quantization, build and serving"),
    "zerogpu": ("benchmarks.tasks.zerogpu", "the app's ZeroGPU path: forked GPU workers bind and run"),
    "engines": ("benchmarks.tasks.engines", "the engines end to end: optimize, generate, unload"),
    "compile-profile": ("benchmarks.tasks.compile_profile", "where a build spends its time"),
    "tp": ("benchmarks.tasks.tp", "tensor parallel over the GPUs of one host"),
    "cpu": ("benchmarks.tasks.cpu", "the embedded models on the CPU, eager vs AOTI"),
    "load-speedup": ("benchmarks.tasks.load_speedup", "the speedup shown at load: compiled vs eager when the graphs are bound, its stability"),
    "step-cache": ("benchmarks.tasks.step_cache", "step caching on the embedded DiT: steps reused, image quality and speed per level"),
    "load": ("benchmarks.tasks.load", "the app under N clients mixing every endpoint, toggles and a model switch"),
}


def main(argv: list[str] | None = None) -> None:
    dispatch(TASKS, argv, "python -m benchmarks")


if __name__ == "__main__":
    main()

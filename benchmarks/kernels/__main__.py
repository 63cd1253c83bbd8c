"""Kernel microbenchmarks: ``python -m benchmarks.kernels NAME [options]``, each against the kernels
it replaces, on the GPU (GPU time per call, bandwidth or FLOP/s, and the difference to the reference)."""

from __future__ import annotations

import importlib
import sys

KERNELS: dict[str, tuple[str, str]] = {
    "gemv": ("benchmarks.kernels.gemv", "one-row products: cuBLAS, Inductor, _scaled_mm, aoti.kernels.gemv (sweep)"),
    "gemv-step": ("benchmarks.kernels.gemv_step", "a decode step's gemv calls back to back in a CUDA graph, per config"),
    "gemv-aoti": ("benchmarks.kernels.gemv_aoti", "gemv inside AOTInductor packages, compiled vs eager"),
    "decode-attention": ("benchmarks.kernels.decode_attention", "split-KV decode attention against SDPA"),
    "fp8-attention": ("benchmarks.kernels.fp8_attention", "FP8 attention against the bf16 SDPA kernels"),
    "norm-rope": ("benchmarks.kernels.norm_rope", "FLUX q/k norm + rotary embedding against Inductor's kernel"),
    "row-quant": ("benchmarks.kernels.row_quant", "per-row FP8 quantization of wide rows, one pass against two"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in KERNELS:
        width = max(map(len, KERNELS))
        print("usage: python -m benchmarks.kernels NAME [options]\n\nkernels:\n"
              + "\n".join(f"  {k:<{width}}  {about}" for k, (_, about) in KERNELS.items()))
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"unknown kernel benchmark {argv[0]!r}")
        return
    importlib.import_module(KERNELS[argv[0]][0]).main(argv[1:])


if __name__ == "__main__":
    main()

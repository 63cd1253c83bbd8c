"""Kernel microbenchmarks: ``python -m benchmarks.kernels NAME [options]``, each against the kernels
it replaces, on the GPU (GPU time per call, bandwidth or FLOP/s, and the difference to the reference)."""

from __future__ import annotations

from benchmarks.common import dispatch

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
    dispatch(KERNELS, argv, "python -m benchmarks.kernels")


if __name__ == "__main__":
    main()

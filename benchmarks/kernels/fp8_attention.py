"""`aoti.fp8_attention` at FLUX.1's attention shape, against the bf16 SDPA kernels, side by side.

One call of FLUX.1-dev's joint self-attention at 1024×1024: 24 heads, 4096 image + 512 text tokens,
head size 128, bf16. Per variant: GPU time of one call replayed back to back in a CUDA graph
(`benchmarks.common.graph_replay_ms`), TFLOP/s (per head two S×S×D products, 4·S²·D FLOPs), and
the output's relative error against float32 attention on the same inputs. Variants: SDPA with
cuDNN and with FlashAttention-2 (bf16); our kernel on FP8 with the quantization included (eager,
and compiled as in a graph) and the kernel alone (pre-quantized operands), with its default config
and each config of a sweep; our kernel on bf16 operands (the same code without quantization).

    python -m benchmarks.kernels fp8-attention --out results.json
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
import torch.nn.functional as F

from aoti.kernels import fp8_attention as fa
from benchmarks.common import Recorder, error_record, graph_replay_ms, rel_error

BATCH, HEADS, TOKENS, DIM = 1, 24, 4096 + 512, 128


def flops(seq_q: int, seq_kv: int) -> float:
    """Two products of (seq_q × seq_kv × DIM) multiply-adds per head."""
    return 4.0 * BATCH * HEADS * seq_q * seq_kv * DIM


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--budget-s", type=float, default=240, help="stop sweeping configs after this many seconds")
    parser.add_argument("--sweep", choices=("full", "likely"), default="likely",
                        help="'likely' leaves out 8 warps on 64-row tiles (about half the speed on an H200)")
    args = parser.parse_args(argv)
    rec = Recorder(args.out, "cuda")
    torch.manual_seed(0)
    q, k, v = (torch.randn(BATCH, HEADS, TOKENS, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    reference = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    work = flops(TOKENS, TOKENS)
    rec.meta.update(shape=[BATCH, HEADS, TOKENS, DIM], gflop=round(work / 1e9, 1))

    def record(name: str, call) -> None:
        try:
            out = call()
            ms = graph_replay_ms([call] * 5) / 5
            rec.variant(name, {"ms": round(ms, 4), "tflops": round(work / ms / 1e9, 1), "rel_error_vs_fp32": rel_error(out, reference)})
        except Exception as exc:  # a config the card can't run is recorded, the sweep goes on
            rec.variant(name, error_record(exc))
        print(name, rec.variants[name], flush=True)

    from torch.nn.attention import SDPBackend, sdpa_kernel

    for name, backend in (("sdpa_cudnn_bf16", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash_bf16", SDPBackend.FLASH_ATTENTION)):
        def sdpa(backend=backend):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        record(name, sdpa)
    record("ours_fp8_with_quantization", lambda: fa.launch(q, k, v))
    # as in a compiled graph: Inductor fuses the quantization (here it reads q, k, v from memory;
    # in a model it fuses into their producers)
    compiled = torch.compile(fa.sdpa, fullgraph=True)
    record("ours_fp8_compiled_with_quantization", lambda: compiled(q, k, v))
    record("ours_bf16_operands", lambda: fa.launch(q, k, v, fp8=False))
    # the kernel alone on pre-quantized operands, per config
    (q8, qs), (k8, ks), (vt8, vs) = fa.quantize_tokens(q), fa.quantize_heads(k), fa.quantize_heads(v, transpose=True)
    scale = DIM ** -0.5

    def kernel_only(config: fa.AttentionConfig):
        return fa.run_kernel(q8, k8, vt8, qs, ks, vs, scale, q.dtype, config=config)

    deadline = time.perf_counter() + args.budget_s
    configs = [fa.DEFAULT_CONFIG] + [fa.AttentionConfig(*c) for c in itertools.product((64, 128), (64, 128), (4, 8), (2, 3, 4))
                                     if args.sweep == "full" or c[2] == 4 or c[0] == 128]
    configs += [fa.AttentionConfig(64, 256, 4, s) for s in (2, 3)] + [fa.AttentionConfig(128, 256, 8, s) for s in (2, 3)]
    for config in dict.fromkeys(configs):
        if time.perf_counter() > deadline:
            break
        record(f"ours_fp8_kernel_{config.block_m}x{config.block_n}_w{config.num_warps}_s{config.num_stages}",
               lambda config=config: kernel_only(config))
    rec.save()


if __name__ == "__main__":
    main()

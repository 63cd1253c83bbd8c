"""aoti.decode_attention on a GPU: the kernels against SDPA at Qwen2.5-7B's decode shape (4 KV heads of
7 query heads, head size 128, a 768-slot cache), timed against cuDNN's SDPA on the folded query and
transformers' repeated-KV call; then inside an AOTInductor package (boolean, additive and no mask),
compiled and compared with eager; then the text engine at hidden size 1024. Each case's full error
chain (if any) goes to the results file.

    python -m benchmarks.kernels decode-attention --out results.json
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import aoti
from aoti.kernels.decode_attention import decode_attention, launch
from benchmarks.common import Recorder, error_record, graph_replay_ms, rel_error
from benchmarks.kernels.gemv_aoti import text_engine

HEADS, KV_HEADS, DIM, CACHE = 28, 4, 128, 768


def inputs(mask_kind: str) -> tuple[torch.Tensor, ...]:
    q = torch.randn(1, KV_HEADS, HEADS // KV_HEADS, DIM, device="cuda", dtype=torch.bfloat16)
    k, v = (torch.randn(1, KV_HEADS, CACHE, DIM, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    valid = torch.arange(CACHE, device="cuda").view(1, 1, 1, CACHE) < 600  # a cache filled to slot 600
    mask = {"bool": valid, "additive": torch.where(valid, 0.0, torch.finfo(torch.bfloat16).min).to(torch.bfloat16),
            "none": None}[mask_kind]
    return q, k, v, mask


def kernel_vs_sdpa() -> dict:
    q, k, v, mask = inputs("bool")
    sdpa = torch.nn.functional.scaled_dot_product_attention
    reference = sdpa(q.float(), k.float(), v.float(), attn_mask=mask)
    out = launch(q, k, v, mask)
    group = HEADS // KV_HEADS
    q_heads = q.reshape(1, HEADS, 1, DIM)
    repeated = (k.repeat_interleave(group, 1), v.repeat_interleave(group, 1))
    return {
        "rel_error_vs_fp32_sdpa": rel_error(out, reference),
        "kernel_us": gpu_us(lambda: launch(q, k, v, mask)),
        "sdpa_folded_us": gpu_us(lambda: sdpa(q, k, v, attn_mask=mask)),
        "sdpa_repeated_kv_us": gpu_us(lambda: sdpa(q_heads, k.repeat_interleave(group, 1),
                                                   v.repeat_interleave(group, 1), attn_mask=mask)),
        "sdpa_repeated_kv_attention_only_us": gpu_us(lambda: sdpa(q_heads, *repeated, attn_mask=mask)),
    }


def gpu_us(fn, calls: int = 50, replays: int = 20) -> float:
    """GPU time per call, launch overhead excluded: ``calls`` calls captured in one CUDA graph, replayed."""
    return round(graph_replay_ms([fn] * calls, replays) * 1e3 / calls, 2)


class Attend(torch.nn.Module):
    def forward(self, q, k, v, mask=None):
        return decode_attention(q, k, v, mask) * 2


def in_package(mask_kind: str, cache: aoti.Cache) -> dict:
    model = Attend()
    args = inputs(mask_kind)
    with aoti.capture(model) as call:
        model(*args)
    try:
        artifact = aoti.compile(model, call, aoti.CompileOptions(), cache=cache)
    except Exception as exc:
        return error_record(exc)
    fresh = inputs(mask_kind)
    eager = model(*fresh)
    status = aoti.apply(artifact, model)
    return {"runtime": status.runtime, "rel_error_vs_eager": rel_error(model(*fresh), eager),
            "kernels_in_package": sorted({n for n in ("_chunk_kernel", "_merge_kernel") if n in artifact.wrapper_source()})}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rec = Recorder(args.out, "cuda")
    cache = aoti.Cache(tempfile.mkdtemp())
    torch.manual_seed(0)
    for name, run in [("kernel_vs_sdpa", kernel_vs_sdpa),
                      *[(f"package_{kind}_mask", lambda kind=kind: in_package(kind, cache)) for kind in ("bool", "additive", "none")],
                      ("text_engine_hidden_1024", lambda: text_engine(cache))]:
        try:
            rec.variant(name, run())
        except Exception as exc:
            rec.variant(name, error_record(exc))


if __name__ == "__main__":
    main()

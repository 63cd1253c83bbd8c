"""FLUX.1 attention's query/key RMS norms and rotary embedding: Inductor's fused kernels against `aoti.norm_rope`.

At FLUX.1-dev's 1024×1024 shapes (bf16, 24 heads × 128, 4096 image + 512 text tokens), both tensors
(query and key) of an attention call:

- ``single``: a single block's, sliced from the fused QKV projection's output (1, 4608, 3 × 3072).
- ``double``: a double block's, the text tokens' and the image tokens' projections normalized with
  their own weights, joined, then rotated.

Variants: ``inductor`` (diffusers' own modules, `torch.RMSNorm` and `apply_rotary_emb`, under
`torch.compile`: the code AOTInductor generates too) and ``kernel`` (`aoti.norm_rope` per tensor),
``kernel_fp8`` (the kernel writing e4m3 values and per-(token, head) scales, as for FP8 attention),
with ``--sweep`` the kernel per launch configuration (heads per program, warps). Per variant: GPU
time of one call in a CUDA graph, the bandwidth that implies for the least traffic (inputs read once,
outputs written once), the largest difference from eager in the output's units.

    python -m benchmarks.kernels norm-rope --out results.json [--sweep]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools

import torch

from aoti.kernels import norm_rope
from benchmarks.common import Recorder, error_record, graph_replay_ms

TOKENS, TEXT, HEADS, DIM = 4096 + 512, 512, 24, 128


def eager(parts: list[tuple[torch.Tensor, torch.nn.Module]], cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    from diffusers.models.embeddings import apply_rotary_emb

    joined = torch.cat([norm(x) for x, norm in parts], dim=1) if len(parts) > 1 else parts[0][1](parts[0][0])
    return apply_rotary_emb(joined, (cos, sin), sequence_dim=1)


def cases(device: str) -> dict[str, tuple[list, list]]:
    """Per case: the (tensor, norm) parts of the query, and of the key."""
    bf16 = dict(device=device, dtype=torch.bfloat16)

    def norm() -> torch.nn.Module:
        module = torch.nn.RMSNorm(DIM, eps=1e-6).to(**bf16)
        torch.nn.init.uniform_(module.weight, 0.5, 1.5)
        return module

    qkv = torch.randn(1, TOKENS, 3, HEADS, DIM, **bf16) * 2
    text, image = torch.randn(1, TEXT, 2, HEADS, DIM, **bf16) * 2, torch.randn(1, TOKENS - TEXT, 2, HEADS, DIM, **bf16) * 2
    return {
        "single": ([(qkv[:, :, 0], norm())], [(qkv[:, :, 1], norm())]),
        "double": ([(text[:, :, 0], norm()), (image[:, :, 0], norm())], [(text[:, :, 1], norm()), (image[:, :, 1], norm())]),
    }


def rotary(device: str) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.randn(TOKENS, DIM // 2, device=device) * 10
    return angles.cos().repeat_interleave(2, -1), angles.sin().repeat_interleave(2, -1)


def kernel_call(parts: list, cos: torch.Tensor, sin: torch.Tensor, **config) -> torch.Tensor:
    (x, norm), lead = parts[-1], parts[0] if len(parts) > 1 else None
    values, scale = norm_rope.launch(x, norm.weight, cos, sin, norm.eps, lead[0] if lead else None,
                                     lead[1].weight if lead else None, **config)
    return (values, scale) if scale is not None else values


def as_float(out) -> torch.Tensor:
    """The output in float32: FP8 values times their (B, H, S) scales, or the values themselves."""
    if isinstance(out, tuple):
        values, scale = out
        return values.float() * scale.transpose(1, 2)[..., None]
    return out.float()


def least_bytes(tensors: list) -> int:
    flat = [t for item in tensors for t in (item if isinstance(item, tuple) else (item,))]
    return sum(t.numel() * t.element_size() for t in flat)


def measure(fn, case: tuple[list, list], cos, sin) -> dict:
    query_parts, key_parts = case
    outs = [fn(query_parts, cos, sin), fn(key_parts, cos, sin)]
    refs = [eager(query_parts, cos, sin), eager(key_parts, cos, sin)]
    ms = graph_replay_ms([lambda: fn(query_parts, cos, sin), lambda: fn(key_parts, cos, sin)], replays=20)
    moved = least_bytes([x for x, _ in query_parts + key_parts] + outs) + 2 * least_bytes([cos, sin])
    return {"us": round(ms * 1e3, 1), "tb_per_s": round(moved / (ms * 1e-3) / 1e12, 2),
            "max_abs_diff": max(float((as_float(o) - r.float()).abs().max()) for o, r in zip(outs, refs)),
            "ref_max": max(float(r.float().abs().max()) for r in refs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sweep", action="store_true", help="the kernel per launch configuration")
    args = parser.parse_args(argv)
    device = "cuda"
    rec = Recorder(args.out, device)
    cos, sin = rotary(device)
    big = torch.empty(TOKENS * 2 * HEADS * DIM, device=device, dtype=torch.bfloat16)
    copy_ms = graph_replay_ms([lambda: big.clone()], replays=20)
    rec.meta["copy_tb_per_s"] = round(2 * big.numel() * 2 / (copy_ms * 1e-3) / 1e12, 2)
    for case, parts in cases(device).items():
        variants = {"inductor": torch.compile(eager, fullgraph=True), "kernel": kernel_call,
                    "kernel_fp8": functools.partial(kernel_call, fp8=True)}
        if args.sweep:
            for heads, warps in itertools.product((2, 4, 8, 32), (1, 2, 4)):
                variants[f"kernel_h{heads}_w{warps}"] = functools.partial(kernel_call, block_heads=heads, num_warps=warps)
        for name, fn in variants.items():
            try:
                with torch.no_grad():
                    rec.variant(f"{case}_{name}", measure(fn, parts, cos, sin))
            except Exception as exc:  # one failing variant must not lose the others
                rec.variant(f"{case}_{name}", error_record(exc))
    rec.save()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

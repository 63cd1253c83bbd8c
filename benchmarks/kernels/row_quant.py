"""FP8 activation quantization of FLUX.1's rows, with and without one-pass rows, side by side.

Three producers of an FP8 product's input, at FLUX.1-dev's 1024×1024 shapes (bf16), each ending in
`aoti.kernels.fp8_rows.rowwise_fp8` (a per-row absolute maximum and the scaled e4m3 cast):

- ``single``: a single block's `proj_out` input, 4608 × 15360: attention output (24 heads × 128)
  beside the tanh-GELU of the MLP projection (12288).
- ``double``: a double block's second MLP product input, 4096 × 12288: tanh-GELU of the first's output.
- ``norm``: the LayerNorm and modulation before a QKV product, 4608 × 3072.

Variants, each compiled by Inductor (`torch.compile`, the code AOTInductor generates too):
``two_pass`` (Inductor's own choices, `one_pass_rows=False`), ``persistent`` (Inductor with
`aoti.passes.reductions.OnePassRows`), ``kernel`` (the producer by Inductor, the quantization on
`aoti.fp8_rows`), ``both`` (the two together: what `one_pass_rows=True` builds, less the graph
rewrite that moves a GELU into the kernel, which only `aoti.compile` runs; ``--sweep`` times that).
Per variant: GPU time of one call in a CUDA graph, the bandwidth that implies for the least traffic
(inputs read once, e4m3 and scales written), the share of e4m3 values bit-identical to eager's, the
Inductor kernels it ran (`triton_per_` = one pass, `triton_red_` = looping). A plain copy gives the card's bandwidth.

``--sweep`` times `aoti.fp8_rows`'s kernel alone instead, per launch configuration (warps, GELU
rounded to bf16 or not) on the same rows.

    python -m benchmarks.kernels row-quant --out results.json
    python -m benchmarks.kernels row-quant --sweep --out sweep.json
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F

from aoti.kernels import fp8_rows
from aoti.passes import reductions
from benchmarks.common import Recorder, error_record, graph_replay_ms

TOKENS, TEXT, WIDTH, HEADS, MLP = 4096 + 512, 512, 3072, 24, 12288


def single(attn: torch.Tensor, mlp: torch.Tensor):
    rows = torch.cat([attn.transpose(1, 2).reshape(1, TOKENS, WIDTH), F.gelu(mlp, approximate="tanh")], dim=-1)
    return fp8_rows.rowwise_fp8(rows.reshape(TOKENS, -1))


def double(hidden: torch.Tensor):
    return fp8_rows.rowwise_fp8(F.gelu(hidden, approximate="tanh").reshape(-1, MLP))


def norm(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
    normed = F.layer_norm(x, (WIDTH,), eps=1e-6) * (1 + scale) + shift
    return fp8_rows.rowwise_fp8(normed.reshape(TOKENS, WIDTH))


def cases(device: str) -> dict:
    bf16 = dict(device=device, dtype=torch.bfloat16)
    return {
        "single": (single, (torch.randn(1, HEADS, TOKENS, WIDTH // HEADS, **bf16), torch.randn(1, TOKENS, MLP, **bf16) * 2)),
        "double": (double, (torch.randn(1, TOKENS - TEXT, MLP, **bf16) * 2,)),
        "norm": (norm, (torch.randn(1, TOKENS, WIDTH, **bf16) * 4, torch.randn(1, 1, WIDTH, **bf16), torch.randn(1, 1, WIDTH, **bf16))),
    }


VARIANTS = {"two_pass": (False, False), "persistent": (True, False), "kernel": (False, True), "both": (True, True)}


def least_bytes(args: tuple, out: tuple) -> int:
    return sum(t.numel() * t.element_size() for t in (*args, *out))


def run_case(fn, args: tuple, variant: str) -> tuple[dict, str]:
    from torch._inductor.utils import run_and_get_code

    persistent, kernel = VARIANTS[variant]
    torch._dynamo.reset()
    with torch._inductor.config.patch(fx_graph_cache=False), reductions.one_pass_rows(persistent), fp8_rows.used(kernel):
        compiled = torch.compile(fn, fullgraph=True)
        (values, scale), code = run_and_get_code(compiled, *args)
    with fp8_rows.used(False):
        ref_values, ref_scale = fn(*args)
    ms = graph_replay_ms([lambda: compiled(*args)], replays=20)
    source = "\n".join(code)
    kernels = sorted({line.split("def ")[1].split("(")[0] for line in source.splitlines() if line.startswith("def triton_")})
    return {
        "us": round(ms * 1e3, 1),
        "tb_per_s": round(least_bytes(args, (values, scale)) / (ms * 1e-3) / 1e12, 2),
        "bit_identical": round(float((values.view(torch.uint8) == ref_values.view(torch.uint8)).float().mean()), 5),
        "scale_rel_diff": float(((scale - ref_scale).abs() / ref_scale).max()),
        "dequantized_rel_error": float((values.float() * scale - ref_values.float() * ref_scale).norm()
                                       / (ref_values.float() * ref_scale).norm()),
        "inductor_kernels": kernels,
        "our_kernel": "_rowwise_kernel" in source,
    }, source


def sweep(rec: Recorder, device: str) -> None:
    """`aoti.kernels.fp8_rows.launch` alone on FLUX.1's rows: GPU time and bandwidth per launch configuration."""
    bf16 = dict(device=device, dtype=torch.bfloat16)
    shapes = {
        "single_lead_gelu": (torch.randn(TOKENS, MLP, **bf16) * 2, torch.randn(TOKENS, WIDTH, **bf16)),
        "double_gelu": (torch.randn(TOKENS - TEXT, MLP, **bf16) * 2, None),
        "plain_15360": (torch.randn(TOKENS, WIDTH + MLP, **bf16), None),
    }
    for shape, (x, lead) in shapes.items():
        gelu = shape != "plain_15360"
        for warps, round_gelu in itertools.product((4, 8, 16, 32), (False, True) if gelu else (True,)):
            name = f"{shape}_w{warps}{'_round' if round_gelu else ''}"
            try:
                call = functools.partial(fp8_rows.launch, x, lead, gelu, num_warps=warps, round_gelu=round_gelu)
                values, scale = call()
                ms = graph_replay_ms([call], replays=20)
                rec.variant(name, {"us": round(ms * 1e3, 1),
                                   "tb_per_s": round(least_bytes((x, lead) if lead is not None else (x,), (values, scale)) / (ms * 1e-3) / 1e12, 2),
                                   "default": warps == fp8_rows.NUM_WARPS and not round_gelu})
            except Exception as exc:  # one failing configuration must not lose the others
                rec.variant(name, error_record(exc))
    rec.save()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--code-dir", help="write each variant's generated code here")
    parser.add_argument("--sweep", action="store_true", help="the kernel alone: warps, GELU rounded or not")
    args = parser.parse_args(argv)
    device = "cuda"
    rec = Recorder(args.out, device)
    if args.sweep:
        return sweep(rec, device)
    big = torch.empty(TOKENS * (WIDTH + MLP), device=device, dtype=torch.bfloat16)
    copy_ms = graph_replay_ms([lambda: big.clone()], replays=20)
    rec.meta["copy_tb_per_s"] = round(2 * big.numel() * 2 / (copy_ms * 1e-3) / 1e12, 2)
    for case, (fn, inputs) in cases(device).items():
        for variant in VARIANTS:
            name = f"{case}_{variant}"
            try:
                result, source = run_case(fn, inputs, variant)
                rec.variant(name, result)
                if args.code_dir:
                    Path(args.code_dir).mkdir(parents=True, exist_ok=True)
                    (Path(args.code_dir) / f"{name}.py").write_text(source)
            except Exception as exc:  # one failing variant must not lose the others
                rec.variant(name, error_record(exc))
    rec.save()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()

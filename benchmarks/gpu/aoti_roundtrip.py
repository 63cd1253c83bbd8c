"""GPU round trip of the aoti library: tiny FLUX transformer and tiny Llama decoder on CUDA, bf16 and
FP8, through capture -> compile -> probe -> apply -> compare with eager -> restore.

    python benchmarks/gpu/aoti_roundtrip.py --out results.json [--no-fix-crash-check]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import aoti  # noqa: E402
from benchmarks.common import measure, rel_error  # noqa: E402
from tests import tiny  # noqa: E402


def to_cuda(inputs: dict) -> dict:
    return {k: v.cuda().to(torch.bfloat16) if isinstance(v, torch.Tensor) and v.is_floating_point() else v.cuda() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}


def median_ms(fn, n: int = 20) -> float:
    return measure(fn, "cuda", iters=n)["median_ms"]


def flux_case(quantization: str, cache: aoti.Cache) -> dict:
    model = tiny.flux(num_layers=2, num_single_layers=2).cuda().to(torch.bfloat16)
    with aoti.capture(model) as call, torch.no_grad():
        model(**to_cuda(tiny.flux_inputs(img=64, txt=16)))
    reference = None
    if quantization != "none":
        ref_inputs = to_cuda(tiny.flux_inputs(img=64, txt=16))
        with torch.no_grad():
            reference = model(**ref_inputs)[0]
    artifact = aoti.compile(model, call, aoti.CompileOptions(quantization=quantization), cache=cache)
    status = aoti.apply(artifact, model)
    result = {"case": f"flux-{quantization}", "status": status.to_dict()}
    errs = []
    for _ in range(3):
        inputs = to_cuda(tiny.flux_inputs(img=64, txt=16))
        with torch.no_grad():
            errs.append(rel_error(model(**inputs)[0], model.forward.eager(**inputs)[0]))
    result["rel_err_vs_eager_same_weights"] = max(errs)
    if reference is not None:
        with torch.no_grad():
            result["rel_err_fp8_vs_bf16_eager"] = rel_error(model(**ref_inputs)[0], reference)
    inputs = to_cuda(tiny.flux_inputs(img=64, txt=16))
    with torch.no_grad():
        result["aoti_ms"] = median_ms(lambda: model(**inputs))
        result["eager_ms"] = median_ms(lambda: model.forward.eager(**inputs))
    out_of_range = to_cuda(tiny.flux_inputs(img=80, txt=16))
    with torch.no_grad():
        result["out_of_range_equal_eager"] = bool(torch.equal(model(**out_of_range)[0], model.forward.eager(**out_of_range)[0]))
    result["guard_fallbacks"] = aoti.status_of(model).guard_fallbacks
    aoti.restore(model)
    return result


def llama_case(quantization: str, cache: aoti.Cache) -> dict:
    model = tiny.llama().cuda().to(torch.bfloat16)
    with aoti.capture(model, stop=False) as calls, torch.no_grad():
        for seq in (1, 8, 32, 64):
            model(input_ids=tiny.token_ids(seq).cuda())
    artifact = aoti.compile(model, calls, aoti.CompileOptions(dispatch="dynamic", quantization=quantization), cache=cache)
    status = aoti.apply(artifact, model)
    errs = {}
    for seq in (1, 5, 17, 64):
        ids = tiny.token_ids(seq).cuda()
        with torch.no_grad():
            errs[seq] = rel_error(model(input_ids=ids).logits, model.forward.eager(input_ids=ids).logits)
    return {"case": f"llama-dynamic-{quantization}", "status": aoti.status_of(model).to_dict(), "rel_err_by_seq": errs, "apply": status.runtime}


def unfixed_probe(cache_dir: str) -> dict:
    """Compile the tiny MLP with the toolchain check off, in a child, and probe it: shows what the
    probe catches on this machine without the fix."""
    script = (
        "import json, torch, aoti; from tests import tiny\n"
        "m = tiny.MLP().cuda()\n"
        "with aoti.capture(m) as c: m(torch.randn(4, 32, device='cuda'))\n"
        f"a = aoti.compile(m, c, cache=aoti.Cache({cache_dir!r}))\n"
        "s = aoti.apply(a, m)\n"
        "print(json.dumps(dict(toolchain=aoti.ensure_toolchain().note, runtime=s.runtime, reason=s.reason)))\n"
    )
    env = {**os.environ, "AOTI_TOOLCHAIN_FIX": "0", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=900)
    lines = proc.stdout.strip().splitlines()
    return {"returncode": proc.returncode, "result": json.loads(lines[-1]) if lines else None, "stderr_tail": proc.stderr[-800:]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--cache-dir", default="/tmp/aoti-gpu-cache")
    parser.add_argument("--skip-unfixed", action="store_true")
    parser.add_argument("--cases", default="flux-none,flux-fp8_rowwise,llama-none,llama-fp8_rowwise")
    args = parser.parse_args()
    results: dict = {
        "device": torch.cuda.get_device_name(), "torch": torch.__version__,
        "toolchain": aoti.ensure_toolchain().note, "cases": [],
    }
    cache = aoti.Cache(args.cache_dir)
    runners = {"flux": flux_case, "llama": llama_case}
    for name in args.cases.split(","):
        family, quantization = name.split("-", 1)
        start = time.perf_counter()
        try:
            results["cases"].append({**runners[family](quantization, cache), "wall_s": round(time.perf_counter() - start, 1)})
        except Exception as exc:  # record and go on: one run on the GPU must report every case
            results["cases"].append({"error": f"{type(exc).__name__}: {exc}"[:2000]})
        print(json.dumps(results["cases"][-1], default=str)[:1500], flush=True)
    if not args.skip_unfixed:
        results["without_fix"] = unfixed_probe(args.cache_dir + "-unfixed")
        print(json.dumps(results["without_fix"])[:1500])
    Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

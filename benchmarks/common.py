"""What every benchmark shares: timing, error, the card's measured peaks, and a results file written
after each variant (a run killed by a time limit keeps what it measured)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]


def rel_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """‖out − reference‖ / ‖reference‖ in float32."""
    out, reference = out.float(), reference.float()
    return float((out - reference).norm() / reference.norm().clamp_min(1e-12))


def error_lines(text: str) -> list[str]:
    """The lines of a (long) error that name a problem, a compiler's diagnosis among them."""
    return [line for line in text.splitlines() if "error" in line.lower()][:40]


def error_record(exc: BaseException) -> dict[str, Any]:
    """A failed case for a results file: the end of the whole exception chain (an Inductor error wraps
    the compiler's or the subprocess's own) and its error lines."""
    text = "".join(traceback.format_exception(exc))
    return {"error": text[-8000:], "error_lines": error_lines(text)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(fn: Callable[[], Any], device: str, iters: int = 15, warmup: int = 3) -> dict[str, float]:
    """Median and spread of ``fn``'s wall time (synchronised every call), and the peak memory it used."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync(device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(iters):
            start = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
    result = {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "max_ms": round(max(times), 3)}
    if device.startswith("cuda"):
        result["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    return result


def back_to_back_ms(fn: Callable[[], Any], calls: int = 10, repeats: int = 5) -> float:
    """Milliseconds per call of ``calls`` calls launched back to back (synchronised only at the end),
    median of ``repeats``: a diffusion pipeline's steady state, where the next step is queued while the
    GPU runs this one; host-side work shows only where it is longer than the GPU's."""
    times = []
    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - start) * 1e3 / calls)
    return round(statistics.median(times), 3)


KERNEL_KINDS = (  # (kind, substrings of the kernel name), first match wins: Inductor's fused kernels
    # ("triton_...") name the ops they fuse, "attention" among them; "triton_tem_" are GEMM templates.
    # "triton": Inductor's fused kernels and our own elementwise ones (aoti.fp8_rows, aoti.norm_rope)
    ("matmul", ("triton_tem_",)),
    ("triton", ("triton_", "_rowwise_kernel", "_norm_rope_kernel")),
    ("attention", ("flash", "fmha", "cudnn", "attention", "sdpa")),
    ("matmul", ("nvjet", "gemm", "gemv", "xmma", "cutlass", "splitk", "matmul", "_mm_", "f8f8bf16")),
)


def graph_replay_ms(calls: list[Callable[[], Any]], replays: int = 10) -> float:
    """Median milliseconds of one replay of a CUDA graph of ``calls`` (launch overhead excluded): GPU
    time of work that runs back to back. The calls run once on a side stream first (libraries allocate
    their workspaces there, which a capture rejects)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    graph.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def kernel_kind(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in lowered for m in marks)), "other")


def kernel_profile(fn: Callable[[], Any], calls: int = 8, top: int = 10) -> dict[str, Any]:
    """Where a CUDA call's time goes (torch.profiler): GPU kernel time per call beside wall time per
    call (the difference is time the GPU waits for the host), split by kind, and the top kernels."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        fn()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            torch.cuda.synchronize()
            wall_ms = (time.perf_counter() - start) * 1e3 / calls
    kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA and e.self_device_time_total > 0]
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    per_call = [(e.key, e.self_device_time_total / 1e3 / calls, e.count / calls) for e in kernels]
    by_kind: dict[str, float] = {}
    for name, ms, _ in per_call:
        by_kind[kernel_kind(name)] = by_kind.get(kernel_kind(name), 0.0) + ms
    kernel_ms = sum(ms for _, ms, _ in per_call)
    return {"wall_ms": round(wall_ms, 3), "kernel_ms": round(kernel_ms, 3),
            "kernels_per_call": round(sum(n for _, _, n in per_call), 1),
            "by_kind_ms": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top": [{"kernel": name[:100], "ms": round(ms, 3), "count": round(n, 1)} for name, ms, n in per_call[:top]]}


def cuda_peak_tflops(n: int = 8192, iters: int = 20) -> dict[str, float]:
    """Measured dense matmul throughput of this card: bf16 and FP8 (row-wise scaled, e4m3)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    peaks = {"bf16": _tflops(lambda: a @ b, n, iters)}
    if torch.cuda.get_device_capability() >= (8, 9):
        a8, b8 = a.to(torch.float8_e4m3fn), b.t().contiguous().t().to(torch.float8_e4m3fn)
        sa, sb = torch.ones(n, 1, device="cuda"), torch.ones(1, n, device="cuda")
        peaks["fp8"] = _tflops(lambda: torch._scaled_mm(a8, b8.t().contiguous().t(), sa, sb, out_dtype=torch.bfloat16), n, iters)
    return peaks


def _tflops(fn: Callable[[], Any], n: int, iters: int) -> float:
    timing = measure(fn, "cuda", iters=iters)
    return round(2 * n**3 / (timing["min_ms"] / 1e3) / 1e12, 1)


def memory_bandwidth_gbs(gb: float = 4.0, iters: int = 10) -> float:
    """Measured device-to-device copy bandwidth (read + write), GB/s."""
    x = torch.empty(int(gb * 1e9 / 2), device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    timing = measure(lambda: y.copy_(x), "cuda", iters=iters)
    return round(2 * x.numel() * 2 / (timing["min_ms"] / 1e3) / 1e9, 1)


def json_from_fresh_process(code: str, env: dict[str, str] | None = None, timeout: float = 600) -> dict[str, Any]:
    """Run ``code`` in a new Python process (in the repository root, so the packages import); its last
    stdout line is the JSON result (or the error)."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Recorder:
    """Results of one run: metadata (card, versions, date, command) and one entry per variant."""

    def __init__(self, out: str | Path, device: str) -> None:
        self.started = time.perf_counter()
        self.out = Path(out)
        self.meta: dict[str, Any] = {
            "date": datetime.date.today().isoformat(),
            "command": "python " + " ".join(sys.argv),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()})",
        }
        self.variants: dict[str, Any] = {}

    def variant(self, name: str, result: dict[str, Any], **extra: Any) -> None:
        self.variants[name] = {**result, **extra}
        print(f"{name}: {json.dumps(self.variants[name], default=str)}", flush=True)
        self.save()

    def run(self, names: list[str], run_one: Callable[[str], None], budget_s: float = 1e9,
            after: Callable[[], None] | None = None) -> None:
        """Run each variant in order; one that fails is recorded with its error and the rest go on;
        once ``budget_s`` has passed since the start, the remaining ones are recorded as skipped."""
        for name in names:
            if time.perf_counter() - self.started > budget_s:
                self.variant(name, {"skipped": f"time budget of {budget_s:.0f} s spent"})
                continue
            try:
                run_one(name)
            except Exception as exc:  # one failing variant must not lose the others
                text = f"{type(exc).__name__}: {exc}"
                # A compiler's own diagnosis comes at the end of a long message: keep both ends.
                self.variant(name, {"error": text[:1500], "error_tail": text[-4000:] if len(text) > 1500 else None,
                                    "error_lines": error_lines(text)})
            if after is not None:
                after()
        self.meta["total_s"] = round(time.perf_counter() - self.started, 1)
        self.save()

    def save(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({**self.meta, "variants": self.variants}, indent=2, default=str))


def dispatch(registry: dict[str, tuple[str, str]], argv: list[str] | None, prog: str) -> None:
    """Run ``registry[argv[0]]``'s module's ``main(argv[1:])`` (a name -> (module, what it measures)
    table); without a known name, the list of names."""
    import importlib

    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in registry:
        width = max(map(len, registry))
        print(f"usage: {prog} NAME [options]  (NAME --help: its options)\n\n"
              + "\n".join(f"  {name:<{width}}  {about}" for name, (_, about) in registry.items()))
        if argv and argv[0] not in ("-h", "--help"):
            raise SystemExit(f"unknown name {argv[0]!r}")
        return
    importlib.import_module(registry[argv[0]][0]).main(argv[1:])

"""The app on a real GPU under spaces' own ZeroGPU code: what a request costs in a fresh fork (weights
moved by spaces, the package loaded and bound, the first call) against a reused worker.

Everything is spaces 0.51's code on the real GPU (its patched torch in the main process, the pack to
disk at launch, a worker's `init` and `move` onto the GPU, the fork per call); only the device API is
a server on 127.0.0.1 (`benchmarks/harness/zerogpu_api.py`) that hands out this machine's GPU. The
scheduler first reports the GPU idle (spaces reuses each function's worker), then busy (a new fork
per call).

    python -m benchmarks zerogpu --models tiny-llama-pydoc,tiny-shapes-unet --out results.json
    python -m benchmarks zerogpu --models qwen2.5-7b-instruct --write-7b --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from benchmarks.harness.hub_cache import write_qwen_7b
from benchmarks.harness.servers import start_app, stop_app
from benchmarks.harness.zerogpu_api import DeviceAPI


def gpu_uuid() -> str:
    """This machine's first GPU, as spaces' worker selects it (CUDA_VISIBLE_DEVICES=<uuid>)."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "GPU-none"  # no GPU here: run with tests/zerogpu/standin on PYTHONPATH (the CPU stands in)
    return out.split("UUID: ")[1].split(")")[0]


def request(client, model_id: str, task: str) -> dict:
    start = time.perf_counter()
    if task == "text":
        client.predict(model_id, "If the file", 64, 0.0, api_name="/generate_text")
    else:
        size = client.predict(api_name="/models")
        sizes = next(m["sizes"] for m in size if m["id"] == model_id)
        client.predict(model_id, "a red circle, top left", sizes[0], 8, 0, 0, api_name="/generate_image")
    wall = time.perf_counter() - start
    record = client.predict(api_name="/metrics")["requests"][-1]
    return {**{k: record[k] for k in ("runtime", "latency_s", "setup_s", "ttft_s", "tokens", "worker_pid", "bind_s", "tokens_per_s", "step_ms", "peak_mem_mb", "ok", "error")},
            "client_wall_s": round(wall, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="comma-separated startup models (AOTI_STARTUP_MODELS)")
    parser.add_argument("--write-7b", action="store_true", help="write Qwen2.5-7B (random weights) into a local HF cache first")
    parser.add_argument("--requests", type=int, default=3, help="requests per model and scheduler mode")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from gradio_client import Client

    work = Path(os.environ.get("TMPDIR", "/tmp")) / "zerogpu_fork"
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"models": args.models}
    if args.write_7b:
        result["write_7b_s"] = round(write_qwen_7b(work / "hf"), 1)
    api = DeviceAPI(idle=True, uuid=gpu_uuid())
    env = {"SPACES_ZERO_GPU": "true", "SPACES_ZERO_DEVICE_API_URL": api.url, "AOTI_STARTUP_MODELS": args.models,
           "HF_HOME": str(work / "hf"), "HF_HUB_OFFLINE": "1", "HOME": str(work / "home")}
    started = time.perf_counter()
    proc, url = start_app(work / "app.log", work / "cache", env, timeout=900)
    result["up_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    try:
        client = Client(url, verbose=False)
        catalog = {m["id"]: m for m in client.predict(api_name="/models")}
        result["compile_status"] = [r for r in client.predict(api_name="/compile_status") if r["state"] != "not loaded"]
        out.write_text(json.dumps(result, indent=2))
        for model_id in args.models.split(","):
            task = catalog[model_id]["task"]
            runs = result.setdefault("requests", {}).setdefault(model_id, {})
            for mode, idle in (("reused", True), ("fresh_fork", False)):
                api.idle = idle
                runs[mode] = [request(client, model_id, task) for _ in range(args.requests)]
                out.write_text(json.dumps(result, indent=2))
            api.idle = True
            client.predict(model_id, False, False, False, api_name="/set_optimization")
            runs["eager"] = [request(client, model_id, task) for _ in range(args.requests)]
            client.predict(model_id, True, False, False, api_name="/set_optimization")
            out.write_text(json.dumps(result, indent=2))
        result["compile_status_after"] = [r for r in client.predict(api_name="/compile_status") if r["state"] != "not loaded"]
    finally:
        stop_app(proc, work / "app.log")
        api.close()
        result["app_log_tail"] = (work / "app.log").read_text()[-4000:]
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "app_log_tail"}, indent=2))


if __name__ == "__main__":
    main()

"""AOTI Studio: a ZeroGPU-style Space that serves text and image models whose hot module runs as an
ahead-of-time compiled graph (torch.export + AOTInductor), with a live side panel.

UI only: layout, events, named API endpoints. All model work goes through `engines.Studio`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import spaces  # noqa: I001  (must come before anything initialises CUDA)

from engines import ImageParams, SamplingParams, Studio

logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
log = logging.getLogger("app")

ON_ZEROGPU = bool(os.environ.get("SPACES_ZERO_GPU"))
COMPILE_AT_STARTUP = os.environ.get("AOTI_COMPILE", "1") != "0"
studio = Studio()
MODELS = studio.models()
TEXT_MODELS = [m["id"] for m in MODELS if m["task"] == "text"]
IMAGE_MODELS = [m["id"] for m in MODELS if m["task"] == "image"]
DEFAULT_TEXT = next(m["id"] for m in MODELS if m["task"] == "text" and m["source"] == "embedded")
DEFAULT_IMAGE = next(m["id"] for m in MODELS if m["task"] == "image" and m["source"] == "embedded")


# --- GPU functions: pure, they return their measurements (on ZeroGPU they run in a forked worker) --------


def _text_duration(model_id: str, prompt: str, params: SamplingParams) -> int:
    return int(20 + params.max_new_tokens * 0.1)


def _image_duration(model_id: str, prompt: str, params: ImageParams, progress: Any = None) -> int:
    return int(20 + params.steps * max(1, params.height * params.width / 1024**2) * 1.5)


@spaces.GPU(duration=_text_duration)
def _text_on_gpu(model_id: str, prompt: str, params: SamplingParams):
    yield from studio.generate_text(model_id, prompt, params)


@spaces.GPU(duration=_image_duration)
def _image_on_gpu(model_id: str, prompt: str, params: ImageParams, progress: Any = None):
    return studio.generate_image(model_id, prompt, params, progress)


@spaces.GPU(duration=1500)
def _compile_on_gpu(model_ids: list[str]) -> None:
    studio.startup(model_ids, compile=True, background=False)


def startup() -> None:
    """Serve eagerly at once; compile (or load cached graphs) in the background. On ZeroGPU the
    compile runs inside a startup @spaces.GPU call, as Spaces require."""
    if ON_ZEROGPU:
        _compile_on_gpu([DEFAULT_TEXT, DEFAULT_IMAGE])
    else:
        studio.startup([DEFAULT_TEXT, DEFAULT_IMAGE], compile=COMPILE_AT_STARTUP, background=True)


# --- handlers: validation and bookkeeping around the GPU functions ---------------------------------


def generate_text(model_id: str, prompt: str, max_new_tokens: float, temperature: float):
    """Stream a continuation of `prompt` from a text model."""
    params = SamplingParams(max_new_tokens=int(max_new_tokens), temperature=float(temperature), seed=0)
    try:
        studio.check_model(model_id, "text")
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    runtime, start, last = studio.runtime_of(model_id), time.perf_counter(), None
    try:
        for step in _text_on_gpu(model_id, prompt, params):
            last = step
            yield step.text
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    except Exception as exc:  # a failed run is recorded and reported; the server keeps serving
        log.exception("text generation failed")
        studio.record_text(model_id, runtime, time.perf_counter() - start, last, error=str(exc)[:300])
        raise gr.Error(f"generation failed: {exc}") from None
    studio.record_text(model_id, runtime, time.perf_counter() - start, last)
    if last is None:
        yield ""


def generate_image(model_id: str, prompt: str, size: str, steps: float, seed: float, guidance: float,
                   progress: gr.Progress = gr.Progress()):
    """Generate one PNG image; returns the image and a line of measurements."""
    try:
        width, height = (int(v) for v in str(size).lower().split("x"))
    except ValueError:
        raise gr.Error(f"size must look like 32x32, got {size!r}") from None
    spec_guidance = next((m["guidance"] for m in MODELS if m["id"] == model_id), None)
    params = ImageParams(height, width, int(steps), int(seed), float(guidance) if spec_guidance is not None else None)
    try:
        studio.check_model(model_id, "image")
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    runtime, start = studio.runtime_of(model_id), time.perf_counter()
    try:
        result = _image_on_gpu(model_id, prompt, params, progress)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    except Exception as exc:  # a failed run is recorded and reported; the server keeps serving
        log.exception("image generation failed")
        studio.record_image(model_id, runtime, None, time.perf_counter() - start, error=str(exc)[:300])
        raise gr.Error(f"generation failed: {exc}") from None
    studio.record_image(model_id, runtime, result, time.perf_counter() - start)
    steps_ms = sorted(result.step_ms)
    info = f"{result.latency_s:.2f} s · {len(steps_ms)} steps · median step {steps_ms[len(steps_ms) // 2]:.1f} ms · {runtime}"
    return result.image, info


def metrics() -> dict[str, Any]:
    """Request history, memory samples and summary figures."""
    return studio.metrics.snapshot()


def models() -> list[dict[str, Any]]:
    """The model catalog with availability and the engine each would run on here."""
    return studio.models()


def compile_status() -> list[dict[str, Any]]:
    """Per model: eager / compiling / aoti / fallback, with reasons, timings, cache hit and speedup."""
    return studio.compile_status()


def set_optimization(model_id: str, use_aoti: bool, fp8: bool, regional: bool) -> list[dict[str, Any]]:
    """Turn AOTI on or off for a model, with FP8 and regional compilation where supported."""
    try:
        studio.set_optimization(model_id, bool(use_aoti), bool(fp8), bool(regional))
    except (ValueError, KeyError) as exc:
        raise gr.Error(str(exc.args[0] if exc.args else exc)) from None
    return studio.compile_status()


# --- side panel ------------------------------------------------------------------------------------

_LATENCY_COLUMNS = {"request": pd.Series(dtype="int"), "latency_s": pd.Series(dtype="float"), "model": pd.Series(dtype="str")}
_MEMORY_COLUMNS = {"seconds": pd.Series(dtype="float"), "MiB": pd.Series(dtype="float")}
_START = time.time()
CSS = "#image-output img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }"


def _panel():
    studio.metrics.sample_memory(studio.device.torch_device)
    snap = studio.metrics.snapshot()
    latency = pd.DataFrame(_LATENCY_COLUMNS)
    if snap["requests"]:
        latency = pd.DataFrame([{"request": i + 1, "latency_s": r["latency_s"], "model": r["model"]} for i, r in enumerate(snap["requests"])])
    # Seed every model as a category (a NaN row each) so series added later still draw: the Vega spec
    # is fixed by the first value.
    seeds = pd.DataFrame({"request": np.nan, "latency_s": np.nan, "model": TEXT_MODELS + IMAGE_MODELS})
    latency = pd.concat([seeds, latency], ignore_index=True)
    memory = pd.DataFrame([{"seconds": round(m["t"] - _START, 1), "MiB": round(m["mb"], 1)} for m in snap["memory"]]) if snap["memory"] else pd.DataFrame(_MEMORY_COLUMNS)
    s = snap["summary"]

    def fmt(value: float | None, unit: str) -> str:
        return "–" if value is None else f"{value:.3g} {unit}"

    summary = (
        f"**Device** {studio.device.label}  \n"
        f"**Requests** {s['count']} ({s['errors']} errors) · **latency** {fmt(s['median_latency_s'], 's')}  \n"
        f"**TTFT** {fmt(s['median_ttft_s'], 's')} · **tokens/s** {fmt(s['median_tokens_per_s'], '')} · "
        f"**step** {fmt(s['median_step_ms'], 'ms')}"
    )
    status = pd.DataFrame(studio.compile_status())
    status = status[status["state"] != "not loaded"][["model", "state", "compile_s", "load_s", "cache_hit", "cuda_graphs", "speedup", "reason"]]
    status = status.rename(columns={"compile_s": "compile s", "load_s": "load s", "cache_hit": "cached", "cuda_graphs": "CUDA graphs"})
    return latency, memory, summary, status


def _model_choices(task: str) -> list[tuple[str, str]]:
    return [(m["id"] if m["available"] else f"{m['id']} — unavailable: {m['reason']}", m["id"]) for m in MODELS if m["task"] == task]


def _image_sizes(model_id: str):
    spec = next((m for m in MODELS if m["id"] == model_id), None)
    sizes = spec["sizes"] if spec else []
    return gr.Dropdown(choices=sizes, value=sizes[0] if sizes else None), gr.Slider(value=spec["steps"] if spec else 20)


def build() -> gr.Blocks:
    with gr.Blocks(title="AOTI Studio") as demo:
        gr.Markdown("# AOTI Studio\nModels whose hot module runs as an ahead-of-time compiled graph "
                    "(torch.export + AOTInductor), cached and hot-swapped. The side panel is live.")
        with gr.Tab("Text"):
            text_model = gr.Dropdown(_model_choices("text"), value=DEFAULT_TEXT, label="Model", allow_custom_value=True)
            prompt = gr.Textbox(label="Prompt", value="Return the number of", lines=2, elem_id="text-prompt")
            with gr.Row():
                max_tokens = gr.Slider(1, 200, value=60, step=1, label="Max new tokens")
                temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            text_button = gr.Button("Generate", variant="primary", elem_id="text-generate")
            text_out = gr.Textbox(label="Output", lines=6, buttons=["copy"], elem_id="text-output")
        with gr.Tab("Image"):
            image_model = gr.Dropdown(_model_choices("image"), value=DEFAULT_IMAGE, label="Model", allow_custom_value=True)
            image_prompt = gr.Textbox(label="Prompt", value="a red circle, top left", elem_id="image-prompt")
            with gr.Row():
                size = gr.Dropdown(["32x32"], value="32x32", label="Size", allow_custom_value=True)
                steps = gr.Slider(1, 50, value=20, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, label="Seed")
                guidance = gr.Slider(0, 10, value=3.5, step=0.5, label="Guidance (models that use it)")
            image_button = gr.Button("Generate", variant="primary", elem_id="image-generate")
            image_out = gr.Image(label="Image", format="png", type="pil", elem_id="image-output", height=320)
            image_info = gr.Markdown()
        with gr.Tab("Optimization"):
            opt_model = gr.Dropdown([m["id"] for m in MODELS], value=DEFAULT_TEXT, label="Model", allow_custom_value=True)
            with gr.Row():
                use_aoti = gr.Checkbox(value=True, label="AOTI")
                fp8 = gr.Checkbox(value=False, label="FP8 (compute capability >= 8.9)")
                regional = gr.Checkbox(value=False, label="Regional compile")
            opt_button = gr.Button("Apply")
            opt_out = gr.JSON(label="Compile status")
        with gr.Sidebar(position="right", open=True, label="Live", width=480):
            summary = gr.Markdown()
            latency_plot = gr.ScatterPlot(x="request", y="latency_s", color="model", title="Latency per request (s)", height=220)
            memory_plot = gr.LinePlot(x="seconds", y="MiB", title="Memory (MiB)", height=200)
            status_table = gr.Dataframe(label="Compile status", wrap=True, max_chars=80,
                                        column_widths=["130px", "70px", "70px", "60px", "60px", "60px", "240px"])
            gr.Timer(1.0).tick(_panel, outputs=[latency_plot, memory_plot, summary, status_table], api_visibility="private", show_progress="hidden")

        text_button.click(generate_text, [text_model, prompt, max_tokens, temperature], text_out, api_name="generate_text", concurrency_id="device")
        image_button.click(generate_image, [image_model, image_prompt, size, steps, seed, guidance], [image_out, image_info], api_name="generate_image", concurrency_id="device")
        image_model.change(_image_sizes, image_model, [size, steps], api_visibility="private")
        opt_button.click(set_optimization, [opt_model, use_aoti, fp8, regional], opt_out, api_name="set_optimization")
        hidden = gr.JSON(visible=False)
        gr.Button(visible=False).click(metrics, None, hidden, api_name="metrics")
        gr.Button(visible=False).click(models, None, hidden, api_name="models")
        gr.Button(visible=False).click(compile_status, None, hidden, api_name="compile_status")
    return demo


demo = build()
demo.queue(default_concurrency_limit=1)
if ON_ZEROGPU:
    startup()
else:
    threading.Thread(target=startup, name="startup", daemon=True).start()

if __name__ == "__main__":
    demo.launch(theme=gr.themes.Soft(), css=CSS)

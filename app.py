"""AOTI Studio: a ZeroGPU-style Space that serves text and image models whose hot module runs as an
ahead-of-time compiled graph (torch.export + AOTInductor), with a live side panel.

UI only: layout, events, named API endpoints. All model work goes through `engines.Studio`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from typing import Any

import gradio as gr

from engines.device import on_zerogpu
from engines.workers import prepare_torch_for_spaces

ON_ZEROGPU = on_zerogpu()
if ON_ZEROGPU:
    prepare_torch_for_spaces()
import spaces  # noqa: E402, I001  (before anything initialises CUDA)

from engines import Binding, ImageParams, ImageResult, RunReport, SamplingParams, Studio, Switches, inputs, registry  # noqa: E402
from engines.image import STEP_CACHE  # noqa: E402
from engines.metrics import median  # noqa: E402
import panel  # noqa: E402
from engines.access import Access  # noqa: E402

logging.basicConfig(level=os.environ.get("LOGLEVEL", "INFO"), format="%(asctime)s %(name)s: %(message)s")
log = logging.getLogger("app")

COMPILE_AT_STARTUP = os.environ.get("AOTI_COMPILE", "1") != "0"
QUEUE_MAX = int(os.environ.get("AOTI_QUEUE_MAX", "64"))  # requests waiting at most; more are told the server is busy
ACCESS = Access.from_env()  # who may change the server for everyone
registry.owner_adapters()  # the owner's adapters (AOTI_ADAPTERS): a bad list stops the start here, saying what is wrong
STARTUP_RETRY_S = float(os.environ.get("AOTI_STARTUP_RETRY_S", "60"))  # ZeroGPU: a refused startup compile, tried again
STARTUP_ATTEMPTS = 5
studio = Studio(gpu_in_workers=ON_ZEROGPU, open_catalog=ACCESS.open)
MODELS = studio.models()
TEXT_MODELS = [m["id"] for m in MODELS if m["task"] == "text"]
IMAGE_MODELS = [m["id"] for m in MODELS if m["task"] == "image"]
PANEL = panel.Panel({m["id"]: m["task"] for m in MODELS})
STARTUP_MODELS = registry.startup_models(os.environ.get("AOTI_STARTUP_MODELS"))  # loaded (and compiled) at startup


def _default(task: str) -> str:
    """The model a tab opens on: the startup model of its task, else the embedded one."""
    ids = [m["id"] for m in MODELS if m["task"] == task]
    return next((i for i in STARTUP_MODELS if i in ids), next(m["id"] for m in MODELS if m["task"] == task and m["source"] == "embedded"))


DEFAULT_TEXT, DEFAULT_IMAGE = _default("text"), _default("image")
TEXT_EXAMPLES = ["Return the number of", "def read(path):", "If the file"]
IMAGE_EXAMPLES = ["a red circle, top left", "a blue square, center", "a yellow triangle, bottom right"]


def _model(model_id: Any) -> dict[str, Any] | None:
    """The catalog row of ``model_id`` (`Studio.models`), None for an id the catalog lacks."""
    return next((m for m in MODELS if m["id"] == model_id), None)


# --- GPU functions: on ZeroGPU each call runs in a forked worker; plain data in, plain data out -------
# Each exists once per ZeroGPU size ("large": half a card, "xlarge": a whole one), chosen per model.


def _message(exc: Exception) -> str:
    """What an error says: a `gr.Error`'s message, or the class and text of any other."""
    return str(exc.message) if isinstance(exc, gr.Error) else f"{type(exc).__name__}: {exc}"


@contextlib.contextmanager
def _messages_cross_the_fork():
    """spaces passes only a `gr.Error`'s message back from a worker (any other exception arrives as its
    class name): raise every error as one, bad input apart from failures."""
    try:
        yield
    except gr.Error:
        raise
    except ValueError as exc:  # bad input the main process could not see (the worker's model is loaded there)
        log.warning("GPU call refused its input: %s", exc)
        raise gr.Error(str(exc), title="Invalid request", print_exception=False) from None
    except Exception as exc:
        log.exception("GPU call failed")
        raise gr.Error(f"{type(exc).__name__}: {exc}"[:500], title="GPU call failed", print_exception=False) from None


def _text_task():
    def text_on_gpu(model_id: str, prompt: str, params: SamplingParams, binding: Binding | None, compare: bool = False):
        with _messages_cross_the_fork():
            yield from studio.serve_text(model_id, prompt, params, binding, compare)
    return text_on_gpu


def _image_task():
    def image_on_gpu(model_id: str, prompt: str, params: ImageParams, binding: Binding | None, progress: Any = None,
                     compare: bool = False):
        with _messages_cross_the_fork():
            return studio.serve_image(model_id, prompt, params, binding, progress, compare)
    return image_on_gpu


def _compile_task():
    def compile_on_gpu(model_ids: list[str], switches: Switches | None) -> list[dict[str, Any]]:
        with _messages_cross_the_fork():
            return studio.serve_compile(model_ids, switches)
    return compile_on_gpu


SIZES = ("large", "xlarge")
# An A/B comparison runs the request twice: twice the GPU time.
TEXT_ON_GPU = {size: spaces.GPU(_text_task(), size=size, duration=lambda m, p, params, b, compare=False:
                                studio.ledger.gpu_seconds_text(m, params) * (2 if compare else 1)) for size in SIZES}
IMAGE_ON_GPU = {size: spaces.GPU(_image_task(), size=size, duration=lambda m, p, params, b, progress=None, compare=False:
                                 studio.ledger.gpu_seconds_image(m, params) * (2 if compare else 1)) for size in SIZES}
COMPILE_ON_GPU = {size: spaces.GPU(_compile_task(), duration=lambda ids, *a: studio.ledger.gpu_seconds_compile(ids), size=size)
                  for size in SIZES}


def compile_in_worker(model_ids: list[str], switches: Switches | None = None) -> None:
    """ZeroGPU: compile (or load from the cache) in a GPU call (``switches`` None: each model's
    defaults); record what it returns. A refused or failed call leaves the models serving eager with
    the reason shown, and raises."""
    studio.ledger.mark_compiling(model_ids, switches)
    size = max((studio.ledger.gpu_size(m) for m in model_ids), key=SIZES.index)
    try:
        rows = COMPILE_ON_GPU[size](model_ids, switches)
    except Exception as exc:
        studio.ledger.compile_failed(model_ids, f"compile GPU call failed: {_message(exc)}")
        raise
    studio.ledger.record_compiles(rows, asked=model_ids)


def _startup_on_zerogpu(attempt: int = 1) -> None:
    """Compile the defaults in a GPU call; if it is refused or fails, serve eager and try again later."""
    loaded = [m for m in STARTUP_MODELS if m in studio.served.ids()]  # (an unavailable one says so on its card)
    if not loaded:
        return
    try:
        compile_in_worker(loaded)
    except Exception as exc:
        if attempt >= STARTUP_ATTEMPTS:
            log.error("startup compile failed %d times; serving eager: %s", attempt, _message(exc))
            return
        delay = STARTUP_RETRY_S * attempt
        log.warning("startup compile failed (%s); serving eager, trying again in %.0f s", _message(exc), delay)
        studio.ledger.compile_failed(loaded,
                              f"startup compile GPU call failed ({_message(exc)}); serving eager, trying again in {delay:.0f} s")
        threading.Timer(delay, _startup_on_zerogpu, kwargs={"attempt": attempt + 1}).start()


def startup() -> None:
    """Locally: serve eagerly at once, compile (or load cached graphs) in the background. On ZeroGPU:
    load the models in the main thread (spaces moves them to each worker's GPU), then compile in a GPU
    call (as Spaces require) unless AOTI_COMPILE=0."""
    if not ON_ZEROGPU:
        threading.Thread(target=studio.startup, args=(STARTUP_MODELS,),
                         kwargs={"compile": COMPILE_AT_STARTUP}, name="startup", daemon=True).start()
        return
    studio.startup(STARTUP_MODELS, compile=False)
    if COMPILE_AT_STARTUP:
        _startup_on_zerogpu()


# --- handlers: validation in this process, the run on the GPU, bookkeeping from its report -------------


def _failed(exc: Exception) -> tuple[str, gr.Error]:
    """The message to record and the error to raise for a failed request."""
    if isinstance(exc, gr.Error):
        return _message(exc)[:300], exc
    log.exception("request failed")
    return _message(exc)[:300], gr.Error(f"generation failed: {exc}")


def _image_params(model_id: str, size: str, steps: float, seed: float, guidance: float, step_cache: str, lora: str,
                  lora_scale: float) -> ImageParams:
    uses_guidance = (row := _model(model_id)) is not None and row["guidance"] is not None
    return inputs.image_params(size, steps, seed, guidance, uses_guidance, step_cache, lora, lora_scale)


def _text_request(model_id, prompt, max_new_tokens, temperature, compare, speculative, lora, lora_scale) -> SamplingParams:
    """The checked parameters of a text request; a ValueError naming the input otherwise."""
    most = row["max_new_tokens"] if (row := _model(model_id)) else 2**31 - 1
    params = inputs.text_params(max_new_tokens, temperature, speculative, most, lora, lora_scale)
    inputs.flag("compare", compare)
    studio.check_text(model_id, prompt, params)
    return params


def _image_request(model_id, prompt, size, steps, seed, guidance, compare, step_cache, lora, lora_scale) -> ImageParams:
    """The checked parameters of an image request; a ValueError naming the input otherwise."""
    params = _image_params(model_id, size, steps, seed, guidance, step_cache, lora, lora_scale)
    inputs.flag("compare", compare)
    studio.check_image(model_id, prompt, params)
    return params


def _verdict(check, names: list[str]) -> list[dict[str, Any]]:
    """`gr.validate` for each input: the request's check, its message on the input it names ("`steps`",
    "the prompt", "size ..."), else on the model."""
    try:
        check()
    except ValueError as exc:
        message = str(exc)
        at = next((i for i, n in enumerate(names) if f"`{n}`" in message or f"the {n} " in message or message.startswith(f"{n} ")), 0)
        return [gr.validate(i != at, message if i == at else "") for i in range(len(names))]
    return [gr.validate(True, "")] * len(names)


# Validators run when a request arrives, before it queues for the device (Gradio's ``validator=``): bad
# input is refused at once, with its message, however long the queue. The events skip Gradio's own
# preprocessing (``preprocess=False``), whose bound checks answer API clients with a bare 400, so the
# raw values meet `engines.inputs` here. The handlers check again (the same functions), for callers
# that reach them another way.


def validate_text(model_id: str, prompt: str, max_new_tokens: float, temperature: float, compare: bool = False,
                  speculative: bool = False, lora: str = "", lora_scale: float = 1.0):
    return _verdict(lambda: _text_request(model_id, prompt, max_new_tokens, temperature, compare, speculative, lora, lora_scale),
                    ["model_id", "prompt", "max_new_tokens", "temperature", "compare", "speculative", "lora", "lora_scale"])


def validate_image(model_id: str, prompt: str, size: str, steps: float, seed: float, guidance: float, compare: bool = False,
                   step_cache: str = "off", lora: str = "", lora_scale: float = 1.0):
    return _verdict(lambda: _image_request(model_id, prompt, size, steps, seed, guidance, compare, step_cache, lora, lora_scale),
                    ["model_id", "prompt", "size", "steps", "seed", "guidance", "compare", "step_cache", "lora", "lora_scale"])


def validate_optimization(model_id: str, use_aoti: bool, fp8: bool, regional: bool, admin_token: str = ""):
    def check() -> None:
        switches = inputs.switches(use_aoti, fp8, regional)
        inputs.text("admin_token", admin_token)
        studio.check_optimization(model_id, switches)

    return _verdict(check, ["model_id", "use_aoti", "fp8", "regional", "admin_token"])


def generate_text(model_id: str, prompt: str, max_new_tokens: float, temperature: float, compare: bool = False,
                  speculative: bool = False, lora: str = "", lora_scale: float = 1.0):
    """Stream a continuation of `prompt` from a text model. ``compare`` runs the request once more on the
    eager forward and reports both speeds (in `/metrics`), for this request only. ``speculative`` decodes
    with the model's draft model (`engines.speculative`); refused for a model that has none. ``lora``:
    one of the model's adapters ("": none) at ``lora_scale``, fused into the compiled model's weights."""
    try:
        params = _text_request(model_id, prompt, max_new_tokens, temperature, compare, speculative, lora, lora_scale)
        studio.admit_request(model_id)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    start, last, report = time.perf_counter(), None, None
    try:
        for item in TEXT_ON_GPU[studio.ledger.gpu_size(model_id)](model_id, prompt, params, studio.ledger.binding(model_id), bool(compare)):
            if isinstance(item, RunReport):
                report = item
                continue
            last = item
            yield item.text
    except Exception as exc:  # recorded and reported; the server keeps serving
        message, error = _failed(exc)
        studio.ledger.record_text(model_id, time.perf_counter() - start, last, report, error=message, params=params)
        raise error from None
    studio.ledger.record_text(model_id, time.perf_counter() - start, last, report, params=params)
    if report is not None and (line := panel.comparison(report.compared, "text")):
        gr.Info(line)
    elif report is not None and report.compare_note:
        gr.Warning(report.compare_note)
    if last is None:
        yield ""


def _stage_line(result: ImageResult, params: ImageParams) -> str:
    """"text encoding 0.05 s · 28 steps, median 210.3 ms · VAE decode 0.12 s": the stages the pipeline has;
    with step caching, how many steps reused the blocks' residual (and why caching stopped, if it did)."""
    parts = []
    for stage, seconds in result.stages_s.items():
        if stage == "denoising" and result.step_ms:
            cached = (f" ({len(result.cached_steps)} reused the step before: step caching {params.step_cache}"
                      f"{'; ' + result.step_cache_note if result.step_cache_note else ''})" if params.step_cache != "off" else "")
            parts.append(f"{len(result.step_ms)} steps{cached}, median {median(result.step_ms):.1f} ms")
        elif stage != "denoising":
            parts.append(f"{stage} {seconds:.2f} s")
    return " · ".join(parts) or f"{len(result.step_ms)} steps"


def generate_image(model_id: str, prompt: str, size: str, steps: float, seed: float, guidance: float,
                   compare: bool = False, step_cache: str = "off", lora: str = "", lora_scale: float = 1.0,
                   progress: gr.Progress = gr.Progress()):
    """Generate one PNG image; returns the image and a line of measurements (with ``compare``, the
    request's step time compiled and eager too). ``step_cache`` ("off", "fast", "faster"): steps that
    change little reuse the residual of the denoiser's later blocks, on models that offer it. ``lora``:
    one of the model's adapters ("": none) at ``lora_scale``, fused into the compiled model's weights."""
    try:
        params = _image_request(model_id, prompt, size, steps, seed, guidance, compare, step_cache, lora, lora_scale)
        studio.admit_request(model_id)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    start = time.perf_counter()
    try:
        result, report = IMAGE_ON_GPU[studio.ledger.gpu_size(model_id)](model_id, prompt, params, studio.ledger.binding(model_id), progress,
                                                                 bool(compare))
    except Exception as exc:  # recorded and reported; the server keeps serving
        message, error = _failed(exc)
        studio.ledger.record_image(model_id, None, time.perf_counter() - start, error=message)
        raise error from None
    studio.ledger.record_image(model_id, result, time.perf_counter() - start, report, params=params)
    info = f"{result.latency_s:.2f} s · {_stage_line(result, params)} · {report.runtime}"
    if params.lora:
        info += (f" · LoRA {params.lora} at {params.lora_scale:g}"
                 + (f", switched in {result.lora_switch_s * 1e3:.0f} ms (no rebuild)" if result.lora_switch_s else ""))
    if line := panel.comparison(report.compared, "image") or report.compare_note:
        info += f" · {line}"
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


def set_optimization(model_id: str, use_aoti: bool, fp8: bool, regional: bool, admin_token: str = "",
                     profile: gr.OAuthProfile | None = None) -> list[dict[str, Any]]:
    """Turn AOTI on or off for a model, with FP8 and regional compilation where supported: for the
    owner only (`engines.access`). On ZeroGPU the compile runs in a GPU call, and later requests bind
    its graphs."""
    try:
        ACCESS.require(profile.username if profile is not None else None, admin_token or None)
    except PermissionError as exc:
        raise gr.Error(str(exc), title="Owner only", print_exception=False) from None
    before = studio.states.get(model_id) if isinstance(model_id, str) else None
    try:
        switches = inputs.switches(use_aoti, fp8, regional)
        if ON_ZEROGPU and switches.aoti:
            if studio.admit_compile(model_id, switches):
                compile_in_worker([model_id], switches)
                studio.serve(model_id, "the owner")
        else:
            studio.set_optimization(model_id, switches)
    except gr.Error:
        raise
    except (ValueError, KeyError) as exc:
        raise gr.Error(str(exc.args[0] if exc.args else exc)) from None
    except Exception as exc:  # a refused or failed GPU call: recorded by compile_in_worker
        raise gr.Error(f"compile failed: {_message(exc)}") from None
    gr.Info(_applied(model_id, switches, before, studio.states[model_id]))
    return studio.compile_status()


def _applied(model_id: str, switches: Switches, before: Any, after: Any) -> str:
    """What an Apply did, in words: what changed, or that nothing did."""
    if before is not None and (after.phase, after.switches, after.compiles) == (before.phase, before.switches, before.compiles):
        how = "compiled" if switches.aoti else "eager"
        return f"Nothing changed: {model_id} already runs {how} with these settings."
    if not switches.aoti:
        return f"{model_id}: AOTI off, it runs eager now."
    extras = [name for name, on in (("FP8", switches.fp8), ("regional", switches.regional)) if on]
    doing = {"compiling": "compiling", "aoti": "compiled"}.get(str(after.phase), str(after.phase))
    return f"{model_id}: {doing}{' with ' + ' and '.join(extras) if extras else ''}."


# --- side panel ------------------------------------------------------------------------------------

def _panel():
    """The side panel's outputs, every second: plots, summary and cards."""
    studio.ledger.sample_memory()
    return PANEL.render(studio.metrics.snapshot(), studio.compile_status(), studio.device.label, studio.device.budget_bytes)


PHONE_WIDTH = 700  # px: below this the sidebar would cover the page, so it starts closed


def _sidebar_for(width: float | None) -> gr.Sidebar:
    """The live panel open beside the page on a screen that has room for both, closed on a phone."""
    return gr.Sidebar(open=not width or width >= PHONE_WIDTH)


def _usable(profile: gr.OAuthProfile | None) -> tuple[bool, bool]:
    """(whether this visitor owns the server, whether the controls take input: an owner, or anyone
    holding the admin token, which only the server can check)."""
    owner = ACCESS.allows(profile.username if profile is not None else None)
    return owner, owner or bool(ACCESS.admin_token)


def _switches_for(model_id: str, profile: gr.OAuthProfile | None = None):
    """FP8 and regional for the chosen model: enabled where they apply, else disabled with why in the label;
    ticked as the model runs now (or by default: regional where step caching is offered)."""
    _, usable = _usable(profile)
    row = _model(model_id)
    if row is None:  # (a stranger's id: the tab's Apply refuses it with the reason)
        return gr.update(interactive=usable, label="FP8"), gr.update(interactive=usable, label="Regional compile")
    offered = ", ".join(m["id"] for m in MODELS if m["regional"]) or "none"
    fp8_label = f"FP8: {row['fp8_note'].removeprefix('FP8 ')}" if row["fp8_note"] else "FP8"
    regional_label = (f"Regional compile: {row['regional_note'].removeprefix('regional compilation is ')} (offered for: {offered})"
                      if row["regional_note"] else "Regional compile")
    now = studio.switches_of(model_id)  # what Apply would keep: the model's switches, not the last model's
    return (gr.update(interactive=usable and row["fp8"], label=fp8_label, value=now.fp8 and row["fp8"]),
            gr.update(interactive=usable and row["regional"], label=regional_label, value=now.regional and row["regional"]))


def _optimization_controls(model_id: str, profile: gr.OAuthProfile | None = None):
    """The Optimization tab for this visitor: usable by an owner (or the admin token's holder), read-only
    with the reason for everyone else; the switches as `_switches_for` the chosen model."""
    owner, usable = _usable(profile)
    note = "" if owner else ACCESS.refusal()
    fp8, regional = _switches_for(model_id, profile)
    return gr.update(interactive=usable), fp8, regional, gr.update(interactive=usable), gr.update(value=note)


def _model_choices(task: str | None = None) -> list[tuple[str, str]]:
    """Every model of ``task`` (default: all), an unavailable one marked with the reason; on a server
    with an owner, the generating tabs mark the models that are not served (the owner loads them)."""
    def label(m: dict[str, Any]) -> str:
        if not m["available"]:
            return f"{m['id']} — unavailable: {m['reason']}"
        if task is not None and not ACCESS.open and m["id"] not in STARTUP_MODELS:
            return f"{m['id']} — not served here (the owner loads models)"
        return m["id"]

    return [(label(m), m["id"]) for m in MODELS if task in (None, m["task"])]


def _image_controls(model_id: str):
    """The image tab's controls for the chosen model: its sizes and steps, guidance only where it uses
    it, the words its prompt may use where it knows a fixed set, and step caching where offered."""
    spec = _model(model_id)
    sizes = spec["sizes"] if spec else []
    return (gr.Dropdown(choices=sizes, value=sizes[0] if sizes else None), gr.Slider(value=spec["steps"] if spec else 20),
            gr.Slider(visible=bool(spec) and spec["guidance"] is not None), gr.Markdown(spec["prompt_hint"] if spec else ""),
            gr.Radio(**_step_cache_control(model_id)), gr.Dropdown(**_lora_control(model_id)))


def _lora_control(model_id: str) -> dict[str, Any]:
    """The adapter choice for a model: none, or one of the adapters offered for it (the owner's list)."""
    offered = (_model(model_id) or {}).get("adapters") or []
    label = ("LoRA adapter (fused into the compiled model's weights: no rebuild)" if offered
             else f"LoRA adapter: none offered for {model_id}")
    return {"choices": [("none", "")] + [(a, a) for a in offered], "value": "", "label": label, "interactive": bool(offered)}


def _step_cache_control(model_id: str) -> dict[str, Any]:
    """The step caching choice for a model: usable where offered, else "off" and disabled with why."""
    label = ("Step caching: steps that change little reuse the later blocks' work (\"fast\": no visible change on "
             "the embedded DiT; \"faster\": more steps skipped)")
    if (row := _model(model_id)) is not None and row["step_cache"]:
        return {"label": label, "interactive": True}
    offered = ", ".join(m["id"] for m in MODELS if m["step_cache"]) or "none"
    return {"label": f"Step caching: not offered for {model_id} (offered for: {offered})", "interactive": False, "value": "off"}


def _scroll_to(selector: str) -> str:
    """JS that brings the output into view (on a phone it is below the fold when Generate is pressed)."""
    return f"() => {{ document.querySelector('{selector}')?.scrollIntoView({{behavior: 'smooth', block: 'nearest'}}); }}"


def build() -> gr.Blocks:
    with gr.Blocks(title="AOTI Studio") as demo:
        gr.Markdown("# AOTI Studio\nModels whose hot module runs as an ahead-of-time compiled graph "
                    "(torch.export + AOTInductor), cached and hot-swapped. The side panel is live.")
        with gr.Tab("Text"):
            text_model = gr.Dropdown(_model_choices("text"), value=DEFAULT_TEXT, label="Model", allow_custom_value=True)
            prompt = gr.Textbox(label="Prompt", value="Return the number of", lines=2, elem_id="text-prompt")
            with gr.Row():
                max_tokens = gr.Slider(1, 200, value=60, step=1, label="Max new tokens")
                temperature = gr.Slider(0, inputs.TEMPERATURE_MAX, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            text_compare = gr.Checkbox(value=False, label="Compare with eager (runs it twice; changes nothing for others)",
                                       elem_id="text-compare")
            speculative = gr.Checkbox(value=False, elem_id="text-speculative", label=(
                "Speculative decoding: a small draft model proposes tokens, this model checks them in one step "
                "(the model's own greedy text, up to floating-point rounding on a GPU; the same sampling distribution)"))
            with gr.Row():
                text_lora = gr.Dropdown(elem_id="text-lora", allow_custom_value=True, **_lora_control(DEFAULT_TEXT))
                text_lora_scale = gr.Slider(0, inputs.LORA_SCALE_MAX, value=1.0, step=0.05, label="LoRA scale",
                                            elem_id="text-lora-scale")
            with gr.Row():
                text_button = gr.Button("Generate", variant="primary", elem_id="text-generate")
                text_stop = gr.Button("Stop", elem_id="text-stop")
            text_examples = gr.Examples([[p] for p in TEXT_EXAMPLES], [prompt], label="Examples (a click runs one)")
            text_out = gr.Textbox(label="Output", lines=6, buttons=["copy"], elem_id="text-output")
        with gr.Tab("Image"):
            image_model = gr.Dropdown(_model_choices("image"), value=DEFAULT_IMAGE, label="Model", allow_custom_value=True)
            image_prompt = gr.Textbox(label="Prompt", value="a red circle, top left", elem_id="image-prompt")
            image_hint = gr.Markdown(_model(DEFAULT_IMAGE)["prompt_hint"], elem_id="image-hint")
            with gr.Row():
                size = gr.Dropdown(["32x32"], value="32x32", label="Size", allow_custom_value=True)
                steps = gr.Slider(1, inputs.MAX_STEPS, value=20, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, label="Seed")
                guidance = gr.Slider(0, inputs.GUIDANCE_MAX, value=3.5, step=0.5, label="Guidance",
                                     visible=_model(DEFAULT_IMAGE)["guidance"] is not None)
            image_compare = gr.Checkbox(value=False, label="Compare with eager (runs it twice; changes nothing for others)",
                                        elem_id="image-compare")
            step_cache = gr.Radio(list(STEP_CACHE), elem_id="image-step-cache", **{"value": "off", **_step_cache_control(DEFAULT_IMAGE)})
            with gr.Row():
                lora = gr.Dropdown(elem_id="image-lora", allow_custom_value=True, **_lora_control(DEFAULT_IMAGE))
                lora_scale = gr.Slider(0, inputs.LORA_SCALE_MAX, value=1.0, step=0.05, label="LoRA scale", elem_id="image-lora-scale")
            with gr.Row():
                image_button = gr.Button("Generate", variant="primary", elem_id="image-generate")
                image_stop = gr.Button("Stop", elem_id="image-stop")
            image_examples = gr.Examples([[p] for p in IMAGE_EXAMPLES], [image_prompt], label="Examples (a click runs one)")
            image_out = gr.Image(label="Image", format="png", type="pil", elem_id="image-output", height=320)
            image_info = gr.Markdown(elem_id="image-info", label="measurements")
        with gr.Tab("Optimization"):
            opt_model = gr.Dropdown(_model_choices(), value=DEFAULT_TEXT, label="Model", allow_custom_value=True)
            with gr.Column():  # one switch a line: their labels carry reasons, and a phone has room for them
                use_aoti = gr.Checkbox(value=True, label="AOTI")
                fp8 = gr.Checkbox(value=False, elem_id="opt-fp8", label="FP8")  # labelled per model on load
                regional = gr.Checkbox(value=False, label="Regional compile", elem_id="opt-regional")
            access_note = gr.Markdown(ACCESS.refusal() if not ACCESS.open else "", elem_id="access-note")
            if not ACCESS.open and os.environ.get("OAUTH_CLIENT_ID"):  # a Space with Hugging Face sign-in (hf_oauth)
                gr.LoginButton()
            admin_token = gr.Textbox(value="", type="password", label="Admin token", visible=bool(ACCESS.admin_token))
            opt_button = gr.Button("Apply", elem_id="opt-apply")
            opt_out = gr.JSON(visible=False, label="compile_status")  # the API's answer; shown as cards
            opt_cards = gr.HTML(elem_id="opt-cards")
        with gr.Sidebar(position="right", open=True, label="Live", width=480) as sidebar:
            outputs = PANEL.build()
            gr.Timer(1.0).tick(_panel, outputs=outputs, api_visibility="private", show_progress="hidden")

        text_inputs = [text_model, prompt, max_tokens, temperature, text_compare, speculative, text_lora, text_lora_scale]
        text_run = text_button.click(generate_text, text_inputs, text_out, api_name="generate_text", concurrency_id="device",
                                     validator=validate_text, preprocess=False)
        text_example_run = text_examples.load_input_event.then(generate_text, text_inputs, text_out, concurrency_id="device",
                                                               validator=validate_text, preprocess=False, api_visibility="private")
        text_stop.click(None, cancels=[text_run, text_example_run], api_visibility="private")
        text_button.click(None, js=_scroll_to("#text-output"), api_visibility="private")
        text_model.change(lambda model_id: gr.Dropdown(**_lora_control(model_id)), text_model, text_lora, api_visibility="private")
        image_inputs = [image_model, image_prompt, size, steps, seed, guidance, image_compare, step_cache, lora, lora_scale]
        image_run = image_button.click(generate_image, image_inputs, [image_out, image_info], api_name="generate_image",
                                       concurrency_id="device", validator=validate_image, preprocess=False)
        image_example_run = image_examples.load_input_event.then(generate_image, image_inputs, [image_out, image_info],
                                                                 concurrency_id="device", validator=validate_image,
                                                                 preprocess=False, api_visibility="private")
        image_stop.click(None, cancels=[image_run, image_example_run], api_visibility="private")
        image_button.click(None, js=_scroll_to("#image-output"), api_visibility="private")
        image_model.change(_image_controls, image_model, [size, steps, guidance, image_hint, step_cache, lora], api_visibility="private")
        opt_button.click(set_optimization, [opt_model, use_aoti, fp8, regional, admin_token], opt_out, api_name="set_optimization",
                         validator=validate_optimization, preprocess=False).success(lambda rows: PANEL.cards(rows), opt_out, opt_cards, api_visibility="private")
        width = gr.Number(visible=False)
        demo.load(_sidebar_for, width, sidebar, js="() => window.innerWidth", api_visibility="private")
        demo.load(None, js=panel.LABEL_TOGGLE_JS)
        demo.load(_optimization_controls, opt_model, [use_aoti, fp8, regional, opt_button, access_note], api_visibility="private")
        opt_model.change(_switches_for, opt_model, [fp8, regional], api_visibility="private")
        for endpoint in (metrics, models, compile_status):  # each answer named for what it is
            gr.Button(visible=False).click(endpoint, None, gr.JSON(visible=False, label=endpoint.__name__), api_name=endpoint.__name__)
    return demo


def _admit_one_at_a_time(queue) -> None:
    """Make the queue's bound hold for requests that arrive together. Gradio checks ``max_size`` before it
    awaits the validator and enqueues after it, so a burst of N requests all pass the check and all
    queue (gradio 6.31: six at once into a queue of two). Pushes taken one at a time check the size
    with the previous request already in it; validators take microseconds, so nobody waits on this."""
    push, lock = queue.push, asyncio.Lock()

    async def push_in_turn(*args, **kwargs):
        async with lock:
            return await push(*args, **kwargs)

    queue.push = push_in_turn


demo = build()
demo.queue(default_concurrency_limit=1, max_size=QUEUE_MAX)
_admit_one_at_a_time(demo._queue)
startup()

if __name__ == "__main__":
    demo.launch(theme=gr.themes.Soft(), css=panel.CSS)

"""The facade's bookkeeping, where a path could go silent: every model asked for that can't load says
so on its card, a compile GPU call can't leave a model "compiling", a shape-guard fallback reaches the
report and the card, a comparison that can't run says why, and a damaged cache entry is a fallback."""

from __future__ import annotations

import torch

import aoti
import panel
from engines import Studio, Switches
from engines.image import ImageParams
from engines.text import SamplingParams
from engines.zerogpu import GpuCall

TEXT, IMAGE, UNAVAILABLE = "tiny-llama-pydoc", "tiny-shapes-unet", "qwen2.5-7b-instruct"


def test_a_startup_model_that_is_unavailable_is_on_a_card_with_the_reason(cache):
    studio = Studio(cache=cache)
    studio.startup([UNAVAILABLE], compile=False)
    row = next(r for r in studio.compile_status() if r["model"] == UNAVAILABLE)
    assert row["state"] == "unavailable" and "asked for at startup, unavailable" in row["reason"]
    assert "unreachable" in row["reason"]  # the registry's own reason (the Hub, offline here)
    html = panel.cards(studio.compile_status(), {UNAVAILABLE: "text"})
    assert f'data-model="{UNAVAILABLE}"' in html and "unavailable" in html


def test_a_compile_gpu_call_that_returns_no_state_for_a_model_fails_it_visibly(cache):
    """ZeroGPU bookkeeping: the main process marks the models compiling, the worker returns rows; a model
    with no row (skipped, or lost) is a fallback with the reason, never "compiling" for good."""
    studio = Studio(cache=cache, gpu_in_workers=True)
    studio.ledger.mark_compiling([TEXT, IMAGE], Switches())
    assert {studio.states[m].phase for m in (TEXT, IMAGE)} == {"compiling"}
    studio.ledger.record_compiles([], asked=[TEXT, IMAGE])
    for model in (TEXT, IMAGE):
        state = studio.states[model]
        assert state.phase == "fallback" and "returned no state" in state.reason and state.progress.started is None


def test_a_model_unavailable_in_the_worker_comes_back_as_a_fallback_row(cache):
    rows = Studio(cache=cache, gpu_in_workers=True).serve_compile([UNAVAILABLE], Switches())
    assert [r["state"] for r in rows] == ["fallback"] and "unavailable in the GPU worker" in rows[0]["reason"]


def test_a_shape_guard_fallback_reaches_the_report_and_the_card(cache):
    """A call the compiled graphs were not built for runs eager: the request's report counts it with the
    guard's reason, and the main process's record puts both on the model's card."""
    studio = Studio(cache=cache)
    studio.engine.optimize(IMAGE, background=False)
    model = studio.engine.models[IMAGE]
    unet = model.hot_module
    with aoti.capture(unet) as call:
        model.generate("a red circle, top left", ImageParams(32, 32, 2))
    gpu_call = GpuCall.begin(studio.engine, IMAGE, None)  # what a GPU call does first
    args = (torch.randn(1, *call.args[0].shape[1:2], 16, 16), *call.args[1:])  # 16x16: no graph for it
    with torch.no_grad():
        unet(*args, **call.kwargs)
    report = gpu_call.report(studio.runtime_of(IMAGE))
    assert (report.compiled_calls, report.guard_fallbacks) == (0, 1) and report.last_guard_reason
    main = Studio(cache=cache, gpu_in_workers=True)  # the main process on ZeroGPU records the worker's report
    main.ledger.record_image(IMAGE, None, 0.5, report)
    row = next(r for r in main.compile_status() if r["model"] == IMAGE)
    assert row["guard_fallbacks"] == 1 and row["last_guard_reason"] == report.last_guard_reason
    assert f"last: {report.last_guard_reason}" in panel.card(row, "image")
    record = main.metrics.snapshot()["requests"][-1]
    assert record["guard_fallbacks"] == 1 and record["last_guard_reason"] == report.last_guard_reason


def test_compare_with_eager_on_a_model_that_is_not_compiled_says_why(cache):
    studio = Studio(cache=cache)
    studio.startup([TEXT], compile=False)
    *_, report = studio.serve_text(TEXT, "If the file", SamplingParams(max_new_tokens=4, temperature=0), compare=True)
    assert report.compared is None and "not compared with eager: the model runs eager here" in report.compare_note


def test_a_damaged_cache_entry_is_rebuilt_and_said(tmp_path):
    """The package's bytes changed on disk: the next compile finds the checksum wrong, rebuilds, and the
    status says so (it was a log line only)."""
    from tests import tiny

    cache = aoti.Cache(tmp_path / "cache")
    model = tiny.MLP()
    with aoti.capture(model) as call:
        model(torch.randn(4, 32))
    first = aoti.compile(model, call, cache=cache)
    first.package.write_bytes(first.package.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    again = aoti.compile(model, call, cache=cache)
    assert again.status.cache_hit is False
    assert any(f.startswith("cache -> rebuild: the cached package was damaged (package checksum") for f in again.status.fallbacks)

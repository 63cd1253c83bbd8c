"""The live side panel, all of it (UI only, no torch): the summary, each model's card (what runs, how
much faster, what fell back: state badge, eager and compiled speed as bars, tags, reasons in words), and
the latency and memory plots. `Panel.build` lays it out; `Panel.render` fills it from the Studio's
metrics snapshot and compile-status rows."""

from __future__ import annotations

import html
import time
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd

BADGES = {"aoti": "compiled", "compiling": "compiling", "fallback": "fallback", "eager": "eager", "distributed": "distributed",
          "unavailable": "unavailable"}

CSS = """
#image-output img { image-rendering: pixelated; width: 100%; height: 100%; object-fit: contain; }
#model-cards { display: flex; flex-direction: column; gap: 8px; max-width: 100%; overflow-x: hidden; }
.model-card { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 10px;
              overflow-wrap: anywhere; font-size: 13px; }
.model-card .head { display: flex; justify-content: space-between; gap: 6px; align-items: baseline; }
.model-card .badge { border-radius: 10px; padding: 1px 8px; font-size: 12px; color: white; white-space: nowrap; }
.badge-aoti { background: #15803d; } .badge-compiling { background: #b45309; } .badge-fallback { background: #b91c1c; }
.badge-eager, .badge-distributed { background: #4b5563; } .badge-unavailable { background: #7f1d1d; }
.model-card .bar { height: 8px; border-radius: 4px; margin: 2px 0 4px; }
.bar-eager { background: #9ca3af; } .bar-aoti { background: #15803d; } .bar-compiling { background: #b45309; }
.model-card .stage { color: var(--body-text-color-subdued); }
.model-card .speedup { font-weight: 600; }
.model-card .tags span { border: 1px solid var(--border-color-primary); border-radius: 6px; padding: 0 5px; margin-right: 4px; font-size: 11px; }
.model-card ul { margin: 4px 0 0 16px; padding: 0; }
.sidebar .toggle-button { width: auto !important; min-width: 44px; padding: 0 6px; display: flex; gap: 4px; align-items: center; }
.sidebar .toggle-button .live-label { font-size: 13px; font-weight: 600; }
#live-summary { margin-top: 28px; }  /* below the toggle, which sits over the panel's top edge */
/* Messages at the bottom left, clear of the title, the controls at the top and the panel on the right. */
.toast-wrap { top: auto !important; bottom: 12px; left: 12px !important; right: auto !important; align-items: start !important;
              max-width: calc(100vw - 24px); }
"""

# Gradio's sidebar toggle is an unlabelled chevron: it is named "Live" (the sidebar's label), in words and for screen readers.
LABEL_TOGGLE_JS = """() => {
  const label = () => document.querySelectorAll('.sidebar .toggle-button').forEach((button) => {
    if (!button.querySelector('.live-label')) {
      button.insertAdjacentHTML('afterbegin', '<span class="live-label">Live</span>');
      button.setAttribute('aria-label', 'Live panel: speed, latency and memory');
    }
  });
  label();
  new MutationObserver(label).observe(document.body, {childList: true, subtree: true});
}"""


def _speed(seconds: float, task: str) -> str:
    """Seconds per unit in the unit a person reads: tokens/s for text, ms a step for images."""
    return f"{1 / seconds:,.0f} tokens/s" if task == "text" else f"{seconds * 1e3:.1f} ms a step"


def _compiling(row: dict[str, Any], now: float) -> str:
    """A running compile: its stage, the time it has taken so far and, where the last such build was
    timed, that time as an estimate with a bar."""
    elapsed = max(0.0, now - row["started"])
    line = f'<div class="stage">{html.escape(row.get("stage") or "compiling")} · {elapsed:.0f} s so far'
    estimate = row.get("estimate_s")
    if not estimate:
        return line + " (no earlier build to estimate from)</div>"
    line += f", the last such build took {estimate:.0f} s</div>"
    return line + f'<div class="bar bar-compiling" style="width:{max(3.0, min(100.0, 100 * elapsed / estimate)):.0f}%"></div>'


def ratio_words(ratio: float, low: float | None = None, high: float | None = None) -> str:
    """A speed ratio (eager time over compiled time) in words: "2.8× faster", "1.4× slower", or "no
    measurable difference" where the measured spread (``low``-``high``) holds 1, or, for a single
    sample with no spread, where it is within 5 % of 1."""
    if (low is not None and high is not None and low <= 1.0 <= high) or (low is None and abs(ratio - 1) < 0.05):
        return "no measurable difference"
    return f"{ratio:.2g}× faster" if ratio >= 1 else f"{1 / ratio:.2g}× slower"


def comparison(compared: dict[str, float] | None, task: str) -> str:
    """A visitor's A/B of one request ("Compare with eager"), the same words in the card, the toast and
    the image's info line: "your A/B, one request each: compiled 250 tokens/s, eager 36 tokens/s: 6.9× faster"."""
    if not compared:
        return ""
    aoti_s, eager_s = compared["aoti"], compared["eager"]
    return (f"your A/B, one request each: compiled {_speed(aoti_s, task)}, eager {_speed(eager_s, task)}: "
            f"{ratio_words(eager_s / aoti_s)}")


def _bars(speeds: list[tuple[str, float, str]]) -> list[str]:
    """Speeds as bars: the longer, the faster (``speeds``: label, seconds per call, css kind)."""
    fastest = min(seconds for _, seconds, _ in speeds)
    return [f'<div>{label}</div><div class="bar bar-{kind}" style="width:{max(3.0, 100 * fastest / seconds):.0f}%"></div>'
            for label, seconds, kind in speeds]


def _speeds(row: dict[str, Any], task: str) -> list[str]:
    """What the card says of speed: the graphs timed against eager when they were bound (first, with
    its spread), then requests' live figures, then the last visitor's A/B, each labelled as what it is."""
    parts = []
    measured = row.get("measured")
    if measured and row["state"] == "aoti":
        words = ratio_words(measured["ratio"], measured["low"], measured["high"])
        unit = "decode step" if task == "text" else "denoising step"
        parts.append(f'<div class="speedup" data-verdict="{html.escape(measured["verdict"])}">{words}</div>'
                     f'<div class="stage">hot module, measured at load: {unit} over {measured["rounds"]} rounds, '
                     f'middle half {measured["low"]:.2f}–{measured["high"]:.2f}×</div>')
        parts += _bars([(f"compiled {measured['compiled_s'] * 1e3:.3g} ms a {unit}", measured["compiled_s"], "aoti"),
                        (f"eager {measured['eager_s'] * 1e3:.3g} ms a {unit}", measured["eager_s"], "eager")])
    seen = [(label, row[key]) for label, key in (("compiled", "aoti_latency_s"), ("eager", "eager_latency_s")) if row.get(key)]
    if seen:
        parts.append('<div class="requests">requests (best): '
                     + " · ".join(f"{label} {_speed(seconds, task)}" for label, seconds in seen) + "</div>")
    if row.get("compared"):
        parts.append(f'<div class="compared">{html.escape(comparison(row["compared"], task))}</div>')
    return parts


def card(row: dict[str, Any], task: str, now: float | None = None) -> str:
    """One model's card from its compile-status row (`ModelState.as_row`); ``now`` (time.time()) for
    a running compile's elapsed time."""
    e = html.escape
    state = row["state"]
    parts = [f'<div class="model-card" data-model="{e(row["model"])}" data-state="{e(state)}">',
             f'<div class="head"><b>{e(row["model"])}</b><span class="badge badge-{e(state)}">{e(BADGES.get(state, state))}</span></div>']
    parts += _speeds(row, task)
    if row.get("speculative_tokens_per_s"):
        parts.append(f'<div class="speculative">speculative {_speed(1 / row["speculative_tokens_per_s"], task)} · '
                     f'{100 * row["acceptance"]:.0f} % of drafted tokens kept</div>')
    if row.get("lora"):
        switch = row.get("lora_switch_s")
        parts.append(f'<div class="adapter">LoRA {e(row["lora"])} at {row.get("lora_scale", 1.0):g}'
                     + (f" · switched in {switch * 1e3:.0f} ms, no rebuild" if switch else " · fused already") + "</div>")
    tags = [("CUDA graphs", row.get("cuda_graphs")), (f"{row.get('quantization')}", row.get("quantization") not in (None, "none")),
            ("from cache", row.get("cache_hit")), (f"{row.get('layout_copies')} layout copies", row.get("layout_copies")),
            (f"{row.get('guard_fallbacks')} calls eager (shape)", row.get("guard_fallbacks"))]
    shown = [f"<span>{e(str(name))}</span>" for name, on in tags if on]
    if shown:
        parts.append(f'<div class="tags">{"".join(shown)}</div>')
    if state == "compiling" and row.get("started"):
        parts.append(_compiling(row, time.time() if now is None else now))
    if state == "aoti" and row.get("compile_s"):
        parts.append(f"<div>compiled in {row['compile_s']:.0f} s</div>")
    elif state == "aoti" and row.get("load_s") is not None:
        parts.append(f"<div>loaded from cache in {row['load_s']:.2f} s</div>")
    elif row.get("reason") and state != "compiling":  # a running compile says what it does above
        parts.append(f"<div>{e(row['reason'])}</div>")
    notes = ([row["placement"]] if row.get("placement") else []) + list(row.get("fallbacks") or [])
    if row.get("guard_fallbacks") and row.get("last_guard_reason"):
        notes.append(f"shape guard -> eager ({row['guard_fallbacks']} calls), last: {row['last_guard_reason']}")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{e(f)}</li>" for f in notes) + "</ul>")
    parts.append("</div>")
    return "".join(parts)


def cards(rows: list[dict[str, Any]], tasks: dict[str, str]) -> str:
    """Every loaded model's card, and one for each model asked for that could not be loaded."""
    shown = [card(row, tasks.get(row["model"], "text")) for row in rows if row["state"] != "not loaded"]
    return "".join(shown) or "<div>No model loaded yet.</div>"


_LATENCY_COLUMNS = {"request": pd.Series(dtype="int"), "latency_s": pd.Series(dtype="float"), "model": pd.Series(dtype="str")}
_MEMORY_COLUMNS = {"seconds": pd.Series(dtype="float"), "MiB": pd.Series(dtype="float")}
_PALETTE = ["#2563eb", "#15803d", "#b45309", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d"]


class Panel:
    """The side panel for a catalog (``tasks``: model id -> "text" | "image", in the catalog's order)."""

    def __init__(self, tasks: dict[str, str]) -> None:
        self.tasks = tasks
        self.start = time.time()  # the memory plot's zero

    def build(self) -> list[gr.components.Component]:
        """Lay the panel out (inside a `gr.Sidebar`); the outputs `render` fills, in its order."""
        summary = gr.Markdown(elem_id="live-summary")
        model_cards = gr.HTML(elem_id="model-cards")
        colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(self.tasks)}
        latency_plot = gr.ScatterPlot(x="request", y="latency_s", color="model", title="Latency per request",
                                      x_title="request", y_title="seconds", x_axis_format="d", y_axis_format=".2~r",
                                      y_lim=[0, None], color_map=colors, color_title="", height=220, elem_id="latency-plot")
        memory_plot = gr.LinePlot(x="seconds", y="MiB", title="Memory used", x_title="seconds since start", y_title="MiB",
                                  x_axis_format="d", y_axis_format="~s", y_lim=[0, None], height=200, x_label_angle=-45,
                                  elem_id="memory-plot")
        return [latency_plot, memory_plot, summary, model_cards]

    def render(self, snapshot: dict[str, Any], rows: list[dict[str, Any]], device_label: str, budget_bytes: int):
        """The outputs of `build` from a metrics snapshot (`Metrics.snapshot`) and compile-status rows."""
        s = snapshot["summary"]

        def fmt(value: float | None, unit: str) -> str:
            return "–" if value is None else f"{value:.3g} {unit}".strip()

        summary = (
            f"**Device** {device_label}  \n"
            f"**Requests** {s['count']} ({s['errors']} error{'' if s['errors'] == 1 else 's'}"
            + (f", {s['warmups']} warm-up{'' if s['warmups'] == 1 else 's'} apart" if s.get("warmups") else "")
            + f") · **latency** {fmt(s['median_latency_s'], 's')}  \n"
            f"**TTFT** {fmt(s['median_ttft_s'], 's')} · **tokens/s** {fmt(s['median_tokens_per_s'], '')} · "
            f"**step** {fmt(s['median_step_ms'], 'ms')}"
            + (f" · **drafts kept** {100 * s['median_acceptance']:.0f} %" if s.get("median_acceptance") is not None else "") + "  \n"
            f"{memory_line(snapshot['memory'], budget_bytes)}"
        )
        return (self.latency_plot(snapshot["requests"]), self.memory_plot(snapshot["memory"]), summary,
                self.cards(rows))

    def cards(self, rows: list[dict[str, Any]]) -> str:
        return cards(rows, self.tasks)

    def latency_plot(self, requests: list[dict[str, Any]]) -> gr.ScatterPlot:
        """Latency per request: whole request numbers from the first one, seconds from zero, and a legend of
        the models that have requests (every model is a category from the start, as a NaN row, so a series
        added later still draws: the chart's spec is fixed by its first value)."""
        rows = [{"request": r["number"], "latency_s": r["latency_s"], "model": r["model"]} for r in requests]
        seeds = pd.DataFrame({"request": np.nan, "latency_s": np.nan, "model": list(self.tasks)})
        data = pd.concat([seeds, pd.DataFrame(rows) if rows else pd.DataFrame(_LATENCY_COLUMNS)], ignore_index=True)
        first = rows[0]["request"] if rows else 1
        last = rows[-1]["request"] if rows else 1
        shown = list(dict.fromkeys(r["model"] for r in rows))
        top = max((r["latency_s"] for r in rows), default=1.0) * 1.15  # room above the slowest point
        return gr.ScatterPlot(data, x_lim=[first - 0.5, max(last, first + 9) + 0.5], y_lim=[0, top],  # 10+ wide: whole ticks
                              colors_in_legend=shown)

    def memory_plot(self, samples: list[dict[str, float]]) -> gr.LinePlot:
        """Memory used over the last samples, from zero; its budget is in the title and the summary."""
        if not samples:  # axes with a range: an empty plot draws no infinite extent
            return gr.LinePlot(pd.DataFrame(_MEMORY_COLUMNS), x_lim=[0, 10], y_lim=[0, 1])
        data = pd.DataFrame([{"seconds": round(m["t"] - self.start, 1), "MiB": round(m["mb"], 1)} for m in samples])
        first, last = data["seconds"].iloc[0], data["seconds"].iloc[-1]
        return gr.LinePlot(data, x_lim=[first, max(last, first + 10)], y_lim=[0, data["MiB"].max() * 1.15])  # 10+ s: whole ticks


def memory_line(samples: list[dict[str, float]], budget_bytes: int) -> str:
    """Memory used now against the device's budget, in the unit that reads best."""
    budget_mib = budget_bytes / 2**20
    used = samples[-1]["mb"] if samples else 0.0

    def size(mib: float) -> str:
        return f"{mib / 1024:.1f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"

    return f"**Memory** {size(used)} of {size(budget_mib)} ({100 * used / budget_mib:.0f} %)"

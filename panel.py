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
"""


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


def card(row: dict[str, Any], task: str, now: float | None = None) -> str:
    """One model's card from its compile-status row (`CompileState.as_row`); ``now`` (time.time()) for
    a running compile's elapsed time."""
    e = html.escape
    state = row["state"]
    parts = [f'<div class="model-card" data-model="{e(row["model"])}" data-state="{e(state)}">',
             f'<div class="head"><b>{e(row["model"])}</b><span class="badge badge-{e(state)}">{e(BADGES.get(state, state))}</span></div>']
    eager_s, aoti_s = row.get("eager_latency_s"), row.get("aoti_latency_s")
    if eager_s and aoti_s:
        slowest = max(eager_s, aoti_s)
        for label, seconds, kind in (("eager", eager_s, "eager"), ("compiled", aoti_s, "aoti")):
            parts.append(f'<div>{label} {_speed(seconds, task)}</div>'
                         f'<div class="bar bar-{kind}" style="width:{max(3.0, 100 * seconds / slowest):.0f}%"></div>')
        parts.append(f'<div class="speedup">{eager_s / aoti_s:.1f}× faster compiled</div>')
    elif aoti_s or eager_s:
        label, seconds = ("compiled", aoti_s) if aoti_s else ("eager", eager_s)
        parts.append(f"<div>{label} {_speed(seconds, task)} · the other not measured yet (tick \"Compare with eager\")</div>")
    if row.get("speculative_tokens_per_s"):
        parts.append(f'<div class="speculative">speculative {_speed(1 / row["speculative_tokens_per_s"], task)} · '
                     f'{100 * row["acceptance"]:.0f} % of drafted tokens kept</div>')
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
        summary = gr.Markdown()
        model_cards = gr.HTML(elem_id="model-cards")
        colors = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(self.tasks)}
        latency_plot = gr.ScatterPlot(x="request", y="latency_s", color="model", title="Latency per request",
                                      x_title="request", y_title="seconds", x_axis_format="d", y_axis_format="~g",
                                      y_lim=[0, None], color_map=colors, color_title="", height=220, elem_id="latency-plot")
        memory_plot = gr.LinePlot(x="seconds", y="MiB", title="Memory used", x_title="seconds since start", y_title="MiB",
                                  x_axis_format="d", y_axis_format="~s", y_lim=[0, None], height=200, elem_id="memory-plot")
        return [latency_plot, memory_plot, summary, model_cards]

    def render(self, snapshot: dict[str, Any], rows: list[dict[str, Any]], device_label: str, budget_bytes: int):
        """The outputs of `build` from a metrics snapshot (`Metrics.snapshot`) and compile-status rows."""
        s = snapshot["summary"]

        def fmt(value: float | None, unit: str) -> str:
            return "–" if value is None else f"{value:.3g} {unit}".strip()

        summary = (
            f"**Device** {device_label}  \n"
            f"**Requests** {s['count']} ({s['errors']} errors) · **latency** {fmt(s['median_latency_s'], 's')}  \n"
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
        if not samples:
            return gr.LinePlot(pd.DataFrame(_MEMORY_COLUMNS))
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

"""The side panel's model cards (UI only, no torch): per loaded model, what runs, how much faster, and what fell back, as
HTML that reads in a second (state badge, eager and compiled speed as bars, tags, reasons in words)."""

from __future__ import annotations

import html
import time
from typing import Any

BADGES = {"aoti": "compiled", "compiling": "compiling", "fallback": "fallback", "eager": "eager", "distributed": "distributed",
          "unavailable": "unavailable"}

CSS = """
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

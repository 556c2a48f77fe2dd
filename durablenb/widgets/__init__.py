"""Timelines of workflows: one bar per step on a time axis, coloured by state.

`render_html` draws rows as HTML (used live by the widget and kept as the static copy in
saved notebooks); `render_text` draws them for terminals. Rows come from the store
(`rows_from_history`) or from live events (`timeline.TimelineWidget`).
"""

from __future__ import annotations

import datetime as _dt
import html
import math
from typing import Any

import pandas as pd

from .. import history
from ..engine import runtime

__all__ = ["COLOURS", "Row", "rows_from_history", "render_html", "render_text", "timeline",
           "timeline_html", "timeline_text"]  # fmt: skip

COLOURS = {
    "succeeded": "#2e7d32",
    "replayed": "#90a4ae",
    "failed": "#c62828",
    "running": "#1565c0",
    "retried": "#ef6c00",
    "cancelled": "#6d4c41",
}

#: A row: position, name, kind, state, started (epoch s), finished (epoch s or None while
#: running), attempts, output_bytes, codec, error_type, error_message.
Row = dict[str, Any]

#: Gaps longer than this (a crash, a restart) are drawn as a short break, not to scale.
GAP_SECONDS = 2.0


def _epoch(v: Any) -> float | None:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NaT:
        return None
    if isinstance(v, (pd.Timestamp, _dt.datetime)):
        return v.timestamp()
    return float(v)


def _clean(v: Any) -> Any:
    return None if v is None or (not isinstance(v, str) and pd.isna(v)) else v


def rows_from_history(workflow_id: str) -> list[Row]:
    """The recorded steps of *workflow_id* as rows."""
    steps = history.steps(workflow_id)
    return [
        {
            "position": int(s["position"]),
            "name": str(s["name"]),
            "kind": str(s["kind"]),
            "state": str(s["status"]),
            "started": _epoch(s["started_at"]),
            "finished": _epoch(s["finished_at"]),
            "attempts": int(s["attempts"]),
            "output_bytes": _clean(s["output_bytes"]),
            "codec": _clean(s["codec"]),
            "error_type": _clean(s["error_type"]),
            "error_message": _clean(s["error_message"]),
        }
        for _, s in steps.iterrows()
    ]


def _size(n: Any) -> str:
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _layout(rows: list[Row], now: float) -> tuple[dict[int, tuple[float, float]], list[float]]:
    """Bar positions in percent, with long idle gaps squeezed; returns (bars, break marks)."""
    spans = sorted((r["started"], r["finished"] or now, r["position"]) for r in rows
                   if r["started"] is not None)  # fmt: skip
    if not spans:
        return {}, []
    # Map real time to drawn time: walk the spans, squeezing idle gaps to GAP_SECONDS / 4.
    cuts: list[tuple[float, float]] = []  # (real time where a gap ends, seconds removed)
    removed, reach = 0.0, spans[0][0]
    for start, end, _ in spans:
        if start - reach > GAP_SECONDS:
            removed += (start - reach) - GAP_SECONDS / 4
            cuts.append((start, removed))
        reach = max(reach, end)

    def drawn(t: float) -> float:
        off = 0.0
        for at, rem in cuts:
            if t >= at:
                off = rem
        return t - spans[0][0] - off

    total = max(drawn(max(e for _, e, _ in spans)), 1e-6)
    bars = {}
    for start, end, pos in spans:
        left = drawn(start) / total * 100
        width = max((drawn(end) - drawn(start)) / total * 100, 0.6)
        bars[pos] = (left, min(width, 100 - left) if left < 99.4 else 0.6)
    breaks = [drawn(at) / total * 100 for at, _ in cuts]
    return bars, breaks


def _tip(r: Row, now: float) -> str:
    dur = (r["finished"] or now) - (r["started"] or now)
    tip = f"{r['name']} (position {r['position']}): {r['state']}, {dur:.3f}s"
    if r["state"] == "replayed":
        tip += " when it ran; replayed from its checkpoint"
    if (r.get("attempts") or 1) > 1:
        tip += f", {r['attempts']} attempts"
    if r.get("output_bytes") is not None:
        tip += f", output {_size(r['output_bytes'])} ({r.get('codec')})"
    if r.get("error_type"):
        tip += f" — {r['error_type']}: {r.get('error_message') or ''}"
    return tip


def render_html(title: str, rows: list[Row], *, status: str = "", progress: str = "",
                now: float | None = None) -> str:  # fmt: skip
    """The timeline of *rows* as HTML: a bar per step, the state in ``data-state``."""
    import time

    now = time.time() if now is None else now
    head = f"<b>{html.escape(title)}</b>"
    if status:
        head += f" — <span data-workflow-status='{html.escape(status)}'>{html.escape(status)}</span>"
    head += f" — {len(rows)} step{'s' if len(rows) != 1 else ''}"
    if progress:
        head += f" — {html.escape(progress)}"
    if not rows:
        return f"<div class='durablenb-timeline'>{head}</div>"
    bars, breaks = _layout(rows, now)
    marks = "".join(
        f"<div style='position:absolute;left:{b:.2f}%;top:0;bottom:0;border-left:1px dashed #999'>"
        "</div>" for b in breaks
    )  # fmt: skip
    body = []
    for r in sorted(rows, key=lambda r: r["position"]):
        left, width = bars.get(r["position"], (0.0, 0.6))
        dur = (r["finished"] or now) - (r["started"] or now)
        tip = html.escape(_tip(r, now), quote=True)
        err = html.escape(str(r["error_type"])) if r.get("error_type") else ""
        body.append(
            "<tr>"
            f"<td style='padding:1px 6px;text-align:right;color:#666'>{r['position']}</td>"
            f"<td style='padding:1px 6px;white-space:nowrap'>{html.escape(str(r['name']))}</td>"
            "<td style='padding:1px 6px;width:55%;min-width:240px'>"
            "<div style='position:relative;height:14px;background:#f4f4f4'>" + marks +
            f"<div class='durablenb-bar' data-state='{r['state']}' title='{tip}' "
            f"style='position:absolute;left:{left:.2f}%;width:{width:.2f}%;height:14px;"
            f"background:{COLOURS.get(r['state'], '#999')};border-radius:2px'></div></div></td>"
            f"<td style='padding:1px 6px;color:{COLOURS.get(r['state'], '#999')}'>{r['state']}</td>"
            f"<td style='padding:1px 6px;text-align:right'>{dur:.2f}s</td>"
            f"<td style='padding:1px 6px;text-align:right'>{_size(r.get('output_bytes'))}</td>"
            f"<td style='padding:1px 6px;color:#c62828' title='{tip}'>{err}</td>"
            "</tr>"
        )  # fmt: skip
    return (
        f"<div class='durablenb-timeline' style='font-family:sans-serif;font-size:12px'>"
        f"<div style='margin-bottom:4px'>{head}</div>"
        "<table style='border-collapse:collapse'>"
        "<tr style='color:#666'><th>#</th><th style='text-align:left'>step</th><th>time</th>"
        "<th>state</th><th>duration</th><th>output</th><th>error</th></tr>"
        + "".join(body) + "</table></div>"
    )  # fmt: skip


def render_text(title: str, rows: list[Row], *, status: str = "", width: int = 40) -> str:
    """The timeline of *rows* as plain text, for terminals."""
    import time

    now = time.time()
    head = f"{title}" + (f" — {status}" if status else "") + f" — {len(rows)} steps"
    if not rows:
        return head
    bars, _ = _layout(rows, now)
    out = [head]
    for r in sorted(rows, key=lambda r: r["position"]):
        left, w = bars.get(r["position"], (0.0, 0.6))
        a = min(int(left / 100 * width), width - 1)
        b = max(a + 1, min(int((left + w) / 100 * width), width))
        mark = {"failed": "x", "replayed": "=", "running": ">"}.get(r["state"], "#")
        dur = (r["finished"] or now) - (r["started"] or now)
        out.append(f"{r['position']:>4} {str(r['name'])[:24]:<24} |{' ' * a}{mark * (b - a):<{width - a}}|"
                   f" {dur:8.3f}s {r['state']}")  # fmt: skip
    return "\n".join(out)


def timeline_html(workflow_id: str) -> str:
    """The recorded timeline of *workflow_id* as HTML."""
    return render_html(workflow_id, rows_from_history(workflow_id), status=workflow_status(workflow_id))


def workflow_status(workflow_id: str) -> str:
    """The recorded status, ``interrupted`` for a running workflow nobody holds."""
    store = runtime.store()
    row = store.get_workflow(workflow_id)
    if row is None:
        return ""
    if row.status == "running" and not store.is_held(workflow_id):
        return "interrupted"
    return row.status


def timeline_text(workflow_id: str) -> str:
    """The recorded timeline of *workflow_id* as text."""
    return render_text(workflow_id, rows_from_history(workflow_id))


def timeline(workflow_id: str) -> Any:
    """The timeline of *workflow_id*: a live widget in Jupyter, text and HTML elsewhere."""
    from .timeline_widget import StaticTimeline, TimelineWidget, in_kernel

    if in_kernel():
        return TimelineWidget.for_workflow(workflow_id)
    return StaticTimeline(workflow_id)

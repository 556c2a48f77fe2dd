"""Timelines of workflows: a static HTML rendering (kept in saved notebooks) and plain text."""

from __future__ import annotations

import html

import pandas as pd

from .. import history

__all__ = ["timeline_html", "timeline_text", "COLOURS"]

COLOURS = {
    "succeeded": "#2e7d32",
    "replayed": "#90a4ae",
    "failed": "#c62828",
    "running": "#1565c0",
    "retried": "#ef6c00",
    "cancelled": "#6d4c41",
}


def _size(n: object) -> str:
    if n is None or pd.isna(n):
        return ""
    n = int(n)  # type: ignore[arg-type]
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return ""


def _state(row: pd.Series) -> str:
    if row["status"] == "failed":
        return "failed"
    if row["attempts"] and row["attempts"] > 1:
        return "retried"
    return "succeeded"


def timeline_html(workflow_id: str) -> str:
    """One bar per recorded step of *workflow_id* on a shared time axis, as HTML."""
    steps = history.steps(workflow_id)
    title = html.escape(workflow_id)
    if steps.empty:
        return f"<div class='durablenb-timeline'><b>{title}</b>: no steps recorded</div>"
    t0 = steps["started_at"].min()
    span = max((steps["finished_at"].max() - t0).total_seconds(), 1e-6)
    rows = []
    for _, s in steps.iterrows():
        state = _state(s)
        left = (s["started_at"] - t0).total_seconds() / span * 100
        width = max((s["finished_at"] - s["started_at"]).total_seconds() / span * 100, 0.5)
        tip = f"{s['name']} — {state}, {s['duration'].total_seconds():.3f}s"
        if s["attempts"] and s["attempts"] > 1:
            tip += f", {s['attempts']} attempts"
        if isinstance(s["error_type"], str):
            tip += f" — {s['error_type']}: {s['error_message']}"
        rows.append(
            "<tr>"
            f"<td style='padding:1px 6px;text-align:right'>{s['position']}</td>"
            f"<td style='padding:1px 6px'>{html.escape(str(s['name']))}</td>"
            "<td style='padding:1px 6px;width:60%'><div style='position:relative;height:14px'>"
            f"<div data-state='{state}' title='{html.escape(tip, quote=True)}' "
            f"style='position:absolute;left:{left:.2f}%;width:{width:.2f}%;height:14px;"
            f"background:{COLOURS[state]};border-radius:2px'></div></div></td>"
            f"<td style='padding:1px 6px;text-align:right'>{s['duration'].total_seconds():.3f}s</td>"
            f"<td style='padding:1px 6px;text-align:right'>{_size(s['output_bytes'])}</td>"
            f"<td style='padding:1px 6px;color:#c62828'>"
            f"{html.escape(str(s['error_type'])) if isinstance(s['error_type'], str) else ''}</td>"
            "</tr>"
        )
    return (
        f"<div class='durablenb-timeline'><div><b>{title}</b> — {len(steps)} steps</div>"
        "<table style='border-collapse:collapse;font-size:12px'>"
        "<tr><th>#</th><th>step</th><th>timeline</th><th>duration</th><th>output</th>"
        "<th>error</th></tr>" + "".join(rows) + "</table></div>"
    )


def timeline_text(workflow_id: str, width: int = 40) -> str:
    """The timeline of *workflow_id* as plain text, for terminals."""
    steps = history.steps(workflow_id)
    if steps.empty:
        return f"{workflow_id}: no steps recorded"
    t0 = steps["started_at"].min()
    span = max((steps["finished_at"].max() - t0).total_seconds(), 1e-6)
    out = [f"{workflow_id} — {len(steps)} steps"]
    for _, s in steps.iterrows():
        a = int((s["started_at"] - t0).total_seconds() / span * width)
        b = max(a + 1, int((s["finished_at"] - t0).total_seconds() / span * width))
        mark = "x" if s["status"] == "failed" else "#"
        bar = " " * a + mark * (b - a)
        out.append(f"{s['position']:>4} {str(s['name'])[:24]:<24} |{bar:<{width}}| "
                   f"{s['duration'].total_seconds():8.3f}s {_state(s)}")  # fmt: skip
    return "\n".join(out)

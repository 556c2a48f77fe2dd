"""Timelines of workflows: one bar per step on a time axis, coloured by state.

`render_html` draws rows as self-contained HTML (the copy saved in notebooks, shown by
nbconvert and nbviewer); `render_text` draws them for terminals; the live widget
(`timeline_widget.TimelineWidget`) draws them in the browser from changes it receives.
Rows come from the store (`rows_from_history`) or from live events.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import pandas as pd

from .. import history
from ..engine import runtime
from ._render import Row, render_html, render_text

__all__ = ["Row", "rows_from_history", "render_html", "render_text", "timeline", "timeline_html",
           "timeline_text", "workflow_status"]  # fmt: skip

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
            "label": _clean(s.get("label")),
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
    return render_text(workflow_id, rows_from_history(workflow_id), status=workflow_status(workflow_id))


def timeline(workflow_id: str) -> Any:
    """The timeline of *workflow_id*: a live widget in Jupyter, text and HTML elsewhere."""
    from .timeline_widget import StaticTimeline, TimelineWidget, in_kernel

    if in_kernel():
        return TimelineWidget.for_workflow(workflow_id)
    return StaticTimeline(workflow_id)

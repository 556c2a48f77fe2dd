"""DataFrames of workflows and steps that draw themselves compactly in notebooks."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd

from .._durations import format_seconds
from .._style import css

__all__ = ["HistoryFrame", "table_html"]

#: The columns a notebook shows of `workflows()` and `steps()` frames (all stay in the frame).
WORKFLOW_VIEW = ["workflow_id", "name", "status", "steps", "created_at", "duration", "error_type",
                 "error_message", "notebook"]  # fmt: skip
STEP_VIEW = ["position", "name", "label", "kind", "status", "started_at", "duration", "attempts",
             "output_bytes", "error_type", "error_message"]  # fmt: skip
#: Characters of a text cell shown before it is cut.
CELL_CHARS = 80


class HistoryFrame(pd.DataFrame):
    """A `pandas.DataFrame` whose notebook display is a compact table: states coloured,
    durations and times readable, long text cut. Everything else is a plain DataFrame."""

    _metadata: list[str] = []

    @property
    def _constructor(self) -> type[HistoryFrame]:
        return HistoryFrame

    def _repr_html_(self) -> str | None:
        if "status" not in self.columns or pd.get_option("display.notebook_repr_html") is False:
            return super()._repr_html_()
        return table_html(self)


def _cell(column: str, value: Any) -> str:
    if value is None or value is pd.NaT or (not isinstance(value, str) and pd.isna(value)):
        return "<td></td>"
    if column == "status":
        state = html.escape(str(value), quote=True)
        return f"<td><span class='dnb-state' data-state='{state}'>{state}</span></td>"
    if isinstance(value, pd.Timedelta):
        return f"<td class='dnb-dur'>{format_seconds(value.total_seconds())}</td>"
    if isinstance(value, pd.Timestamp):
        return f"<td>{value:%Y-%m-%d %H:%M:%S}</td>"
    if column == "output_bytes":
        return f"<td class='dnb-size'>{_bytes(float(value))}</td>"
    text = str(value)
    if len(text) > CELL_CHARS:
        return f"<td title='{html.escape(text, quote=True)}'>{html.escape(text[:CELL_CHARS - 1])}…</td>"
    return f"<td>{html.escape(text)}</td>"


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _view(frame: pd.DataFrame) -> tuple[list[str], int]:
    """The columns shown, and how many are left out."""
    present = set(frame.columns)
    view = STEP_VIEW if "position" in present else WORKFLOW_VIEW if "workflow_id" in present else None
    if view is None:
        return list(frame.columns), 0
    shown = [c for c in view if c in present]
    return shown, len(frame.columns) - len(shown)


def table_html(frame: pd.DataFrame) -> str:
    """*frame* as a compact HTML table (pandas' row limits apply)."""
    columns, hidden = _view(frame)
    limit = pd.get_option("display.max_rows") or len(frame)
    if len(frame) > limit:
        half = max((pd.get_option("display.min_rows") or 10) // 2, 1)
        parts = [frame.iloc[:half], None, frame.iloc[-half:]]
    else:
        parts = [frame]
    body = []
    for part in parts:
        if part is None:
            body.append(f"<tr><td colspan='{len(columns)}' class='dnb-more'>… {len(frame) - 2 * half} "
                        "more rows</td></tr>")  # fmt: skip
            continue
        for _, row in part.iterrows():
            body.append("<tr>" + "".join(_cell(c, row[c]) for c in columns) + "</tr>")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    foot = f"{len(frame)} rows"
    if hidden:
        foot += f" · {hidden} more column{'s' if hidden > 1 else ''} (<code>.columns</code>)"
    return (f"<div class='durablenb-tl durablenb-table'><style>{css()}</style>"
            f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<div class='dnb-more'>{foot}</div></div>")  # fmt: skip

"""The live timeline widget (ipywidgets) and its plain stand-in outside Jupyter."""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any

import ipywidgets
import traitlets

from . import Row, render_html, render_text, rows_from_history, workflow_status

#: Seconds between two redraws of a live widget.
REDRAW_INTERVAL = 0.1


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where widgets can be shown)."""
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def _epoch(v: Any) -> float | None:
    if isinstance(v, _dt.datetime):
        return v.timestamp()
    return None if v is None else float(v)


def row_from_record(rec: Any, replayed: bool) -> Row:
    """A row for a step record (just written, or replayed from the store)."""
    if rec.status == "failed":
        state = "failed"
    elif replayed:
        state = "replayed"
    elif (rec.attempts or 1) > 1:
        state = "retried"
    else:
        state = "succeeded"
    return {
        "position": rec.position,
        "name": rec.name,
        "kind": rec.kind,
        "state": state,
        "started": _epoch(rec.started_at),
        "finished": _epoch(rec.finished_at),
        "attempts": rec.attempts or 1,
        "output_bytes": rec.output_bytes,
        "codec": rec.codec,
        "error_type": rec.error_type,
        "error_message": rec.error_message,
    }


class TimelineWidget(ipywidgets.VBox):
    """A workflow's steps as bars on a time axis, redrawn live while it runs.

    The state is in traits (`steps`, `status`, `progress`), updated from any thread; the
    drawing is throttled to one redraw per `REDRAW_INTERVAL`. Its display also carries a
    static HTML copy, refreshed when the workflow ends, for viewers without a kernel.
    """

    workflow_id = traitlets.Unicode()
    status = traitlets.Unicode("")
    progress = traitlets.Unicode("")
    steps: Any = traitlets.List()

    def __init__(self, workflow_id: str, rows: list[Row] | None = None, status: str = "") -> None:
        self._html = ipywidgets.HTML()
        super().__init__(children=[self._html])
        self.add_class("durablenb-timeline-widget")
        self._lock = threading.RLock()
        self._rows: dict[int, Row] = {r["position"]: r for r in rows or []}
        self._dirty = False
        self._timer: threading.Timer | None = None
        self._handle: Any = None
        self.workflow_id = workflow_id
        self.status = status
        self._redraw()

    @classmethod
    def for_workflow(cls, workflow_id: str) -> TimelineWidget:
        """A widget of *workflow_id*'s records (live if it runs in this process)."""
        from . import live

        existing = live.widget_for(workflow_id)
        if existing is not None:
            return existing
        return cls(workflow_id, rows_from_history(workflow_id), workflow_status(workflow_id))

    def __repr__(self) -> str:
        return f"<TimelineWidget {self.workflow_id!r} {self.status} {len(self.steps)} steps>"

    # -- updates (any thread) ---------------------------------------------------------------
    def set_row(self, row: Row) -> None:
        with self._lock:
            self._rows[row["position"]] = row
        self._changed()

    def set_status(self, status: str, final: bool = False) -> None:
        with self._lock:
            self.status = status
            if final and status in ("cancelled", "interrupted"):
                # A step cut off by a cancel or an interrupt has no record: show it stopped.
                for row in self._rows.values():
                    if row["state"] == "running":
                        row["state"] = "cancelled"
        if final:
            self.flush()
        else:
            self._changed()

    def set_progress(self, text: str) -> None:
        with self._lock:
            self.progress = text
        self._changed()

    def _changed(self) -> None:
        with self._lock:
            self._dirty = True
            if self._timer is None:
                self._timer = threading.Timer(REDRAW_INTERVAL, self._tick)
                self._timer.daemon = True
                self._timer.start()

    def _tick(self) -> None:
        with self._lock:
            self._timer = None
            if self._dirty:
                self._redraw()

    def flush(self) -> None:
        """Redraw now and refresh the static copy in the notebook."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._redraw()
        if self._handle is not None:
            try:
                self._handle.update(self)
            except Exception:  # the frontend may be gone
                pass

    def _redraw(self) -> None:
        with self._lock:
            self._dirty = False
            rows = [dict(r) for r in sorted(self._rows.values(), key=lambda r: r["position"])]
            self.steps = rows
            self._html.value = render_html(self.workflow_id, rows, status=self.status,
                                           progress=self.progress)  # fmt: skip

    # -- display ------------------------------------------------------------------------------
    def show(self) -> TimelineWidget:
        """Display the widget in the current output, keeping a handle to refresh it."""
        from IPython.display import display

        self._handle = display(self, display_id=True)
        return self

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, tuple):
            data, meta = bundle
        else:
            data, meta = bundle, {}
        data = dict(data or {})
        data["text/html"] = self._html.value
        data["text/plain"] = render_text(self.workflow_id, list(self._rows.values()),
                                         status=self.status)  # fmt: skip
        return data, meta


class StaticTimeline:
    """A recorded timeline outside Jupyter: text in a terminal, HTML where HTML shows."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.status = workflow_status(workflow_id)
        self.steps = rows_from_history(workflow_id)

    def __repr__(self) -> str:
        return render_text(self.workflow_id, self.steps, status=self.status)

    def _repr_html_(self) -> str:
        return render_html(self.workflow_id, self.steps, status=self.status)


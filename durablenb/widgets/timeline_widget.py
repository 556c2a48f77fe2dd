"""The live timeline widget (anywidget) and its plain stand-in outside Jupyter.

The browser keeps the steps; the kernel sends only the steps that changed, batched every
`SEND_INTERVAL`, and small traits (status, notes, map progress). A view that appears later
(a reload, a second view) asks for everything once. Each display of the widget is followed
by a static HTML stand-in that the live view hides; when the run ends, the widget's output
is replaced by the final static copy, so a saved notebook never needs the widget's model.
"""

from __future__ import annotations

import datetime as _dt
import pathlib
import threading
import time
from typing import Any

import anywidget
import traitlets

from .._style import STYLESHEET
from . import rows_from_history, workflow_status
from ._render import Row, render_html, render_text

#: Seconds between two batches of changed steps sent to the browser.
SEND_INTERVAL = 0.25
#: Seconds between two refreshes of the stand-in copy (shown only if the kernel dies); the
#: first comes sooner.
STANDIN_INTERVAL = 5.0
STANDIN_FIRST = 1.0
#: Seconds between two signs of life sent to the browser while the workflow runs; a view
#: that hears nothing for several of them says the kernel may have died.
BEAT_INTERVAL = 2.0
#: Steps per message when a view asks for everything.
SYNC_CHUNK = 2000

_STATIC = pathlib.Path(__file__).parent / "static"


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
        "label": getattr(rec, "label", None),
        "state": state,
        "started": _epoch(rec.started_at),
        "finished": _epoch(rec.finished_at),
        "attempts": rec.attempts or 1,
        "output_bytes": rec.output_bytes,
        "codec": rec.codec,
        "error_type": rec.error_type,
        "error_message": rec.error_message,
        "error_traceback": rec.error_traceback,
    }


def _compact(r: Row) -> dict[str, Any]:
    """What the browser needs of a row to draw it (details are asked for when opened)."""
    out = {"p": r["position"], "n": r["name"], "k": r.get("kind") or "", "s": r["state"],
           "t0": r.get("started"), "t1": r.get("finished")}  # fmt: skip
    if r.get("label"):
        out["l"] = r["label"]
    if (r.get("attempts") or 1) > 1:
        out["a"] = r["attempts"]
    if r.get("output_bytes") is not None:
        out["b"] = r["output_bytes"]
    return out


class TimelineWidget(anywidget.AnyWidget):
    """A workflow's steps as bars on a time axis, live while it runs.

    Updates (`set_row`, `set_status`, `set_progress`, `add_note`) may come from any thread.
    """

    _esm = _STATIC / "timeline.js"
    _css = pathlib.Path(str(STYLESHEET))
    workflow_id = traitlets.Unicode().tag(sync=True)
    title = traitlets.Unicode().tag(sync=True)
    status = traitlets.Unicode("").tag(sync=True)
    notes = traitlets.List(traitlets.Unicode()).tag(sync=True)
    maps = traitlets.Dict().tag(sync=True)

    def __init__(self, workflow_id: str, rows: list[Row] | None = None, status: str = "") -> None:
        super().__init__(workflow_id=workflow_id, title=workflow_id, status=status)
        self._lock = threading.RLock()
        self._rows: dict[int, Row] = {r["position"]: r for r in rows or []}
        self._changed_rows: set[int] = set()
        self._maps: dict[str, dict[str, Any]] = {}
        self._timer: threading.Timer | None = None
        self._displays: list[tuple[Any, Any]] = []
        self._standin_at = 0.0
        self._standin_fresh = False
        self._ended = threading.Event()
        self.on_msg(self._on_view_message)

    @classmethod
    def for_workflow(cls, workflow_id: str) -> Any:
        """The live widget of *workflow_id* if it runs in this process, else its static copy."""
        from . import live

        existing = live.widget_for(workflow_id)
        if existing is not None:
            return existing
        return StaticTimeline(workflow_id)

    def __repr__(self) -> str:
        return f"<TimelineWidget {self.workflow_id!r} {self.status} {len(self._rows)} steps>"

    @property
    def steps(self) -> list[Row]:
        """The rows, in position order (copies)."""
        with self._lock:
            return [dict(r) for _, r in sorted(self._rows.items())]

    @property
    def progress(self) -> str:
        """``map NAME: done/total items`` of the latest `dnb.map`, or empty."""
        with self._lock:
            if not self._maps:
                return ""
            name, m = list(self._maps.items())[-1]
            return f"map {name.rsplit('.', 1)[-1]}: {m['done']}/{m['total']} items"

    # -- updates (any thread) ---------------------------------------------------------------
    def set_row(self, row: Row) -> None:
        with self._lock:
            self._rows[row["position"]] = row
            self._changed_rows.add(row["position"])
        self._soon()

    def set_status(self, status: str, final: bool = False) -> None:
        with self._lock:
            self.status = status
        if final:
            self.finish()

    def set_progress(self, name: str, done: int, total: int) -> None:
        now = time.time()
        with self._lock:
            m = self._maps.setdefault(name, {"done": 0, "total": total, "first": now, "last": now})
            m.update(done=done, total=total, last=now)
        self._soon()

    def add_note(self, text: str) -> None:
        with self._lock:
            if text not in self.notes:
                self.notes = [*self.notes, text]

    def _soon(self) -> None:
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(SEND_INTERVAL, self.flush)
                self._timer.daemon = True
                self._timer.start()

    def flush(self) -> None:
        """Send the steps and progress that changed since the last batch."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            changed = [_compact(self._rows[p]) for p in sorted(self._changed_rows)]
            self._changed_rows.clear()
            maps = {k: dict(v) for k, v in self._maps.items()}
            if maps != self.maps:
                self.maps = maps
        if changed:
            self._post({"kind": "rows", "rows": changed})
        wait = STANDIN_INTERVAL if self._standin_fresh else STANDIN_FIRST
        if self._displays and time.monotonic() - self._standin_at > wait:
            self._refresh_standins()

    def _post(self, content: dict[str, Any]) -> None:
        try:
            self.send(content)
        except Exception:  # no frontend, or it is gone: the state stays here
            pass

    def _on_view_message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        if content.get("kind") == "sync":
            rows = [_compact(r) for r in self.steps]
            for i in range(0, len(rows), SYNC_CHUNK):
                self._post({"kind": "rows", "rows": rows[i : i + SYNC_CHUNK]})
        elif content.get("kind") == "detail":
            self._post(self._detail(content.get("p")))

    def _detail(self, position: Any) -> dict[str, Any]:
        with self._lock:
            r = dict(self._rows.get(position) or {}) if isinstance(position, int) else {}
        out: dict[str, Any] = {"kind": "detail", "p": position}
        if not r:
            return out
        out.update(error_type=r.get("error_type"), error_message=r.get("error_message"),
                   traceback=r.get("error_traceback"), codec=r.get("codec"))  # fmt: skip
        if r.get("state") not in ("running", "queued"):
            out["load"] = f"dnb.output({self.workflow_id!r}, {r['position']})"
        return out

    # -- display ------------------------------------------------------------------------------
    def _html(self, standin: bool = False) -> str:
        with self._lock:
            rows = [dict(r) for r in self._rows.values()]
            maps = {k: {**v, "rate": _rate(v)} for k, v in self._maps.items()}
        return render_html(self.title, rows, status=self.status, notes=list(self.notes), maps=maps,
                           standin=standin, workflow_id=self.workflow_id)  # fmt: skip

    def show(self) -> TimelineWidget:
        """Display the live view and, under it, the stand-in kept for a kernel that dies."""
        from IPython.display import display

        data, meta = self._repr_mimebundle_()
        data["text/plain"] = ""  # a viewer without the widget shows the stand-in alone
        live = display(data, metadata=meta, raw=True, display_id=True)
        standin = display({"text/html": self._html(standin=True), "text/plain": ""}, raw=True,
                          display_id=True)  # fmt: skip
        self._standin_at = time.monotonic()
        with self._lock:
            first = not self._displays
            self._displays.append((live, standin))
        if first:
            threading.Thread(target=self._beat, name="durablenb-timeline", daemon=True).start()
        return self

    def _beat(self) -> None:
        while not self._ended.wait(BEAT_INTERVAL):
            self._post({"kind": "beat"})
            if time.monotonic() - self._standin_at > STANDIN_INTERVAL:
                self._refresh_standins()

    def _ipython_display_(self) -> None:
        self.show()

    def _refresh_standins(self) -> None:
        self._standin_at, self._standin_fresh = time.monotonic(), True
        bundle = {"text/html": self._html(standin=True), "text/plain": ""}
        for _, standin in list(self._displays):
            _update(standin, bundle)

    def finish(self) -> None:
        """The run ended: every display becomes the final static copy, the model closes."""
        self._ended.set()
        self.flush()
        with self._lock:
            displays, self._displays = self._displays, []
        final = {"text/html": self._html(), "text/plain": self.text()}
        for live, standin in displays:
            _update(live, final)
            _update(standin, {"text/plain": ""})
        if displays:
            self.close()

    def text(self) -> str:
        return render_text(self.title, self.steps, status=self.status)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        data, meta = bundle if isinstance(bundle, tuple) else (bundle, {})
        data = dict(data or {})
        data["text/plain"] = self.text()
        return data, meta


def _rate(m: dict[str, Any]) -> float | None:
    elapsed = m["last"] - m["first"]
    return (m["done"] - 1) / elapsed if m["done"] > 1 and elapsed > 0 else None


def _update(handle: Any, bundle: dict[str, Any]) -> None:
    try:
        handle.update(bundle, raw=True)
    except Exception:  # the frontend may be gone
        pass


class StaticTimeline:
    """A recorded timeline: HTML in a notebook, text in a terminal."""

    def __init__(self, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        self.status = workflow_status(workflow_id)
        self.steps = rows_from_history(workflow_id)

    def __repr__(self) -> str:
        return render_text(self.workflow_id, self.steps, status=self.status)

    def _repr_html_(self) -> str:
        return render_html(self.workflow_id, self.steps, status=self.status)

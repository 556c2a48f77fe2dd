"""Timelines that show up by themselves: a widget for every workflow run from a cell."""

from __future__ import annotations

import threading
import time
from typing import Any

from ..engine import events, runtime

__all__ = ["AutoTimelines", "enable", "disable", "widget_for", "note_shown"]

_widgets: dict[str, Any] = {}
_lock = threading.Lock()
#: Notes of runs that will get a widget before it exists, and notes a widget shows.
_pending_notes: dict[str, list[str]] = {}
_shown_notes: set[tuple[str, str]] = set()

#: Names of the workflows of ``%%durable`` cells.
CELL_PREFIX = "%%durable:"


def widget_for(workflow_id: str) -> Any:
    """The live widget of *workflow_id*, if one is shown."""
    return _widgets.get(workflow_id)


def note_shown(workflow_id: str, text: str) -> bool:
    """Whether a timeline shows this note (so it need not be printed too)."""
    return (workflow_id, text) in _shown_notes


def _row(position: int, name: str, kind: str, label: str | None) -> dict[str, Any]:
    return {"position": position, "name": name, "kind": kind, "label": label, "state": "running",
            "started": time.time(), "finished": None, "attempts": 1, "output_bytes": None,
            "codec": None, "error_type": None, "error_message": None}  # fmt: skip


class AutoTimelines(events.Listener):
    """Shows a live `TimelineWidget` for each top-level workflow started from a cell."""

    def _new(self, workflow_id: str) -> Any:
        from .timeline_widget import TimelineWidget, in_kernel

        if not in_kernel():
            return None
        widget = TimelineWidget(workflow_id, [], status="running")
        with _lock:
            _widgets[workflow_id] = widget
        for note in _pending_notes.pop(workflow_id, []):
            widget.add_note(note)
        widget.show()
        return widget

    def workflow_submitted(self, workflow_id: str, name: str) -> None:
        if threading.current_thread() is threading.main_thread() and _wanted():
            self._new(workflow_id)

    def workflow_started(self, run: Any) -> None:
        widget = _widgets.get(run.id)
        if widget is None:
            if run.name.startswith(CELL_PREFIX):  # a cell: a timeline once it has a step
                return
            widget = self._start(run)
            if widget is None:
                return
        for note in run.notes:
            widget.add_note(note)
        widget.set_status("running")

    def _will_show(self, run: Any) -> bool:
        from .timeline_widget import in_kernel

        return (run.store.settings.timeline and run.parent_id is None and in_kernel()
                and threading.current_thread() is threading.main_thread())  # fmt: skip

    def _start(self, run: Any) -> Any:
        """A new timeline for a top-level workflow run from a cell (None if not wanted)."""
        return self._new(run.id) if self._will_show(run) else None

    def workflow_note(self, run: Any, text: str) -> None:
        widget = _widgets.get(run.id)
        if widget is not None:
            widget.add_note(text)
        elif not run.name.startswith(CELL_PREFIX) and self._will_show(run):
            _pending_notes.setdefault(run.id, []).append(text)
        else:
            return
        _shown_notes.add((run.id, text))

    def step_started(self, run: Any, position: int, name: str, kind: str, label: str | None = None) -> None:
        widget = _widgets.get(run.id)
        if widget is None and run.name.startswith(CELL_PREFIX) and run.id in events.active_runs:
            widget = self._start(run)
        if widget is not None:
            widget.set_row(_row(position, name, kind, label))

    def step_finished(self, run: Any, record: Any, replayed: bool) -> None:
        widget = _widgets.get(run.id)
        if widget is not None:
            from .timeline_widget import row_from_record

            widget.set_row(row_from_record(record, replayed))

    def map_progress(self, run: Any, name: str, done: int, total: int) -> None:
        widget = _widgets.get(run.id)
        if widget is not None:
            widget.set_progress(name, done, total)

    def workflow_finished(self, run: Any, status: str, error: BaseException | None) -> None:
        with _lock:
            widget = _widgets.pop(run.id, None)
        _pending_notes.pop(run.id, None)
        if widget is not None:
            widget.set_status(status, final=True)


_listener = AutoTimelines()


def _wanted() -> bool:
    """Whether the connected store's settings want live timelines (``DURABLENB_TIMELINE``)."""
    store = runtime.current_store()
    return store is None or store.settings.timeline


def enable() -> None:
    """Show a live timeline for workflows run from notebook cells (``DURABLENB_TIMELINE=0``
    turns it off)."""
    events.add_listener(_listener)


def disable() -> None:
    """Stop showing timelines by themselves."""
    events.remove_listener(_listener)

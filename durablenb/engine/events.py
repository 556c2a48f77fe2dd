"""What happens in running workflows, for whoever listens (the live timeline widget).

Listeners implement any of the methods of `Listener`; they are called in the thread that
runs the workflow and must be quick and thread-safe. With no listener registered, the cost
to the replay loop is one truthiness check per event.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger("durablenb")

__all__ = ["Listener", "listeners", "add_listener", "remove_listener", "emit", "active_runs"]


class Listener:
    """Base class of event listeners; every method does nothing by default."""

    def workflow_submitted(self, workflow_id: str, name: str) -> None:
        """`dnb.start` was called (in the caller's thread) for *workflow_id*."""

    def workflow_started(self, run: Any) -> None:
        """A workflow began running (new, resumed or forked) in this process."""

    def step_started(self, run: Any, position: int, name: str, kind: str) -> None:
        """A step began executing (it had no record)."""

    def step_finished(self, run: Any, record: Any, replayed: bool) -> None:
        """A step's record was written (*replayed* False) or returned from the store (True)."""

    def map_progress(self, run: Any, name: str, done: int, total: int) -> None:
        """*done* of *total* items of a `dnb.map` over *name* are finished."""

    def workflow_finished(self, run: Any, status: str, error: BaseException | None) -> None:
        """The workflow ended: ``succeeded``, ``failed``, ``cancelled`` or ``interrupted``."""


listeners: list[Listener] = []
_lock = threading.Lock()

#: Workflows executing in this process right now, by id.
active_runs: dict[str, Any] = {}


def add_listener(listener: Listener) -> None:
    """Start calling *listener* on every event."""
    with _lock:
        if listener not in listeners:
            listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    """Stop calling *listener*."""
    with _lock:
        if listener in listeners:
            listeners.remove(listener)


def emit(event: str, *args: Any) -> None:
    """Call *event* on every listener; a failing listener is logged, never raised."""
    for listener in list(listeners):
        try:
            getattr(listener, event)(*args)
        except Exception:  # a display problem must never break a workflow
            logger.debug("durablenb listener %r failed on %s", listener, event, exc_info=True)

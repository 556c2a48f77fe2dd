"""What happens in running workflows, for whoever listens (the live timeline widget).

Listeners implement any of the methods of `Listener`; they are called in the thread that
runs the workflow and must be quick and thread-safe. With no listener registered, the cost
to the replay loop is one truthiness check per event.
"""

from __future__ import annotations

import functools
import inspect
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

    def step_started(self, run: Any, position: int, name: str, kind: str, label: str | None = None) -> None:
        """A step began executing (it had no record). *label*: which item of a `dnb.map`
        it is (``AA`` of ``fit_carrier[AA]``), passed only for map items and only to
        listeners whose method takes a ``label`` parameter.

        A map has at most one item running per worker, each from when a worker picks it up
        (in that worker's thread) until its record is written: an item picked up while the
        previous ones still wait for their records is announced when one is written (in the
        workflow's thread), or not at all if it is recorded first. With ``processes=True``,
        items are announced in the order the pool hands them out, as near as the workflow's
        thread can tell."""

    def step_finished(self, run: Any, record: Any, replayed: bool) -> None:
        """A step's record was written (*replayed* False) or returned from the store (True)."""

    def workflow_note(self, run: Any, text: str) -> None:
        """Something the person watching *run* should know: a fork, a code change."""

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


def emit(event: str, *args: Any, **optional: Any) -> None:
    """Call *event* on every listener; a failing listener is logged, never raised.

    *optional*: keyword arguments an event gained after listeners were written for it
    (``label`` of ``step_started``); each is passed when it is not None and only to the
    listeners whose method takes it, so a listener written before keeps working.
    """
    extra = {k: v for k, v in optional.items() if v is not None}
    for listener in list(listeners):
        try:
            method = getattr(listener, event)
            if extra:
                taken = _keywords(method)
                method(*args, **(extra if taken is None else {k: v for k, v in extra.items() if k in taken}))
            else:
                method(*args)
        except Exception:  # a display problem must never break a workflow
            logger.debug("durablenb listener %r failed on %s", listener, event, exc_info=True)


def _keywords(method: Any) -> frozenset[str] | None:
    """The keyword parameters *method* takes (None: any, it has ``**kwargs``)."""
    func = getattr(method, "__func__", None)
    return _func_keywords(func) if func is not None else _signature_keywords(method)


@functools.lru_cache(maxsize=256)
def _func_keywords(func: Any) -> frozenset[str] | None:
    return _signature_keywords(func)


def _signature_keywords(func: Any) -> frozenset[str] | None:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return frozenset()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

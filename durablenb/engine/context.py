"""The running workflow: its state (`WorkflowRun`) and the context variables that find it.

A workflow's body runs with its `WorkflowRun` in a context variable, in the thread that
called it. Steps called there take the run's next position. Steps called anywhere else —
another thread, a step's own body — cannot be placed deterministically in the workflow and
are refused (or are plain calls, inside a step).
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import DurableError, DurableUsageError, WorkflowCancelledError
from ..store import Lease, StepRecord, Store
from . import events, timeouts

if TYPE_CHECKING:
    from .planner import Plan

logger = logging.getLogger("durablenb")


@dataclass(eq=False)
class WorkflowRun:
    """State of one executing workflow."""

    id: str
    name: str
    store: Store
    lease: Lease
    records: dict[int, StepRecord]
    plan: Plan
    lineage: str
    parent_id: str | None = None
    #: The run this one was called from inline (None for top-level and started workflows).
    parent: WorkflowRun | None = None
    archive_id: str | None = None
    position: int = 0
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Steps executing now: position -> (name, kind, started at, label).
    running: dict[int, tuple[str, str, float, str | None]] = field(default_factory=dict)
    #: Set once a record write or notification shows the workflow was cancelled.
    cancelled: bool = False
    #: The thread running the body; threads that existed when it started.
    thread: int = field(default_factory=threading.get_ident)
    threads_before: frozenset[int] = field(default_factory=frozenset)
    started_at: float = field(default_factory=time.time)
    #: The workflows it calls start as top-level ones (`Workflow.transparent`).
    transparent: bool = False
    #: Its ``timeout=`` and the recorded deadline it sets (epoch seconds; `timeouts.arm`).
    timeout: float | None = None
    deadline: float | None = None

    def take(self, n: int = 1) -> int:
        """Reserve *n* consecutive positions; returns the first."""
        with self.lock:
            first = self.position
            self.position += n
            return first

    def is_cancelled(self) -> bool:
        """True once a cancel of this workflow has been seen, or its deadline passed."""
        if not self.cancelled and timeouts.overdue(self):
            timeouts.expire(self)
            self.cancelled = True
        if not self.cancelled and self.store.is_cancelled(self.id):
            self.cancelled = True
        return self.cancelled

    def cancelled_error(self) -> WorkflowCancelledError:
        """The error its caller gets now that it was cancelled (by its deadline, or not)."""
        return timeouts.timed_out(self) if timeouts.overdue(self) else WorkflowCancelledError(self.id)

    def ancestors(self) -> list[str]:
        """Ids of this run and the runs it was called from, innermost first."""
        out: list[str] = []
        run: WorkflowRun | None = self
        while run is not None:
            out.append(run.id)
            run = run.parent
        return out


_current: contextvars.ContextVar[WorkflowRun | None] = contextvars.ContextVar(
    "durablenb_workflow", default=None
)
_in_step: contextvars.ContextVar[bool] = contextvars.ContextVar("durablenb_in_step", default=False)
_explicit_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "durablenb_workflow_id", default=None
)
_txn_conn: contextvars.ContextVar[psycopg.Connection | None] = contextvars.ContextVar(
    "durablenb_txn", default=None
)


def current() -> WorkflowRun | None:
    """The workflow running in this context (None outside workflows and inside steps)."""
    return None if _in_step.get() else _current.get()


def in_step() -> bool:
    """True inside a step's body."""
    return _in_step.get()


def enclosing() -> WorkflowRun | None:
    """The workflow of this context, even inside one of its steps."""
    return _current.get()


def connection() -> psycopg.Connection:
    """The connection of the running `@transaction`: its writes commit with the step record."""
    conn = _txn_conn.get()
    if conn is None:
        raise DurableError("dnb.connection() is only available inside a @dnb.transaction function")
    return conn


def check_thread(run: WorkflowRun, what: str) -> None:
    """Refuse a position taken from another thread than the one running the workflow."""
    if threading.get_ident() != run.thread:
        raise DurableUsageError(
            f"{what} was called from a thread that workflow {run.id!r} did not create; its "
            "position in the workflow (and so its record on replay) would depend on thread "
            "timing. Call it from the workflow's own thread, or run many calls in parallel "
            "with dnb.map(fn, items)."
        )


def check_orphan(what: str) -> None:
    """Refuse a step called, outside any workflow context, from a thread started while a
    workflow of this process runs (it would silently not be recorded)."""
    if not events.active_runs:
        return
    me = threading.get_ident()
    if me == threading.main_thread().ident or threading.current_thread().name.startswith("durablenb"):
        return
    for run in list(events.active_runs.values()):
        if me != run.thread and me not in run.threads_before:
            raise DurableUsageError(
                f"{what} was called from a thread started while workflow {run.id!r} runs, "
                "outside the workflow's context: it would not be recorded. Call it from the "
                "workflow's own thread, or run many calls in parallel with dnb.map(fn, items)."
            )


def snapshot_threads() -> frozenset[int]:
    """Idents of the threads alive now."""
    return frozenset(t.ident for t in threading.enumerate() if t.ident is not None)


def note_running(
    run: WorkflowRun, pos: int, name: str, kind: str, t0: float, label: str | None = None
) -> None:
    """Note that the step at *pos* is executing now (called from any thread: a `dnb.map`
    item is noted by the worker that picked it up)."""
    run.running[pos] = (name, kind, t0, label)
    if events.listeners:
        events.emit("step_started", run, pos, name, kind, label=label)


def tell(run: WorkflowRun, text: str) -> None:
    """Tell whoever watches *run* something they should know (a fork, a code change): its
    timeline shows it, and it is logged as a warning."""
    run.notes.append(text)
    if events.listeners:
        events.emit("workflow_note", run, text)
    logger.warning("workflow %s: %s", run.id, text, extra={"durablenb_workflow": run.id,
                                                           "durablenb_note": text})  # fmt: skip


def note_finished(run: WorkflowRun, rec: Any, replayed: bool) -> None:
    """Note that the step of *rec* is done (recorded now, or replayed)."""
    run.running.pop(rec.position, None)
    if events.listeners:
        events.emit("step_finished", run, rec, replayed)

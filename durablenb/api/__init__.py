"""The public surface: decorators, workflow ids, handles, helpers and management verbs."""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import random as _random
import time as _time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, overload

from ..engine import Step, Transaction, Workflow, WorkflowHandle, runtime, values
from ..engine.checkpoint import replay_record
from ..engine.context import _explicit_id
from ..engine.handles import launch
from ..engine.identity import check_id
from ..engine.kinds import record_value
from ..errors import (
    WorkflowBusyError,
    WorkflowNotFoundError,
    WorkflowNotRegisteredError,
)
from ..store import Store

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "workflow",
    "step",
    "transaction",
    "workflow_id",
    "connect",
    "sleep",
    "now",
    "random",
    "output",
    "resume",
    "cancel",
    "fork",
    "forget",
    "recover",
    "gc",
]


@overload
def workflow(func: F) -> Workflow: ...
@overload
def workflow(
    func: None = None, *, name: str | None = None, on_change: str = "fork",
    on_busy: str = "error", wait_timeout: float = 3600.0, durability: str | None = None,
    on_failure: str = "retry", timeout: float | None = None,
) -> Callable[[F], Workflow]: ...  # fmt: skip
def workflow(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    on_change: str = "fork",
    on_busy: str = "error",
    wait_timeout: float = 3600.0,
    durability: str | None = None,
    on_failure: str = "retry",
    timeout: float | None = None,
) -> Any:
    """Make *func* a durable workflow: ``@workflow`` or ``@workflow(name=..., ...)``.

    *on_change*: ``"fork"`` re-runs from the first changed step when the code changed since
    the recorded run, ``"error"`` raises `CodeChangedError`, ``"ignore"`` replays anyway.
    *on_busy*: ``"error"`` or ``"wait"`` (up to *wait_timeout* s) when another executor runs it.
    *durability*: ``"full"`` (each step record is flushed to disk before the step returns)
    or ``"kernel"`` (records survive any death of the Python process; a database crash can
    lose the last fraction of a second of them); default: the calling workflow's, else the
    connection's.
    *on_failure*: calling a workflow that finished with an error ``"retry"``s it from its
    first failed step (earlier steps replay; the failed run is kept as ``ID~N``), or
    ``"replay"``s the recorded error. A resumed *interrupted* run always replays recorded
    errors, so a workflow that caught one stays deterministic.
    *timeout*: seconds from its first start after which it is cancelled (it runs no further
    step; the caller gets `WorkflowTimeoutError`). The deadline is recorded, so a resume
    after a crash keeps it; `dnb.resume` gives the run it starts a new one.
    """
    if func is None:
        return functools.partial(workflow, name=name, on_change=on_change, on_busy=on_busy,
                                 wait_timeout=wait_timeout, durability=durability,
                                 on_failure=on_failure, timeout=timeout)  # fmt: skip
    _live_timelines()
    return Workflow(func, name=name, on_change=on_change, on_busy=on_busy, wait_timeout=wait_timeout,
                    durability=durability, on_failure=on_failure, timeout=timeout)  # fmt: skip


def _live_timelines() -> None:
    """In a Jupyter kernel, show a live timeline for workflows run from cells."""
    import sys

    if "ipykernel" in sys.modules:
        from ..widgets import live

        live.enable()


def step(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 2.0,
    interval: float = 1.0,
    max_interval: float = 60.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    timeout: float | None = None,
) -> Any:
    """Make *func* a checkpointed step: ``@step`` or ``@step(retries=3, backoff=2.0)``.

    After a failure that is a *retry_on* exception it is tried again up to *retries* times,
    waiting *interval* × *backoff*ⁿ seconds (at most *max_interval*).
    *timeout*: seconds after which an attempt is interrupted (like Ctrl-C) and ends with
    `StepTimeoutError`, recorded as the step's error unless a retry follows.
    """
    if func is None:
        return functools.partial(step, name=name, retries=retries, backoff=backoff, interval=interval,
                                 max_interval=max_interval, retry_on=retry_on, timeout=timeout)  # fmt: skip
    return Step(func, name=name, retries=retries, backoff=backoff, interval=interval,
                max_interval=max_interval, retry_on=retry_on, timeout=timeout)  # fmt: skip


def transaction(
    func: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    retries: int = 0,
    backoff: float = 2.0,
    interval: float = 0.1,
    max_interval: float = 10.0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    timeout: float | None = None,
) -> Any:
    """Make *func* a transaction: its writes through `connection` commit with its record.

    Serialization failures and deadlocks are retried by themselves; other errors as for `step`.
    *timeout*: as for `step`; the body's statements are also bounded by PostgreSQL's
    ``statement_timeout``, and a timed-out body rolls back.
    """
    if func is None:
        return functools.partial(transaction, name=name, retries=retries, backoff=backoff, interval=interval,
                                 max_interval=max_interval, retry_on=retry_on, timeout=timeout)  # fmt: skip
    return Transaction(func, name=name, retries=retries, backoff=backoff, interval=interval,
                       max_interval=max_interval, retry_on=retry_on, timeout=timeout)  # fmt: skip


@contextlib.contextmanager
def workflow_id(wid: str) -> Iterator[str]:
    """Give the next workflow called (or started) in this block the id *wid*.

    An id is non-empty text of at most 1000 UTF-8 bytes, without NUL characters or lone
    surrogates; anything else raises `InvalidIdError` (a `ValueError`).
    """
    token = _explicit_id.set(check_id(wid))
    try:
        yield wid
    finally:
        _explicit_id.reset(token)


def connect(dsn: str | None = None, *, schema: str | None = None, **options: Any) -> Store:
    """Connect to the store: *dsn*, else ``$DURABLENB_DATABASE_URL``, else the embedded server.

    The environment is read here, once; *options* override any setting by its
    `durablenb.settings.Settings` field name (``secret=b"…"``, ``blob_url="/data/blobs"``…).
    """
    return runtime.connect(dsn, schema=schema, **options)


# -- replay-safe helpers --------------------------------------------------------------------


def sleep(seconds: float) -> None:
    """Sleep durably: a resumed workflow sleeps only what remains of the recorded wake-up time."""
    wake = record_value("sleep", "dnb.sleep", lambda: _time.time() + float(seconds))
    remaining = wake - _time.time()
    if remaining > 0:
        _time.sleep(remaining)


def now() -> _dt.datetime:
    """The current time (UTC), recorded: a replay returns the same instant."""
    ts = record_value("now", "dnb.now", _time.time)
    return _dt.datetime.fromtimestamp(ts, tz=_dt.timezone.utc)


def random() -> float:
    """A random float in [0, 1), recorded: a replay returns the same number."""
    return record_value("random", "dnb.random", _random.random)


# -- management --------------------------------------------------------------------------


def _spec_for(name: str) -> Workflow:
    wf = runtime.registered(name)
    if wf is None:
        raise WorkflowNotRegisteredError(
            f"workflow {name!r} is not defined in this process; run the cell or import the "
            "module that defines it, then try again"
        )
    return wf


def _row(workflow_id: str) -> Any:
    row = runtime.store().get_workflow(check_id(workflow_id))
    if row is None:
        raise WorkflowNotFoundError(f"no workflow {workflow_id!r} is recorded")
    return row


def _start_recorded(wf: Workflow, row: Any, wid: str, retry: bool = False) -> WorkflowHandle:
    store = runtime.store()
    args, kwargs = values.decode_value(store, row.inputs_codec, row.inputs, row.inputs_checksum,
                                       row.inputs_blob, f"inputs of workflow {row.id!r}",
                                       (row.lineage, "inputs"))  # fmt: skip
    inputs = values.Stored(row.inputs_codec, None if row.inputs is None else bytes(row.inputs),
                           row.inputs_checksum, 0, row.inputs_blob)  # fmt: skip
    return launch(wf, wid, tuple(args), dict(kwargs), None, inputs, store=store,
                  position=row.parent_position, parent_id=row.parent_id, retry=retry)  # fmt: skip


def output(workflow_id: str, step: int | str) -> Any:
    """The output recorded for a step of a workflow (its recorded exception is raised).

    *step*: a position, or a step name (the full name or its last dotted part); a name
    recorded at several positions is an error listing them.
    """
    store = runtime.store()
    row = _row(workflow_id)
    records = store.get_steps(workflow_id)
    if isinstance(step, int):
        rec = records.get(step)
    else:
        found = [r for r in records.values() if step in (r.name, r.name.rsplit(".", 1)[-1])]
        if len(found) > 1:
            raise ValueError(f"step {step!r} is recorded at positions {[r.position for r in found]} "
                             f"of workflow {workflow_id!r}; pass a position")  # fmt: skip
        rec = found[0] if found else None
    if rec is None:
        names = ", ".join(f"{p}: {r.name}" for p, r in sorted(records.items())) or "none"
        raise LookupError(f"workflow {workflow_id!r} has no recorded step {step!r} (recorded: {names})")
    return replay_record(store, row.lineage, workflow_id, rec)


def resume(workflow_id: str) -> WorkflowHandle:
    """Run a recorded workflow again from its recorded inputs, in the background.

    An interrupted workflow continues from its last recorded step. A failed one runs again
    from its first failed step (whatever its ``on_failure``; the failed run is kept as
    ``ID~N``). A cancelled one is reopened: its recorded step failures are dropped so those
    steps run again.
    """
    row = _row(workflow_id)
    wf = _spec_for(row.name)
    store = runtime.store()
    if row.status == "running" and store.is_held(workflow_id):
        raise WorkflowBusyError(workflow_id, row.executor)
    if row.status == "cancelled":
        store.reopen(workflow_id)
    return _start_recorded(wf, row, workflow_id, retry=row.status == "failed")


def cancel(workflow_id: str) -> bool:
    """Cancel a running workflow and its running children: each stops before its next step,
    and a call that finishes after the cancel raises `WorkflowCancelledError`. Returns False
    when nothing was running any more (the cancel came too late: the outcome stands)."""
    _row(workflow_id)
    return bool(runtime.store().cancel(workflow_id))


def fork(workflow_id: str, from_step: int = 0, *, new_id: str | None = None) -> WorkflowHandle:
    """Run a copy of a workflow that reuses its step records before position *from_step*."""
    row = _row(workflow_id)
    wf = _spec_for(row.name)
    wid = check_id(new_id or f"{workflow_id}~fork-{uuid.uuid4().hex[:8]}")
    runtime.store().fork(workflow_id, wid, int(from_step), runtime.executor_id())
    new_row = _row(wid)
    return _start_recorded(wf, new_row, wid)


def forget(workflow_id: str, *, force: bool = False) -> int:
    """Delete a workflow's records (children and archived runs too); returns how many."""
    store = runtime.store()
    row = _row(workflow_id)
    if row.status == "running" and store.is_held(workflow_id) and not force:
        raise WorkflowBusyError(workflow_id, row.executor)
    return store.forget(workflow_id)


def recover() -> list[WorkflowHandle]:
    """Resume, in the background, every interrupted workflow defined in this process: top-level
    ones, and children started by a parent that has finished since (others resume with their
    parent)."""
    store = runtime.store()
    handles = []
    held = store.held_keys()
    missing = []
    for row in store.recoverable():
        if store.lock_key(row.id) in held:
            continue
        wf = runtime.registered(row.name)
        if wf is None:
            missing.append(row.id)
            continue
        handles.append(_start_recorded(wf, row, row.id))
    if missing:
        import logging

        logging.getLogger("durablenb").warning(
            "not recovered (workflow not defined here): %s", ", ".join(missing)
        )
    return handles


def gc(older_than: float | _dt.timedelta) -> int:
    """Delete finished workflows not updated for *older_than* (seconds or a timedelta), then
    every blob no workflow holds; returns how many workflows went."""
    seconds = older_than.total_seconds() if isinstance(older_than, _dt.timedelta) else older_than
    if seconds < 0:
        raise ValueError("older_than must be >= 0")
    store = runtime.store()
    removed = store.forget_older_than(float(seconds))
    store.sweep_blobs()
    return removed


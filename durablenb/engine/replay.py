"""The replay loop.

A workflow runs with a `WorkflowRun` in a context variable. Every step call takes the next
position; if a record exists there (and the code that made it is unchanged) its output is
returned, or its exception re-raised, without running the step. The first position with no
record runs for real and is recorded before the workflow moves on.
"""

from __future__ import annotations

import contextvars
import linecache
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from .. import _faults, codecs
from ..errors import (
    CodeChangedError,
    CorruptRecordError,
    DurableError,
    NonDeterministicWorkflowError,
    SchemaVersionError,
    StoreUnavailableError,
    UnserializableArgumentsError,
    UnserializableOutputError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowConflictError,
)
from ..store import Lease, NewWorkflow, Outcome, StepRecord, Store
from . import events, runtime, values
from .defs import Step, Transaction, Workflow
from .hashing import args_digest, default_workflow_id

logger = logging.getLogger("durablenb")

#: Errors of the machinery, not of the user's code: never recorded as a step's or
#: workflow's outcome, so the workflow stays resumable.
NOT_RECORDED: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    WorkflowBusyError,
    WorkflowCancelledError,
    NonDeterministicWorkflowError,
    CodeChangedError,
    CorruptRecordError,
    SchemaVersionError,
    WorkflowConflictError,
)


@dataclass
class WorkflowRun:
    """State of one executing workflow."""

    id: str
    name: str
    store: Store
    lease: Lease
    records: dict[int, StepRecord]
    on_change: str
    code_changed: bool = False
    archive_id: str | None = None
    position: int = 0
    notes: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    #: Steps executing now: position -> (name, kind, started at).
    running: dict[int, tuple[str, str, float]] = field(default_factory=dict)
    parent_id: str | None = None

    def take(self, n: int = 1) -> int:
        """Reserve *n* consecutive positions; returns the first."""
        with self.lock:
            first = self.position
            self.position += n
            return first


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


def connection() -> psycopg.Connection:
    """The connection of the running `@transaction`: its writes commit with the step record."""
    conn = _txn_conn.get()
    if conn is None:
        raise DurableError("dnb.connection() is only available inside a @dnb.transaction function")
    return conn


# -- records ------------------------------------------------------------------------------


def lookup(run: WorkflowRun, pos: int, name: str, kind: str, code: str | None) -> StepRecord | None:
    """The record to replay at *pos*, or None when the step must run (forking if needed)."""
    rec = run.records.get(pos)
    if rec is None:
        return None
    if rec.name != name or rec.kind != kind:
        if run.code_changed and run.on_change == "fork":
            fork_at(run, pos, f"the workflow now calls {name!r} where {rec.name!r} was recorded")
            return None
        if run.code_changed and run.on_change == "error":
            raise CodeChangedError(
                f"workflow {run.id!r} changed: position {pos} now calls {name!r}, "
                f"recorded {rec.name!r}"
            )
        raise NonDeterministicWorkflowError(run.id, pos, rec.name, name)
    if code is not None and rec.code_hash is not None and rec.code_hash != code:
        if run.on_change == "error":
            raise CodeChangedError(
                f"the code of step {name!r} (position {pos}) of workflow {run.id!r} changed "
                "since it was recorded"
            )
        if run.on_change == "fork":
            fork_at(run, pos, f"the code of {name!r} changed")
            return None
    return rec


def fork_at(run: WorkflowRun, pos: int, why: str) -> None:
    """Drop records from *pos* on (the old run kept as an archive) so they run anew."""
    if run.archive_id is None:
        run.archive_id = run.lease.archive()
    run.lease.truncate(pos, run.archive_id)
    for p in [p for p in run.records if p >= pos]:
        del run.records[p]
    note = f"{why}: re-running from position {pos}; the previous run is kept as {run.archive_id!r}"
    run.notes.append(note)
    logger.warning("workflow %s: %s", run.id, note)


def _what(run_id: str, rec: StepRecord) -> str:
    return f"output of step {rec.name!r} (position {rec.position}) of workflow {run_id!r}"


def replay(store: Store, run_id: str, rec: StepRecord) -> Any:
    """The recorded output of *rec*, or its recorded exception raised."""
    __tracebackhide__ = True
    if rec.status == "succeeded":
        try:
            return values.decode_value(store, rec.codec or "", rec.output, rec.checksum, rec.blob,
                                       _what(run_id, rec))  # fmt: skip
        except CorruptRecordError as exc:
            raise CorruptRecordError(str(exc)) from None
    exc = codecs.decode_exception(rec.error, rec.error_type, rec.error_message, rec.error_traceback)
    _note(exc, f"durablenb: re-raised from the record of step {rec.name!r} (position "
               f"{rec.position}) of workflow {run_id!r}; the step did not run again")  # fmt: skip
    raise_recorded(exc, f"recorded error of step {rec.name!r}")


def raise_recorded(exc: BaseException, label: str) -> None:
    """Raise *exc* from a frame named *label*, so tracebacks end at a label, not engine code."""
    __tracebackhide__ = True
    source = "raise recorded_error  # replayed from its record: nothing ran again\n"
    filename = f"<durablenb: {label}>"
    linecache.cache[filename] = (len(source), None, [source], filename)
    exec(compile(source, filename, "exec"), {"recorded_error": exc.with_traceback(None)})


def _note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note") and text not in getattr(exc, "__notes__", ()):
        exc.add_note(text)


def _record(
    store: Store, run_id: str, pos: int, spec_name: str, kind: str, code: str | None, ok: bool,
    value: Any, attempts: int, t0: float, t1: float, child_id: str | None = None,
) -> StepRecord:  # fmt: skip
    """A record of an outcome; an unencodable output becomes an `UnserializableOutputError`."""
    rec = StepRecord(run_id, pos, spec_name, kind, "succeeded", attempts=attempts, code_hash=code,
                     child_id=child_id, started_at=t0, finished_at=t1)  # fmt: skip
    if ok:
        try:
            enc = values.encode_value(store, value)
        except codecs.EncodingError as exc:
            err = UnserializableOutputError(
                f"step {spec_name!r} of workflow {run_id!r} returned a "
                f"{type(value).__module__}.{type(value).__qualname__} that cannot be recorded "
                f"({exc}). The step ran; it is recorded as failed so it is not re-run silently. "
                "Return something picklable (for example a DataFrame or a dict) and rerun.",
                step=spec_name,
                type_name=f"{type(value).__module__}.{type(value).__qualname__}",
            )
            err.__cause__ = exc
            value, ok = err, False
        else:
            rec.output, rec.codec, rec.checksum, rec.output_bytes, rec.blob = (
                enc.data, enc.codec, enc.checksum, enc.size, enc.blob)  # fmt: skip
            return rec
    enc_err = codecs.encode_exception(value)
    rec.status = "failed"
    rec.error, rec.error_type = enc_err.data, enc_err.type_name
    rec.error_message, rec.error_traceback = enc_err.message, enc_err.traceback_text
    rec.output = None
    return rec


def started(run: WorkflowRun, pos: int, name: str, kind: str, t0: float) -> None:
    """Note that the step at *pos* is executing now."""
    run.running[pos] = (name, kind, t0)
    if events.listeners:
        events.emit("step_started", run, pos, name, kind)


def finished(run: WorkflowRun, rec: StepRecord, replayed: bool) -> None:
    """Note that the step of *rec* is done (recorded now, or replayed)."""
    run.running.pop(rec.position, None)
    if events.listeners:
        events.emit("step_finished", run, rec, replayed)


def _check_cancelled(run: WorkflowRun) -> None:
    if run.store.is_cancelled(run.id):
        raise WorkflowCancelledError(run.id)


# -- steps ------------------------------------------------------------------------------


def attempt(spec: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bool, Any, int]:
    """Run *spec* with retries: ``(ok, value or exception, attempts)``."""
    __tracebackhide__ = True
    attempts = 0
    token = _in_step.set(True)
    try:
        while True:
            attempts += 1
            try:
                if _faults.ACTIVE:
                    _faults.point("step.before")
                value = spec.fn(*args, **kwargs)
                if _faults.ACTIVE:
                    _faults.point("step.after")
                return True, value, attempts
            except Exception as exc:
                if attempts <= spec.retries and isinstance(exc, spec.retry_on):
                    delay = spec.delay(attempts)
                    logger.info("step %s failed (%r); retry %d in %.2fs", spec.name, exc,
                                attempts, delay)  # fmt: skip
                    time.sleep(delay)
                    continue
                return False, exc, attempts
    finally:
        _in_step.reset(token)


def call_step(spec: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run or replay one step of the current workflow (a plain call outside workflows)."""
    __tracebackhide__ = True
    run = current()
    if run is None:
        return spec.fn(*args, **kwargs)
    code = spec.code_hash
    pos = run.take()
    rec = lookup(run, pos, spec.name, spec.kind, code)
    if rec is not None:
        if events.listeners:
            events.emit("step_finished", run, rec, True)
        return replay(run.store, run.id, rec)
    _check_cancelled(run)
    t0 = time.time()
    started(run, pos, spec.name, spec.kind, t0)
    try:
        ok, value, attempts = attempt(spec, args, kwargs)
        rec = _record(run.store, run.id, pos, spec.name, spec.kind, code, ok, value, attempts, t0,
                      time.time())  # fmt: skip
        winner = run.lease.record_step(rec)
        if _faults.ACTIVE:
            _faults.point("record.written")
    finally:
        run.running.pop(pos, None)
    if events.listeners:
        events.emit("step_finished", run, winner, winner is not rec)
    if winner is not rec:
        return replay(run.store, run.id, winner)
    if rec.status == "succeeded":
        return value
    if ok:  # the output could not be encoded
        raise codecs.decode_exception(rec.error, rec.error_type, rec.error_message)
    raise value


class _Conflict(Exception):
    """Another executor recorded this transaction first: roll ours back."""


_RETRY_TXN = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)


def run_transaction(
    store: Store, spec: Transaction, args: tuple[Any, ...], kwargs: dict[str, Any],
    run_id: str | None, pos: int | None,
) -> tuple[bool, Any, StepRecord | None]:  # fmt: skip
    """Run *spec*'s body and, inside a workflow, its record in one database transaction.

    Returns ``(ok, value or exception, winner)``: *winner* is set when a record already held
    the position, and the body's effects were rolled back.
    """
    attempts = 0
    t0 = time.time()
    deadline = time.monotonic() + store.retry_seconds
    while True:
        attempts += 1
        try:
            with store.transaction() as conn:
                token, tstep = _txn_conn.set(conn), _in_step.set(True)
                try:
                    if _faults.ACTIVE:
                        _faults.point("step.before")
                    value = spec.fn(*args, **kwargs)
                finally:
                    _txn_conn.reset(token)
                    _in_step.reset(tstep)
                if run_id is None or pos is None:
                    return True, value, None
                rec = _record(store, run_id, pos, spec.name, spec.kind, spec.code_hash, True, value,
                              attempts, t0, time.time())  # fmt: skip
                if rec.status != "succeeded":  # unencodable output: roll the body back
                    return False, codecs.decode_exception(rec.error, rec.error_type,
                                                          rec.error_message), None  # fmt: skip
                if not store.insert_step_in(conn, rec):
                    raise _Conflict
                if _faults.ACTIVE:
                    _faults.point("txn.before_commit")
            if _faults.ACTIVE:
                _faults.point("txn.after_commit")
            return True, value, None
        except _Conflict:
            assert run_id is not None and pos is not None
            return True, None, store.get_step(run_id, pos)
        except StoreUnavailableError:
            # Rolled back with the connection, or committed with its record (then the retry
            # meets that record and rolls back): running the body again is safe.
            if run_id is None or time.monotonic() >= deadline:
                raise
            store._putconn(store.wait_for_connection(deadline))
            continue
        except NOT_RECORDED:
            raise
        except Exception as exc:
            transient = isinstance(exc, _RETRY_TXN) and attempts <= max(spec.retries, 5)
            if transient or (attempts <= spec.retries and isinstance(exc, spec.retry_on)):
                time.sleep(0.01 * attempts if transient else spec.delay(attempts))
                continue
            return False, exc, None


def call_transaction(spec: Transaction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run or replay a transaction of the current workflow; exactly once."""
    __tracebackhide__ = True
    run = current()
    if _txn_conn.get() is not None:  # nested in another transaction: share it
        return spec.fn(*args, **kwargs)
    if run is None:
        ok, value, _ = run_transaction(runtime.store(), spec, args, kwargs, None, None)
        if ok:
            return value
        raise value
    pos = run.take()
    rec = lookup(run, pos, spec.name, spec.kind, spec.code_hash)
    if rec is not None:
        finished(run, rec, True)
        return replay(run.store, run.id, rec)
    _check_cancelled(run)
    t0 = time.time()
    started(run, pos, spec.name, spec.kind, t0)
    try:
        ok, value, winner = run_transaction(run.store, spec, args, kwargs, run.id, pos)
    finally:
        run.running.pop(pos, None)
    if winner is not None:
        finished(run, winner, True)
        return replay(run.store, run.id, winner)
    if ok:
        if events.listeners:
            done = StepRecord(run.id, pos, spec.name, spec.kind, "succeeded", started_at=t0,
                              finished_at=time.time())  # fmt: skip
            finished(run, done, False)
        return value
    # The body's writes rolled back; record the failure outside the transaction.
    rec = _record(run.store, run.id, pos, spec.name, spec.kind, spec.code_hash, False, value, 1,
                  t0, time.time())  # fmt: skip
    winner = run.lease.record_step(rec)
    finished(run, winner, winner is not rec)
    if winner is not rec:
        return replay(run.store, run.id, winner)
    raise value


def record_value(kind: str, name: str, compute: Callable[[], Any]) -> Any:
    """Record *compute()* as a step of the current workflow, replaying it when recorded."""
    __tracebackhide__ = True
    run = current()
    if run is None:
        return compute()
    pos = run.take()
    rec = lookup(run, pos, name, kind, None)
    if rec is not None:
        finished(run, rec, True)
        return replay(run.store, run.id, rec)
    _check_cancelled(run)
    t0 = time.time()
    value = compute()
    rec = _record(run.store, run.id, pos, name, kind, None, True, value, 1, t0, time.time())
    winner = run.lease.record_step(rec)
    finished(run, winner, winner is not rec)
    return replay(run.store, run.id, winner) if winner is not rec else value


# -- workflows --------------------------------------------------------------------------


def encode_inputs(
    store: Store, spec: Workflow, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, values.Stored]:
    """The argument digest and encoded inputs; `UnserializableArgumentsError` before anything runs."""
    digest = args_digest(args, kwargs)
    try:
        enc = values.encode_value(store, (tuple(args), dict(kwargs)))
    except codecs.EncodingError as exc:
        raise UnserializableArgumentsError(
            f"the arguments of workflow {spec.name!r} cannot be recorded: {exc}"
        ) from exc
    return digest, enc


def call_workflow(spec: Workflow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a workflow durably: start it, resume it, or return its recorded result."""
    __tracebackhide__ = True
    if _in_step.get():
        return spec.fn(*args, **kwargs)
    parent = _current.get()
    explicit = _explicit_id.get()
    store = parent.store if parent is not None else runtime.store()
    digest, inputs = encode_inputs(store, spec, args, kwargs)
    if parent is None:
        wid = explicit or default_workflow_id(spec.name, digest)
        return execute(store, spec, wid, args, kwargs, digest, inputs)
    pos = parent.take()
    rec = lookup(parent, pos, spec.name, "workflow", spec.code_hash)
    if rec is not None:
        finished(parent, rec, True)
        return replay(parent.store, parent.id, rec)
    _check_cancelled(parent)
    wid = explicit or f"{parent.id}/{pos}"
    t0 = time.time()
    started(parent, pos, spec.name, "workflow", t0)
    try:
        value = execute(store, spec, wid, args, kwargs, digest, inputs, parent.id, pos)
        ok = True
    except NOT_RECORDED:
        parent.running.pop(pos, None)
        raise
    except Exception as exc:
        value, ok = exc, False
    rec = _record(parent.store, parent.id, pos, spec.name, "workflow", spec.code_hash, ok, value, 1, t0,
                  time.time(), child_id=wid)  # fmt: skip
    winner = parent.lease.record_step(rec)
    finished(parent, winner, winner is not rec)
    if winner is not rec:
        return replay(parent.store, parent.id, winner)
    if ok and rec.status == "succeeded":
        return value
    if ok:
        raise codecs.decode_exception(rec.error, rec.error_type, rec.error_message)
    raise value


def recorded_outcome(row: Any, store: Store) -> Any:
    """The recorded result of a finished workflow row, or its recorded exception raised."""
    __tracebackhide__ = True
    if row.status == "succeeded":
        return values.decode_value(store, row.output_codec or "", row.output, row.output_checksum,
                                   row.output_blob, f"output of workflow {row.id!r}")  # fmt: skip
    if row.status == "cancelled":
        raise WorkflowCancelledError(row.id)
    exc = codecs.decode_exception(row.error, row.error_type, row.error_message, row.error_traceback)
    _note(exc, f"durablenb: re-raised from the record of workflow {row.id!r}, which finished "
               "with this error; nothing ran again")  # fmt: skip
    raise_recorded(exc, f"recorded error of workflow {row.name!r}")


def execute(
    store: Store, spec: Workflow, wid: str, args: tuple[Any, ...], kwargs: dict[str, Any],
    digest: str | None, inputs: values.Stored, parent_id: str | None = None,
    parent_position: int | None = None,
) -> Any:  # fmt: skip
    """Own *wid*, then run or resume it; returns its output."""
    __tracebackhide__ = True
    new = NewWorkflow(wid, spec.name, digest, inputs.data, inputs.codec, inputs.checksum,
                      spec.code_hash, runtime.executor_id(), parent_id, parent_position,
                      inputs_blob=inputs.blob)  # fmt: skip
    lease = store.lease(wid)
    try:
        wait = spec.wait_timeout if spec.on_busy == "wait" else None
        locked, created = lease.begin(new, wait=wait)
        if not locked:
            row = store.get_workflow(wid)
            raise WorkflowBusyError(wid, row.executor if row else None)
        run = WorkflowRun(wid, spec.name, store, lease, {}, spec.on_change, parent_id=parent_id)
        if not created:
            row, run.records = lease.load()
            if row.name != spec.name:
                raise WorkflowConflictError(
                    f"workflow id {wid!r} is recorded for workflow {row.name!r}, not {spec.name!r}"
                )
            if digest is not None and row.args_digest and row.args_digest != digest:
                raise WorkflowConflictError(
                    f"workflow id {wid!r} is recorded with other arguments; use another id "
                    "or dnb.forget(id) first"
                )
            if row.status == "superseded":
                raise WorkflowConflictError(f"workflow {wid!r} is an archived earlier run")
            if row.status == "cancelled":
                raise WorkflowCancelledError(wid)
            changed = bool(row.code_hash and spec.code_hash and row.code_hash != spec.code_hash)
            if changed and spec.on_change == "error":
                raise CodeChangedError(f"the code of workflow {wid!r} changed since it was recorded")
            changed = changed and spec.on_change == "fork"
            finished = row.status in ("succeeded", "failed")
            edited = finished and spec.on_change != "ignore" and _edited_steps(run.records)
            if edited and spec.on_change == "error":
                raise CodeChangedError(
                    f"the code of step {edited[0]!r} of workflow {wid!r} changed since it was recorded"
                )
            if not changed and not edited and finished:
                return recorded_outcome(row, store)
            run.code_changed = changed
            if (changed or edited) and finished:
                run.archive_id = lease.archive()
                run.notes.append(f"the workflow changed; the previous run is kept as {run.archive_id!r}")
                lease.restart(runtime.executor_id(), spec.code_hash, run.archive_id)
            elif changed:
                lease.restart(runtime.executor_id(), spec.code_hash, None)
            else:
                lease.mark_resumed(runtime.executor_id())
        if _faults.ACTIVE:
            _faults.point("workflow.begun")
        return _run_body(run, spec, args, kwargs)
    finally:
        lease.close()
        store.clear_cancelled(wid)


def step_code_changed(name: str, recorded: str | None) -> bool | None:
    """Whether step *name*'s definition in this process has other code than *recorded*;
    None when that cannot be told (no hash recorded, or the step is not defined here)."""
    current = runtime.registered_step(name)
    if recorded is None or current is None:
        return None
    return current.code_hash != recorded


def _edited_steps(records: dict[int, StepRecord]) -> list[str]:
    """Names of recorded steps whose current definition in this process has other code."""
    return [rec.name for rec in records.values() if step_code_changed(rec.name, rec.code_hash)]


def _run_body(run: WorkflowRun, spec: Workflow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    tok_run, tok_id = _current.set(run), _explicit_id.set(None)
    events.active_runs[run.id] = run
    status, error = "interrupted", None
    if events.listeners:
        events.emit("workflow_started", run)
    try:
        value = _body(run, spec, args, kwargs)
        status = "succeeded"
        return value
    except WorkflowCancelledError as exc:
        status, error = "cancelled", exc
        raise
    except NOT_RECORDED as exc:
        error = exc
        raise
    except Exception as exc:
        status, error = "failed", exc
        raise
    finally:
        _current.reset(tok_run)
        _explicit_id.reset(tok_id)
        events.active_runs.pop(run.id, None)
        if events.listeners:
            events.emit("workflow_finished", run, status, error)


def _body(run: WorkflowRun, spec: Workflow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    __tracebackhide__ = True
    try:
        value = spec.fn(*args, **kwargs)
    except NOT_RECORDED:
        raise
    except Exception as exc:
        err = codecs.encode_exception(exc)
        outcome = Outcome("failed", error=err.data, error_type=err.type_name,
                          error_message=err.message, error_traceback=err.traceback_text)  # fmt: skip
        run.lease.finish(outcome)
        raise
    rec = _record(run.store, run.id, -1, spec.name, "workflow", None, True, value, 1, 0.0, 0.0)
    if _faults.ACTIVE:
        _faults.point("finish.before")
    if rec.status == "succeeded":
        run.lease.finish(Outcome("succeeded", output=rec.output, codec=rec.codec,
                                 checksum=rec.checksum, blob=rec.blob))  # fmt: skip
        return value
    run.lease.finish(Outcome("failed", error=rec.error, error_type=rec.error_type,
                             error_message=rec.error_message,
                             error_traceback=rec.error_traceback))  # fmt: skip
    raise codecs.decode_exception(rec.error, rec.error_type, rec.error_message)

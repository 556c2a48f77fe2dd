"""The replay loop: how a workflow call starts, resumes or returns its recorded outcome.

A call owns the workflow (its lease), reads what is recorded, and asks the planner
(`planner.plan`) what to do: run it, return the recorded outcome, run a finished workflow
again (its code changed, or it failed), or resume an interrupted one. The body then runs
with its `WorkflowRun` in a context variable; every step call inside it goes through the
checkpoint protocol (`checkpoint.py`). The outcome is recorded durably before the call
returns; if a cancel committed first, the caller gets `WorkflowCancelledError`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .. import _faults, codecs
from ..errors import (
    DurableError,
    UnserializableArgumentsError,
    UnserializableOutputError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowConflictError,
)
from ..store import Lease, NewWorkflow, Outcome, Store, WorkflowRow
from . import events, planner, runtime, timeouts, values
from .checkpoint import (
    NOT_RECORDED,
    Call,
    Done,
    Slot,
    add_note,
    checkpoint,
    checkpoint_async,
    fork_run,
    when_it_ran,
)
from .checkpoint import raise_recorded as raise_recorded
from .context import WorkflowRun, _current, _explicit_id, enclosing, in_step, snapshot_threads, tell
from .defs import Workflow
from .identity import args_digest, check_id, default_workflow_id
from .inputs import NO_INPUTS, Inputs, inputs_for, record_inputs

logger = logging.getLogger("durablenb")

Args = tuple[Any, ...]
Kwargs = dict[str, Any]


# -- calls ------------------------------------------------------------------------------------


def _top_level(spec: Workflow, args: Args, kwargs: Kwargs) -> tuple[Store, str, str | None, Inputs]:
    """Store, id, digest and inputs of a call made outside any workflow."""
    explicit = _explicit_id.get()
    store = runtime.store()
    digest = args_digest(spec.name, args, kwargs, required=explicit is None)
    wid = check_id(explicit) if explicit else default_workflow_id(spec.name, digest, spec.notebook())
    return store, wid, digest, inputs_for(store, spec, wid, args, kwargs)


def _child(slot: Slot, spec: Workflow, args: Args, kwargs: Kwargs) -> tuple[str, str | None, Inputs]:
    """Id, digest and inputs of a workflow called inline at *slot* of its parent."""
    parent = slot.run
    explicit = _explicit_id.get()
    wid = check_id(explicit) if explicit else f"{parent.id}/{slot.position}"
    if wid in parent.ancestors():
        raise WorkflowBusyError(wid, "this very call stack (a workflow calling itself by id)")
    digest = args_digest(spec.name, args, kwargs, required=False)
    return wid, digest, inputs_for(parent.store, spec, wid, args, kwargs)


def call_workflow(spec: Workflow, args: Args, kwargs: Kwargs) -> Any:
    """Run a workflow durably: start it, resume it, or return its recorded result."""
    __tracebackhide__ = True
    if in_step():  # inside a step a workflow is a plain call: the step is the unit recorded
        return spec.fn(*args, **kwargs)
    parent = enclosing()
    if parent is None or parent.transparent:
        store, wid, digest, inputs = _top_level(spec, args, kwargs)
        return execute(store, spec, wid, args, kwargs, digest, inputs)

    def run_child(slot: Slot) -> Done:
        __tracebackhide__ = True
        wid, digest, inputs = _child(slot, spec, args, kwargs)
        try:
            return Done(True, execute(parent.store, spec, wid, args, kwargs, digest, inputs,
                                      parent=parent, position=slot.position), child_id=wid)  # fmt: skip
        except NOT_RECORDED:
            raise
        except Exception as exc:
            return Done(False, exc, child_id=wid)

    return checkpoint(parent, Call("workflow", spec.name, spec.code_hash), run_child)


async def call_workflow_async(spec: Workflow, args: Args, kwargs: Kwargs) -> Any:
    """`call_workflow` for an ``async def`` workflow."""
    __tracebackhide__ = True
    if in_step():
        return await spec.fn(*args, **kwargs)
    parent = enclosing()
    if parent is None or parent.transparent:
        store, wid, digest, inputs = _top_level(spec, args, kwargs)
        return await execute_async(store, spec, wid, args, kwargs, digest, inputs)

    async def run_child(slot: Slot) -> Done:
        __tracebackhide__ = True
        wid, digest, inputs = _child(slot, spec, args, kwargs)
        try:
            value = await execute_async(parent.store, spec, wid, args, kwargs, digest, inputs,
                                        parent=parent, position=slot.position)  # fmt: skip
            return Done(True, value, child_id=wid)
        except NOT_RECORDED:
            raise
        except Exception as exc:
            return Done(False, exc, child_id=wid)

    return await checkpoint_async(parent, Call("workflow", spec.name, spec.code_hash), run_child)


# -- owning and planning ------------------------------------------------------------------------


def execute(
    store: Store, spec: Workflow, wid: str, args: Args, kwargs: Kwargs, digest: str | None,
    inputs: Inputs, parent: WorkflowRun | None = None, position: int | None = None,
    parent_id: str | None = None, durability: str | None = None, retry: bool = False,
) -> Any:  # fmt: skip
    """Own *wid*, then run or resume it; returns its output (or its recorded outcome).
    *durability*: the caller's, unless *spec* chooses one. *retry*: a failed workflow runs
    again from its first failure whatever *spec* says (`dnb.resume`)."""
    __tracebackhide__ = True
    sys.audit("durablenb.workflow", wid)  # its steps may act outside (see ipython._effects)
    if spec.finished_first and parent is None and parent_id is None and not retry:
        if (done := _finished(store, spec, wid, digest, retry, ahead=True)) is not None:
            return recorded_outcome(done, store)  # one query at most, no lock, no connection held
    lease = _lease(store, spec, wid, parent, durability)
    try:
        opened = _open(store, spec, lease, wid, digest, inputs, parent, position, parent_id, retry)
        if isinstance(opened, WorkflowRow):
            return recorded_outcome(opened, store)
        return _run_body(opened, spec, args, kwargs)
    finally:
        lease.close()
        store.clear_cancelled(wid)


async def execute_async(
    store: Store, spec: Workflow, wid: str, args: Args, kwargs: Kwargs, digest: str | None,
    inputs: Inputs, parent: WorkflowRun | None = None, position: int | None = None,
    parent_id: str | None = None, durability: str | None = None, retry: bool = False,
) -> Any:  # fmt: skip
    """`execute` for an ``async def`` workflow."""
    __tracebackhide__ = True
    sys.audit("durablenb.workflow", wid)
    lease = _lease(store, spec, wid, parent, durability)
    try:
        opened = _open(store, spec, lease, wid, digest, inputs, parent, position, parent_id, retry)
        if isinstance(opened, WorkflowRow):
            return recorded_outcome(opened, store)
        return await _run_body_async(opened, spec, args, kwargs)
    finally:
        lease.close()
        store.clear_cancelled(wid)


def _finished(store: Store, spec: Workflow, wid: str, digest: str | None, retry: bool,
              ahead: bool = False) -> WorkflowRow | None:  # fmt: skip
    """The row of *wid*, if it finished and its outcome stands (read without the lock: a
    finished record only changes under it). *ahead*: from what was read ahead, if known."""
    found = store.finished(wid, ahead=spec.name if ahead else None)
    if found is None:
        return None
    row, records = found
    _check_identity(row, spec, wid, digest)
    plan = planner.plan(row, records, definitions(spec, own_call=True, retry=retry))
    return row if plan.action == "outcome" else None


def _lease(store: Store, spec: Workflow, wid: str, parent: WorkflowRun | None,
           durability: str | None) -> Lease:  # fmt: skip
    """The lease of *wid*: on its inline parent's connection, with the durability *spec*
    chooses, else the caller's, else the store's."""
    share = parent.lease if parent is not None else None
    return store.lease(wid, share, spec.durability or durability or (share.durability if share else None))


def definitions(spec: Workflow, own_call: bool = True, retry: bool = False) -> planner.Definitions:
    """What this process defines for *spec* and its steps, for the planner. *own_call*: the
    workflow is called by itself, not replayed by a parent (only then may a failure retry);
    *retry*: a retry of a failure was asked for (`dnb.resume`), whatever *spec* says."""

    def step_code(name: str) -> str | None:
        current = runtime.registered_step(name)
        return current.code_hash if current is not None else None

    return planner.Definitions(spec.code_hash, spec.on_change, step_code,
                               retry_failed=retry or (own_call and spec.on_failure == "retry"),
                               retry_asked=retry)  # fmt: skip


def _open(
    store: Store, spec: Workflow, lease: Lease, wid: str, digest: str | None, inputs: Inputs,
    parent: WorkflowRun | None, position: int | None, parent_id: str | None, retry: bool = False,
) -> WorkflowRun | WorkflowRow:  # fmt: skip
    """Lock and plan *wid*: a run to execute, or the row whose recorded outcome to return."""
    parent_id = parent.id if parent is not None else parent_id
    deferred = inputs if isinstance(inputs, values.Deferred) else None
    now = NO_INPUTS if isinstance(inputs, values.Deferred) else inputs
    new = NewWorkflow(id=wid, name=spec.name, args_digest=digest, inputs=now.data,
                      inputs_codec=now.codec, inputs_checksum=now.checksum,
                      code_hash=spec.code_hash, executor=runtime.executor_id(), parent_id=parent_id,
                      parent_position=position, inputs_blob=now.blob,
                      notebook=runtime.notebook())  # fmt: skip
    wait = spec.wait_timeout if spec.on_busy == "wait" else None
    locked, created = lease.begin(new, wait, probe=parent_id is None or retry)  # only own calls may stand
    if locked is None:  # finished: its recorded outcome stands, or it runs again (locked now)
        if (done := _finished(store, spec, wid, digest, retry)) is not None:
            return done
        locked, created = lease.begin(new, wait)
    if not locked:
        row = store.get_workflow(wid)
        raise WorkflowBusyError(wid, row.executor if row else None)
    if created == "cancelled":
        raise WorkflowCancelledError(wid)
    store.clear_cancelled(wid)  # a cancel heard before now is settled in the row read below
    threads = parent.threads_before if parent is not None else snapshot_threads()
    if created:
        if deferred is not None:
            try:
                record_inputs(lease, deferred)
            except UnserializableArgumentsError:
                lease.unbegin()  # nothing ran: leave no record behind, as for small inputs
                raise
        plan = planner.Plan("run", on_change=spec.on_change)
        run = WorkflowRun(wid, spec.name, store, lease, {}, plan, wid, parent_id, parent,
                          threads_before=threads, transparent=spec.transparent)  # fmt: skip
    else:
        row, records = lease.load()
        _check_identity(row, spec, wid, digest)
        if deferred is not None and row.inputs_codec is None:  # the run that began it died first
            record_inputs(lease, deferred)
        plan = planner.plan(row, records, definitions(spec, own_call=parent_id is None, retry=retry))
        if plan.action == "outcome":
            return row
        run = WorkflowRun(wid, spec.name, store, lease, records, plan, row.lineage, parent_id, parent,
                          threads_before=threads, transparent=spec.transparent)  # fmt: skip
        _follow(run, plan, spec)
    timeouts.arm(run, spec.timeout)
    if _faults.ACTIVE:
        _faults.point("workflow.begun")
    return run


def _check_identity(row: WorkflowRow, spec: Workflow, wid: str, digest: str | None) -> None:
    if row.name != spec.name:
        raise WorkflowConflictError(
            f"workflow id {wid!r} is recorded for workflow {row.name!r}, not {spec.name!r}"
        )
    if digest is not None and row.args_digest and row.args_digest != digest:
        raise WorkflowConflictError(
            f"workflow id {wid!r} is recorded with other arguments; use another id or "
            "dnb.forget(id) first"
        )
    if row.status == "superseded":
        raise WorkflowConflictError(f"workflow {wid!r} is an archived earlier run")


def _follow(run: WorkflowRun, plan: planner.Plan, spec: Workflow) -> None:
    """Prepare the records as *plan* says: archive and reopen, fork, or note the resume."""
    lease, executor = run.lease, runtime.executor_id()
    if plan.action == "rerun":
        run.archive_id = lease.archive()
        lease.restart(executor, spec.code_hash, run.archive_id)
        if plan.fork_at is None:  # else the fork below says where it re-runs from
            tell(run, f"{plan.why}; the previous run is kept as {run.archive_id!r}")
    elif plan.body_changed or plan.fork_at is not None:
        lease.restart(executor, spec.code_hash, None)
    else:
        lease.mark_resumed(executor)
    if plan.fork_at is not None:
        fork_run(run, planner.Fork(plan.fork_at, plan.why or "changed"))


# -- the body and its outcome -------------------------------------------------------------------


class _Body:
    """Runs with *run* as the current workflow; reports its start and end to listeners."""

    def __init__(self, run: WorkflowRun) -> None:
        self.run = run
        self.status = "interrupted"
        self.error: BaseException | None = None

    def __enter__(self) -> _Body:
        self.tokens, self.watch = (_current.set(self.run), _explicit_id.set(None)), timeouts.Watch(self.run)
        events.active_runs[self.run.id] = self.run
        if events.listeners:
            events.emit("workflow_started", self.run)
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> None:
        self.watch.stop()
        _current.reset(self.tokens[0])
        _explicit_id.reset(self.tokens[1])
        events.active_runs.pop(self.run.id, None)
        if exc is None:
            self.status = "succeeded"
        elif isinstance(exc, WorkflowCancelledError):
            self.status, self.error = "cancelled", exc
        elif isinstance(exc, Exception):
            self.status = "interrupted" if isinstance(exc, NOT_RECORDED) else "failed"
            self.error = exc
        if events.listeners:
            events.emit("workflow_finished", self.run, self.status, self.error)


def _run_body(run: WorkflowRun, spec: Workflow, args: Args, kwargs: Kwargs) -> Any:
    __tracebackhide__ = True
    with _Body(run):
        try:
            value = spec.fn(*args, **kwargs)
        except NOT_RECORDED:
            raise
        except Exception as exc:
            finish_failed(run, exc)
            raise
        return finish_succeeded(run, value)


async def _run_body_async(run: WorkflowRun, spec: Workflow, args: Args, kwargs: Kwargs) -> Any:
    __tracebackhide__ = True
    with _Body(run):
        try:
            value = await spec.fn(*args, **kwargs)
        except NOT_RECORDED:
            raise
        except Exception as exc:
            finish_failed(run, exc)
            raise
        return finish_succeeded(run, value)


def _finish(run: WorkflowRun, outcome: Outcome) -> None:
    """Record *outcome* durably; a cancel that committed first wins."""
    blocked = run.lease.finish(outcome)
    if blocked is None:
        if _faults.ACTIVE:
            _faults.point("finish.after")
        return
    if blocked == "cancelled":
        run.cancelled = True
        raise run.cancelled_error()
    raise DurableError(f"workflow {run.id!r} was removed while it ran; its outcome is not recorded")


def finish_failed(run: WorkflowRun, exc: BaseException) -> None:
    """Record that the body raised *exc* (a cancel that came first wins)."""
    err = values.encode_error(run.store, exc, (run.lineage, "output"))
    _finish(run, Outcome(status="failed", error=err.data, error_type=err.type_name,
                         error_message=err.message, error_traceback=err.traceback_text))  # fmt: skip


def finish_succeeded(run: WorkflowRun, value: Any) -> Any:
    """Record the body's output; an output that cannot be encoded is recorded as the error."""
    __tracebackhide__ = True
    try:
        enc = values.encode_value(run.store, value, (run.lineage, "output"), run.id)
    except codecs.EncodingError as exc:
        type_name = f"{type(value).__module__}.{type(value).__qualname__}"
        err = UnserializableOutputError(
            f"workflow {run.id!r} returned a {type_name} that cannot be recorded ({exc}); it is "
            "recorded as failed. Return something picklable and rerun.",
            step=run.name, type_name=type_name,
        )  # fmt: skip
        finish_failed(run, err)
        raise err from exc
    if _faults.ACTIVE:
        _faults.point("finish.before")
    _finish(run, Outcome(status="succeeded", output=enc.data, codec=enc.codec,
                         checksum=enc.checksum, blob=enc.blob))  # fmt: skip
    return value


def recorded_outcome(row: WorkflowRow, store: Store) -> Any:
    """The recorded result of a finished workflow row, or its recorded exception raised."""
    __tracebackhide__ = True
    place = (row.lineage, "output")
    if row.status == "succeeded":
        return values.decode_value(store, row.output_codec or "", row.output, row.output_checksum,
                                   row.output_blob, f"output of workflow {row.id!r}", place)  # fmt: skip
    if row.status == "cancelled":
        raise timeouts.recorded_cancel(row)
    exc = values.decode_error(store, row.error, row.error_type, row.error_message, row.error_traceback,
                              place, f"error of workflow {row.id!r}")  # fmt: skip
    add_note(exc, f"durablenb: re-raised from the record of workflow {row.id!r}, which finished "
                  "with this error; nothing ran again" + when_it_ran(row.error_traceback))  # fmt: skip
    raise_recorded(exc, f"recorded error of workflow {row.name!r}")

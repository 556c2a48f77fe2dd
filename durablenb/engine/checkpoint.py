"""The checkpoint protocol: how one position of a workflow is replayed or run and recorded.

Every kind of recorded position — step, transaction, child workflow, `dnb.start`, each
`dnb.map` item, `now`/`random`/`sleep` — goes through `open_slot` and `Slot.close`:

1. `open_slot` takes the next position (only in the workflow's own thread), asks the planner
   what is recorded there, and returns a `Slot`: either holding the record to replay, or
   ready to run (after checking for a cancel) and marked running. A `dnb.map` item's slot
   is opened *queued*: it is marked running (`Slot.begin`) when a worker picks it up.
2. The caller runs the body (`checkpoint` and `checkpoint_async` do it for one call; `map`
   runs many slots on a pool) and hands the outcome, a `Done`, to `Slot.close`.
3. `Slot.close` builds the record (an output that cannot be encoded becomes a recorded
   `UnserializableOutputError`), writes it unless the kind wrote it itself (a transaction,
   in its own database transaction), and returns the winner's outcome: when another
   executor recorded the position first, that record is what the caller gets.
   `close_many` does the same for many positions of one run (`dnb.map` items that finished
   close together) with one write for all their records: one statement, one commit (group
   commit); no outcome is handed back before that commit.

Errors of the machinery (`NOT_RECORDED`) pass through every step of this without being
recorded, so the workflow stays resumable.
"""

from __future__ import annotations

import linecache
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import _faults, codecs
from ..errors import (
    CodeChangedError,
    CorruptRecordError,
    DurableUsageError,
    InvalidIdError,
    NonDeterministicWorkflowError,
    SchemaVersionError,
    StorageError,
    StoreUnavailableError,
    UnhashableArgumentsError,
    UnserializableOutputError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowConflictError,
)
from ..store import StepRecord, Store
from . import planner, values
from ._tracebacks import user_text
from .context import WorkflowRun, check_thread, note_finished, note_running, tell

logger = logging.getLogger("durablenb")

#: Errors of the machinery, not of the user's code: never recorded as a step's or
#: workflow's outcome, so the workflow stays resumable.
NOT_RECORDED: tuple[type[BaseException], ...] = (
    StoreUnavailableError,
    StorageError,
    WorkflowBusyError,
    WorkflowCancelledError,
    NonDeterministicWorkflowError,
    CodeChangedError,
    CorruptRecordError,
    SchemaVersionError,
    WorkflowConflictError,
    DurableUsageError,
    InvalidIdError,
    UnhashableArgumentsError,
)


@dataclass(frozen=True)
class Call:
    """What is called at a position: its *kind*, *name* and code hash."""

    kind: str
    name: str
    code: str | None = None


@dataclass(slots=True)
class Done:
    """How running a position ended.

    *ok* with *value* the output, else *value* the exception. *written*: the record the
    kind wrote itself; *winner*: a record another executor wrote first (ours was rolled back).
    *started_at*: when the body began, measured where it ran (a worker process), else the
    slot's own start time is recorded. *record*: ours, built ahead by `Slot.prepare` (in a
    `dnb.map` worker thread) and not written yet.
    """

    ok: bool
    value: Any
    attempts: int = 1
    child_id: str | None = None
    written: StepRecord | None = None
    winner: StepRecord | None = None
    started_at: float | None = None
    record: StepRecord | None = None


class Slot:
    """One position of a running workflow: replayed from its record, or run and recorded."""

    __slots__ = ("run", "call", "position", "recorded", "label", "started_at")

    def __init__(
        self, run: WorkflowRun, call: Call, position: int, recorded: StepRecord | None,
        label: str | None = None,
    ) -> None:  # fmt: skip
        self.run = run
        self.call = call
        self.position = position
        self.recorded = recorded
        #: Which item of a `dnb.map` this is; recorded, not compared on replay.
        self.label = label
        self.started_at = time.time()

    def begin(self, started_at: float | None = None) -> None:
        """Mark the position running, since *started_at* (default: now). Any thread may: a
        queued `dnb.map` item is marked by the worker that picked it up, or later."""
        self.started_at = time.time() if started_at is None else started_at
        note_running(self.run, self.position, self.call.name, self.call.kind, self.started_at, self.label)

    def replay(self) -> Any:
        """The recorded outcome: the output, or the recorded exception raised."""
        __tracebackhide__ = True
        assert self.recorded is not None
        note_finished(self.run, self.recorded, True)
        return replay(self.run, self.recorded)

    def record(self, done: Done) -> StepRecord:
        """The record of *done* (an output that cannot be encoded is recorded as an
        `UnserializableOutputError`, which becomes *done*'s outcome)."""
        run, call = self.run, self.call
        started = self.started_at if done.started_at is None else done.started_at
        rec = StepRecord(workflow_id=run.id, position=self.position, name=call.name, kind=call.kind,
                         status="succeeded", attempts=done.attempts, code_hash=call.code,
                         child_id=done.child_id, started_at=started, finished_at=time.time(),
                         label=self.label)  # fmt: skip
        place = (run.lineage, self.position)
        if done.ok:
            try:
                enc = values.encode_value(run.store, done.value, place, run.id)
            except codecs.EncodingError as exc:
                done.ok, done.value = False, unencodable(call.name, run.id, done.value, exc)
            else:
                rec.output, rec.codec, rec.checksum = enc.data, enc.codec, enc.checksum
                rec.output_bytes, rec.blob = enc.size, enc.blob
                return rec
        err = values.encode_error(run.store, done.value, place)
        rec.status, rec.error, rec.error_type = "failed", err.data, err.type_name
        rec.error_message, rec.error_traceback = err.message, err.traceback_text
        return rec

    def prepare(self, done: Done) -> None:
        """Build *done*'s record now, in any thread (a `dnb.map` worker, so that encoding
        outputs and writing their blobs happen off the workflow's thread); `close` and
        `close_many` write it."""
        if done.winner is None and done.written is None and done.record is None:
            done.record = self.record(done)

    def close(self, done: Done) -> Any:
        """Record *done* (unless already written) and return the outcome that holds."""
        __tracebackhide__ = True
        try:
            winner, ours = self._settle(done)
            if winner is None:
                assert ours is not None
                winner = self.run.lease.record_step(ours)
                if _faults.ACTIVE:
                    _faults.point("record.written")
        finally:
            self.release()
        return self._hand(done, winner, ours)

    def _settle(self, done: Done) -> tuple[StepRecord | None, StepRecord | None]:
        """``(the record that holds already, ours)``: the winner another executor wrote, or
        ours written by the kind itself; ``(None, ours)`` when ours is still to be written."""
        if done.winner is not None:
            return done.winner, None
        if done.written is not None:
            self.run.lease.wrote(done.written.position, self.run.lease.asynchronous)
            return done.written, done.written
        return None, done.record if done.record is not None else self.record(done)

    def _hand(self, done: Done, winner: StepRecord, ours: StepRecord | None) -> Any:
        """The outcome that holds once *winner* is recorded: ours, or the winner's replayed."""
        __tracebackhide__ = True
        note_finished(self.run, winner, winner is not ours)
        if winner is not ours:
            return replay(self.run, winner)
        if done.ok:
            return done.value
        raise done.value

    def release(self) -> None:
        """Forget that this position is executing (it ended, one way or another)."""
        self.run.running.pop(self.position, None)


def open_slot(
    run: WorkflowRun, call: Call, position: int | None = None, *, queued: bool = False,
    label: str | None = None,
) -> Slot:  # fmt: skip
    """Take a position for *call* (or use *position*, reserved earlier) and plan it.

    A slot to run is marked running now, or, *queued*, only when `Slot.begin` is called
    (a `dnb.map` item waiting for a worker). *label*: recorded with the step."""
    __tracebackhide__ = True
    check_thread(run, f"{call.kind} {call.name!r}")
    pos = run.take() if position is None else position
    decision = planner.at_position(run.plan, run.records.get(pos), run.id, pos, call.name,
                                   call.kind, call.code)  # fmt: skip
    if isinstance(decision, planner.Fork):
        fork_run(run, decision)
        decision = None
    slot = Slot(run, call, pos, decision, label)
    if decision is None:
        if run.is_cancelled():
            raise run.cancelled_error()
        if not queued:
            slot.begin()
    return slot


def close_many(slots: Sequence[Slot], dones: Sequence[Done]) -> list[tuple[bool, Any]]:
    """`Slot.close` for many slots of one run: the records still to write (built ahead by
    `Slot.prepare`, or now) go in one batch, written and committed at once
    (`Lease.record_steps`: one statement, retried like one record), and each slot gets the
    outcome that holds for it, ``(True, value)`` or ``(False, exception)``: where another
    executor recorded a position first, its record wins there.

    No outcome is handed back before the batch is committed (and flushed, under ``full``
    durability). A record that cannot be built is that slot's error, unrecorded, as
    `Slot.close` would raise it. Errors of the machinery (`NOT_RECORDED`) raise: the batch
    committed whole or not at all, and the workflow stays resumable."""
    __tracebackhide__ = True
    settled: list[tuple[StepRecord | None, StepRecord | None]] = []
    errors: dict[int, Exception] = {}
    try:
        for k, (slot, done) in enumerate(zip(slots, dones, strict=True)):
            try:
                settled.append(slot._settle(done))
            except NOT_RECORDED:
                raise
            except Exception as exc:
                settled.append((None, None))
                errors[k] = exc
        todo = [(k, ours) for k, (winner, ours) in enumerate(settled) if winner is None and ours is not None]
        if todo:
            if _faults.ACTIVE:
                _faults.point("batch.before_commit")
            winners = slots[0].run.lease.record_steps([ours for _, ours in todo])
            if _faults.ACTIVE:
                _faults.point("batch.after_commit")
            for (k, ours), winner in zip(todo, winners, strict=True):
                settled[k] = (winner, ours)
    finally:
        for slot in slots:
            slot.release()
    outcomes: list[tuple[bool, Any]] = []
    for k, (slot, done) in enumerate(zip(slots, dones, strict=True)):
        held, mine = settled[k]
        if held is None:
            outcomes.append((False, errors[k]))
            continue
        try:
            outcomes.append((True, slot._hand(done, held, mine)))
        except NOT_RECORDED:
            raise
        except Exception as exc:
            outcomes.append((False, exc))
    return outcomes


def checkpoint(run: WorkflowRun, call: Call, execute: Callable[[Slot], Done]) -> Any:
    """Replay *call* at the next position, or run it with *execute* and record it."""
    __tracebackhide__ = True
    slot = open_slot(run, call)
    if slot.recorded is not None:
        return slot.replay()
    try:
        done = execute(slot)
    except BaseException:
        slot.release()
        raise
    return slot.close(done)


async def checkpoint_async(run: WorkflowRun, call: Call, execute: Callable[[Slot], Awaitable[Done]]) -> Any:
    """`checkpoint` for a body that is awaited."""
    __tracebackhide__ = True
    slot = open_slot(run, call)
    if slot.recorded is not None:
        return slot.replay()
    try:
        done = await execute(slot)
    except BaseException:
        slot.release()
        raise
    return slot.close(done)


def fork_run(run: WorkflowRun, fork: planner.Fork) -> None:
    """Drop records from the fork's position on (the old run kept as an archive)."""
    if run.archive_id is None:
        run.archive_id = run.lease.archive()
    run.lease.truncate(fork.position, run.archive_id)
    for p in [p for p in run.records if p >= fork.position]:
        del run.records[p]
    note = (f"{fork.why}: re-running from position {fork.position}; the previous run is kept "
            f"as {run.archive_id!r}")  # fmt: skip
    tell(run, note)


def unencodable(name: str, workflow_id: str, value: Any, cause: Exception) -> UnserializableOutputError:
    """The error recorded for an output of step *name* that cannot be encoded."""
    type_name = f"{type(value).__module__}.{type(value).__qualname__}"
    err = UnserializableOutputError(
        f"step {name!r} of workflow {workflow_id!r} returned a {type_name} that cannot be "
        f"recorded ({cause}). The step ran; it is recorded as failed so it is not re-run "
        "silently. Return something picklable (for example a DataFrame or a dict) and rerun.",
        step=name,
        type_name=type_name,
    )
    err.__cause__ = cause
    return err


# -- replaying a record ---------------------------------------------------------------------


def _what(run_id: str, rec: StepRecord) -> str:
    return f"output of step {rec.name!r} (position {rec.position}) of workflow {run_id!r}"


def replay(run: WorkflowRun, rec: StepRecord) -> Any:
    """The recorded output of *rec*, or its recorded exception raised."""
    __tracebackhide__ = True
    return replay_record(run.store, run.lineage, run.id, rec)


def replay_record(store: Store, lineage: str, workflow_id: str, rec: StepRecord) -> Any:
    """The output recorded in *rec* (of *workflow_id*, whose records are bound to
    *lineage*), or its recorded exception raised."""
    __tracebackhide__ = True
    place = (lineage, rec.position)
    if rec.status == "succeeded":
        return values.decode_value(store, rec.codec or "", rec.output, rec.checksum, rec.blob,
                                   _what(workflow_id, rec), place)  # fmt: skip
    exc = values.decode_error(store, rec.error, rec.error_type, rec.error_message,
                              rec.error_traceback, place,
                              f"error of step {rec.name!r} (position {rec.position}) of workflow "
                              f"{workflow_id!r}")  # fmt: skip
    add_note(exc, f"durablenb: re-raised from the record of step {rec.name!r} (position "
                  f"{rec.position}) of workflow {workflow_id!r}; the step did not run again"
                  + when_it_ran(rec.error_traceback))  # fmt: skip
    raise_recorded(exc, f"recorded error of step {rec.name!r}")


def raise_recorded(exc: BaseException, label: str) -> None:
    """Raise *exc* from a frame named *label*, so tracebacks end at a label, not engine code."""
    __tracebackhide__ = True
    source = "raise recorded_error  # replayed from its record: nothing ran again\n"
    filename = f"<durablenb: {label}>"
    linecache.cache[filename] = (len(source), None, [source], filename)
    exec(compile(source, filename, "exec"), {"recorded_error": exc.with_traceback(None)})


def when_it_ran(traceback_text: str | None) -> str:
    """The recorded traceback, to show under a replayed error."""
    if not traceback_text:
        return ""
    body = user_text(traceback_text.rstrip("\n"))
    return ". When it ran:\n" + "\n".join("    " + line for line in body.splitlines())


def add_note(exc: BaseException, text: str) -> None:
    if hasattr(exc, "add_note") and text not in getattr(exc, "__notes__", ()):
        exc.add_note(text)

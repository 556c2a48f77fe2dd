"""The rerun planner: what calling a recorded workflow again does, decided from its records.

Pure functions of the workflow's row, its step records and the definitions in this process:
no I/O, no clock. The engine follows `plan` and `at_position`; ``%durable diff`` shows
`plan`'s verdict per step, so the two never disagree.

- No record: run it (``run``).
- Finished, nothing changed: return the recorded outcome (``outcome``).
- Finished, code changed: run it again (``rerun``), the old run archived, replaying steps
  before the first change.
- Finished with an error, called again (and allowed to retry): run it again from its first
  failed step (``rerun``), replaying the steps before it. Only a call of its own does this;
  a workflow replayed inside a resuming parent replays its recorded error.
- Running but nobody holds it (interrupted): resume (``resume``), replaying every record;
  with a step changed since, from that step on it runs anew.
- A changed step's position is known up front (``fork_at``); a changed workflow body is only
  found where the new body calls a different step than recorded (`at_position` forks there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..errors import CodeChangedError, NonDeterministicWorkflowError
from ..store import StepRecord, WorkflowRow
from .timeouts import recorded_cancel

#: Code hash written by ``%durable refresh``: never equal to any code, so the step re-runs.
REFRESH = "refresh"
#: Prefix of code hashes recorded by versions that hashed differently: never compared.
LEGACY = "v1:"


def comparable(code_hash: str | None) -> str | None:
    """*code_hash*, or None when it cannot be compared with today's hashes."""
    return None if code_hash is None or code_hash.startswith(LEGACY) else code_hash


@dataclass(frozen=True)
class Definitions:
    """What this process defines now: the workflow's code hash, its *on_change* policy,
    and each step's current code hash by name (None when not defined here)."""

    workflow_code: str | None
    on_change: str
    step_code: Callable[[str], str | None]
    #: A workflow recorded as failed runs again from its first failed step.
    retry_failed: bool = False
    #: The retry was asked for (`dnb.resume`): even an unrecordable output's step re-runs.
    retry_asked: bool = False


@dataclass(frozen=True)
class Plan:
    """What to do with a workflow called again.

    *action*: ``run``, ``outcome``, ``rerun`` or ``resume``. *fork_at*: the first position
    whose record must not be replayed (None: all may be), and *why*. *body_changed*: the
    workflow's own code changed, so a call that differs from its record forks there instead
    of being a determinism error.
    """

    action: str
    fork_at: int | None = None
    why: str | None = None
    body_changed: bool = False
    on_change: str = "fork"

    @property
    def archives(self) -> bool:
        """Whether the recorded run is kept as an archive before records are dropped."""
        return self.action == "rerun" or self.fork_at is not None


def first_change(records: Mapping[int, StepRecord], defs: Definitions) -> tuple[int, str] | None:
    """The first recorded position whose step is marked for refresh or whose definition here
    has other code than recorded, with the reason."""
    for pos in sorted(records):
        rec = records[pos]
        if rec.code_hash == REFRESH:
            return pos, f"{rec.name!r} was marked with %durable refresh"
        recorded = comparable(rec.code_hash)
        if recorded is None:
            continue
        now = defs.step_code(rec.name)
        if now is not None and now != recorded:
            return pos, f"the code of {rec.name!r} changed"
    return None


def first_failure(records: Mapping[int, StepRecord]) -> tuple[int, str] | None:
    """The first position whose record is a failure, with what to say about retrying it."""
    for pos in sorted(records):
        rec = records[pos]
        if rec.status == "failed":
            return pos, f"retrying from step {rec.name!r} (it failed with {short_type(rec.error_type)})"
    return None


def _unencodable(rec: StepRecord) -> bool:
    return (rec.error_type or "").endswith("UnserializableOutputError")


def short_type(type_name: str | None) -> str:
    """``FileNotFoundError`` for ``builtins.FileNotFoundError``."""
    return (type_name or "an error").rsplit(".", 1)[-1]


def plan(row: WorkflowRow | None, records: Mapping[int, StepRecord], defs: Definitions) -> Plan:
    """What a call of the workflow recorded as *row* (with *records*) does now.

    Raises `CodeChangedError` when code changed and ``on_change="error"``, and
    `WorkflowCancelledError` (`WorkflowTimeoutError`) for a cancelled workflow.
    """
    if row is None:
        return Plan("run", on_change=defs.on_change)
    if row.status == "cancelled":
        raise recorded_cancel(row)
    recorded_body = comparable(row.code_hash)
    body = bool(recorded_body and defs.workflow_code and recorded_body != defs.workflow_code)
    change = first_change(records, defs)
    refresh = change is not None and records[change[0]].code_hash == REFRESH
    if defs.on_change == "error":
        if body:
            raise CodeChangedError(f"the code of workflow {row.id!r} changed since it was recorded")
        if change is not None and not refresh:
            raise CodeChangedError(f"workflow {row.id!r}: {change[1]} since it was recorded")
    if defs.on_change == "ignore":
        body = False
        change = change if refresh else None
    fork_at, why = change if change is not None else (None, None)
    failed = first_failure(records) if row.status == "failed" and defs.retry_failed else None
    if (failed is not None and fork_at is None and not body and not defs.retry_asked
            and _unencodable(records[failed[0]])):
        # The step ran and returned a value that cannot be recorded: running it again
        # unchanged would repeat its effects to fail the same way. A code change forks.
        return Plan("outcome", on_change=defs.on_change)
    if row.status == "failed" and defs.retry_failed:
        if failed is not None and (fork_at is None or failed[0] <= fork_at):
            fork_at, why = failed
        elif fork_at is None:  # the body failed outside any step: every step replays
            why = f"retrying (the workflow failed with {short_type(row.error_type)})"
        return Plan("rerun", fork_at, why, body, defs.on_change)
    if row.status in ("succeeded", "failed"):
        if not body and change is None:
            return Plan("outcome", on_change=defs.on_change)
        why = why or "the code of the workflow changed"
        return Plan("rerun", fork_at, why, body, defs.on_change)
    return Plan("resume", fork_at, why, body, defs.on_change)


@dataclass(frozen=True)
class Fork:
    """Drop the records from *position* on and run anew from there, for *why*."""

    position: int
    why: str


def at_position(
    plan: Plan, rec: StepRecord | None, workflow_id: str, pos: int, name: str, kind: str,
    code: str | None,
) -> StepRecord | Fork | None:  # fmt: skip
    """The record to replay at *pos*, a `Fork`, or None when the call runs.

    A record of another step than the one called is a `NonDeterministicWorkflowError`
    unless the workflow's code changed (then the run forks there, or `CodeChangedError`).
    """
    if rec is None:
        return None
    if rec.name != name or rec.kind != kind:
        if plan.body_changed:
            return Fork(pos, f"the workflow now calls {name!r} where {rec.name!r} was recorded")
        raise NonDeterministicWorkflowError(workflow_id, pos, rec.name, name)
    if rec.code_hash == REFRESH:
        return Fork(pos, f"{name!r} was marked with %durable refresh")
    recorded = comparable(rec.code_hash)
    if code is not None and recorded is not None and recorded != code:
        if plan.on_change == "error":
            raise CodeChangedError(
                f"the code of step {name!r} (position {pos}) of workflow {workflow_id!r} changed "
                "since it was recorded"
            )
        if plan.on_change == "fork":
            return Fork(pos, f"the code of {name!r} changed")
    return rec

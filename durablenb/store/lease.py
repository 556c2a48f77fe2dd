"""A lease: one pooled connection holding a workflow's session advisory lock while it runs.

Only the lease's holder writes the workflow's records. The lock belongs to the connection, so
a crashed kernel's lock vanishes with its connection and the workflow is free to resume.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import psycopg

from ..errors import StoreUnavailableError, WorkflowBusyError
from .records import STEP_COLUMNS, WORKFLOW_COLUMNS, NewWorkflow, Outcome, StepRecord, WorkflowRow

if TYPE_CHECKING:
    from . import Store

logger = logging.getLogger("durablenb")


class Lease:
    """Exclusive right to run one workflow, for as long as this object is open."""

    def __init__(self, store: Store, workflow_id: str) -> None:
        self.store = store
        self.workflow_id = workflow_id
        self.key = store.lock_key(workflow_id)
        store._wait_finished(workflow_id)
        self.conn: psycopg.Connection | None = store._getconn()
        self.locked = False
        self.q = store._q

    # -- acquiring -----------------------------------------------------------------------
    def begin(self, new: NewWorkflow, wait: float | None = None) -> tuple[bool, bool]:
        """Take the lock and record *new* if absent: ``(locked, created)``.

        *wait*: seconds to wait for another executor to let go; ``None`` does not wait.
        """
        params = {
            "key": self.key,
            "id": new.id,
            "name": new.name,
            "args_digest": new.args_digest,
            "inputs": new.inputs,
            "inputs_codec": new.inputs_codec,
            "inputs_checksum": new.inputs_checksum,
            "code_hash": new.code_hash,
            "executor": new.executor,
            "parent_id": new.parent_id,
            "parent_position": new.parent_position,
            "forked_from": new.forked_from,
            "inputs_blob": new.inputs_blob,
            "commit_mode": self.store.status_commit_mode,
            "started": time.time(),
        }
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.02
        with self.store._guard():
            while True:
                got, created, _ = self._c.execute(self.q.begin, params, prepare=True).fetchone()
                if got:
                    self.locked = True
                    return True, bool(created)
                if deadline is None or time.monotonic() >= deadline:
                    return False, False
                time.sleep(delay)
                delay = min(delay * 1.5, 0.5)

    @property
    def _c(self) -> psycopg.Connection:
        if self.conn is None:
            raise RuntimeError("the lease is closed")
        return self.conn

    # -- reading ---------------------------------------------------------------------------
    def load(self) -> tuple[WorkflowRow, dict[int, StepRecord]]:
        """The workflow's record and all its step records, in one round trip."""
        with self.store._guard():
            with self._c.pipeline():
                wf = self._c.execute(
                    f"SELECT {WORKFLOW_COLUMNS} FROM {self.q.s}.workflows WHERE id = %s",
                    [self.workflow_id],
                    binary=True,
                )
                st = self._c.execute(
                    f"SELECT {STEP_COLUMNS} FROM {self.q.s}.steps WHERE workflow_id = %s "
                    "ORDER BY position",
                    [self.workflow_id],
                    binary=True,
                )
            row = wf.fetchone()
            steps = st.fetchall()
        assert row is not None, "a locked workflow has a record"
        return WorkflowRow.from_row(row), {s[1]: StepRecord.from_row(s) for s in steps}

    # -- writing ---------------------------------------------------------------------------
    def record_step(self, rec: StepRecord) -> StepRecord:
        """Write *rec*; if a record already holds that position, that one wins and is returned.

        When the database goes away the write is retried with backoff on a new connection
        (the workflow's lock is taken again first) for up to `Store.retry_seconds`; then
        `StoreUnavailableError` leaves the workflow resumable.
        """
        return self._retrying(lambda: self._record_step(rec))

    def _record_step(self, rec: StepRecord) -> StepRecord:
        with self.store._guard():
            cur = self._c.execute(self.q.insert_step, self.store.step_params(rec), prepare=True)
            if cur.fetchone() is not None:
                return rec
            return self.store.get_step(self.workflow_id, rec.position, conn=self._c) or rec

    def _retrying(self, op: Any) -> Any:
        deadline = time.monotonic() + self.store.retry_seconds
        delay = 0.05
        while True:
            try:
                return op()
            except StoreUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("the store went away while %s ran; retrying in %.2fs",
                               self.workflow_id, delay)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._reconnect(deadline)

    def _reconnect(self, deadline: float) -> None:
        """A fresh connection holding the workflow's lock again (the old one died)."""
        old, self.conn = self.conn, None
        if old is not None:
            self.store._discard(old)
        conn = self.store.wait_for_connection(deadline)
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", [self.key]).fetchone()[0]
        if not got:  # another executor took the workflow over while the database was away
            self.store._putconn(conn)
            self.locked = False
            raise WorkflowBusyError(self.workflow_id)
        self.conn, self.locked = conn, True

    def mark_resumed(self, executor: str) -> None:
        """Note that a new executor picked the workflow up."""
        with self.store._guard():
            self._c.execute(
                f"UPDATE {self.q.s}.workflows SET runs = runs + 1, executor = %s, "
                "updated_at = clock_timestamp(), run_started_at = to_timestamp(%s) WHERE id = %s",
                [executor, time.time(), self.workflow_id],
            )

    def restart(self, executor: str, code_hash: str | None, forked_from: str | None) -> None:
        """Reopen a finished workflow for a new run (its old run archived as *forked_from*)."""
        with self.store._guard():
            self._c.execute(
                f"UPDATE {self.q.s}.workflows SET status = 'running', code_hash = %s, "
                "forked_from = coalesce(%s, forked_from), output = NULL, output_codec = NULL, "
                "output_checksum = NULL, error = NULL, error_type = NULL, error_message = NULL, "
                "error_traceback = NULL, finished_at = NULL, runs = runs + 1, executor = %s, "
                "updated_at = clock_timestamp(), run_started_at = to_timestamp(%s) WHERE id = %s",
                [code_hash, forked_from, executor, time.time(), self.workflow_id],
            )

    def archive(self) -> str:
        """Copy this workflow and its steps to a new id ``ID~N`` with status superseded."""
        with self.store._guard(), self._c.transaction():
            return self.store._archive_txn(self._c, self.workflow_id)

    def truncate(self, position: int, archive_id: str | None) -> None:
        """Drop step records at *position* and after; children there move under *archive_id*."""
        with self.store._guard(), self._c.transaction():
            self.store._truncate_txn(self._c, self.workflow_id, position, archive_id)

    def finish(self, outcome: Outcome, *, background: bool = True) -> None:
        """Record how the workflow ended and let go of it.

        With *background* the write is handed to the store's finisher thread and this
        returns at once; the workflow stays locked until the write commits. Losing it to a
        crash only leaves the workflow to replay its recorded steps once more.
        """
        conn, self.conn = self.conn, None
        if conn is None:
            raise RuntimeError("the lease is closed")
        params = {
            "id": self.workflow_id,
            "key": self.key,
            "status": outcome.status,
            "output": outcome.output,
            "codec": outcome.codec,
            "checksum": outcome.checksum,
            "error": outcome.error,
            "error_type": outcome.error_type,
            "error_message": outcome.error_message,
            "error_traceback": outcome.error_traceback,
            "blob": outcome.blob,
            "commit_mode": self.store.status_commit_mode,
        }
        self.locked = False
        if background:
            self.store._finish_later(self.workflow_id, conn, params)
        else:
            self.store._finish_now(self.workflow_id, conn, params)

    def close(self) -> None:
        """Let go of the workflow (it stays as recorded) and return the connection."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.locked:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
                self.locked = False
            except Exception:
                # The lock dies with the connection: close it rather than pool a locked one.
                conn.close()
        self.store._putconn(conn)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

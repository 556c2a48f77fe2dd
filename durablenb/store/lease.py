"""A lease: a connection holding a workflow's session advisory lock while it runs.

Only the lease's holder writes the workflow's records. The lock belongs to the connection, so
a crashed kernel's lock vanishes with its connection and the workflow is free to resume.
A child workflow called inline shares its parent's connection (advisory locks are per key,
so the session holds both), so nesting depth never exhausts the pool.

Under ``kernel`` durability the lease's step records commit without waiting for their log
flush. It remembers which ones no synchronous commit has flushed since; when the connection
is lost and taken again, it checks they are still there (a database crash loses the last
unflushed commits) and stops the run with `RecordsLostError` if not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg.rows import class_row

from ..errors import RecordsLostError, StoreUnavailableError, WorkflowBusyError
from ._direct import Unsupported
from .records import STEP_COLUMNS, WORKFLOW_COLUMNS, NewWorkflow, Outcome, StepRecord, WorkflowRow

if TYPE_CHECKING:
    from . import Store

logger = logging.getLogger("durablenb")

T = TypeVar("T")


class Lease:
    """Exclusive right to run one workflow, for as long as this object is open."""

    def __init__(self, store: Store, workflow_id: str, share: Lease | None = None,
                 durability: str = "full") -> None:  # fmt: skip
        self.store = store
        self.durability = durability
        #: Step records commit without waiting for their log flush (``kernel`` durability).
        self.asynchronous = durability == "kernel"
        #: Positions recorded asynchronously that no synchronous commit has flushed yet, and
        #: whether the workflow's own row (created by `begin`) is among the unflushed.
        self.unflushed: list[int] = []
        self.unflushed_row = False
        self.workflow_id = workflow_id
        self.key = store.lock_key(workflow_id)
        shared = share.conn if share is not None else None
        self.owns_conn = shared is None
        self.conn: psycopg.Connection | None = shared if shared is not None else store._getconn()
        self._cur: psycopg.Cursor | None = None
        self.locked = False
        self.q = store._q

    @property
    def _c(self) -> psycopg.Connection:
        if self.conn is None:
            raise RuntimeError("the lease is closed")
        return self.conn

    @property
    def _cursor(self) -> psycopg.Cursor:
        """A cursor on the lease's connection, kept across statements."""
        conn = self._c
        if self._cur is None or self._cur.connection is not conn:
            self._cur = conn.cursor()
        return self._cur

    # -- acquiring -----------------------------------------------------------------------
    def begin(self, new: NewWorkflow, wait: float | None = None,
              probe: bool = False) -> tuple[bool | None, str | None]:  # fmt: skip
        """Take the lock and record *new* if absent: ``(locked, status it was created with,
        or None when it existed)``.

        *wait*: seconds to wait for another executor to let go; ``None`` does not wait.
        *probe*: a workflow that finished (succeeded or failed) is left alone, unlocked:
        ``(None, None)``; its record can be read without the lock (`Store.finished`).
        """
        params = {
            "probe": probe,
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
            "notebook": new.notebook,
            "commit_mode": "off" if self.asynchronous else self.store.status_commit_mode,
            "started": time.time(),
        }
        deadline = None if wait is None else time.monotonic() + wait
        delay = 0.02
        while True:
            child = new.parent_id is not None
            with self.store._guard(self.conn):
                try:
                    direct = self.q.begin_child_direct if child else self.q.begin_direct
                    ((got_text, created, _),) = direct.run(self._c, params)
                    got = None if got_text is None else got_text == "t"
                except Unsupported:
                    begin = self.q.begin_child if child else self.q.begin
                    got, created, _ = self._cursor.execute(begin, params, prepare=True).fetchone() or (0,) * 3
            if got is None:
                return None, None
            if got:
                self.locked = True
                if created is not None and params["commit_mode"] == "off":
                    self.unflushed_row = True
                return True, created
            if deadline is None or time.monotonic() >= deadline:
                return False, None
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    # -- reading ---------------------------------------------------------------------------
    def load(self) -> tuple[WorkflowRow, dict[int, StepRecord]]:
        """The workflow's record and all its step records.

        Two queries, not one pipeline: after a `Cursor.stream` (blob reads) on a connection,
        psycopg 3.3's pipeline mode gets ``SINGLE_TUPLE`` results there (an InternalError);
        pooled connections may have streamed."""
        s = self.q.s
        with self.store._guard(self.conn):
            wf = self._c.cursor(row_factory=class_row(WorkflowRow), binary=True)
            row = wf.execute(f"SELECT {WORKFLOW_COLUMNS} FROM {s}.workflows WHERE id = %s",
                             [self.workflow_id]).fetchone()  # fmt: skip
            st = self._c.cursor(row_factory=class_row(StepRecord), binary=True)
            query = f"SELECT {STEP_COLUMNS} FROM {s}.steps WHERE workflow_id = %s ORDER BY position"
            steps = st.execute(query, [self.workflow_id]).fetchall()
        assert row is not None, "a locked workflow has a record"
        return row, {rec.position: rec for rec in steps}

    # -- writing ---------------------------------------------------------------------------
    def record_step(self, rec: StepRecord) -> StepRecord:
        """Write *rec*; if a record already held the position, that one wins and is returned.

        When the database goes away the write is retried with backoff on a new connection
        (the workflow's lock is taken again first) for up to `Store.retry_seconds`; then
        `StoreUnavailableError` leaves the workflow resumable.
        """
        return self._retrying(lambda: self._record_step(rec))

    def _record_step(self, rec: StepRecord) -> StepRecord:
        conn = self._c
        if self.store.insert_step_in(conn, rec, self._cursor, self.asynchronous):
            self.wrote(rec.position, self.asynchronous)
            return rec
        return self.store.get_step(self.workflow_id, rec.position, conn=conn) or rec

    def record_steps(self, recs: list[StepRecord]) -> list[StepRecord]:
        """Write *recs* together: one statement, one commit (the group commit of `dnb.map`
        items). Returns, for each, the record that holds its position: itself, or the one
        another executor wrote first (which wins). Retried on a new connection like
        `record_step`; the batch commits whole or not at all."""
        return self._retrying(lambda: self._record_steps(recs))

    def _record_steps(self, recs: list[StepRecord]) -> list[StepRecord]:
        conn = self._c
        written = self.store.insert_steps_in(conn, recs, self._cursor, self.asynchronous)
        if written and self.asynchronous:
            self.unflushed.extend(sorted(written))
        elif written:
            self.wrote(-1, False)  # the batch's commit flushed the log up to it
        if len(written) == len(recs):
            return recs
        held = self.store.steps_at(self.workflow_id, [r.position for r in recs if r.position not in written],
                                    conn=conn)  # fmt: skip
        return [rec if rec.position in written else held.get(rec.position, rec) for rec in recs]

    def wrote(self, position: int, asynchronous: bool) -> None:
        """Note that the record at *position* committed (on any connection)."""
        if asynchronous:
            self.unflushed.append(position)
        else:  # its log flush also flushed every commit before it
            self.unflushed.clear()
            self.unflushed_row = False

    def _retrying(self, op: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.store.retry_seconds
        delay = 0.05
        while True:
            try:
                return op()
            except StoreUnavailableError as exc:
                if not exc.transient or time.monotonic() + delay > deadline:
                    raise
                logger.warning("the store went away while %s ran; retrying in %.2fs",
                               self.workflow_id, delay)  # fmt: skip
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                self._reconnect(deadline)

    def _reconnect(self, deadline: float) -> None:
        """A fresh connection holding the workflow's lock again (the old one died)."""
        old, self.conn = self.conn, None
        if old is not None and self.owns_conn:
            self.store._discard(old)
        conn = self.store.wait_for_connection(deadline)
        self.owns_conn = True
        s = self.q.s
        row = conn.execute(
            f"SELECT pg_try_advisory_lock(%s), EXISTS (SELECT 1 FROM {s}.workflows WHERE id = %s), "
            f"ARRAY(SELECT position FROM {s}.steps WHERE workflow_id = %s AND position = ANY(%s))",
            [self.key, self.workflow_id, self.workflow_id, self.unflushed],
        ).fetchone()
        if not row or not row[0]:  # another executor took the workflow over meanwhile
            self.store._putconn(conn)
            self.locked = False
            raise WorkflowBusyError(self.workflow_id)
        self.conn, self.locked = conn, True
        kept = set(row[2])
        lost = [p for p in self.unflushed if p not in kept]
        if (self.unflushed_row and not row[1]) or lost:
            raise RecordsLostError(self.workflow_id, lost, row_lost=self.unflushed_row and not row[1])

    def _run(self, sql: str, params: Any) -> None:
        def op() -> None:
            with self.store._guard(self.conn):
                self._c.execute(sql, params)

        self._retrying(op)

    def mark_resumed(self, executor: str) -> None:
        """Note that a new executor picked the workflow up."""
        self._run(
            f"UPDATE {self.q.s}.workflows SET runs = runs + 1, executor = %s, "
            "updated_at = clock_timestamp(), run_started_at = to_timestamp(%s) WHERE id = %s",
            [executor, time.time(), self.workflow_id],
        )

    def set_deadline(self, at: float) -> float:
        """Record *at* (epoch seconds) as the workflow's deadline unless one is recorded;
        returns the deadline that holds."""
        sql = (f"UPDATE {self.q.s}.workflows SET deadline = coalesce(deadline, to_timestamp(%s)) "
               "WHERE id = %s RETURNING extract(epoch FROM deadline)::float8")  # fmt: skip
        got: list[float] = []

        def op() -> None:
            with self.store._guard(self.conn):
                row = self._c.execute(sql, [at, self.workflow_id]).fetchone()
            got.append(row[0] if row else at)

        self._retrying(op)
        return got[-1]

    def unbegin(self) -> None:
        """Remove the row `begin` just created (nothing was recorded under it)."""
        self._run(f"DELETE FROM {self.q.s}.workflows WHERE id = %s", [self.workflow_id])

    def set_inputs(self, data: bytes | None, codec: str, checksum: int | None, blob: str | None) -> None:
        """Record the inputs of a workflow `begin` created without them."""
        self._run(
            f"UPDATE {self.q.s}.workflows SET inputs = %s, inputs_codec = %s, inputs_checksum = %s, "
            "inputs_blob = %s WHERE id = %s",
            [data, codec, checksum, blob, self.workflow_id],
        )

    def restart(self, executor: str, code_hash: str | None, forked_from: str | None) -> None:
        """Reopen a finished workflow for a new run (its old run archived as *forked_from*)."""
        self._run(
            f"UPDATE {self.q.s}.workflows SET status = 'running', code_hash = %s, "
            "forked_from = coalesce(%s, forked_from), output = NULL, output_codec = NULL, "
            "output_checksum = NULL, output_blob = NULL, error = NULL, error_type = NULL, "
            "error_message = NULL, error_traceback = NULL, finished_at = NULL, runs = runs + 1, "
            "deadline = NULL, executor = %s, updated_at = clock_timestamp(), "
            "run_started_at = to_timestamp(%s) WHERE id = %s",
            [code_hash, forked_from, executor, time.time(), self.workflow_id],
        )

    def archive(self) -> str:
        """Copy this workflow and its steps to a new id ``ID~N`` with status superseded."""
        with self.store._guard(self.conn), self._c.transaction():
            return self.store._archive_txn(self._c, self.workflow_id)

    def truncate(self, position: int, archive_id: str | None) -> None:
        """Drop step records at *position* and after; children there move under *archive_id*."""
        with self.store._guard(self.conn), self._c.transaction():
            self.store._truncate_txn(self._c, self.workflow_id, position, archive_id)

    def finish(self, outcome: Outcome) -> str | None:
        """Record how the workflow ended, durably, and let go of it.

        Returns None when the outcome was recorded, else the status that kept it from being
        recorded (``cancelled``: a cancel committed first).
        """
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
        }

        def op() -> str | None:
            with self.store._guard(self.conn):
                try:
                    ((count, _),) = self.q.finish_direct.run(self._c, params)
                except Unsupported:
                    count, _ = self._cursor.execute(self.q.finish, params, prepare=True).fetchone() or (0, 0)
                if int(count or 0):
                    return None
                found = self._c.execute(self.q.status, [self.workflow_id]).fetchone()
                return found[0] if found else "removed"

        blocked = self._retrying(op)
        self.locked = False  # the finish let go of the session lock
        self.wrote(-1, False)  # it committed synchronously
        return blocked

    def close(self) -> None:
        """Let go of the workflow (it stays as recorded) and give the connection back."""
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.locked:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", [self.key])
                self.locked = False
            except Exception:
                # The lock dies with the connection: close it rather than pool a locked one.
                if self.owns_conn:
                    conn.close()
        if self.owns_conn:
            self.store._putconn(conn)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""Everything SQL: the schema, workflow and step records, leases and queries.

Only this package talks to PostgreSQL (through psycopg 3 and a psycopg_pool pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool

from .. import _faults
from ..errors import StoreUnavailableError
from ._admin import CANCEL_CHANNEL, AdminMixin
from ._dsn import mask_dsn
from ._migrate import latest_version, migrate
from .blobs import BlobStore, open_blobs
from .lease import Lease
from .records import STEP_COLUMNS, WORKFLOW_COLUMNS, NewWorkflow, Outcome, StepRecord, WorkflowRow

__all__ = [
    "Store",
    "Lease",
    "BlobStore",
    "StepRecord",
    "WorkflowRow",
    "NewWorkflow",
    "Outcome",
    "mask_dsn",
    "latest_version",
]

logger = logging.getLogger("durablenb")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


class _Queries:
    """SQL text with the schema name filled in once."""

    def __init__(self, qschema: str) -> None:
        s = self.s = qschema
        # Workflow rows commit with synchronous_commit set per statement (see Store).
        mode = "coalesce(%(commit_mode)s, current_setting('synchronous_commit'))"
        self.begin = (
            f"WITH cfg AS (SELECT set_config('synchronous_commit', {mode}, true) AS v), "
            "lk AS (SELECT pg_try_advisory_lock(%(key)s) AS got), "
            f"ins AS (INSERT INTO {s}.workflows (id, name, status, args_digest, inputs, "
            "inputs_codec, inputs_checksum, code_hash, executor, parent_id, parent_position, "
            "forked_from, run_started_at, inputs_blob) "
            "SELECT %(id)s, %(name)s, 'running', %(args_digest)s, %(inputs)b, %(inputs_codec)s, "
            "%(inputs_checksum)s, %(code_hash)s, %(executor)s, %(parent_id)s, "
            "%(parent_position)s, %(forked_from)s, to_timestamp(%(started)s), %(inputs_blob)s "
            "FROM lk WHERE lk.got "
            "ON CONFLICT (id) DO NOTHING RETURNING 1) "
            "SELECT lk.got, EXISTS (SELECT 1 FROM ins), (SELECT v FROM cfg) FROM lk"
        )
        self.insert_step = (
            f"INSERT INTO {s}.steps ({STEP_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %b, %s, %s, %s, "
            "%b, %s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s) "
            "ON CONFLICT (workflow_id, position) DO NOTHING RETURNING 1"
        )
        self.finish = (
            f"WITH cfg AS (SELECT set_config('synchronous_commit', {mode}, true) AS v), "
            f"upd AS (UPDATE {s}.workflows SET status = %(status)s, output = %(output)b, "
            "output_codec = %(codec)s, output_checksum = %(checksum)s, error = %(error)b, "
            "error_type = %(error_type)s, error_message = %(error_message)s, "
            "error_traceback = %(error_traceback)s, output_blob = %(blob)s, "
            "updated_at = clock_timestamp(), "
            "finished_at = clock_timestamp() WHERE id = %(id)s AND status = 'running' RETURNING 1) "
            # A transaction-level hold on the same key keeps the workflow locked until this
            # statement commits, so the session lock can be let go in the same round trip.
            "SELECT (SELECT v FROM cfg), (SELECT count(*) FROM upd), "
            "CASE WHEN pg_try_advisory_xact_lock(%(key)s) THEN pg_advisory_unlock(%(key)s) END"
        )


class Store(AdminMixin):
    """Durable records of workflows and steps in one PostgreSQL schema.

    *dsn*: a libpq connection string or URL. *schema*: the schema holding the tables,
    created and migrated on first use. *max_size*: the most connections kept open.

    Step records always commit synchronously: once a step's record is acknowledged it
    survives any crash. The rows that open and close a workflow commit asynchronously
    unless *sync_status* (or ``DURABLENB_SYNC_STATUS=1``): PostgreSQL writes its log in
    order, so they are durable no later than the next step record, and losing one to a
    server crash only means the workflow replays its recorded steps once more.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "durablenb",
        max_size: int = 16,
        connect_timeout: float = 10.0,
        sync_status: bool | None = None,
        blob_url: str | None = None,
        embedded_home: Any = None,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}: use letters, digits and _")
        self.dsn = dsn
        self.schema = schema
        self.qschema = '"' + schema + '"'
        self._q = _Queries(self.qschema)
        self._cancelled: set[str] = set()
        self._cancel_lock = threading.Lock()
        self._finishing: dict[str, threading.Event] = {}
        self._finish_queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._finisher: threading.Thread | None = None
        self._finish_lock = threading.Lock()
        self.connect_timeout = connect_timeout
        #: How long record writes retry while the database is away before giving up.
        self.retry_seconds = float(os.environ.get("DURABLENB_RETRY_SECONDS", 30))
        if sync_status is None:
            sync_status = os.environ.get("DURABLENB_SYNC_STATUS", "") not in ("", "0")
        self.status_commit_mode: str | None = None if sync_status else "off"
        try:
            with psycopg.connect(dsn, autocommit=True, connect_timeout=int(connect_timeout)) as conn:
                self.server_version = conn.info.server_version
                self.schema_version = migrate(conn, self.qschema, schema)
        except psycopg.OperationalError as exc:
            raise self._unavailable(exc) from exc
        self.pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            configure=self._configure,
            open=False,
            timeout=connect_timeout,
            name=f"durablenb-{schema}",
        )
        self.pool.open(wait=False)
        self.blobs = open_blobs(self, blob_url, embedded_home)

    def __repr__(self) -> str:
        return f"<durablenb.Store {mask_dsn(self.dsn)!r} schema={self.schema!r}>"

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)

    def close(self) -> None:
        """Write pending workflow ends, then close every connection."""
        self.flush()
        if self._finisher is not None:
            self._finish_queue.put(None)
        self.pool.close()

    # -- workflow ends, written behind ----------------------------------------------------
    def _finish_now(self, workflow_id: str, conn: psycopg.Connection, params: dict[str, Any]) -> None:
        deadline = time.monotonic() + self.retry_seconds
        while True:
            try:
                with self._guard():
                    _, _, unlocked = conn.execute(self._q.finish, params, prepare=True).fetchone()
            except StoreUnavailableError:
                # The lock died with the connection: record the end on a new one.
                self._discard(conn)
                conn = self.wait_for_connection(deadline)
                continue
            except BaseException:
                self._discard(conn)
                raise
            if _faults.ACTIVE:
                _faults.point("finish.after")
            if not unlocked:
                conn.close()  # never pool a connection that may still hold a lock
            self._putconn(conn)
            return

    def _discard(self, conn: psycopg.Connection) -> None:
        conn.close()
        self._putconn(conn)

    def wait_for_connection(self, deadline: float) -> psycopg.Connection:
        """A working pooled connection, retrying with backoff until *deadline* (monotonic)."""
        delay = 0.05
        while True:
            conn = None
            try:
                conn = self._getconn()
                with self._guard():
                    conn.execute("SELECT 1")
                return conn
            except StoreUnavailableError:
                if conn is not None:
                    self._discard(conn)
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailableError(
                        f"the durablenb store at {self.masked_dsn!r} did not come back within "
                        f"{self.retry_seconds:g}s; the workflow stays resumable",
                        dsn=self.masked_dsn,
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _finish_later(self, workflow_id: str, conn: psycopg.Connection, params: dict[str, Any]) -> None:
        with self._finish_lock:
            self._finishing[workflow_id] = done = threading.Event()
            if self._finisher is None or not self._finisher.is_alive():
                self._finisher = threading.Thread(
                    target=self._finish_loop, name=f"durablenb-finisher-{self.schema}", daemon=True
                )
                self._finisher.start()
        self._finish_queue.put((workflow_id, conn, params, done))

    def _finish_loop(self) -> None:
        while True:
            item = self._finish_queue.get()
            if item is None:
                return
            workflow_id, conn, params, done = item
            try:
                self._finish_now(workflow_id, conn, params)
            except Exception as exc:
                logger.warning("could not record the end of workflow %s (%s); a rerun replays "
                               "its recorded steps", workflow_id, exc)  # fmt: skip
            finally:
                with self._finish_lock:
                    if self._finishing.get(workflow_id) is done:
                        del self._finishing[workflow_id]
                done.set()

    def _wait_finished(self, workflow_id: str) -> None:
        done = self._finishing.get(workflow_id)
        if done is not None:
            done.wait()

    def flush(self) -> None:
        """Wait until every workflow end handed to the finisher is written."""
        with self._finish_lock:
            pending = list(self._finishing.values())
        for done in pending:
            done.wait()

    # -- connections -----------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        detail = detail.replace(self.dsn, self.masked_dsn) if self.dsn else detail
        return StoreUnavailableError(
            f"cannot reach the durablenb store at {self.masked_dsn!r}: {mask_dsn(detail)}",
            dsn=self.masked_dsn,
        )

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except psycopg_pool.PoolClosed as exc:
            raise StoreUnavailableError(
                f"this durablenb store ({self.masked_dsn!r}) was closed; dnb.connect() opens a new one",
                dsn=self.masked_dsn,
            ) from exc
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailableError(
                f"no free connection to the durablenb store at {self.masked_dsn!r} within "
                f"{self.connect_timeout:g}s: all {self.pool.max_size} are in use (many workflows "
                "running at once in this process?) or the database stopped answering",
                dsn=self.masked_dsn,
            ) from exc
        except psycopg.OperationalError as exc:
            if isinstance(exc, psycopg.errors.QueryCanceled):
                raise
            raise self._unavailable(exc) from exc

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.add_notify_handler(self._on_notify)
        conn.execute(f"LISTEN {CANCEL_CHANNEL}")

    def _on_notify(self, note: psycopg.Notify) -> None:
        schema, _, wid = note.payload.partition("|")
        if schema == self.schema:
            with self._cancel_lock:
                self._cancelled.add(wid)

    def is_cancelled(self, workflow_id: str) -> bool:
        """True once a cancel of *workflow_id* has been seen on any connection."""
        return workflow_id in self._cancelled

    def clear_cancelled(self, workflow_id: str) -> None:
        with self._cancel_lock:
            self._cancelled.discard(workflow_id)

    def _getconn(self) -> psycopg.Connection:
        with self._guard():
            return self.pool.getconn()

    def _putconn(self, conn: psycopg.Connection) -> None:
        self.pool.putconn(conn)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection."""
        with self._guard(), self.pool.connection() as conn:
            yield conn

    def lock_key(self, workflow_id: str) -> int:
        """The advisory lock key of *workflow_id* in this schema."""
        digest = hashlib.blake2b(f"{self.schema}\0{workflow_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def lease(self, workflow_id: str) -> Lease:
        """A connection ready to take *workflow_id*'s lock (see `Lease.begin`)."""
        return Lease(self, workflow_id)

    # -- step records ----------------------------------------------------------------------
    @staticmethod
    def step_params(rec: StepRecord) -> tuple[Any, ...]:
        return (
            rec.workflow_id, rec.position, rec.name, rec.kind, rec.status, rec.output, rec.codec,
            rec.checksum, rec.output_bytes, rec.error, rec.error_type, rec.error_message,
            rec.error_traceback, rec.attempts, rec.code_hash, rec.child_id, rec.started_at,
            rec.finished_at, rec.blob,
        )  # fmt: skip

    def get_step(
        self, workflow_id: str, position: int, conn: psycopg.Connection | None = None
    ) -> StepRecord | None:
        """The record at *position* of *workflow_id*, if any."""
        q = f"SELECT {STEP_COLUMNS} FROM {self.qschema}.steps WHERE workflow_id = %s AND position = %s"
        with self._guard():
            if conn is not None:
                row = conn.execute(q, [workflow_id, position], binary=True).fetchone()
            else:
                with self.pool.connection() as c:
                    row = c.execute(q, [workflow_id, position], binary=True).fetchone()
        return StepRecord.from_row(row) if row else None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction, committed when the block ends."""
        with self._guard(), self.pool.connection() as conn, conn.transaction():
            yield conn

    def insert_step_in(self, conn: psycopg.Connection, rec: StepRecord) -> bool:
        """Write *rec* on *conn* (inside the caller's transaction); False if one was there."""
        cur = conn.execute(self._q.insert_step, self.step_params(rec), prepare=True)
        return cur.fetchone() is not None

    # -- forks -----------------------------------------------------------------------------
    def _next_archive_id(self, conn: psycopg.Connection, workflow_id: str) -> str:
        prefix = workflow_id + "~"
        rows = conn.execute(
            f"SELECT substr(id, %s) FROM {self.qschema}.workflows WHERE left(id, %s) = %s",
            [len(prefix) + 1, len(prefix), prefix],
        ).fetchall()
        used = [int(r[0]) for r in rows if r[0].isdigit()]
        return f"{prefix}{max(used, default=0) + 1}"

    def _archive_txn(self, conn: psycopg.Connection, workflow_id: str) -> str:
        aid = self._next_archive_id(conn, workflow_id)
        s = self.qschema
        cols = [c.strip() for c in WORKFLOW_COLUMNS.split(",")]
        rest = [c for c in cols if c not in ("id", "status")]
        conn.execute(
            f"INSERT INTO {s}.workflows (id, status, {', '.join(rest)}) "
            f"SELECT %s, 'superseded', {', '.join(rest)} FROM {s}.workflows WHERE id = %s",
            [aid, workflow_id],
        )
        scols = [c.strip() for c in STEP_COLUMNS.split(",") if c.strip() != "workflow_id"]
        conn.execute(
            f"INSERT INTO {s}.steps (workflow_id, {', '.join(scols)}) "
            f"SELECT %s, {', '.join(scols)} FROM {s}.steps WHERE workflow_id = %s",
            [aid, workflow_id],
        )
        return aid

    def _truncate_txn(
        self, conn: psycopg.Connection, workflow_id: str, position: int, archive_id: str | None
    ) -> None:
        s = self.qschema
        children = conn.execute(
            f"SELECT child_id FROM {s}.steps WHERE workflow_id = %s AND position >= %s "
            "AND child_id IS NOT NULL",
            [workflow_id, position],
        ).fetchall()
        for (child,) in children:
            derived = child.startswith(workflow_id + "/")
            if not derived:
                continue
            if archive_id is None:
                self._forget_txn(conn, child)
                continue
            new = archive_id + child[len(workflow_id):]
            # Move the child and its own derived descendants under the archived run.
            conn.execute(
                f"UPDATE {s}.workflows SET id = %s || substr(id, %s), "
                "parent_id = CASE WHEN parent_id IS NULL THEN NULL "
                "ELSE %s || substr(parent_id, %s) END "
                "WHERE id = %s OR left(id, %s) = %s",
                [archive_id, len(workflow_id) + 1, archive_id, len(workflow_id) + 1,
                 child, len(child) + 1, child + "/"],
            )  # fmt: skip
            conn.execute(
                f"UPDATE {s}.steps SET child_id = %s WHERE workflow_id = %s AND child_id = %s",
                [new, archive_id, child],
            )
        conn.execute(
            f"DELETE FROM {s}.steps WHERE workflow_id = %s AND position >= %s",
            [workflow_id, position],
        )

    def fork(self, source_id: str, new_id: str, upto_position: int, executor: str) -> None:
        """Create *new_id* from *source_id*'s inputs and its step records before *upto_position*."""
        s = self.qschema
        with self.connection() as conn, conn.transaction():
            cur = conn.execute(
                f"INSERT INTO {s}.workflows (id, name, status, args_digest, inputs, inputs_codec, "
                "inputs_checksum, inputs_blob, code_hash, executor, forked_from, runs) "
                "SELECT %s, name, 'running', args_digest, inputs, inputs_codec, inputs_checksum, "
                f"inputs_blob, code_hash, %s, id, 0 FROM {s}.workflows WHERE id = %s",
                [new_id, executor, source_id],
            )
            if cur.rowcount != 1:
                raise KeyError(source_id)
            scols = [c.strip() for c in STEP_COLUMNS.split(",") if c.strip() != "workflow_id"]
            conn.execute(
                f"INSERT INTO {s}.steps (workflow_id, {', '.join(scols)}) "
                f"SELECT %s, {', '.join(scols)} FROM {s}.steps "
                "WHERE workflow_id = %s AND position < %s",
                [new_id, source_id, upto_position],
            )

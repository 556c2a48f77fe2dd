"""Everything SQL: the schema, workflow and step records, leases and queries.

Only this package talks to PostgreSQL (through psycopg 3 and a psycopg_pool pool).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import psycopg_pool
from psycopg.rows import class_row

from ..errors import StorePermissionError, StoreUnavailableError
from ..settings import Settings
from ._admin import AdminMixin
from ._ahead import ReadAheadMixin
from ._direct import Unsupported
from ._dsn import mask_dsn, scrub
from ._gc import BlobGcMixin
from ._lineage import LineageMixin
from ._migrate import latest_version, migrate
from ._notify import CancelListener
from ._queries import Queries
from ._roles import DEFAULT_SCHEMA, Access, RolesMixin, default_schema, denied, inspect_access, role_schema
from .blobs import BlobStore, open_blobs
from .lease import Lease
from .records import STEP_COLUMNS, TIMED_OUT, NewWorkflow, Outcome, StepRecord, WorkflowRow

__all__ = [
    "Store",
    "Lease",
    "BlobStore",
    "StepRecord",
    "WorkflowRow",
    "NewWorkflow",
    "Outcome",
    "TIMED_OUT",
    "mask_dsn",
    "latest_version",
    "role_schema",
    "Access",
    "is_disconnect",
    "RETRYABLE_SQL",
]

logger = logging.getLogger("durablenb")

_SCHEMA_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

#: Roles told, once per process, that they keep the shared ``durablenb`` schema of earlier
#: versions.
_LEGACY_TOLD: set[tuple[str, str]] = set()

#: SQL errors a transaction retries by itself: serialization failures and deadlocks.
RETRYABLE_SQL: tuple[type[psycopg.Error], ...] = (
    psycopg.errors.SerializationFailure,
    psycopg.errors.DeadlockDetected,
)

# Server states that mean the session is gone (admin or crash shutdown, not accepting).
_SESSION_GONE = ("57P01", "57P02", "57P03")


def is_disconnect(exc: BaseException, conn: psycopg.Connection | None = None) -> bool:
    """True when *exc* means the connection to the database was lost (not a SQL error)."""
    if conn is not None and (conn.closed or conn.broken):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _SESSION_GONE
    return isinstance(exc, psycopg.InterfaceError)


class Store(ReadAheadMixin, AdminMixin, LineageMixin, BlobGcMixin, RolesMixin):
    """Durable records of workflows and steps in one PostgreSQL schema.

    *dsn*: a libpq connection string or URL. *settings*: the resolved `Settings` (schema,
    blob store, secret, retry budget…; default: from the environment). *max_size*: the
    most connections kept open.

    The schema is *schema*, else ``settings.schema``, else ``durablenb`` on the embedded
    server (*embedded_home* given) and the connecting role's own schema on a server
    (`role_schema`: ``durablenb_<role>``, created on first use and owned by the role; a
    role that owns the shared ``durablenb`` schema of earlier versions, with workflows in
    it, and has no schema of its own keeps using it). A schema the role may not use is a
    `StorePermissionError` (see `Store.grant`).

    Workflow ends commit synchronously: once acknowledged they survive any crash. Step
    records do too when the workflow's durability is ``full``; under ``kernel`` they commit
    without waiting for the log flush and survive any death of the client process (see
    docs/design.md). The row that opens a workflow commits asynchronously unless
    ``settings.sync_status``: PostgreSQL writes its log in order, so it is durable no later
    than the first synchronous commit after it.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        settings: Settings | None = None,
        max_size: int = 16,
        connect_timeout: float = 10.0,
        embedded_home: Any = None,
    ) -> None:
        settings = settings or Settings.from_env()
        schema = schema or settings.schema
        if schema is not None and not _SCHEMA_NAME.match(schema):
            raise ValueError(f"invalid schema name {schema!r}: use letters, digits and _")
        self.dsn = dsn
        self.settings = settings
        #: The connecting role (``current_user``), and what it may do in the schema
        #: (`Access`: its owner, ``level`` owner, write, read or none) when it connected.
        self.role: str | None = None
        self.schema_access: Access | None = None
        self._cancelled: set[str] = set()
        self._heard: set[int] = set()
        self._cancel_lock = threading.Lock()
        self.connect_timeout = connect_timeout
        #: How long record writes retry while the database is away before giving up.
        self.retry_seconds = settings.retry_seconds
        self.status_commit_mode: str | None = None if settings.sync_status else "off"
        #: The durability of workflows that do not choose one (see `Settings.durability`).
        self.durability = settings.durability or ("kernel" if embedded_home is not None else "full")
        try:
            first = psycopg.connect(dsn, autocommit=True, connect_timeout=int(connect_timeout))
        except psycopg.Error as exc:  # unreachable, refused, or a malformed connection string
            raise self._unavailable(exc) from None
        with first, self._guard(first):
            row = first.execute("SELECT current_user").fetchone()
            self.role = row[0] if row else None
            legacy = False
            if schema is None and embedded_home is not None:
                schema = DEFAULT_SCHEMA  # one user: the schema of every earlier version
            elif schema is None:
                schema, legacy = default_schema(first)
            self._set_schema(schema)
            if legacy and (self.masked_dsn, str(self.role)) not in _LEGACY_TOLD:
                _LEGACY_TOLD.add((self.masked_dsn, str(self.role)))
                logger.info(
                    "durablenb: role %r keeps its records in the schema %r it owns (written before "
                    "schemas per role); a role without one gets its own, %r here. Set "
                    "DURABLENB_SCHEMA to choose.", self.role, schema, role_schema(str(self.role)),
                )  # fmt: skip
            self.schema_access = inspect_access(first, schema)
            self.server_version = first.info.server_version
            self.schema_version = migrate(first, self.qschema, schema, self.schema_access, self.masked_dsn)
            if not self.schema_access.exists:  # created just now, by and for this role
                self.schema_access = inspect_access(first, schema)
        self.pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=1,
            max_size=max_size,
            kwargs={"autocommit": True},
            open=False,
            timeout=connect_timeout,
            name=f"durablenb-{self.schema}",
        )
        self.pool.open(wait=False)
        try:
            self.blobs = open_blobs(self, settings.blob_url, embedded_home, settings.compression)
        except BaseException:
            self.pool.close()
            raise
        self._listener = CancelListener(dsn, self.schema, self.lock_key, self._on_cancel)
        self._listener.start()

    def _set_schema(self, schema: str) -> None:
        self.schema = schema
        self.qschema = '"' + schema + '"'
        self._q = Queries(self.qschema)

    def __repr__(self) -> str:
        return f"<durablenb.Store {mask_dsn(self.dsn)!r} schema={self.schema!r}>"

    @property
    def masked_dsn(self) -> str:
        return mask_dsn(self.dsn)

    def close(self) -> None:
        """Close every connection."""
        self._listener.close()
        self.pool.close()

    # -- connections -----------------------------------------------------------------------
    def _unavailable(self, exc: BaseException) -> StoreUnavailableError:
        text = str(exc).strip()
        detail = text.splitlines()[0] if text else type(exc).__name__
        # *exc* stays chained to the new error (as __cause__, or __context__ even after
        # "from None"): scrub its text, and its chain's, in place, and drop the libpq
        # connection psycopg keeps on it, whose repr shows the password.
        chain: list[BaseException | None] = [exc]
        seen: set[int] = set()
        while chain:
            e = chain.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            e.args = tuple(scrub(a, self.dsn) if isinstance(a, str) else a for a in e.args)
            if isinstance(e, psycopg.Error):
                e._pgconn = None
            chain += [e.__cause__, e.__context__]
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return self._denied(scrub(detail, self.dsn))
        if isinstance(exc, psycopg.Error) and exc.sqlstate and not is_disconnect(exc):
            return StoreUnavailableError(
                f"the durablenb store at {self.masked_dsn!r} failed: {scrub(detail, self.dsn)} "
                f"(SQLSTATE {exc.sqlstate})",
                dsn=self.masked_dsn,
                sqlstate=exc.sqlstate,
            )
        return StoreUnavailableError(
            f"cannot reach the durablenb store at {self.masked_dsn!r}: {scrub(detail, self.dsn)}",
            dsn=self.masked_dsn,
        )

    def _denied(self, detail: str) -> StorePermissionError:
        """A statement refused for lack of rights: which schema, which role, who owns it and
        how to get access, with the server's one-line reason and no SQL."""
        schema = getattr(self, "schema", None) or "?"
        access = self.schema_access
        if access is not None:  # the rights may have changed since connecting: ask again
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    access = inspect_access(conn, schema)
            except psycopg.Error:
                pass
        return denied(access, detail, self.masked_dsn, schema, self.role)

    @contextlib.contextmanager
    def _guard(self, conn: psycopg.Connection | None = None, *, user: bool = False) -> Iterator[None]:
        """Turn a lost connection, an unusable pool or a failed statement of the store into
        `StoreUnavailableError`. With *user* (a transaction's body runs inside) only a lost
        connection is; the body's SQL errors pass through as raised."""
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
        except psycopg.Error as exc:
            if user and not is_disconnect(exc, conn):
                raise
            raise self._unavailable(exc) from exc

    def _on_cancel(self, key: int) -> None:
        with self._cancel_lock:
            self._heard.add(key)

    def is_cancelled(self, workflow_id: str) -> bool:
        """True once a cancel of *workflow_id* has been seen on any connection.

        A notification only says that a workflow with this lock key may have been cancelled:
        any role on the server can send one, so the record decides (one query, only for a
        workflow a notification named)."""
        if workflow_id in self._cancelled:
            return True
        if not self._heard:
            return False
        key = self.lock_key(workflow_id)
        if key not in self._heard:
            return False
        try:
            with self.connection() as conn:
                row = conn.execute(self._q.status, [workflow_id]).fetchone()
        except StoreUnavailableError:
            return False  # asked again before the next step
        with self._cancel_lock:
            self._heard.discard(key)
            if row is not None and row[0] == "cancelled":
                self._cancelled.add(workflow_id)
        return workflow_id in self._cancelled

    def clear_cancelled(self, workflow_id: str) -> None:
        with self._cancel_lock:
            self._cancelled.discard(workflow_id)
            self._heard.discard(self.lock_key(workflow_id))

    def _getconn(self) -> psycopg.Connection:
        with self._guard():
            return self.pool.getconn()

    def _putconn(self, conn: psycopg.Connection) -> None:
        self.pool.putconn(conn)

    def _discard(self, conn: psycopg.Connection) -> None:
        conn.close()
        self._putconn(conn)

    def wait_for_connection(self, deadline: float) -> psycopg.Connection:
        """A working pooled connection, retrying with backoff until *deadline* (monotonic)."""
        import time

        delay = 0.05
        while True:
            conn = None
            try:
                conn = self._getconn()
                with self._guard(conn):
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

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled autocommit connection."""
        with self._guard(), self.pool.connection() as conn:
            yield conn

    @contextlib.contextmanager
    def transaction(self, statement_timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A pooled connection inside one transaction, committed when the block ends; its
        statements are cancelled after *statement_timeout* seconds each (None: no limit).

        A lost connection is `StoreUnavailableError`; any other error, the body's own SQL
        errors included, passes through as raised and rolls the transaction back.
        """
        conn = self._getconn()  # an exhausted or closed pool is StoreUnavailableError too
        try:
            with self._guard(conn, user=True), conn.transaction():
                if statement_timeout is not None:
                    conn.execute("SELECT set_config('statement_timeout', %s, true)",
                                 [f"{max(int(statement_timeout * 1000), 1)}ms"])  # fmt: skip
                yield conn
        finally:
            self._putconn(conn)

    def lock_key(self, workflow_id: str) -> int:
        """The advisory lock key of *workflow_id* in this schema."""
        digest = hashlib.blake2b(f"{self.schema}\0{workflow_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def lease(self, workflow_id: str, share: Lease | None = None, durability: str | None = None) -> Lease:
        """A connection ready to take *workflow_id*'s lock (see `Lease.begin`); with *share*,
        the connection of that (enclosing) lease. *durability*: of the records it writes
        (default: the store's)."""
        self.drop_ahead(workflow_id)
        return Lease(self, workflow_id, share, durability or self.durability)

    # -- step records ----------------------------------------------------------------------
    def get_step(
        self, workflow_id: str, position: int, conn: psycopg.Connection | None = None
    ) -> StepRecord | None:
        """The record at *position* of *workflow_id*, if any."""
        q = f"SELECT {STEP_COLUMNS} FROM {self.qschema}.steps WHERE workflow_id = %s AND position = %s"
        if conn is not None:
            with self._guard(conn):
                cur = conn.cursor(row_factory=class_row(StepRecord), binary=True)
                return cur.execute(q, [workflow_id, position]).fetchone()
        with self.connection() as c:
            cur = c.cursor(row_factory=class_row(StepRecord), binary=True)
            return cur.execute(q, [workflow_id, position]).fetchone()

    def insert_step_in(
        self, conn: psycopg.Connection, rec: StepRecord, cur: psycopg.Cursor | None = None,
        asynchronous: bool = False,
    ) -> bool:  # fmt: skip
        """Write *rec* on *conn* (inside the caller's transaction, or on *cur*); False when a
        record already held the position. *asynchronous*: the transaction it commits in does
        not wait for its log flush."""
        names, values = rec.filled()
        with self._guard(conn):
            try:
                try:
                    self._q.insert_step_direct(names, asynchronous).run(conn, values)
                except Unsupported:
                    sql = self._q.insert_step(names, asynchronous)
                    (cur or conn.cursor()).execute(sql, values, prepare=True)
            except psycopg.errors.UniqueViolation:  # the only unique key of steps: the position
                return False
            return True

    def insert_steps_in(
        self, conn: psycopg.Connection, recs: list[StepRecord], cur: psycopg.Cursor | None = None,
        asynchronous: bool = False,
    ) -> set[int]:  # fmt: skip
        """Write *recs* (records of one workflow) on *conn* in one statement, so they commit
        together; returns the positions written: all of them, or, when some already held a
        record (another executor's, which wins), the others. *asynchronous*: the commit
        does not wait for its log flush."""
        cur = cur or conn.cursor()
        with self._guard(conn):
            try:
                cur.execute(*self._q.insert_steps(recs, asynchronous), prepare=True)
                return {r.position for r in recs}
            except psycopg.errors.UniqueViolation:  # rolled back whole: write the others
                sql, params = self._q.insert_steps(recs, asynchronous, skip_held=True)
                return {row[0] for row in cur.execute(sql, params, prepare=True).fetchall()}

    def steps_at(
        self, workflow_id: str, positions: list[int], conn: psycopg.Connection
    ) -> dict[int, StepRecord]:
        """The records of *workflow_id* at *positions* that exist, by position."""
        q = (f"SELECT {STEP_COLUMNS} FROM {self.qschema}.steps WHERE workflow_id = %s "
             "AND position = ANY(%s)")  # fmt: skip
        with self._guard(conn):
            cur = conn.cursor(row_factory=class_row(StepRecord), binary=True)
            return {rec.position: rec for rec in cur.execute(q, [workflow_id, positions]).fetchall()}

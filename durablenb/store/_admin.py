"""Store methods for managing workflows and querying the history (mixed into `Store`)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.rows import class_row

from ._lineage import tree_cte
from ._notify import CANCEL_CHANNEL, cancel_payload
from .records import STEP_COLUMNS, TIMED_OUT, WORKFLOW_COLUMNS, StepRecord, WorkflowRow


class AdminMixin:
    """Workflow management and history queries; needs the attributes `Store` sets."""

    qschema: str
    schema: str

    if TYPE_CHECKING:  # provided by Store and LineageMixin

        def connection(self) -> Any: ...

        def lock_key(self, workflow_id: str) -> int: ...

        def clear_cancelled(self, workflow_id: str) -> None: ...

        def _forget_tree(
            self, conn: psycopg.Connection, root: str, unless_running: bool = False
        ) -> tuple[int, list[str]]: ...

        def collect_blobs(self, refs: Iterable[str]) -> int: ...

        def _read_early(self, workflow_id: str, name: str) -> tuple[bool, WorkflowRow | None]: ...

        def drop_ahead(self, workflow_id: str | None = None) -> None: ...

    # -- workflows -------------------------------------------------------------------------
    def get_workflow(self, workflow_id: str) -> WorkflowRow | None:
        """The record of *workflow_id*, if any."""
        with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(WorkflowRow), binary=True)
            return cur.execute(
                f"SELECT {WORKFLOW_COLUMNS} FROM {self.qschema}.workflows WHERE id = %s", [workflow_id]
            ).fetchone()

    def finished(
        self, workflow_id: str, ahead: str | None = None
    ) -> tuple[WorkflowRow, dict[int, StepRecord]] | None:
        """The record and step records of *workflow_id* if it finished (succeeded or failed),
        without its lock: a finished record only changes when a new run takes the lock,
        which a caller that finds something to run does first (`Lease.begin` with *probe*
        says when it is worth asking). *ahead*: the workflow's name, to answer from what
        `read_ahead` read when it knows."""
        if ahead is not None:
            known, early = self._read_early(workflow_id, ahead)
            if known:
                return None if early is None else (early, {})
        s = self.qschema
        with self.connection() as conn:
            # Two queries at most, not a pipeline (see `Lease.load`); one without steps.
            wf = conn.cursor(binary=True)
            found = wf.execute(f"SELECT {WORKFLOW_COLUMNS}, EXISTS (SELECT 1 FROM {s}.steps st "
                               f"WHERE st.workflow_id = w.id) FROM {s}.workflows w WHERE id = %s "
                               "AND status IN ('succeeded', 'failed')", [workflow_id]).fetchone()  # fmt: skip
            if found is None:
                return None
            names = [d.name for d in wf.description or ()][:-1]
            row = WorkflowRow(**dict(zip(names, found[:-1], strict=True)))
            if not found[-1]:
                return row, {}
            st = conn.cursor(row_factory=class_row(StepRecord), binary=True)
            query = (f"SELECT {STEP_COLUMNS} FROM {s}.steps WHERE workflow_id = %(id)s AND EXISTS "
                     f"(SELECT 1 FROM {s}.workflows f WHERE f.id = %(id)s AND f.status IN "
                     "('succeeded', 'failed')) ORDER BY position")  # fmt: skip
            steps = st.execute(query, {"id": workflow_id}).fetchall()
        return row, {rec.position: rec for rec in steps}

    def get_steps(self, workflow_id: str) -> dict[int, StepRecord]:
        """Every step record of *workflow_id*, by position."""
        with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(StepRecord), binary=True)
            rows = cur.execute(
                f"SELECT {STEP_COLUMNS} FROM {self.qschema}.steps WHERE workflow_id = %s "
                "ORDER BY position",
                [workflow_id],
            ).fetchall()
        return {r.position: r for r in rows}

    def held_keys(self) -> set[int]:
        """Advisory lock keys held right now by any session on this database."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks "
                "WHERE locktype = 'advisory' AND objsubid = 1 AND granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ).fetchall()
        out = set()
        for (k,) in rows:
            out.add(k - (1 << 64) if k >= (1 << 63) else k)
        return out

    def recoverable(self) -> list[WorkflowRow]:
        """Workflows recorded as running that resume on their own: top-level ones, and
        children whose parent is not running (started with `dnb.start` by a parent that has
        finished since); children of a running parent resume with it."""
        s = self.qschema
        cols = ", ".join(f"w.{c}" for c in WORKFLOW_COLUMNS.split(", "))
        with self.connection() as conn:
            cur = conn.cursor(row_factory=class_row(WorkflowRow), binary=True)
            return cur.execute(
                f"SELECT {cols} FROM {s}.workflows w LEFT JOIN {s}.workflows p ON p.id = w.parent_id "
                "WHERE w.status = 'running' AND (p.id IS NULL OR p.status <> 'running') "
                "ORDER BY w.created_at"
            ).fetchall()

    def is_held(self, workflow_id: str) -> bool:
        """True while some executor holds *workflow_id*."""
        return self.lock_key(workflow_id) in self.held_keys()

    def cancel(self, workflow_id: str, reason: str | None = None) -> list[str]:
        """Mark *workflow_id* and its running descendants cancelled and tell their executors;
        returns the ids cancelled (empty when none was running: the cancel came too late).
        *reason*: a timeout's, recorded as a `WorkflowTimeoutError` of *workflow_id*."""
        self.drop_ahead()
        s = self.qschema
        timeout = TIMED_OUT if reason else None
        with self.connection() as conn, conn.transaction():
            rows = conn.execute(
                f"{tree_cte(s)} UPDATE {s}.workflows SET status = 'cancelled', "
                "updated_at = clock_timestamp(), finished_at = clock_timestamp(), "
                "error_type = CASE WHEN id = %(id)s THEN %(type)s END, "
                "error_message = CASE WHEN id = %(id)s THEN %(why)s END "
                "WHERE id IN (SELECT id FROM tree) AND status = 'running' RETURNING id",
                {"id": workflow_id, "type": timeout, "why": reason},
            ).fetchall()
            for (wid,) in rows:
                payload = cancel_payload(self.schema, self.lock_key(wid))  # no schema name, no id
                conn.execute("SELECT pg_notify(%s, %s)", [CANCEL_CHANNEL, payload])
        return [wid for (wid,) in rows]

    def reopen(self, workflow_id: str) -> None:
        """Make a cancelled or failed workflow, and its cancelled or failed descendants,
        runnable again, dropping their recorded step failures."""
        self.drop_ahead()
        s = self.qschema
        with self.connection() as conn, conn.transaction():
            ids = [r[0] for r in conn.execute(
                f"{tree_cte(s)} UPDATE {s}.workflows SET status = 'running', error = NULL, "
                "error_type = NULL, error_message = NULL, error_traceback = NULL, "
                "finished_at = NULL, deadline = NULL, updated_at = clock_timestamp() "
                "WHERE id IN (SELECT id FROM tree) AND status IN ('cancelled', 'failed') RETURNING id",
                {"id": workflow_id},
            ).fetchall()]  # fmt: skip
            conn.execute(
                f"DELETE FROM {s}.steps WHERE workflow_id = ANY(%s) AND status = 'failed'", [ids]
            )
        for wid in ids:
            self.clear_cancelled(wid)

    def forget(self, workflow_id: str) -> int:
        """Delete *workflow_id*, its descendants and archived runs, and the blobs nothing
        else holds; returns workflows removed."""
        self.drop_ahead()
        with self.connection() as conn, conn.transaction():
            removed, refs = self._forget_tree(conn, workflow_id)
        self.collect_blobs(refs)  # after the commit: a crash here leaves work for the sweep
        return removed

    def forget_older_than(self, seconds: float) -> int:
        """Delete finished top-level workflows last updated more than *seconds* ago, with
        their descendants and archived runs, unless one of those is still running."""
        self.drop_ahead()
        refs: list[str] = []
        removed = 0
        with self.connection() as conn, conn.transaction():
            ids = conn.execute(
                f"SELECT id FROM {self.qschema}.workflows WHERE parent_id IS NULL "
                "AND status <> 'running' AND updated_at < clock_timestamp() - make_interval(secs => %s)",
                [seconds],
            ).fetchall()
            for (wid,) in ids:
                n, held = self._forget_tree(conn, wid, unless_running=True)
                removed += n
                refs += held
            conn.execute(  # records left by a workflow forgotten while it ran (force)
                f"DELETE FROM {self.qschema}.steps st WHERE NOT EXISTS "
                f"(SELECT 1 FROM {self.qschema}.workflows w WHERE w.id = st.workflow_id)"
            )
        self.collect_blobs(refs)
        return removed

    def set_step_code_hash(self, workflow_id: str, positions: list[int], code_hash: str | None) -> int:
        """Overwrite the code hash recorded for steps at *positions*; returns how many."""
        self.drop_ahead()
        with self.connection() as conn:
            cur = conn.execute(
                f"UPDATE {self.qschema}.steps SET code_hash = %s "
                "WHERE workflow_id = %s AND position = ANY(%s)",
                [code_hash, workflow_id, list(positions)],
            )
            return cur.rowcount

    def status_counts(self) -> dict[str, int]:
        """How many workflows are recorded in each status."""
        with self.connection() as conn:
            rows = conn.execute(
                f"SELECT status, count(*) FROM {self.qschema}.workflows GROUP BY status"
            ).fetchall()
        return {k: int(v) for k, v in rows}

    def recent_ids(self, prefix: str = "", limit: int = 200) -> list[str]:
        """Ids of the most recently updated workflows starting with *prefix* (completion)."""
        with self.connection() as conn:
            rows = conn.execute(
                f"SELECT id FROM {self.qschema}.workflows WHERE left(id, %s) = %s "
                "ORDER BY updated_at DESC LIMIT %s",
                [len(prefix), prefix, limit],
            ).fetchall()
        return [r[0] for r in rows]

    # -- queries for history ---------------------------------------------------------------
    def query_workflows(
        self,
        status: str | list[str] | None = None,
        name: str | None = None,
        since: Any = None,
        limit: int | None = 100,
        until: Any = None,
        notebook: str | None = None,
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Workflow rows with step counts, newest first: ``(columns, rows)``."""
        s = self.qschema
        where: list[str] = []
        params: list[Any] = []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            where.append("w.status = ANY(%s)")
            params.append(statuses)
        if name is not None:
            where.append("w.name = %s")
            params.append(name)
        if since is not None:
            where.append("w.created_at >= %s")
            params.append(since)
        if until is not None:
            where.append("w.created_at < %s")
            params.append(until)
        if notebook is not None:
            where.append("w.notebook = %s")
            params.append(notebook)
        sql_where = ("WHERE " + " AND ".join(where)) if where else ""
        sql_limit = ""
        if limit is not None:
            sql_limit = "LIMIT %s"
            params.append(int(limit))
        q = (
            "SELECT w.id, w.name, w.status, w.created_at, w.updated_at, w.finished_at, "
            "w.executor, w.runs, w.parent_id, w.forked_from, w.error_type, w.error_message, "
            "coalesce(c.n, 0), coalesce(c.failed, 0), w.notebook "
            f"FROM {s}.workflows w LEFT JOIN LATERAL (SELECT count(*) AS n, "
            "count(*) FILTER (WHERE st.status = 'failed') AS failed "
            f"FROM {s}.steps st WHERE st.workflow_id = w.id) c ON true "
            f"{sql_where} ORDER BY w.created_at DESC, w.id {sql_limit}"
        )
        cols = [
            "workflow_id", "name", "status", "created_at", "updated_at", "finished_at",
            "executor", "runs", "parent_id", "forked_from", "error_type", "error_message",
            "steps", "failed_steps", "notebook",
        ]  # fmt: skip
        with self.connection() as conn:
            rows = conn.execute(q, params).fetchall()
        return cols, rows

    def query_steps(self, workflow_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Step rows of *workflow_id* in position order: ``(columns, rows)``."""
        q = (
            "SELECT s.workflow_id, s.position, s.name, s.label, s.kind, "
            "CASE WHEN s.status = 'failed' THEN 'failed' "
            "WHEN s.finished_at < w.run_started_at THEN 'replayed' "
            "WHEN s.attempts > 1 THEN 'retried' ELSE 'succeeded' END, "
            "s.started_at, s.finished_at, s.attempts, s.output_bytes, s.codec, s.error_type, "
            "s.error_message, s.child_id, s.code_hash "
            f"FROM {self.qschema}.steps s JOIN {self.qschema}.workflows w ON w.id = s.workflow_id "
            "WHERE s.workflow_id = %s ORDER BY s.position"
        )
        cols = [
            "workflow_id", "position", "name", "label", "kind", "status", "started_at",
            "finished_at", "attempts", "output_bytes", "codec", "error_type", "error_message",
            "child_id", "code_hash",
        ]  # fmt: skip
        with self.connection() as conn:
            rows = conn.execute(q, [workflow_id]).fetchall()
        return cols, rows

"""Store methods that copy or move runs: archives of earlier runs, forks, truncation.

Relations between workflows are kept in columns: a child's ``parent_id``, an archived run's
``archive_of``, a fork's ``forked_from``; ids are names only, never parsed to find relations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg

from .records import StepRecord, WorkflowRow, columns


def tree_cte(s: str, through: str = "c.parent_id = t.id") -> str:
    """A recursive CTE ``tree(id)``: the workflow ``%(id)s`` and those linked below it
    *through* a join condition on ``c`` (a candidate) and ``t`` (one already in the tree)."""
    return (
        f"WITH RECURSIVE tree(id, depth) AS (SELECT id, 0 FROM {s}.workflows WHERE id = %(id)s "
        f"UNION ALL SELECT c.id, t.depth + 1 FROM {s}.workflows c JOIN tree t ON {through} "
        "WHERE t.depth < 1000) "
    )


# Columns copied as they are when a run is archived or forked.
_WF_COPIED = [c for c in columns(WorkflowRow) if c not in ("id", "status", "archive_of", "lineage_id")]
_STEP_COPIED = [c for c in columns(StepRecord) if c != "workflow_id"]


class LineageMixin:
    """Archives, forks and truncation; needs the attributes `Store` sets."""

    qschema: str

    if TYPE_CHECKING:  # provided by Store

        def connection(self) -> Any: ...

        def drop_ahead(self, workflow_id: str | None = None) -> None: ...

    def _subtree(self, conn: psycopg.Connection, root: str) -> list[tuple[str, str | None]]:
        """``(id, parent_id)`` of *root* and its descendants through ``parent_id``, parents first."""
        s = self.qschema
        return conn.execute(
            f"WITH RECURSIVE tree(id, parent_id, depth) AS ("
            f" SELECT id, parent_id, 0 FROM {s}.workflows WHERE id = %s"
            f" UNION ALL SELECT c.id, c.parent_id, t.depth + 1 FROM {s}.workflows c"
            "  JOIN tree t ON c.parent_id = t.id WHERE t.depth < 1000)"
            " SELECT id, parent_id FROM tree ORDER BY depth",
            [root],
        ).fetchall()

    def _next_archive_id(self, conn: psycopg.Connection, workflow_id: str) -> str:
        """``ID~N`` with N one more than this workflow's archives, skipping taken ids."""
        s = self.qschema
        row = conn.execute(
            f"SELECT count(*) FROM {s}.workflows WHERE archive_of = %s", [workflow_id]
        ).fetchone()
        n = int(row[0]) if row else 0
        while True:
            n += 1
            candidate = f"{workflow_id}~{n}"
            if not conn.execute(f"SELECT 1 FROM {s}.workflows WHERE id = %s", [candidate]).fetchone():
                return candidate

    def _archive_txn(self, conn: psycopg.Connection, workflow_id: str) -> str:
        """Copy *workflow_id* and its step records to a new id with status superseded."""
        aid = self._next_archive_id(conn, workflow_id)
        s = self.qschema
        cols = ", ".join(_WF_COPIED)
        conn.execute(
            f"INSERT INTO {s}.workflows (id, status, archive_of, lineage_id, {cols}) "
            f"SELECT %s, 'superseded', id, coalesce(lineage_id, id), {cols} "
            f"FROM {s}.workflows WHERE id = %s",
            [aid, workflow_id],
        )
        scols = ", ".join(_STEP_COPIED)
        conn.execute(
            f"INSERT INTO {s}.steps (workflow_id, {scols}) "
            f"SELECT %s, {scols} FROM {s}.steps WHERE workflow_id = %s",
            [aid, workflow_id],
        )
        self._copy_holds(conn, workflow_id, aid)
        conn.execute(f"UPDATE {s}.workflows SET forked_from = %s WHERE id = %s", [aid, workflow_id])
        return aid

    def _copy_holds(self, conn: psycopg.Connection, source: str, target: str) -> None:
        """*target* holds every blob *source* holds (its records were copied)."""
        s = self.qschema
        conn.execute(
            f"INSERT INTO {s}.blob_refs (workflow_id, ref) SELECT %s, ref FROM {s}.blob_refs "
            "WHERE workflow_id = %s ON CONFLICT DO NOTHING",
            [target, source],
        )

    def _truncate_txn(
        self, conn: psycopg.Connection, workflow_id: str, position: int, archive_id: str | None
    ) -> None:
        """Drop step records at *position* and after; this workflow's children recorded there
        move under *archive_id* (or are forgotten without one)."""
        s = self.qschema
        children = conn.execute(
            f"SELECT c.id FROM {s}.steps st JOIN {s}.workflows c ON c.id = st.child_id "
            "WHERE st.workflow_id = %s AND st.position >= %s AND c.parent_id = %s",
            [workflow_id, position, workflow_id],
        ).fetchall()
        for (child,) in children:
            if archive_id is None:
                self._forget_tree(conn, child)  # its blobs go at the next sweep
            else:
                self._move_tree(conn, child, workflow_id, archive_id)
        conn.execute(
            f"DELETE FROM {s}.steps WHERE workflow_id = %s AND position >= %s",
            [workflow_id, position],
        )

    def _move_tree(self, conn: psycopg.Connection, child: str, old_parent: str, new_parent: str) -> None:
        """Re-parent *child* (and rename it and its descendants, when their ids were derived
        from their parent's) under *new_parent*."""
        s = self.qschema
        renamed: dict[str, str] = {old_parent: new_parent}
        for wid, parent in self._subtree(conn, child):
            assert parent is not None
            old_p, new_p = parent, renamed.get(parent, parent)
            new = new_p + wid[len(old_p):] if wid.startswith(old_p + "/") else wid
            renamed[wid] = new
            conn.execute(
                f"UPDATE {s}.workflows SET id = %s, parent_id = %s WHERE id = %s", [new, new_p, wid]
            )
            if new != wid:
                conn.execute(f"UPDATE {s}.steps SET workflow_id = %s WHERE workflow_id = %s", [new, wid])
                conn.execute(f"UPDATE {s}.steps SET child_id = %s WHERE child_id = %s", [new, wid])
                conn.execute(f"UPDATE {s}.blob_refs SET workflow_id = %s WHERE workflow_id = %s",
                             [new, wid])  # fmt: skip

    def _forget_tree(
        self, conn: psycopg.Connection, root: str, unless_running: bool = False
    ) -> tuple[int, list[str]]:
        """Delete *root*, its descendants and its archived runs (with theirs), their step
        records and their holds on blobs: ``(workflows removed, blobs they held)``.
        *unless_running*: nothing when one of them is running."""
        s = self.qschema
        rows = conn.execute(
            f"{tree_cte(s, 'c.parent_id = t.id OR c.archive_of = t.id')} SELECT w.id, w.status "
            f"FROM {s}.workflows w WHERE w.id IN (SELECT id FROM tree) FOR UPDATE",
            {"id": root},
        ).fetchall()
        if unless_running and any(status == "running" for _, status in rows):
            return 0, []
        ids = [wid for wid, _ in rows]
        refs = [r[0] for r in conn.execute(
            f"DELETE FROM {s}.blob_refs WHERE workflow_id = ANY(%s) RETURNING ref", [ids]
        ).fetchall()]  # fmt: skip
        conn.execute(f"DELETE FROM {s}.steps WHERE workflow_id = ANY(%s)", [ids])
        return conn.execute(f"DELETE FROM {s}.workflows WHERE id = ANY(%s)", [ids]).rowcount, refs

    def fork(self, source_id: str, new_id: str, upto_position: int, executor: str) -> None:
        """Create *new_id* from *source_id*'s inputs and its step records before *upto_position*."""
        self.drop_ahead()
        s = self.qschema
        with self.connection() as conn, conn.transaction():
            cur = conn.execute(
                f"INSERT INTO {s}.workflows (id, name, status, args_digest, inputs, inputs_codec, "
                "inputs_checksum, inputs_blob, code_hash, executor, forked_from, runs, lineage_id, "
                "notebook) SELECT %s, name, 'running', args_digest, inputs, inputs_codec, "
                "inputs_checksum, inputs_blob, code_hash, %s, id, 0, coalesce(lineage_id, id), "
                f"notebook FROM {s}.workflows "
                "WHERE id = %s",
                [new_id, executor, source_id],
            )
            if cur.rowcount != 1:
                raise KeyError(source_id)
            scols = ", ".join(_STEP_COPIED)
            conn.execute(
                f"INSERT INTO {s}.steps (workflow_id, {scols}) SELECT %s, {scols} FROM {s}.steps "
                "WHERE workflow_id = %s AND position < %s",
                [new_id, source_id, upto_position],
            )
            self._copy_holds(conn, source_id, new_id)

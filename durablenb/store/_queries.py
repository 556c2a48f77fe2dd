"""The store's SQL text, with the schema name filled in once per store: the statements of a
workflow's begin and finish and of step records, as text for a cursor and as `Statement`s
of the libpq path (`_direct`)."""

from __future__ import annotations

from ._batch import BatchInsert
from ._direct import STEP_TYPES, TEXT, WORKFLOW_TYPES, Statement


class Queries:
    """SQL text with the schema name filled in once."""

    def __init__(self, qschema: str) -> None:
        s = self.s = qschema
        self.begin = self._begin(child=False)
        self.begin_child = self._begin(child=True)
        self._inserts: dict[tuple[tuple[str, ...], bool], str] = {}
        self._direct_inserts: dict[tuple[tuple[str, ...], bool], Statement] = {}
        #: INSERTs of many step records at once (`BatchInsert`).
        self.insert_steps = BatchInsert(s)
        self.finish = (
            f"WITH upd AS (UPDATE {s}.workflows SET status = %(status)s, output = %(output)b, "
            "output_codec = %(codec)s, output_checksum = %(checksum)s, error = %(error)b, "
            "error_type = %(error_type)s, error_message = %(error_message)s, "
            "error_traceback = %(error_traceback)s, output_blob = %(blob)s, "
            "updated_at = clock_timestamp(), "
            "finished_at = clock_timestamp() WHERE id = %(id)s AND status = 'running' RETURNING 1) "
            # A transaction-level hold on the same key keeps the workflow locked until this
            # statement commits, so the session lock can be let go in the same round trip.
            "SELECT (SELECT count(*) FROM upd), "
            "CASE WHEN pg_try_advisory_xact_lock(%(key)s) THEN pg_advisory_unlock(%(key)s) END"
        )
        self.status = f"SELECT status FROM {s}.workflows WHERE id = %s"
        self.begin_direct = Statement(self.begin, WORKFLOW_TYPES)
        self.begin_child_direct = Statement(self.begin_child, WORKFLOW_TYPES)
        self.finish_direct = Statement(self.finish, WORKFLOW_TYPES)

    def _begin(self, child: bool) -> str:
        """Take the lock and insert the workflow row if absent, in one statement.

        The row may commit asynchronously (see docs/design.md): WAL order makes it durable no
        later than the first step record. With ``probe`` true a finished workflow is neither
        locked nor touched (the lock column is NULL), so its recorded outcome can be read
        without a lock. A child created after its parent was cancelled
        starts cancelled (only children pay for that check).
        """
        s = self.s
        mode = "coalesce(%(commit_mode)s, current_setting('synchronous_commit'))"
        status = (
            f"CASE WHEN EXISTS (SELECT 1 FROM {s}.workflows p WHERE p.id = %(parent_id)s "
            "AND p.status = 'cancelled') THEN 'cancelled' ELSE 'running' END" if child else "'running'"
        )  # fmt: skip
        return (
            f"WITH cfg AS (SELECT set_config('synchronous_commit', {mode}, true) AS v), "
            # probe: a finished workflow is not locked (got is NULL): its outcome may stand
            "lk AS (SELECT CASE WHEN %(probe)s AND EXISTS (SELECT 1 FROM "
            f"{s}.workflows e WHERE e.id = %(id)s AND e.status IN ('succeeded', 'failed')) "
            "THEN NULL ELSE pg_try_advisory_lock(%(key)s) END AS got), "
            f"ins AS (INSERT INTO {s}.workflows (id, name, status, args_digest, inputs, "
            "inputs_codec, inputs_checksum, code_hash, executor, parent_id, parent_position, "
            "forked_from, run_started_at, inputs_blob, lineage_id, notebook) "
            f"SELECT %(id)s, %(name)s, {status}, "
            "%(args_digest)s, %(inputs)b, %(inputs_codec)s, %(inputs_checksum)s, %(code_hash)s, "
            "%(executor)s, %(parent_id)s, %(parent_position)s, %(forked_from)s, "
            "to_timestamp(%(started)s), %(inputs_blob)s, %(id)s, %(notebook)s "
            # Only the lock's holder inserts, so no other insert of this id can race this
            # one: NOT EXISTS does what ON CONFLICT would, without a speculative insertion.
            f"FROM lk WHERE lk.got AND NOT EXISTS (SELECT 1 FROM {s}.workflows w WHERE w.id = %(id)s) "
            "RETURNING status) "
            "SELECT lk.got, (SELECT status FROM ins), (SELECT v FROM cfg) FROM lk"
        )

    def insert_step(self, names: tuple[str, ...], asynchronous: bool = False) -> str:
        """The INSERT of a step record with the columns *names* (its non-NULL fields: fewer
        parameters to send and store); one statement text per set, prepared on first use.

        A plain INSERT: a record already at the position (another executor's, which wins) is
        a unique violation, rare, and cheaper to handle than a speculative insertion
        (ON CONFLICT) on every record. *asynchronous*: the statement's own transaction
        commits without waiting for its log flush (``synchronous_commit = off`` set for that
        transaction alone, in the same statement)."""
        key = (names, asynchronous)
        sql = self._inserts.get(key)
        if sql is None:
            values = ", ".join(
                "to_timestamp(%s)" if c.endswith("_at") else "%b" if c in ("output", "error") else "%s"
                for c in names
            )
            into = f"INSERT INTO {self.s}.steps ({', '.join(names)})"
            if asynchronous:
                sql = (f"WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)) "
                       f"{into} SELECT {values} FROM cfg")  # fmt: skip
            else:
                sql = f"{into} VALUES ({values})"
            self._inserts[key] = sql
        return sql

    def insert_step_direct(self, names: tuple[str, ...], asynchronous: bool = False) -> Statement:
        """`insert_step` as a `Statement` of the libpq path (`_direct`)."""
        key = (names, asynchronous)
        found = self._direct_inserts.get(key)
        if found is None:
            types = [STEP_TYPES.get(n, TEXT) for n in names]
            found = self._direct_inserts[key] = Statement(self.insert_step(names, asynchronous), types)
        return found

"""The INSERT of many step records in one statement (the group commit of `dnb.map` items).

``INSERT … SELECT … FROM unnest(arrays)``: a column that holds one value in every record
is sent once, a column NULL in all of them not at all, the others as one array each; one
statement, one round trip, one commit. `bench/map_throughput.py` compares it with a
multi-row VALUES list (twice the client's time: a parameter per value) and with COPY (into
the table itself, or a temporary one and INSERT … SELECT), which needs more round trips,
and a transaction of its own under ``kernel`` durability, for no faster a write.

A plain INSERT, as for one record: a position already recorded (another executor's record,
which wins) is a unique violation that fails the whole statement, rare, and cheaper than a
speculative insertion on every row. The writer then sends the same rows with ``ON CONFLICT
DO NOTHING RETURNING position`` (*skip_held*), which skips those positions and lists the
ones written.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .records import StepRecord

#: The SQL type of each step column in a batch; times travel as epoch seconds.
STEP_TYPES = {
    "workflow_id": "text", "position": "int4", "name": "text", "kind": "text", "status": "text",
    "output": "bytea", "codec": "text", "checksum": "int8", "output_bytes": "int8", "error": "bytea",
    "error_type": "text", "error_message": "text", "error_traceback": "text", "attempts": "int4",
    "code_hash": "text", "child_id": "text", "started_at": "float8", "finished_at": "float8",
    "blob": "text", "label": "text",
}  # fmt: skip

Shape = tuple[tuple[str, bool], ...]


class BatchInsert:
    """Builds the statement for a batch of step records in the schema *qschema*; one text per
    shape (which columns are sent, each once or as an array), kept and prepared on first use."""

    def __init__(self, qschema: str) -> None:
        self.s = qschema
        self._texts: dict[tuple[Shape, bool, bool], str] = {}

    def __call__(
        self, recs: list[StepRecord], asynchronous: bool, skip_held: bool = False
    ) -> tuple[str, list[Any]]:
        """The statement writing *recs* and its parameters. *asynchronous*: its commit does not
        wait for its log flush; *skip_held*: skip positions that hold a record already."""
        n = len(recs)
        shape, consts, arrays = [], [], []
        for name in STEP_TYPES:
            col = [getattr(r, name) for r in recs]
            first = col[0]
            if first is None and col.count(None) == n:
                continue
            if name.endswith("_at"):
                col = [v.timestamp() if isinstance(v, datetime) else v for v in col]
                first = col[0]
            same = col.count(first) == n
            shape.append((name, same))
            if same:
                consts.append(first)
            else:
                arrays.append(col)
        key = (tuple(shape), asynchronous, skip_held)
        sql = self._texts.get(key)
        if sql is None:
            sql = self._texts[key] = self._text(*key)
        return sql, consts + arrays

    def _text(self, shape: Shape, asynchronous: bool, skip_held: bool) -> str:
        values, unnest = [], []
        for name, same in shape:
            if not same:
                unnest.append(name)
            value = f"%b::{STEP_TYPES[name]}" if same else f"u.{name}"
            values.append(f"to_timestamp({value})" if name.endswith("_at") else value)
        # The transaction of this one statement commits without waiting for its log flush.
        sources = ["(SELECT set_config('synchronous_commit', 'off', true)) cfg"] if asynchronous else []
        if unnest:
            arrays = ", ".join(f"%b::{STEP_TYPES[name]}[]" for name in unnest)
            sources.append(f"unnest({arrays}) AS u({', '.join(unnest)})")
        source = f" FROM {', '.join(sources)}" if sources else ""
        skip = " ON CONFLICT (workflow_id, position) DO NOTHING RETURNING position" if skip_held else ""
        return (f"INSERT INTO {self.s}.steps ({', '.join(name for name, _ in shape)}) "
                f"SELECT {', '.join(values)}{source}{skip}")  # fmt: skip

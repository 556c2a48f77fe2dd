"""The INSERT of many step records in one statement (the group commit of `dnb.map` items).

``INSERT … SELECT … FROM unnest(arrays)``: a column that holds one value in every record
is sent once, a column NULL in all of them not at all, the others as one array each; one
statement, one round trip, one commit. `bench/batch_writes.py` compares it with a
multi-row VALUES list (over ten times the client's time: a parameter per value) and with
COPY (into the table itself, or a temporary one and INSERT … SELECT), which needs more
round trips, and a transaction of its own under ``kernel`` durability, for a slower write.

A plain INSERT, as for one record: a position already recorded (another executor's record,
which wins) is a unique violation that fails the whole statement, rare, and cheaper than a
speculative insertion on every row. The writer then sends the same rows with ``ON CONFLICT
DO NOTHING RETURNING position`` (*skip_held*), which skips those positions and lists the
ones written.
"""

from __future__ import annotations

import struct
from datetime import datetime
from itertools import chain, repeat
from operator import attrgetter
from typing import Any

import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format

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

_NAMES = tuple(STEP_TYPES)
_ROW = attrgetter(*_NAMES)  # a record's values, in the order of STEP_TYPES


class _Array(list):
    """The values of one column, sent as a binary array of its SQL type (`_ArrayDumper`)."""

    __slots__ = ()
    elem_oid = 0
    array_oid = 0
    fixed = ""  # struct code of a fixed-size element type; "" for text and bytea


def _array_type(name: str, elem_oid: int, array_oid: int, fixed: str) -> type[_Array]:
    return type(name, (_Array,), {"__slots__": (), "elem_oid": elem_oid, "array_oid": array_oid,
                                  "fixed": fixed})  # fmt: skip


#: Column classes by SQL type (the OIDs are PostgreSQL's built-in ones).
_ARRAYS = {
    "int4": _array_type("Int4Array", 23, 1007, "i"),
    "int8": _array_type("Int8Array", 20, 1016, "q"),
    "float8": _array_type("Float8Array", 701, 1022, "d"),
    "text": _array_type("TextArray", 25, 1009, ""),
    "bytea": _array_type("ByteaArray", 17, 1001, ""),
}
_LEN = struct.Struct(">i").pack
_NULL = _LEN(-1)


class _ArrayDumper(Dumper):
    """A one-dimensional binary array in a few C calls, where psycopg's own list dumper
    packs element by element in Python (a batch's columns are most of its client time)."""

    format = Format.BINARY

    def __init__(self, cls: type, context: Any = None) -> None:
        super().__init__(cls, context)
        self.oid = cls.array_oid  # type: ignore[attr-defined]

    def dump(self, obj: Any) -> bytes:
        n = len(obj)
        nulls = obj.count(None)
        head = struct.pack(">iiIii", 1, 1 if nulls else 0, obj.elem_oid, n, 1)
        if obj.fixed and not nulls:
            size = struct.calcsize(obj.fixed)
            values = chain.from_iterable(zip(repeat(size), obj))  # (length, value) per element
            return head + struct.pack(">" + ("i" + obj.fixed) * n, *values)
        parts = [head]
        for v in obj:
            if v is None:
                parts.append(_NULL)
                continue
            if obj.fixed:
                data = struct.pack(">" + obj.fixed, v)
            else:
                data = v.encode() if isinstance(v, str) else bytes(v)
            parts.append(_LEN(len(data)))
            parts.append(data)
        return b"".join(parts)


for _cls in _ARRAYS.values():
    psycopg.adapters.register_dumper(_cls, _ArrayDumper)


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
        for name, col in zip(_NAMES, zip(*map(_ROW, recs), strict=True), strict=True):
            first = col[0]
            if first is None and col.count(None) == n:
                continue
            if name.endswith("_at"):
                col = tuple(v.timestamp() if isinstance(v, datetime) else v for v in col)
                first = col[0]
            same = col[-1] == first and col.count(first) == n  # most columns differ at once
            shape.append((name, same))
            if same:
                consts.append(first)
            else:
                arrays.append(_ARRAYS[STEP_TYPES[name]](col))
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

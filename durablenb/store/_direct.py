"""The hot statements (a workflow's begin, a step's record, the finish), sent through
psycopg's libpq layer (`Connection.pgconn`) as named prepared statements.

A step record costs a round trip and, under ``kernel`` durability, little else; psycopg's
cursor adds about 20 µs a statement in Python (adapting each parameter, its prepared
statement bookkeeping, building a result set). These statements have fixed parameter
types, so their parameters are written straight into PostgreSQL's text form (``bytea`` in
binary) and the statement is prepared once per connection with those types. The query is
sent and its results read by psycopg's own generators through `Connection.wait`, so it
waits without holding the interpreter lock and Ctrl-C still cancels it on the server;
errors are psycopg's exceptions, as from a cursor. A value of a type not listed here makes
the caller use the cursor instead (`Unsupported`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import generators, pq

#: PostgreSQL type oids of the parameters.
TEXT, INT8, FLOAT8, BYTEA, BOOL = 25, 20, 701, 17, 16

#: Parameter types of the step INSERT (by column) and of a workflow's begin and finish (by
#: parameter name); any other parameter is text.
STEP_TYPES = {"position": INT8, "attempts": INT8, "checksum": INT8, "output_bytes": INT8,
              "started_at": FLOAT8, "finished_at": FLOAT8, "output": BYTEA, "error": BYTEA}  # fmt: skip
WORKFLOW_TYPES = {"key": INT8, "started": FLOAT8, "inputs_checksum": INT8, "parent_position": INT8,
                  "checksum": INT8, "inputs": BYTEA, "output": BYTEA, "error": BYTEA,
                  "probe": BOOL}  # fmt: skip

_PLACEHOLDER = re.compile(r"%\((\w+)\)([sb])|%([sb])")


Values = Mapping[str, Any] | Sequence[Any]


class Unsupported(Exception):
    """A parameter this path does not write: use a cursor."""


def _text(value: Any, oid: int) -> bytes:
    if oid == TEXT:
        if not isinstance(value, str):
            raise Unsupported
        if "\x00" in value:  # libpq's text parameters end at a NUL: refuse as psycopg does
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode()
    if oid == INT8 and isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    if oid == FLOAT8 and isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value)).encode()
    if oid == FLOAT8 and isinstance(value, dt.datetime) and value.tzinfo is not None:
        return repr(value.timestamp()).encode()
    if oid == BOOL and isinstance(value, bool):
        return b"t" if value else b"f"
    raise Unsupported


class Statement:
    """One statement in psycopg's ``%s``/``%b`` (or ``%(name)s``) style, with the type of
    each parameter: *types* by name, or in order for positional placeholders."""

    def __init__(self, sql: str, types: Mapping[str, int] | Sequence[int]) -> None:
        names: list[str] = []
        binary: list[bool] = []
        seen: dict[str, int] = {}

        def number(m: re.Match[str]) -> str:
            key = m.group(1) if m.group(1) is not None else str(len(names))
            if key not in seen:
                seen[key] = len(names) + 1
                names.append(key)
                binary.append((m.group(2) or m.group(3)) == "b")
            return f"${seen[key]}"

        self.sql = _PLACEHOLDER.sub(number, sql).encode()
        self.keys = names
        self.named = bool(names) and not names[0].isdigit()
        if isinstance(types, Mapping):
            self.oids = [types.get(n, TEXT) for n in names]
        else:
            self.oids = list(types)
        self.formats = [1 if b else 0 for b in binary]
        self.name = b"dnb_" + hashlib.blake2b(self.sql + bytes(str(self.oids), "ascii"),
                                              digest_size=8).hexdigest().encode()  # fmt: skip

    def params(self, values: Values) -> list[bytes | None]:
        """*values* in the wire form of this statement's parameters."""
        ordered = [values[k] for k in self.keys] if self.named else list(values)  # type: ignore[call-overload]
        out: list[bytes | None] = []
        for value, oid, fmt in zip(ordered, self.oids, self.formats, strict=True):
            if value is None:
                out.append(None)
            elif fmt:
                if not isinstance(value, (bytes, bytearray, memoryview)):
                    raise Unsupported
                out.append(bytes(value))
            else:
                out.append(_text(value, oid))
        return out

    def run(self, conn: psycopg.Connection, values: Values) -> list[tuple[str | None, ...]]:
        """Execute on *conn* (autocommit, or inside the caller's transaction); the rows it
        returns, as text (``None`` for NULL). Raises `Unsupported` before sending anything."""
        wire = self.params(values)
        pgconn = conn.pgconn
        prepared = _prepared.setdefault(conn, set())
        with conn.lock:  # as a cursor does: one statement at a time on a connection
            if self.name not in prepared:
                _check(conn, conn.wait(_prepare(pgconn, self)))
                prepared.add(self.name)
            pgconn.send_query_prepared(self.name, wire, self.formats, 0)
            res = conn.wait(generators.execute(pgconn))[-1]
        lost = res.status == pq.ExecStatus.FATAL_ERROR and res.error_field(_SQLSTATE) == b"26000"
        if lost:  # the session dropped it (DISCARD ALL): prepare it again
            prepared.discard(self.name)
            return self.run(conn, values)
        _check(conn, res)
        return [tuple(_decode(res.get_value(r, c)) for c in range(res.nfields)) for r in range(res.ntuples)]


#: The statements prepared on each connection, by name.
_prepared: weakref.WeakKeyDictionary[psycopg.Connection, set[bytes]] = weakref.WeakKeyDictionary()


_SQLSTATE = pq.DiagnosticField.SQLSTATE


def _decode(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _prepare(pgconn: pq.abc.PGconn, stmt: Statement) -> Any:
    pgconn.send_prepare(stmt.name, stmt.sql, stmt.oids)
    results = yield from generators.execute(pgconn)
    return results[-1]


def _check(conn: psycopg.Connection, res: pq.abc.PGresult) -> None:
    if res.status not in (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK):
        raise psycopg.errors.error_from_result(res, encoding=conn.info.encoding)

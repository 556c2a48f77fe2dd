"""The libpq path of the hot statements (`durablenb.store._direct`): the same rows and the
same psycopg errors as a cursor, a session that lost its prepared statements, values it does
not write (the cursor then writes them), and NUL characters refused, never truncated."""

from __future__ import annotations

import datetime as dt

import psycopg
import pytest

from durablenb.store._direct import BYTEA, FLOAT8, INT8, TEXT, Statement, Unsupported


@pytest.fixture
def table(sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".t (k int PRIMARY KEY, name text, data bytea, at timestamptz)')
    return f'"{schema}".t'


def test_placeholders_are_numbered_once_per_name_and_bytes_go_binary():
    stmt = Statement("SELECT %(a)s, %(b)b, %(a)s", {"a": INT8, "b": BYTEA})
    assert stmt.sql == b"SELECT $1, $2, $1"
    assert stmt.oids == [INT8, BYTEA] and stmt.formats == [0, 1]
    assert stmt.params({"a": 7, "b": b"\x00\xff"}) == [b"7", b"\x00\xff"]
    plain = Statement("INSERT INTO t VALUES (%s, %s, %b, to_timestamp(%s))", [INT8, TEXT, BYTEA, FLOAT8])
    assert plain.sql.endswith(b"($1, $2, $3, to_timestamp($4))")


def test_rows_and_errors_are_those_of_a_cursor(sql, table):
    ins = Statement(f"INSERT INTO {table} VALUES (%s, %s, %b, to_timestamp(%s)) RETURNING k, name",
                    [INT8, TEXT, BYTEA, FLOAT8])  # fmt: skip
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.timezone.utc)
    assert ins.run(sql, [1, "ünï", b"\x00\x01", at.timestamp()]) == [("1", "ünï")]
    assert ins.run(sql, [2, None, None, at]) == [("2", None)]  # an aware datetime is a time
    row = sql.execute(f"SELECT name, data, at FROM {table} WHERE k = 1").fetchone()
    assert row == ("ünï", b"\x00\x01", at)
    with pytest.raises(psycopg.errors.UniqueViolation):
        ins.run(sql, [1, "again", None, 0.0])
    sql.execute("DISCARD ALL")  # the session forgets its prepared statements
    assert ins.run(sql, [3, "after", None, 0.0]) == [("3", "after")]


def test_values_it_does_not_write_are_left_to_the_cursor_and_nul_is_refused(sql, table):
    ins = Statement(f"INSERT INTO {table} (k, name) VALUES (%s, %s)", [INT8, TEXT])
    for odd in ([1.5, "x"], [True, "x"], [1, b"bytes"], [1, dt.datetime(2026, 1, 1)]):
        with pytest.raises(Unsupported):
            ins.run(sql, odd)
    with pytest.raises(psycopg.DataError, match="NUL"):
        ins.run(sql, [1, "a\x00b"])
    assert sql.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)


def test_a_connection_that_streamed_still_reads_a_finished_workflow(schema, dsn):
    """psycopg 3.3's pipeline mode fails on a connection that ran `Cursor.stream` (blob
    reads do): the store's reads of records must not depend on which pooled connection
    they get."""
    import durablenb as dnb
    from durablenb.store import Store

    @dnb.step
    def one() -> int:
        return 1

    @dnb.workflow
    def wf() -> int:
        return one()

    with dnb.workflow_id("streamed"):
        assert wf() == 1
    store = Store(dsn, schema=schema, max_size=1)

    def stream() -> None:
        with store.connection() as conn:
            got = list(conn.cursor(binary=True).stream("SELECT generate_series(1, 3)"))
            assert got == [(1,), (2,), (3,)]

    try:
        stream()
        row, steps = store.finished("streamed")
        assert row.status == "succeeded" and [s.name.rsplit(".", 1)[-1] for s in steps.values()] == ["one"]
        stream()
        lease = store.lease("streamed")  # the pool's one connection, which streamed
        try:
            assert lease.load()[0].id == "streamed"
        finally:
            lease.close()
    finally:
        store.close()

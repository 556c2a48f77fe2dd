"""The store: migrations, schema versions, unreachable databases, masked passwords."""

from __future__ import annotations

import psycopg
import pytest

import durablenb as dnb
from durablenb.store import Store, latest_version, mask_dsn


@pytest.mark.parametrize(
    "dsn,masked",
    [
        ("postgresql://ann:s3cret@db:5432/x", "postgresql://ann:***@db:5432/x"),
        ("postgresql://ann@db/x", "postgresql://ann@db/x"),
        ("host=db user=ann password=s3cret dbname=x", "host=db user=ann password=*** dbname=x"),
        ("host=db password='a b\\'c' dbname=x", "host=db password=*** dbname=x"),
        ("postgresql://db/x?user=ann&password=s3cret", "postgresql://db/x?user=ann&password=***"),
    ],
)
def test_mask_dsn(dsn, masked):
    assert mask_dsn(dsn) == masked


def test_unreachable_database_is_a_clear_error_with_the_password_masked():
    dsn = "postgresql://ann:hunter2@127.0.0.1:1/nowhere?connect_timeout=2"
    with pytest.raises(dnb.StoreUnavailableError) as info:
        dnb.connect(dsn)
    text = str(info.value)
    assert "hunter2" not in text and "hunter2" not in repr(info.value)
    assert "127.0.0.1:1" in text and "***" in text
    assert info.value.dsn == mask_dsn(dsn)


def test_migrations_create_the_schema_once(schema, sql, dsn):
    versions = sql.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY 1').fetchall()
    assert versions == [(v,) for v in range(1, latest_version() + 1)]
    again = Store(dsn, schema=schema)  # a second connect migrates nothing
    again.close()
    tables = {r[0] for r in sql.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema])}
    assert {"workflows", "steps", "schema_version"} <= tables


def test_a_newer_schema_is_refused(schema, sql, dsn):
    sql.execute(f'INSERT INTO "{schema}".schema_version (version, name) VALUES (999, \'future\')')
    with pytest.raises(dnb.SchemaVersionError, match="999"):
        Store(dsn, schema=schema)


def test_invalid_schema_name_is_refused(dsn):
    with pytest.raises(ValueError, match="schema"):
        Store(dsn, schema='x"; DROP TABLE y; --')


def test_ids_and_names_with_quotes_are_stored_verbatim(schema):
    @dnb.workflow(name="it's \"quoted\"; DROP TABLE steps; --")
    def odd(x):
        return x

    wid = "id with 'quotes' and \"double\" -- and ; and \\ backslash / slash"
    with dnb.workflow_id(wid):
        assert odd(3) == 3
    with dnb.workflow_id(wid):
        assert odd(3) == 3
    row = dnb.workflows().iloc[0]
    assert row["workflow_id"] == wid and row["name"] == odd.name


def test_corrupt_record_is_detected_by_its_checksum(schema, sql):
    @dnb.step
    def s():
        return {"answer": 42}

    @dnb.workflow
    def wf():
        return s()

    class Boom(BaseException):
        pass

    assert wf() == {"answer": 42}
    # Damage the step record and reopen the workflow so it replays the step.
    sql.execute(f'UPDATE "{schema}".steps SET output = %s', [b'{"answer":43}'])
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")
    with pytest.raises(dnb.CorruptRecordError, match="checksum"):
        wf()
    assert dnb.workflows().loc[0, "status"] == "interrupted"  # nothing recorded as done


def test_records_survive_a_reconnect(schema, dsn):
    @dnb.step
    def s():
        return 5

    @dnb.workflow
    def wf():
        return s()

    assert wf() == 5
    dnb.connect(dsn, schema=schema)
    assert wf() == 5
    with psycopg.connect(dsn) as conn:
        n = conn.execute(f'SELECT count(*) FROM "{schema}".steps').fetchone()[0]
    assert n == 1


def test_exhausted_pool_is_a_clear_error(schema, dsn):
    store = Store(dsn, schema=schema, max_size=1, connect_timeout=1)
    try:
        held = store.lease("a")
        with pytest.raises(dnb.StoreUnavailableError, match="no free connection"):
            store.lease("b")
        with pytest.raises(dnb.StoreUnavailableError, match="no free connection"):
            with store.transaction():  # never a raw pool error a transaction would record
                pass
        held.close()
        store.lease("b").close()  # the connection came back
    finally:
        store.close()


def test_an_older_schema_is_migrated_in_place(dsn, sql):
    """A database at version 1 (with records) is brought to the latest version, data kept."""
    from durablenb.store._migrate import migrations

    name = "t_old_" + __import__("uuid").uuid4().hex[:8]
    try:
        sql.execute(f'CREATE SCHEMA "{name}"')
        sql.execute(f'CREATE TABLE "{name}".schema_version (version integer PRIMARY KEY, '
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        number, fname, text = migrations()[0]
        sql.execute(text.replace("{schema}", f'"{name}"'))
        sql.execute(f'INSERT INTO "{name}".schema_version VALUES (%s, %s)', [number, fname])
        sql.execute(f"INSERT INTO \"{name}\".workflows (id, name, status) VALUES ('w', 'n', 'succeeded')")
        store = Store(dsn, schema=name)
        store.close()
        assert store.schema_version == latest_version()
        row = sql.execute(f'SELECT run_started_at = created_at FROM "{name}".workflows').fetchone()
        assert row == (True,)
    finally:
        sql.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def test_a_closed_store_is_a_clear_error(schema, dsn):
    store = Store(dsn, schema=schema)
    store.close()
    with pytest.raises(dnb.StoreUnavailableError, match="was closed"):
        store.lease("x")
    with pytest.raises(dnb.StoreUnavailableError, match="was closed"):
        store.get_workflow("x")


def test_an_enormous_output_goes_through_the_blob_path(schema):
    import numpy as np

    big = np.arange(40_000_000, dtype=np.int64)  # 320 MB

    @dnb.step
    def huge():
        return big

    @dnb.workflow
    def wf():
        return int(huge()[-1])

    assert wf() == 39_999_999
    st = dnb.steps(wf.id_for())
    assert st.loc[0, "codec"].startswith("npy")  # npy, or npy+zstd where blobs are compressed
    assert st.loc[0, "output_bytes"] > 1_000_000  # the stored (maybe compressed) size
    back = dnb.output(wf.id_for(), 0)
    assert back.shape == big.shape and back[-1] == big[-1] and back.dtype == big.dtype

"""A team on one server: each role's records in a schema of its own, owned by it; another
role gets nothing until the owner runs ``durablenb grant ROLE --read`` (or ``--write``).

The tests with roles create two LOGIN roles (not superusers) per test and connect as each,
so they need a real server: they run in the ``DURABLENB_TEST_DSN`` run of the suite.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

import durablenb as dnb
from durablenb.engine import runtime
from durablenb.store import Store, role_schema
from durablenb.store._notify import cancel_payload
from durablenb.store._roles import DEFAULT_SCHEMA

from .conftest import REPO

needs_server = pytest.mark.skipif(
    not os.environ.get("DURABLENB_TEST_DSN"),
    reason="roles need a real PostgreSQL server: the run with DURABLENB_TEST_DSN covers them",
)

_SCHEMA_RE = r"[A-Za-z_][A-Za-z0-9_]{0,62}"


def test_role_schema_names():
    import re

    assert role_schema("alice") == "durablenb_alice"
    assert role_schema("data_team_2") == "durablenb_data_team_2"
    odd = ["Alice", "alice.smith@corp", "x" * 63, "Ünïcode rôle", "a-b", "a b", "A-B"]
    names = [role_schema(r) for r in odd]
    assert all(re.fullmatch(_SCHEMA_RE, n) and n.startswith("durablenb_") for n in names)
    assert names[0].startswith("durablenb_alice_") and names[0] != role_schema("alice")
    assert names[1].startswith("durablenb_alice_smith_corp_")
    assert len(set(names)) == len(names)  # a-b, a b and A-B differ too
    assert role_schema("Alice") == names[0]  # the same in every process


def test_the_embedded_server_keeps_the_schema_durablenb(schema, backend, monkeypatch):
    if backend != "embedded":
        pytest.skip("the embedded server's default; the embedded run of the suite covers it")
    monkeypatch.delenv("DURABLENB_SCHEMA")
    store = dnb.connect()
    try:
        assert store.schema == DEFAULT_SCHEMA
        assert store.blobs.url.endswith("/blobs/durablenb")
        assert dnb.connect(schema=schema).schema == schema  # an explicit schema wins
    finally:
        runtime.disconnect()
        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{DEFAULT_SCHEMA}" CASCADE')


# -- two roles on the server ----------------------------------------------------------------


def _as(dsn: str, role: str) -> str:
    """*dsn* connecting as *role* (trust authentication: no password)."""
    parts = urlsplit(dsn)
    if parts.scheme.startswith("postgres"):
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit(parts._replace(netloc=f"{role}@{host}"))
    return psycopg.conninfo.make_conninfo(dsn, user=role)


@dataclass
class Roles:
    dsn: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    made: list[str] = field(default_factory=list)

    def make(self, name: str, create: bool = True) -> str:
        role = f"dnb_{name}_{self.tag}"
        with psycopg.connect(self.dsn, autocommit=True) as su:
            su.execute(f'CREATE ROLE "{role}" LOGIN NOSUPERUSER NOCREATEROLE NOCREATEDB')
            self.made.append(role)
            if create:  # may create its own schema
                su.execute(f'GRANT CREATE ON DATABASE "{su.info.dbname}" TO "{role}"')
        return role

    def url(self, role: str) -> str:
        return _as(self.dsn, role)

    def drop(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as su:
            for role in self.made:
                su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                           [role])  # fmt: skip
            for role in self.made:  # their schemas, and every right given to them
                su.execute(f'DROP OWNED BY "{role}" CASCADE')
            for role in self.made:
                su.execute(f'DROP ROLE "{role}"')


@pytest.fixture
def roles(dsn, monkeypatch) -> Iterator[Roles]:
    for var in ("DURABLENB_SCHEMA", "DURABLENB_DATABASE_URL", "DURABLENB_BLOB_URL", "DURABLENB_HOME"):
        monkeypatch.delenv(var, raising=False)
    r = Roles(dsn)
    yield r
    runtime.disconnect()
    r.drop()


# The same definitions in every process (same names, same code hashes). Outputs of 1000
# bytes or more are blobs, which a server URL without DURABLENB_BLOB_URL keeps in PostgreSQL.
DEFS = """
import json, os, sys
import durablenb as dnb

@dnb.step
def load():
    return b"x" * 5000

@dnb.step
def measure(data):
    if os.environ.get("CRASH"):
        os._exit(3)  # killed before its record: the workflow is interrupted
    return f"{len(data)} bytes"

@dnb.workflow
def report():
    return measure(load())

def run(wid):
    with dnb.workflow_id(wid):
        return report()
"""

# Every operation a role might try in a schema, each reported as ok or as its error.
TRY_ALL = """
ops = {
    "workflows": lambda: sorted(dnb.workflows()["workflow_id"]),
    "steps": lambda: list(dnb.steps("done")["name"]),
    "output": lambda: len(dnb.output("done", "load")),
    "run": lambda: run("new"),
    "resume": lambda: dnb.resume("open").result(),
    "cancel": lambda: dnb.cancel("open"),
    "forget": lambda: dnb.forget("done"),
}
out = {}
for name in sys.argv[1].split(","):
    try:
        out[name] = ["ok", ops[name]()]
    except Exception as exc:
        out[name] = [type(exc).__name__, str(exc)]
print(json.dumps(out))
"""


def _env(url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DURABLENB_")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
               DURABLENB_DATABASE_URL=url, DURABLENB_BLOB_THRESHOLD="1000", **extra)  # fmt: skip
    return env


def _python(url: str, body: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DEFS + textwrap.dedent(body), *args], env=_env(url, **env),
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def _cli(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "durablenb", *args], env=_env(url), capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def _attempt(url: str, schema: str, ops: str) -> dict[str, list]:
    """Run *ops* in a new process connected as *url* to *schema*."""
    out = _python(url, TRY_ALL, ops, DURABLENB_SCHEMA=schema)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _records(roles: Roles, alice: str) -> tuple[str, list[tuple]]:
    """As alice, in her own processes: ``done`` finished (its first output a blob in
    PostgreSQL), ``open`` interrupted after its first step. Returns her schema and a
    snapshot of the records."""
    done = _python(roles.url(alice), "print(json.dumps([dnb.connect().schema, run('done')]))")
    assert done.returncode == 0, done.stderr
    schema, result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == "5000 bytes"
    crashed = _python(roles.url(alice), "run('open')", CRASH="1")
    assert crashed.returncode == 3, crashed.stderr
    return schema, _snapshot(roles.dsn, schema)


def _snapshot(dsn: str, schema: str) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as su:
        return su.execute(
            f'SELECT w.id, w.status, w.runs, w.executor, count(s.position), count(s.blob), '
            f'(SELECT count(*) FROM "{schema}".blob_objects), (SELECT count(*) FROM "{schema}".blob_refs) '
            f'FROM "{schema}".workflows w LEFT JOIN "{schema}".steps s ON s.workflow_id = w.id '
            "GROUP BY w.id ORDER BY w.id"
        ).fetchall()


def _refused(result: list, schema: str, bob: str, alice: str, hint: str) -> None:
    kind, message = result
    assert kind == "StorePermissionError", result
    assert repr(schema) in message and repr(bob) in message and repr(alice) in message, message
    assert hint in message, message
    for sql_text in ("LINE ", "SELECT", "INSERT", "UPDATE ", "DELETE", "WITH ", "Traceback"):
        assert sql_text not in message, message


ALL = "workflows,steps,output,run,resume,cancel,forget"
WRITES = ("run", "resume", "cancel", "forget")


@needs_server
def test_a_roles_default_schema_is_its_own_and_no_one_elses(roles, sql):
    alice, bob = roles.make("alice"), roles.make("bob")
    store = dnb.connect(roles.url(alice))
    schema = role_schema(alice)
    assert (store.schema, store.role, store.schema_access.level) == (schema, alice, "owner")
    owner, acl = sql.execute("SELECT pg_get_userbyid(nspowner), nspacl::text[] FROM pg_namespace "
                             "WHERE nspname = %s", [schema]).fetchone()  # fmt: skip
    assert owner == alice and acl == [f"{alice}=UC/{alice}"]  # nothing for PUBLIC or anyone
    objects = sql.execute("SELECT relname, relkind, pg_get_userbyid(relowner), relacl FROM pg_class "
                          "WHERE relnamespace = %s::regnamespace", [schema]).fetchall()  # fmt: skip
    assert {"workflows", "steps", "blob_objects", "blob_chunks", "blob_refs"} <= {o[0] for o in objects}
    assert {o[2] for o in objects} == {alice}  # every table and index the migrations made
    assert all(o[3] is None for o in objects)  # with no grant to anyone
    for who in (bob, "public"):
        rights = sql.execute("SELECT has_schema_privilege(%s, %s, 'USAGE'), has_table_privilege(%s, %s, "
                             "'SELECT')", [who, schema, who, f"{schema}.workflows"]).fetchone()  # fmt: skip
        assert rights == (False, False)
    # Bob gets a schema of his own; the same workflow id in both never shares a lock key.
    theirs = Store(roles.url(bob))
    try:
        assert theirs.schema == role_schema(bob) and theirs.lock_key("w") != store.lock_key("w")
    finally:
        theirs.close()
    info = _cli(roles.url(alice), "info")
    assert info.returncode == 0, info.stderr
    assert f"schema:  {schema} (version" in info.stdout
    assert f"role:    {alice} (owner" in info.stdout and "shared:  with no other role" in info.stdout


@needs_server
def test_another_role_can_neither_read_nor_change_a_schema(roles):
    alice, bob = roles.make("alice"), roles.make("bob")
    schema, before = _records(roles, alice)
    assert [r[:2] for r in before] == [("done", "succeeded"), ("open", "running")]
    assert before[0][5] == 1 and before[0][6] >= 1  # load's output is a blob in PostgreSQL
    # Bob, in his own process, names alice's schema: every operation is refused, clearly.
    tried = _attempt(roles.url(bob), schema, ALL)
    for op in ALL.split(","):
        _refused(tried[op], schema, bob, alice, f"durablenb grant {bob} --read")
    # Not through durablenb either: the tables, blob chunks included, are closed to him.
    with psycopg.connect(roles.url(bob), autocommit=True) as conn:
        for statement in (f'SELECT data FROM "{schema}".blob_chunks', f'DELETE FROM "{schema}".steps',
                          f"UPDATE \"{schema}\".workflows SET status = 'cancelled'"):  # fmt: skip
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    assert _snapshot(roles.dsn, schema) == before  # nothing changed, no lock left held
    resumed = _python(roles.url(alice), "print(json.dumps(dnb.resume('open').result()))")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == "5000 bytes"


@needs_server
def test_grant_read_then_write_then_revoke(roles):
    alice, bob = roles.make("alice"), roles.make("bob")
    schema, before = _records(roles, alice)
    granted = _cli(roles.url(alice), "grant", bob, "--read")
    assert granted.returncode == 0 and f"role {bob} may now read" in granted.stdout, granted.stderr
    tried = _attempt(roles.url(bob), schema, ALL)
    assert tried["workflows"] == ["ok", ["done", "open"]]
    assert tried["steps"] == ["ok", ["load", "measure"]]
    assert tried["output"] == ["ok", 5000]  # the blob, read from alice's tables
    for op in WRITES:
        _refused(tried[op], schema, bob, alice, f"durablenb grant {bob} --write")
    assert _snapshot(roles.dsn, schema) == before
    info = _cli(roles.url(alice), "info")
    assert f"shared:  {bob} (read)" in info.stdout, info.stderr
    # Tables made later (a migration) are shared too.
    with psycopg.connect(roles.url(alice), autocommit=True) as conn:
        conn.execute(f'CREATE TABLE "{schema}".later (x int)')
    with psycopg.connect(roles.url(bob), autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".later').fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f'INSERT INTO "{schema}".later VALUES (1)')

    # --write: bob resumes alice's interrupted workflow in her schema.
    assert _cli(roles.url(alice), "grant", bob, "--write").returncode == 0
    tried = _attempt(roles.url(bob), schema, "resume")
    assert tried["resume"] == ["ok", "5000 bytes"]
    after = dict((r[0], r) for r in _snapshot(roles.dsn, schema))
    assert after["open"][1:3] == ("succeeded", 2) and after["open"][4] == 2
    # --read again takes writing away.
    assert _cli(roles.url(alice), "grant", bob, "--read").returncode == 0
    _refused(_attempt(roles.url(bob), schema, "forget")["forget"], schema, bob, alice, "--write")

    # revoke: nothing left, reading included.
    revoked = _cli(roles.url(alice), "revoke", bob)
    assert revoked.returncode == 0 and "no access" in revoked.stdout, revoked.stderr
    tried = _attempt(roles.url(bob), schema, "workflows,output")
    for op in ("workflows", "output"):
        _refused(tried[op], schema, bob, alice, f"durablenb grant {bob} --read")
    assert "shared:  with no other role" in _cli(roles.url(alice), "info").stdout


@needs_server
def test_only_the_owner_grants_and_revoking_a_connected_reader_takes_effect_at_once(roles):
    alice, bob, carol = roles.make("alice"), roles.make("bob"), roles.make("carol")
    mine = Store(roles.url(alice))
    theirs = None
    try:
        mine.grant(bob)
        theirs = Store(roles.url(bob), schema=mine.schema)
        assert theirs.schema_access is not None and theirs.schema_access.level == "read"
        assert theirs.query_workflows()[1] == []
        with pytest.raises(dnb.StorePermissionError, match=f"only its owner, role '{alice}'"):
            theirs.grant(carol)
        refused = _cli(roles.url(bob), "--schema", mine.schema, "grant", carol, "--read")
        assert refused.returncode == 1 and "only its owner" in refused.stderr
        assert "Traceback" not in refused.stderr
        with pytest.raises(ValueError, match="no role"):
            mine.grant("dnb_nobody_" + roles.tag)
        with pytest.raises(ValueError, match="owns the schema"):
            mine.revoke(alice)
        mine.revoke(bob)
        with pytest.raises(dnb.StorePermissionError, match=f"durablenb grant {bob} --read") as err:
            theirs.query_workflows()  # the same open connection, refused from now on
        assert not err.value.transient and err.value.schema == mine.schema
        assert (err.value.role, err.value.owner) == (bob, alice)
        assert isinstance(err.value.__cause__, psycopg.errors.InsufficientPrivilege)
    finally:
        if theirs is not None:
            theirs.close()
        mine.close()


@needs_server
def test_forged_cancel_notifications_do_not_stop_a_workflow(roles):
    alice, bob = roles.make("alice"), roles.make("bob")
    store = dnb.connect(roles.url(alice))
    ran: list[str] = []

    @dnb.step
    def first():
        ran.append("first")
        # Bob cannot cancel it, but any role may NOTIFY: both payload formats, forged.
        with psycopg.connect(roles.url(bob), autocommit=True) as conn:
            for payload in (f"{store.schema}|forged", cancel_payload(store.schema, store.lock_key("forged"))):
                conn.execute("SELECT pg_notify('durablenb_cancel', %s)", [payload])
        deadline = time.monotonic() + 5
        while not store._heard and time.monotonic() < deadline:  # the listener heard them
            time.sleep(0.01)
        assert store._heard
        return 1

    @dnb.step
    def second(x):
        ran.append("second")
        return x + 1

    @dnb.workflow
    def wf():
        return second(first())

    with dnb.workflow_id("forged"):
        assert wf() == 2
    assert ran == ["first", "second"]
    assert dnb.workflows()["status"].tolist() == ["succeeded"]


@needs_server
def test_an_administrator_prepares_a_roles_schema_and_a_role_without_create_is_told(roles, sql):
    alice, dave = roles.make("alice"), roles.make("dave", create=False)
    schema = role_schema(alice)
    sql.execute(f'CREATE SCHEMA "{schema}" AUTHORIZATION "{alice}"')
    Store(roles.dsn, schema=schema).close()  # a superuser migrates it, as its owner
    owners = sql.execute("SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                         "WHERE relnamespace = %s::regnamespace", [schema]).fetchall()  # fmt: skip
    assert owners == [(alice,)]
    store = Store(roles.url(alice))
    try:
        assert store.schema == schema and store.schema_access.level == "owner"
    finally:
        store.close()
    with pytest.raises(dnb.StorePermissionError, match="GRANT CREATE ON DATABASE") as err:
        Store(roles.url(dave))
    assert role_schema(dave) in str(err.value)


@needs_server
def test_a_role_that_owns_the_shared_schema_of_earlier_versions_keeps_it(roles, sql, caplog):
    if sql.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [DEFAULT_SCHEMA]).fetchone():
        pytest.skip(f"this server already has a schema {DEFAULT_SCHEMA!r}")
    alice, bob = roles.make("alice"), roles.make("bob")
    sql.execute(f'CREATE SCHEMA "{DEFAULT_SCHEMA}" AUTHORIZATION "{alice}"')
    done = _python(roles.url(alice), "print(json.dumps(run('old')))", DURABLENB_SCHEMA=DEFAULT_SCHEMA)
    assert done.returncode == 0, done.stderr  # records written by an earlier version
    with caplog.at_level(logging.INFO, logger="durablenb"):
        first = Store(roles.url(alice))
        second = Store(roles.url(alice))
    try:
        assert first.schema == second.schema == DEFAULT_SCHEMA
        assert first.query_workflows()[1][0][0] == "old"
        told = [r.getMessage() for r in caplog.records if "schemas per role" in r.getMessage()]
        assert len(told) == 1 and role_schema(alice) in told[0]  # said once
    finally:
        first.close()
        second.close()
    other = Store(roles.url(bob))  # a role that does not own it gets its own
    try:
        assert other.schema == role_schema(bob)
    finally:
        other.close()

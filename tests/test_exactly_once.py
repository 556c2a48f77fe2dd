"""Exactly once, at the edges: transactions whose output cannot be recorded, transactions in
steps, SQL errors of a transaction's own, and identities equal in every process.

Every test runs workflows in child processes and counts effects in tables and files.
"""

from __future__ import annotations

import json

import pytest


def _ledger(sql, schema) -> dict[str, int]:
    return dict(sql.execute(f'SELECT event, count(*) FROM "{schema}".ledger GROUP BY event').fetchall())


@pytest.fixture
def ledger(sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".ledger (id serial PRIMARY KEY, event text NOT NULL)')
    return lambda: _ledger(sql, schema)


UNENCODABLE_TXN = """
import threading
SCHEMA = os.environ["DURABLENB_SCHEMA"]

@dnb.transaction
def reserve():
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["reserve"])
    return threading.Lock()  # cannot be recorded

@dnb.workflow
def wf():
    return reserve()

try:
    if sys.argv[1] == "run":
        with dnb.workflow_id("txn-unencodable"):
            wf()
    else:
        dnb.resume("txn-unencodable").result()
except Exception as exc:
    print(type(exc).__name__)
"""


def test_a_transaction_whose_output_cannot_be_recorded_rolls_back(run_child, ledger):
    first = run_child(UNENCODABLE_TXN, "run")
    assert first.stdout.strip() == "UnserializableOutputError", first.stderr
    assert ledger() == {}  # the body's insert rolled back with the failed record
    again = run_child(UNENCODABLE_TXN, "resume")  # resume retries the failed transaction
    assert again.stdout.strip() == "UnserializableOutputError", again.stderr
    assert ledger() == {}


TXN_IN_STEP = """
SCHEMA = os.environ["DURABLENB_SCHEMA"]

@dnb.transaction
def pay():
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["pay"])
    return 1

@dnb.step
def checkout():
    paid = pay()
    crash_once("checkout")  # a crash after the transaction committed, before the step's record
    return paid

@dnb.workflow
def wf():
    return checkout()

with dnb.workflow_id("txn-in-step"):
    try:
        print(json.dumps(wf()))
    except dnb.DurableUsageError as exc:
        print("refused:", exc)
"""


def test_a_transaction_inside_a_step_is_refused_not_silently_repeated(run_child, ledger):
    outs = [run_child(TXN_IN_STEP) for _ in range(3)]
    for out in outs:
        assert out.stdout.startswith("refused:"), (out.returncode, out.stderr[-2000:])
        assert "inside a step" in out.stdout
    assert ledger() == {}  # never committed, so never twice


SQL_ERRORS = """
import psycopg
SCHEMA = os.environ["DURABLENB_SCHEMA"]
DSN = os.environ["TEST_DSN"]

@dnb.transaction
def grab():
    conn = dnb.connection()
    conn.execute("SET LOCAL lock_timeout = '100ms'")
    conn.execute(f'SELECT * FROM "{SCHEMA}".ledger WHERE id = 1 FOR UPDATE')
    return "grabbed"

@dnb.transaction
def contended():
    n = len(open(EFFECTS / "contended.log").readlines()) if (EFFECTS / "contended.log").exists() else 0
    hit("contended")
    if n < 2:
        raise psycopg.errors.SerializationFailure("could not serialize access")
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["contended"])
    return n

@dnb.workflow
def wf():
    try:
        grab()
    except psycopg.errors.LockNotAvailable as exc:
        locked = type(exc).__name__
    return [locked, contended()]

with psycopg.connect(DSN, autocommit=True) as other, other.transaction():
    other.execute(f'SELECT * FROM "{SCHEMA}".ledger WHERE id = 1 FOR UPDATE')  # holds the row
    out = {}
    try:
        grab()  # outside a workflow: the body's error, as raised
    except Exception as exc:
        out["outside"] = type(exc).__module__ + "." + type(exc).__name__
    with dnb.workflow_id("sql-errors"):
        out["inside"] = wf()
print(json.dumps(out))
"""


def test_sql_errors_of_a_transaction_body_are_its_own(run_child, ledger, sql, schema, dsn, effects):
    sql.execute(f"INSERT INTO \"{schema}\".ledger (event) VALUES ('seed')")
    env = {"TEST_DSN": dsn, "DURABLENB_RETRY_SECONDS": "3"}
    out = run_child(SQL_ERRORS, env=env, timeout=60)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["outside"] == "psycopg.errors.LockNotAvailable"
    assert got["inside"] == ["LockNotAvailable", 2]  # serialization failures were retried
    assert effects.count("contended") == 3
    steps = sql.execute(
        f'SELECT position, status, error_type, attempts FROM "{schema}".steps ORDER BY position'
    ).fetchall()
    assert steps == [(0, "failed", "psycopg.errors.LockNotAvailable", 1), (1, "succeeded", None, 3)]
    assert ledger() == {"seed": 1, "contended": 1}


STABLE_ID = """
SCHEMA = os.environ["DURABLENB_SCHEMA"]

class Config:
    def __init__(self, tags):
        self.tags = set(tags)

@dnb.transaction
def book(cfg):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["book"])
    return len(cfg.tags)

@dnb.workflow
def wf(cfg, extra):
    return book(cfg)

cfg = Config(f"tag-{i}" for i in range(40))
extra = {"kinds": frozenset({"a", "b", "c", "d", "e", "f"}), "n": 3}
print(json.dumps({"id": wf.id_for(cfg, extra), "result": wf(cfg, extra)}))
"""


def test_default_ids_are_equal_under_any_hash_seed(run_child, ledger):
    runs = [run_child(STABLE_ID, env={"PYTHONHASHSEED": str(seed)}) for seed in (1, 2, 3, 4)]
    outs = [json.loads(r.stdout) for r in runs if r.returncode == 0]
    assert len(outs) == 4, [r.stderr[-1500:] for r in runs]
    assert len({o["id"] for o in outs}) == 1
    assert {o["result"] for o in outs} == {40}
    assert ledger() == {"book": 1}  # one workflow: the transaction ran once


UNHASHABLE = """
@dnb.workflow
def wf(fn):
    return fn(20) + 1

try:
    wf(lambda x: x * 2)
except dnb.UnhashableArgumentsError as exc:
    print("refused:", exc)
with dnb.workflow_id("explicit"):
    print(wf(lambda x: x * 2))
"""


def test_an_argument_with_no_stable_digest_asks_for_an_explicit_id(run_child):
    out = run_child(UNHASHABLE)
    assert out.returncode == 0, out.stderr[-2000:]
    refused, result = out.stdout.strip().splitlines()
    assert refused.startswith("refused:") and "dnb.workflow_id(" in refused
    assert result == "41"


STABLE_CODE = """
SCHEMA = os.environ["DURABLENB_SCHEMA"]

normalise = dnb.step(name="normalise")(lambda word: word if word in {
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"} else "?")

@dnb.transaction
def book(word):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', [word])
    return word

@dnb.workflow
def wf():
    return book(normalise("gamma"))

with dnb.workflow_id("stable-code"):
    print(json.dumps(wf()))
"""


def test_code_hashes_are_equal_under_any_hash_seed(run_child, ledger):
    for seed in (1, 2, 3, 4):
        out = run_child(STABLE_CODE, env={"PYTHONHASHSEED": str(seed)})
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout) == "gamma"
        assert "re-running" not in out.stderr  # no fork: the lambda's code is the same
    assert ledger() == {"gamma": 1}


CONFLICT = """
import psycopg
SCHEMA = os.environ["DURABLENB_SCHEMA"]
DSN = os.environ["TEST_DSN"]

def record_first(position, value):
    # Another executor writes this position's record while ours runs (as after a lost lock).
    with psycopg.connect(DSN, autocommit=True) as other:
        other.execute(
            f'INSERT INTO "{SCHEMA}".steps (workflow_id, position, name, kind, status, output, '
            "codec, started_at, finished_at) VALUES (%s, %s, %s, %s, 'succeeded', %s, 'json', "
            "now(), now())",
            ["conflict", position, sys.argv[1 + position], ["step", "transaction"][position],
             json.dumps(value).encode()])

@dnb.step
def compute():
    record_first(0, "theirs")
    return "ours"

@dnb.transaction
def book():
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["book"])
    record_first(1, "their booking")
    return "our booking"

@dnb.workflow
def wf():
    return [compute(), book()]

with dnb.workflow_id("conflict"):
    print(json.dumps(wf()))
"""


def test_a_record_another_executor_wrote_first_is_what_the_caller_gets(run_child, ledger, dsn):
    names = ["compute", "book"]
    out = run_child(CONFLICT, *names, env={"TEST_DSN": dsn})
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == ["theirs", "their booking"]
    assert ledger() == {}  # our transaction's effect rolled back with its record

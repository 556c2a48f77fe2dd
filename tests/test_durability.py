"""Durability modes: ``full`` flushes every record before its step returns; ``kernel`` lets
records commit before their log flush, so it survives any death of the Python process (the
kill matrix runs under both: tests/chaos.py) and a database crash loses at most the last
unflushed window, in log order, transactions with their records."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict

import psycopg
import pytest

import durablenb as dnb
from durablenb.engine import runtime
from durablenb.engine.context import current
from durablenb.settings import Settings


def test_the_setting_is_checked_where_it_is_given(monkeypatch):
    assert Settings.from_env({"DURABLENB_DURABILITY": "Kernel"}).durability == "kernel"
    with pytest.raises(ValueError, match="DURABLENB_DURABILITY='fast' is not valid"):
        Settings.from_env({"DURABLENB_DURABILITY": "fast"})
    with pytest.raises(ValueError, match="durability must be one of 'full', 'kernel'"):
        dnb.workflow(durability="async")(lambda: None)
    with pytest.raises(ValueError, match="durability must be one of"):
        Settings.from_env({}, durability="off")


def test_the_default_depends_on_the_backend(schema, backend):
    # The embedded server lives and dies with this machine; a server URL may be restarted
    # on its own (docs/design.md, "Durability").
    assert runtime.store().durability == ("kernel" if backend == "embedded" else "full")
    for mode in ("full", "kernel"):
        assert dnb.connect(schema=schema, durability=mode).durability == mode


def test_a_workflow_chooses_and_its_children_inherit(schema):
    seen: dict[str, str] = {}

    @dnb.step
    def where(label):
        return label

    @dnb.workflow
    def child(label):
        run = current()
        assert run is not None
        seen[label] = run.lease.durability
        return where(label)

    @dnb.workflow(durability="full")
    def strict():
        return child("under full")

    @dnb.workflow(durability="kernel")
    def fast():
        child("under kernel")
        return dnb.start(child, "started under kernel").result(timeout=30)

    dnb.connect(schema=schema, durability="full")
    strict()
    fast()
    assert seen == {"under full": "full", "under kernel": "kernel", "started under kernel": "kernel"}


# -- a database crash ------------------------------------------------------------------------

CRASHING = """
import threading, time
MODE, N, SHORTS = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
SCHEMA = os.environ["DURABLENB_SCHEMA"]

def log(name, text):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write(text + "\\n")

@dnb.step
def s(i):
    log("s", f"{i} {time.time()}")
    time.sleep(0.003)
    return i

@dnb.transaction
def t(i):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".crash_effects (k) VALUES (%s)', [i])
    return i

@dnb.workflow(durability=MODE)
def long(n):
    return sum(t(i) if i % 4 == 0 else s(i) for i in range(n))

@dnb.workflow(durability=MODE)
def short(i):
    return i

def shorts():
    i = 0
    while SHORTS < 0 or i < SHORTS:
        try:
            with dnb.workflow_id(f"short-{i}"):
                short(i)
        except Exception:
            return
        log("returned", str(i))  # the call returned: its workflow must stay finished
        i += 1
        time.sleep(0.01)

if SHORTS:
    threading.Thread(target=shorts, daemon=True).start()
try:
    with dnb.workflow_id("long"):
        print(json.dumps(long(N)))
except dnb.DurableError as exc:
    print(type(exc).__name__, exc, file=sys.stderr)
    sys.exit(2)
"""


def _executions(effects) -> dict[int, list[float]]:
    runs: dict[int, list[float]] = defaultdict(list)
    for line in effects.path("s").read_text().splitlines():
        pos, at = line.split()
        runs[int(pos)].append(float(at))
    return runs


@pytest.mark.parametrize("durability,writer_delay", [("full", "10s"), ("kernel", "10s"), ("kernel", None)])
def test_a_database_crash_loses_at_most_the_unflushed_window(
    schema, run_child, effects, database, sql, dsn, durability, writer_delay
):  # fmt: skip
    """``pg_ctl stop -m immediate`` while a workflow runs steps and transactions and another
    thread finishes short workflows. With ``wal_writer_delay`` raised to 10 s (and the short
    workflows done well before, as each one's end flushes the log) the log of asynchronous
    commits stays unwritten long enough that a crash must lose some."""
    n = 4000
    sql.execute(f'CREATE TABLE "{schema}".crash_effects (k int)')
    default_delay = sql.execute("SHOW wal_writer_delay").fetchone()[0]
    if writer_delay:
        sql.execute(f"ALTER SYSTEM SET wal_writer_delay = '{writer_delay}'")
        sql.execute("SELECT pg_reload_conf()")
    window = 3 * (10.0 if writer_delay else _seconds(default_delay))
    try:
        shorts = "20" if writer_delay else "-1"  # -1: until the crash stops them
        proc = run_child(CRASHING, durability, str(n), shorts, background=True, name="crashing.py")
        deadline = time.monotonic() + 120
        while not effects.path("s").exists() or len(effects.path("s").read_text().splitlines()) < 300:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        crashed_at = time.time()
        database.crash()
        database.start()
        out, err = proc.communicate(timeout=180)
    finally:
        if writer_delay:
            database.start()
            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute("ALTER SYSTEM RESET wal_writer_delay")
                c.execute("SELECT pg_reload_conf()")
    first = _executions(effects)
    if proc.returncode == 2:  # the run noticed records it had written were lost, and stopped
        assert "RecordsLostError" in err, err
        assert durability == "kernel", err
    else:
        assert proc.returncode == 0, err
    done = run_child(CRASHING, durability, str(n), "0", name="crashing.py")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == sum(range(n))

    runs = _executions(effects)
    twice = sorted(p for p, at in runs.items() if len(at) > 1)
    assert all(len(at) <= 2 for at in runs.values())
    assert set(runs) == {i for i in range(n) if i % 4}  # every step ran
    with psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cur:  # `sql` died
        rows = Counter(k for (k,) in cur.execute(f'SELECT k FROM "{schema}".crash_effects'))
        assert rows == Counter(range(0, n, 4))  # each transaction took effect exactly once
        returned = (effects.path("returned").read_text().split() if effects.path("returned").exists()
                    else [])  # fmt: skip
        statuses = dict(cur.execute(f'SELECT id, status FROM "{schema}".workflows WHERE id = ANY(%s)',
                                    [[f"short-{i}" for i in returned]]).fetchall())  # fmt: skip
    assert returned, "no short workflow returned before the crash"
    assert {statuses.get(f"short-{i}") for i in returned} == {"succeeded"}
    if durability == "full":
        assert twice == []
        return
    # Log order: what a crash loses is the latest commits, never an older one alone. (The
    # step running at the crash is among them: its record could not be written.)
    ran = sorted(first)
    assert twice == ran[len(ran) - len(twice):]
    assert all(first[p][0] >= crashed_at - window - 1.0 for p in twice), (twice, crashed_at)
    if writer_delay:
        assert twice, "no record was lost: the records were not written asynchronously"


def _seconds(setting: str) -> float:
    value = float(setting.rstrip("msu"))
    return value / 1000 if setting.endswith("ms") else value

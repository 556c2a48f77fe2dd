"""Database outages mid-run: record writes retry; a long outage leaves the workflow resumable."""

from __future__ import annotations

import threading
import time

import pytest

import durablenb as dnb
from durablenb.engine import runtime


@pytest.fixture
def counting():
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def hit(key: str) -> None:
        with lock:
            counts[key] = counts.get(key, 0) + 1

    return counts, hit


def _wait_steps(wid: str, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(dnb.steps(wid)) < n:
        assert time.monotonic() < deadline, f"{wid} never reached {n} steps"
        time.sleep(0.05)


def test_workflow_rides_out_a_database_restart(schema, database, counting, sql):
    counts, hit = counting
    sql.execute(f'CREATE TABLE "{schema}".ledger (k int)')

    @dnb.step
    def stage(i):
        hit(f"stage{i}")
        time.sleep(0.4)
        return i * i

    @dnb.transaction
    def book(i):
        hit(f"book{i}")
        dnb.connection().execute(f'INSERT INTO "{schema}".ledger VALUES (%s)', [i])
        return i

    @dnb.workflow
    def long_job():
        return [stage(i) for i in range(3)] + [book(10)] + [stage(i) for i in range(3, 6)]

    h = dnb.start(long_job)
    _wait_steps(h.workflow_id, 2)
    database.stop()  # the running step finishes while the database is down
    time.sleep(1.5)
    database.start()
    assert h.result(timeout=90) == [0, 1, 4, 10, 9, 16, 25]
    assert all(counts[f"stage{i}"] == 1 for i in range(6)), counts
    import psycopg

    with psycopg.connect(runtime.store().dsn, autocommit=True) as conn:
        assert conn.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone()[0] == 1
    assert dnb.workflows().loc[0, "status"] == "succeeded"


def test_a_long_outage_stops_the_workflow_resumable(schema, database, counting):
    counts, hit = counting
    runtime.store().retry_seconds = 2.0
    gate = threading.Event()

    @dnb.step
    def stage(i):
        hit(f"stage{i}")
        if i == 2:
            gate.wait(30)
        return i

    @dnb.workflow
    def job():
        return [stage(i) for i in range(5)]

    h = dnb.start(job)
    _wait_steps(h.workflow_id, 2)
    database.stop()
    gate.set()
    with pytest.raises(dnb.StoreUnavailableError, match="did not come back|cannot reach"):
        h.result(timeout=60)
    database.start()
    dnb.connect(schema=schema)  # a new kernel would connect afresh
    wf = dnb.workflows()
    assert wf.loc[0, "status"] == "interrupted"  # never marked done without its records
    assert wf.loc[0, "steps"] == 2
    assert job() == [0, 1, 2, 3, 4]
    assert [counts[f"stage{i}"] for i in range(5)] == [1, 1, 2, 1, 1]

"""`dnb.map(executor=client)` on a real Dask cluster (a scheduler and two worker processes
over TCP): items run on the workers and every outcome is recorded by the driver; a killed
driver's rerun re-runs no recorded item; a killed worker's item is rescheduled by Dask and
recorded once, and finished items do not run again. Effects counted in files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import durablenb as dnb

from .test_finish_cancel import _cli, _wait_for

distributed = pytest.importorskip(
    "distributed", reason="dnb.map(executor=Client) needs Dask's distributed: pip install -e '.[dask]'"
)


@pytest.fixture(scope="module")
def cluster():
    # Earlier tests in this process run IPython shells, which replace __main__ with a module
    # that has no __spec__; the spawned worker processes read it (as in a kernel).
    import sys

    main = sys.modules.get("__main__")
    if main is not None and not hasattr(main, "__spec__"):
        main.__spec__ = None
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cl:  # fmt: skip
        yield cl


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        c.wait_for_workers(2, timeout=60)  # a worker killed by an earlier test is back
        yield c


def _whoami(i: int) -> tuple[int, int]:
    time.sleep(0.01)
    return i, os.getpid()


def _flaky(job: tuple[str, int]) -> int:
    """Fails on its first attempt (a marker file), then succeeds: retried on the worker."""
    folder, i = job
    marker = Path(folder, f"tried-{i}")
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        raise ConnectionError(f"item {i}: first attempt")
    return i


def test_items_run_on_the_workers_in_input_order(schema, client, tmp_path):
    workers = set(client.run(os.getpid).values())

    @dnb.workflow
    def wf(n):
        return dnb.map(_whoami, range(n), executor=client)

    out = wf(12)
    assert [i for i, _ in out] == list(range(12))
    pids = {p for _, p in out}
    assert os.getpid() not in pids and pids <= workers
    st = dnb.steps(wf.id_for(12))
    assert st["status"].tolist() == ["succeeded"] * 12 and st["label"].tolist() == [str(i) for i in range(12)]
    assert wf(12) == out  # replayed from the records: the same pids

    flaky = dnb.step(retries=2, interval=0.01)(_flaky)

    @dnb.workflow
    def retried(folder):
        return dnb.map(flaky, [(folder, i) for i in range(3)], executor=client, rate="20/s")

    assert retried(str(tmp_path)) == [0, 1, 2]
    assert dnb.steps(retried.id_for(str(tmp_path)))["attempts"].tolist() == [2, 2, 2]
    assert {int(Path(tmp_path, f"tried-{i}").read_text()) for i in range(3)} <= workers


def test_transactions_and_unpicklable_items_are_refused_before_anything_runs(schema, client):
    @dnb.transaction
    def book(x):
        return x

    with pytest.raises(TypeError, match="transaction.*runs on threads only"):
        dnb.map(book, range(2), executor=client)
    with pytest.raises(dnb.UnserializableArgumentsError, match="to the Dask cluster"):
        import threading

        dnb.map(_whoami, [1, threading.Lock()], executor=client)


DRIVER = """
import signal, time
from distributed import Client
from durablenb.engine import events

class KillAfter(events.Listener):
    # SIGKILL this driver once K items are recorded (in the workflow's thread, just after).
    def __init__(self, k):
        self.k, self.n = k, 0
    def step_finished(self, run, record, replayed):
        if not replayed:
            self.n += 1
            if self.n >= self.k:
                os.kill(os.getpid(), signal.SIGKILL)

@dnb.step
def item(i):
    hit(f"item-{i}")  # its line starts with the pid of the process running it
    time.sleep(0.2)
    return i * i

@dnb.workflow
def wf(n):
    return dnb.map(item, range(n), executor=client)

client = Client(os.environ["DASK_SCHEDULER"])
if sys.argv[1] == "kill":
    events.add_listener(KillAfter(4))
with dnb.workflow_id("cluster-driver"):
    print(json.dumps(wf(12)))
"""


def test_a_killed_driver_reruns_no_recorded_item(run_child, effects, sql, schema, cluster, client):
    env = {"DASK_SCHEDULER": cluster.scheduler_address}
    first = run_child(DRIVER, "kill", env=env)
    assert first.returncode == -9, first.stderr[-3000:]
    rows = sql.execute(f'SELECT label FROM "{schema}".steps WHERE workflow_id = %s', ["cluster-driver"])
    recorded = {int(label) for (label,) in rows.fetchall()}
    assert len(recorded) >= 4
    second = run_child(DRIVER, "run", env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout.splitlines()[-1]) == [i * i for i in range(12)]
    assert all(effects.count(f"item-{i}") == 1 for i in recorded)  # recorded: not run again
    assert all(effects.count(f"item-{i}") >= 1 for i in range(12))
    workers = {str(p) for p in client.run(os.getpid).values()}
    lines = [line for i in range(12) for line in effects.path(f"item-{i}").read_text().splitlines()]
    ran_on = {line.split()[0] for line in lines}
    assert ran_on <= workers  # every item ran on a worker, never in a driver
    total = sql.execute(f'SELECT count(*) FROM "{schema}".steps').fetchone()[0]
    assert total == 12


CANCELLED = """
import time
from distributed import Client

@dnb.step
def item(i):
    hit("item", i)
    time.sleep(0.3)
    return i

@dnb.workflow
def many():
    return dnb.map(item, range(100), executor=Client(os.environ["DASK_SCHEDULER"]))

with dnb.workflow_id("cluster-cancel"):
    try:
        print(json.dumps(many()))
    except dnb.WorkflowCancelledError:
        print(json.dumps("cancelled"))
"""


def test_a_cancel_stops_the_items_the_cluster_has_not_started(run_child, effects, sql, schema, cluster):
    proc = run_child(CANCELLED, env={"DASK_SCHEDULER": cluster.scheduler_address}, background=True)
    _wait_for(effects, "item", 2)  # 100 items: plenty left when the CLI (a new process) cancels
    assert _cli("cancel", "cluster-cancel") == "cancelled"
    started = effects.count("item")
    out, err = proc.communicate(timeout=60)
    assert json.loads(out.splitlines()[-1]) == "cancelled", err[-3000:]
    time.sleep(0.5)  # a task the cancel missed would have started by now
    assert effects.count("item") <= started + 2  # one running per worker, at most; no new ones
    recorded = sql.execute(f'SELECT count(*) FROM "{schema}".steps').fetchone()[0]
    assert recorded <= effects.count("item")


def _fragile(job: tuple[str, int]) -> int:
    """Item 3 kills its worker process the first time it runs (os._exit: no clean-up)."""
    folder, i = job
    marker = Path(folder, "killed")
    if i == 3 and not marker.exists():
        marker.write_text(str(os.getpid()))
        time.sleep(0.5)  # the results of items this worker finished are fetched meanwhile
        os._exit(1)
    with open(Path(folder, f"item-{i}.log"), "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(0.1)
    return i


def test_a_killed_worker_s_item_is_rescheduled_and_recorded_once(schema, client, tmp_path):
    @dnb.workflow
    def wf(folder):
        return dnb.map(_fragile, [(folder, i) for i in range(10)], executor=client)

    assert wf(str(tmp_path)) == list(range(10))
    killed = int(Path(tmp_path, "killed").read_text())
    runs = {i: Path(tmp_path, f"item-{i}.log").read_text().split() for i in range(10)}
    assert all(len(pids) == 1 for pids in runs.values()), runs  # each item ran to its end once
    assert str(killed) not in runs[3]  # rescheduled elsewhere (another worker, or its successor)
    st = dnb.steps(wf.id_for(str(tmp_path)))
    assert len(st) == 10 and st["status"].tolist() == ["succeeded"] * 10

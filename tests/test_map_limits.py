"""`dnb.map` on a caller's executor, and its limits: `rate=` spaces item starts (also over a
crash and a rerun, where replayed items do not count), `max_in_flight=` caps the items
running at once whatever the pool's size; bad values are refused before anything runs."""

from __future__ import annotations

import concurrent.futures as cf
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

import durablenb as dnb
from durablenb.engine._pools import parse_rate

from .test_finish_cancel import _cli, _wait_for


def _square(x: int) -> int:
    return x * x


def _pid(x: int) -> tuple[int, int]:
    return x, os.getpid()


def _processes(n: int) -> cf.ProcessPoolExecutor:
    # spawn: this process has threads (the store's), which fork would copy mid-flight
    return cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


@pytest.mark.parametrize("rate,per_second", [("10/s", 10.0), (" 600 / min ", 10.0), ("36/h", 0.01),
                                             ("0.5/s", 0.5), (2.5, 2.5), (3, 3.0), (None, None)])  # fmt: skip
def test_rate_forms(rate, per_second):
    assert parse_rate(rate) == (None if per_second is None else pytest.approx(per_second))


@pytest.mark.parametrize("kwargs", [
    {"rate": "10"}, {"rate": "10/day"}, {"rate": "-1/s"}, {"rate": "0/s"}, {"rate": 0},
    {"rate": -2.0}, {"rate": float("inf")}, {"rate": float("nan")}, {"rate": True}, {"rate": [1]},
    {"max_in_flight": 0}, {"max_in_flight": -1}, {"max_in_flight": 1.5}, {"max_in_flight": True},
    {"max_in_flight": "2"}, {"workers": 0},
])  # fmt: skip
def test_bad_limits_are_refused_at_the_call(schema, calls, kwargs):
    @dnb.step
    def item(x):
        calls("item")
        return x

    @dnb.workflow
    def wf():
        return dnb.map(item, range(3), **kwargs)

    with pytest.raises(ValueError) as err:
        wf()
    if "rate" in kwargs:
        assert "'N/s', 'N/min', 'N/h' or a number of items per second" in str(err.value)
    elif "max_in_flight" in kwargs:
        assert "max_in_flight" in str(err.value) and ">= 1" in str(err.value)
    assert calls["item"] == 0


def test_a_rate_spaces_item_starts(schema):
    @dnb.workflow
    def wf():
        t0 = time.monotonic()
        out = dnb.map(_square, range(100), workers=4, rate="20/s")
        return out, time.monotonic() - t0

    out, took = wf()
    assert out == [x * x for x in range(100)]
    assert took >= 4.5  # 99 gaps of 1/20 s: a lower bound, whatever the machine's speed
    assert len(dnb.steps(wf.id_for())) == 100


RATE_KILL = """
import signal, time

@dnb.step
def item(i):
    if i == 50 and not (EFFECTS / "killed").exists():
        (EFFECTS / "killed").write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    hit(f"item-{i}")
    return i

@dnb.workflow
def wf():
    t0 = time.monotonic()
    out = dnb.map(item, range(100), workers=4, rate="20/s")
    return out, time.monotonic() - t0

with dnb.workflow_id("rated"):
    out, took = wf()
print(json.dumps({"out": out, "took": took}))
"""


def test_a_rate_holds_after_a_kill_and_replayed_items_do_not_count(run_child, effects, sql, schema):
    first = run_child(RATE_KILL)
    assert first.returncode == -9, first.stderr[-2000:]
    recorded = {int(label) for (label,) in sql.execute(
        f'SELECT label FROM "{schema}".steps WHERE workflow_id = %s', ["rated"]).fetchall()}  # fmt: skip
    assert len(recorded) >= 45 and 50 not in recorded
    second = run_child(RATE_KILL)
    assert second.returncode == 0, second.stderr[-2000:]
    got = json.loads(second.stdout)
    assert got["out"] == list(range(100))
    assert all(effects.count(f"item-{i}") == 1 for i in recorded)  # finished items not re-run
    assert all(effects.count(f"item-{i}") >= 1 for i in range(100))
    ran = 100 - len(recorded)  # the rerun's items: the rate applies to them only
    assert got["took"] >= (ran - 1) / 20 - 0.05 >= 2.2


def _timed(job: tuple[str, int]) -> int:
    """Write when item *i* started and ended (time.monotonic, the same in every process)."""
    folder, i = job
    start = time.monotonic()
    time.sleep(0.1)
    Path(folder, f"{i}.json").write_text(json.dumps([start, time.monotonic()]))
    return i


def _peak(folder: Path, n: int) -> int:
    spans = [json.loads(Path(folder, f"{i}.json").read_text()) for i in range(n)]
    return max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)


@pytest.mark.parametrize("where", ["threads", "processes", "executor"])
def test_max_in_flight_caps_running_items_whatever_the_workers(schema, tmp_path, where):
    kwargs: dict = {"workers": 8, "processes": where == "processes"}
    pool = _processes(8) if where == "executor" else None
    if pool is not None:
        kwargs = {"executor": pool}

    @dnb.workflow
    def wf(folder):
        return dnb.map(_timed, [(folder, i) for i in range(10)], max_in_flight=2, **kwargs)

    try:
        assert wf(str(tmp_path)) == list(range(10))
    finally:
        if pool is not None:
            pool.shutdown()
    peak = _peak(tmp_path, 10)
    # Worker processes start one by one, and the first may run both items of the window.
    assert peak == 2 if where == "threads" else 1 <= peak <= 2


def test_a_callers_thread_pool_runs_items_and_stays_open(schema, calls):
    @dnb.transaction
    def book(x):
        calls(f"book{x}")
        dnb.connection().execute("SELECT 1")
        return x + 1

    with cf.ThreadPoolExecutor(3) as pool:

        @dnb.workflow
        def wf():
            return dnb.map(_square, range(6), executor=pool), dnb.map(book, range(3), executor=pool)

        assert wf() == ([x * x for x in range(6)], [1, 2, 3])
        assert pool.submit(_square, 7).result() == 49  # the caller's: not shut down
        assert wf() == ([x * x for x in range(6)], [1, 2, 3])  # replayed
    assert all(calls[f"book{x}"] == 1 for x in range(3))
    assert len(dnb.steps(wf.id_for())) == 9


def test_a_callers_process_pool(schema):
    @dnb.transaction
    def book(x):
        return x

    with _processes(2) as pool:

        @dnb.workflow
        def wf():
            return dnb.map(_pid, range(5), executor=pool, label=str)

        out = wf()
        assert [x for x, _ in out] == list(range(5))
        assert os.getpid() not in {p for _, p in out}
        assert pool.submit(_square, 3).result() == 9  # still open
        assert dnb.map(_square, [2, 3], executor=pool) == [4, 9]  # outside a workflow too
        with pytest.raises(TypeError, match="transaction.*in this process.*ThreadPoolExecutor"):
            dnb.map(book, range(2), executor=pool)
        with pytest.raises(ValueError, match="with executor= the executor's own workers"):
            dnb.map(_square, range(2), executor=pool, workers=2)
        with pytest.raises(dnb.UnserializableArgumentsError, match="cannot send item 1 .* to the executor"):
            dnb.map(_square, [1, threading.Lock(), 3], executor=pool)
    with pytest.raises(TypeError, match="executor= takes a concurrent.futures.Executor"):
        dnb.map(_square, range(2), executor="dask")


MAP_CANCEL = """
import concurrent.futures as cf, multiprocessing, time

@dnb.step
def item(i):
    hit("item", i)
    time.sleep(0.3)
    return i

@dnb.workflow
def many(processes, cap):
    with cf.ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return dnb.map(item, range(100), executor=pool, max_in_flight=cap)

if __name__ == "__main__":
    with dnb.workflow_id("map-cancel-exec"):
        try:
            print(json.dumps(many(*json.loads(sys.argv[1]))))
        except dnb.WorkflowCancelledError:
            print(json.dumps("cancelled"))
"""


@pytest.mark.parametrize("processes,cap,ahead", [(4, 2, 2), (2, None, 4)], ids=["max_in_flight", "default"])
def test_items_not_handed_out_never_start_after_a_cancel(
    run_child, effects, sql, schema, processes, cap, ahead
):
    # What may still start: max_in_flight items; or, without it, the items a process pool has
    # moved to its call queue (max_workers + 1: it marks them running, they cannot be cancelled).
    proc = run_child(MAP_CANCEL, json.dumps([processes, cap]), background=True)
    _wait_for(effects, "item", 2)  # 100 items: plenty left when the CLI (a new process) cancels
    assert _cli("cancel", "map-cancel-exec") == "cancelled"
    started = effects.count("item")
    out, err = proc.communicate(timeout=60)
    assert json.loads(out) == "cancelled", err[-2000:]
    assert effects.count("item") <= started + ahead  # those handed out, at most; no new ones
    recorded = sql.execute(f'SELECT count(*) FROM "{schema}".steps').fetchone()[0]
    assert recorded <= effects.count("item")

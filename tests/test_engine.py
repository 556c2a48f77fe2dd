"""The replay loop in one process: replay, retries, transactions, map, children, helpers."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest

import durablenb as dnb
from durablenb.engine import runtime


class Crash(BaseException):
    """Stands in for a dying kernel: never recorded, leaves the workflow resumable."""


def test_step_outside_a_workflow_is_a_plain_call(schema, calls):
    @dnb.step
    def double(x):
        calls("double")
        return x * 2

    assert double(4) == 8
    assert double(4) == 8
    assert calls["double"] == 2
    assert len(dnb.workflows()) == 0


def test_finished_workflow_returns_recorded_result_without_running(schema, calls):
    @dnb.step
    def load(n):
        calls("load")
        return list(range(n))

    @dnb.workflow
    def total(n):
        calls("body")
        return sum(load(n))

    assert total(10) == 45
    assert total(10) == 45
    assert calls["load"] == 1 and calls["body"] == 1
    assert total(5) == 10  # other arguments: another workflow
    assert total.id_for(10) != total.id_for(5)
    assert total.id_for(10) == total.id_for(10)


def test_interrupted_workflow_resumes_from_last_finished_step(schema, calls):
    crash = {"on": True}

    @dnb.step
    def stage(i):
        calls(f"stage{i}")
        if i == 2 and crash["on"]:
            raise Crash()
        return i

    @dnb.workflow
    def pipeline():
        return [stage(i) for i in range(4)]

    with pytest.raises(Crash):
        pipeline()
    wf = dnb.workflows()
    assert wf.loc[0, "status"] == "interrupted"
    crash["on"] = False
    assert pipeline() == [0, 1, 2, 3]
    assert [calls[f"stage{i}"] for i in range(4)] == [1, 1, 2, 1]
    assert dnb.workflows().loc[0, "runs"] == 2


def test_retries_with_backoff_record_attempts(schema, calls):
    @dnb.step(retries=3, backoff=2.0, interval=0.01, retry_on=ConnectionError)
    def fetch():
        calls("fetch")
        if calls["fetch"] < 3:
            raise ConnectionError("flaky network")
        return "ok"

    @dnb.step(retries=3, interval=0.01, retry_on=ConnectionError)
    def picky():
        calls("picky")
        raise ValueError("not retried")

    @dnb.workflow
    def wf():
        out = fetch()
        try:
            picky()
        except ValueError:
            pass
        return out

    assert wf() == "ok"
    steps = dnb.steps(wf.id_for())
    assert steps["attempts"].tolist() == [3, 1]
    assert steps["status"].tolist() == ["retried", "failed"]
    assert calls["picky"] == 1
    assert fetch.delay(1) == pytest.approx(0.01) and fetch.delay(3) == pytest.approx(0.04)


def test_transaction_commits_with_its_record_and_rolls_back_on_error(schema, sql, calls):
    sql.execute(f'CREATE TABLE "{schema}".kv (k text PRIMARY KEY, v int)')

    @dnb.transaction
    def put(k, v):
        calls("put")
        dnb.connection().execute(f'INSERT INTO "{schema}".kv VALUES (%s, %s)', [k, v])
        if v < 0:
            raise ValueError("negative")
        return v

    @dnb.workflow
    def wf():
        put("a", 1)
        try:
            put("b", -1)
        except ValueError:
            pass
        return "done"

    assert wf() == "done"
    assert sql.execute(f'SELECT k, v FROM "{schema}".kv').fetchall() == [("a", 1)]
    st = dnb.steps(wf.id_for())
    assert st["kind"].tolist() == ["transaction", "transaction"]
    assert st["status"].tolist() == ["succeeded", "failed"]
    assert st.loc[1, "error_type"] == "ValueError"
    # Outside a workflow a transaction is a plain, committed transaction.
    assert put("c", 3) == 3
    assert sql.execute(f'SELECT count(*) FROM "{schema}".kv').fetchone()[0] == 2
    with pytest.raises(dnb.DurableError, match="only available inside"):
        dnb.connection()


def test_map_keeps_order_and_skips_finished_items_on_resume(schema, calls):
    crash = {"on": True}

    @dnb.step
    def square(x):
        calls(f"sq{x}")
        if x == 5 and crash["on"]:
            time.sleep(0.2)  # let the others finish and be recorded first
            raise Crash()
        return x * x

    @dnb.workflow
    def wf(n):
        return dnb.map(square, range(n), workers=3)

    with pytest.raises(Crash):
        wf(8)
    crash["on"] = False
    assert wf(8) == [x * x for x in range(8)]
    assert calls["sq5"] == 2
    recorded_once = sum(1 for x in range(8) if calls[f"sq{x}"] == 1)
    assert recorded_once >= 5  # items finished before the crash were not run again
    assert len(dnb.steps(wf.id_for(8))) == 8


def test_map_item_failure_is_raised_after_the_others_finish(schema, calls):
    @dnb.step
    def check(x):
        calls(f"c{x}")
        if x in (2, 4):
            raise ValueError(f"item {x} is bad")
        return x

    @dnb.workflow(on_failure="replay")
    def wf():
        return dnb.map(check, range(6), workers=2)

    with pytest.raises(ValueError, match="item 2 is bad"):
        wf()
    st = dnb.steps(wf.id_for())
    assert st["status"].tolist() == ["succeeded", "succeeded", "failed", "succeeded", "failed",
                                     "succeeded"]  # fmt: skip
    with pytest.raises(ValueError, match="item 2 is bad"):
        wf()
    assert all(calls[f"c{x}"] == 1 for x in range(6))


def _cube(x):
    return x**3


def test_map_on_processes(schema):
    @dnb.workflow
    def wf():
        return dnb.map(_cube, [1, 2, 3], workers=2, processes=True)

    assert wf() == [1, 8, 27]
    assert dnb.map(_cube, [2, 3], processes=True) == [8, 27]  # outside a workflow too


def test_child_workflows_get_derived_ids_and_replay(schema, calls):
    @dnb.step
    def work(x):
        calls(f"work{x}")
        return x + 1

    @dnb.workflow
    def child(x):
        return work(x)

    @dnb.workflow
    def parent():
        return [child(1), child(2)]

    assert parent() == [2, 3]
    pid = parent.id_for()
    ids = set(dnb.workflows()["workflow_id"])
    assert {pid, f"{pid}/0", f"{pid}/1"} <= ids
    st = dnb.steps(pid)
    assert st["kind"].tolist() == ["workflow", "workflow"]
    assert st["child_id"].tolist() == [f"{pid}/0", f"{pid}/1"]
    assert parent() == [2, 3]
    assert calls["work1"] == 1 and calls["work2"] == 1


def test_start_returns_a_handle(schema, calls):
    gate = threading.Event()

    @dnb.step
    def wait_for_gate():
        gate.wait(10)
        return "opened"

    @dnb.workflow
    def background():
        return wait_for_gate()

    h = dnb.start(background)
    assert h.workflow_id == background.id_for()
    time.sleep(0.2)
    assert h.status() == "running"
    with pytest.raises(dnb.WorkflowBusyError):
        background()  # the same workflow, run twice at once
    gate.set()
    assert h.result(timeout=10) == "opened"
    assert h.status() == "succeeded"
    assert dnb.retrieve(h.workflow_id).result() == "opened"


def test_start_inside_a_workflow_records_the_child(schema):
    @dnb.workflow
    def child(x):
        return x * 10

    @dnb.workflow
    def parent():
        handles = [dnb.start(child, i) for i in range(3)]
        return [h.result() for h in handles]

    assert parent() == [0, 10, 20]
    st = dnb.steps(parent.id_for())
    assert st["kind"].tolist() == ["start"] * 3
    assert parent() == [0, 10, 20]


def test_sleep_now_random_replay_identically(schema):
    crash = {"on": True}
    seen = []

    @dnb.step
    def boom():
        if crash["on"]:
            raise Crash()

    @dnb.workflow
    def wf():
        t, r = dnb.now(), dnb.random()
        dnb.sleep(0.05)
        seen.append((t, r))
        boom()
        return t.isoformat(), r

    with pytest.raises(Crash):
        wf()
    crash["on"] = False
    t0 = time.monotonic()
    out = wf()
    assert time.monotonic() - t0 < 5
    assert seen[0] == seen[1]
    assert out == (seen[0][0].isoformat(), seen[0][1])
    assert seen[0][0].tzinfo is not None
    assert 0 <= seen[0][1] < 1


def test_explicit_workflow_id_and_conflicts(schema):
    @dnb.workflow
    def report(x):
        return x

    @dnb.workflow
    def other(x):
        return x

    with dnb.workflow_id("nightly-2026-11-24"):
        assert report(1) == 1
    assert dnb.workflows().loc[0, "workflow_id"] == "nightly-2026-11-24"
    with dnb.workflow_id("nightly-2026-11-24"), pytest.raises(dnb.WorkflowConflictError):
        report(2)
    with dnb.workflow_id("nightly-2026-11-24"), pytest.raises(dnb.WorkflowConflictError):
        other(1)
    with pytest.raises(ValueError):
        with dnb.workflow_id(""):
            pass


def test_unencodable_arguments_fail_before_anything_runs(schema, calls):
    @dnb.workflow
    def wf(x):
        calls("body")
        return 1

    with pytest.raises(dnb.UnserializableArgumentsError, match="lock"):
        wf(threading.Lock())
    with pytest.raises(TypeError):  # also a TypeError
        wf(threading.Lock())
    assert calls["body"] == 0
    assert len(dnb.workflows()) == 0


def test_unencodable_step_output_is_a_clear_error_and_not_rerun_silently(schema, calls):
    @dnb.step
    def opens_lock():
        calls("opens")
        return threading.Lock()

    @dnb.workflow
    def wf():
        return opens_lock()

    with pytest.raises(dnb.UnserializableOutputError) as info:
        wf()
    assert "opens_lock" in str(info.value) and "lock" in str(info.value)
    assert info.value.step.endswith("opens_lock")
    with pytest.raises(dnb.UnserializableOutputError):
        wf()  # a failed workflow is retried when called again, but not for this failure
    assert calls["opens"] == 1


def test_values_of_many_types_round_trip(schema):
    frame = pd.DataFrame({"a": [1, 2], "b": ["x", "y"]})
    values = [None, True, 3, 2.5, "text", [1, [2]], {"k": {"n": 1}}, (1, 2), {1, 2},
              b"bytes", float("nan"), frame, lambda v: v + 1]  # fmt: skip

    @dnb.step
    def emit(i):
        return values[i]

    @dnb.workflow
    def wf():
        return [emit(i) for i in range(len(values))]

    wf()
    out = wf()  # replayed from the records
    for got, want in zip(out[:10], values[:10], strict=True):
        assert got == want and type(got) is type(want)
    assert out[10] != out[10]
    pd.testing.assert_frame_equal(out[11], frame)
    assert out[12](1) == 2
    codecs = dnb.steps(wf.id_for())["codec"].tolist()
    assert codecs[:7] == ["json"] * 7 and codecs[12] == "cloudpickle"


def test_cancel_stops_before_the_next_step(schema, calls):
    gate, inside = threading.Event(), threading.Event()

    @dnb.step
    def first():
        inside.set()
        gate.wait(10)
        return 1

    @dnb.step
    def second():
        calls("second")
        return 2

    @dnb.workflow
    def wf():
        return first() + second()

    h = dnb.start(wf)
    assert inside.wait(30)  # running its first step (however slow the machine is to get there)
    assert dnb.cancel(h.workflow_id)
    gate.set()
    with pytest.raises(dnb.WorkflowCancelledError):
        h.result(timeout=10)
    assert calls["second"] == 0
    assert h.status() == "cancelled"
    with pytest.raises(dnb.WorkflowCancelledError):
        wf()
    h2 = dnb.resume(h.workflow_id)
    assert h2.result(timeout=10) == 3


def test_resume_reopens_a_failed_workflow(schema, calls):
    broken = {"on": True}

    @dnb.step
    def ok():
        calls("ok")
        return 1

    @dnb.step
    def fragile():
        calls("fragile")
        if broken["on"]:
            raise OSError("disk full")
        return 2

    @dnb.workflow
    def wf():
        return ok() + fragile()

    with pytest.raises(OSError):
        wf()
    broken["on"] = False
    assert dnb.resume(wf.id_for()).result(timeout=10) == 3
    assert calls["ok"] == 1 and calls["fragile"] == 2


def test_recover_resumes_interrupted_workflows(schema, calls):
    crash = {"on": True}

    @dnb.step
    def s(i):
        calls(f"s{i}")
        if i == 1 and crash["on"]:
            raise Crash()
        return i

    @dnb.workflow
    def wf():
        return [s(0), s(1)]

    with pytest.raises(Crash):
        wf()
    crash["on"] = False
    handles = dnb.recover()
    assert [h.workflow_id for h in handles] == [wf.id_for()]
    assert handles[0].result(timeout=10) == [0, 1]
    assert calls["s0"] == 1
    assert dnb.recover() == []


def test_fork_from_a_step_reuses_earlier_records(schema, calls):
    @dnb.step
    def s(i):
        calls(f"s{i}")
        return i

    @dnb.workflow
    def wf():
        return [s(0), s(1), s(2)]

    wf()
    h = dnb.fork(wf.id_for(), from_step=1)
    assert h.result(timeout=10) == [0, 1, 2]
    assert [calls[f"s{i}"] for i in range(3)] == [1, 2, 2]
    row = dnb.workflows(name=wf.name)
    assert set(row["forked_from"].dropna()) == {wf.id_for()}
    assert dnb.forget(wf.id_for()) == 1  # a fork is a workflow of its own: it stays
    assert dnb.forget(h.workflow_id) == 1
    assert len(dnb.workflows()) == 0


def _define(src: str):
    ns: dict = {"dnb": dnb}
    exec(src, ns)
    return ns


def test_changed_step_code_forks_the_run_from_that_step(schema):
    base = """
log = []
@dnb.step(name="load")
def load():
    log.append("load"); return 1

@dnb.step(name="clean")
def clean(x):
    log.append("clean"); return x + {k}

@dnb.step(name="report")
def report(x):
    log.append("report"); return x * 10

@dnb.workflow(name="analysis", on_change="{mode}")
def analysis():
    return report(clean(load()))
"""
    v1 = _define(base.format(k=1, mode="fork"))
    assert v1["analysis"]() == 20
    v2 = _define(base.format(k=5, mode="fork"))
    assert v2["analysis"]() == 60
    assert v2["log"] == ["clean", "report"]  # load replayed, the edit and after re-ran
    wf = dnb.workflows(name="analysis", status=["succeeded", "superseded"])
    assert sorted(wf["status"]) == ["succeeded", "superseded"]
    live = wf[wf.status == "succeeded"].iloc[0]
    assert live["forked_from"] == live["workflow_id"] + "~1"
    # Unchanged code now: plain replay of the new run.
    v2b = _define(base.format(k=5, mode="fork"))
    assert v2b["analysis"]() == 60 and v2b["log"] == []
    v3 = _define(base.format(k=7, mode="error"))
    with pytest.raises(dnb.CodeChangedError):
        v3["analysis"]()
    v4 = _define(base.format(k=7, mode="ignore"))
    assert v4["analysis"]() == 60


def test_changed_workflow_body_forks_where_the_calls_diverge(schema):
    steps = """
log = []
@dnb.step(name="a")
def a():
    log.append("a"); return 1
@dnb.step(name="b")
def b():
    log.append("b"); return 2
@dnb.step(name="c")
def c():
    log.append("c"); return 3
"""
    v1 = _define(steps + '@dnb.workflow(name="w")\ndef w():\n    return [a(), b()]\n')
    assert v1["w"]() == [1, 2]
    v2 = _define(steps + '@dnb.workflow(name="w")\ndef w():\n    return [a(), c(), b()]\n')
    assert v2["w"]() == [1, 3, 2]
    assert v2["log"] == ["c", "b"]


def test_history_frames_have_typed_columns(schema):
    @dnb.step
    def s():
        return 1

    @dnb.workflow
    def wf():
        return s()

    wf()
    w = dnb.workflows()
    assert list(w.columns[:7]) == ["workflow_id", "name", "status", "created_at", "updated_at",
                                   "finished_at", "duration"]  # fmt: skip
    assert str(w["created_at"].dtype).startswith("datetime64") and w["created_at"].dt.tz
    assert str(w["duration"].dtype).startswith("timedelta64")
    assert w.loc[0, "steps"] == 1
    st = dnb.steps(wf.id_for())
    assert str(st["duration"].dtype).startswith("timedelta64")
    assert st.loc[0, "output_bytes"] == 1
    assert len(dnb.workflows(status="failed")) == 0
    assert len(dnb.workflows(status="succeeded", name=wf.name)) == 1


def test_store_is_reused_and_repr_is_masked(schema, dsn):
    store = runtime.store()
    assert store is runtime.store()
    assert store.schema == schema
    assert "password" not in repr(store).lower() or "***" in repr(store)

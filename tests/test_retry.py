"""Retry after a fix: calling a workflow that finished with an error runs it again from its
first failed step; `on_failure="replay"` keeps the recorded error; a resumed interrupted run
always replays recorded errors."""

from __future__ import annotations

import json
import logging

import pytest

import durablenb as dnb
from durablenb.engine import runtime


def test_a_fixed_cause_is_retried_from_the_failed_step(schema, calls, tmp_path, caplog):
    source = tmp_path / "flights.csv"

    @dnb.step
    def prepare():
        calls("prepare")
        return str(source)

    @dnb.step
    def load(path):
        calls("load")
        return open(path).read().strip()

    @dnb.workflow
    def analysis():
        return load(prepare()).upper()

    with pytest.raises(FileNotFoundError):
        analysis()
    source.write_text("jfk,lga\n")  # the fix: the file now exists
    with caplog.at_level(logging.WARNING, logger="durablenb"):
        assert analysis() == "JFK,LGA"
    assert (calls["prepare"], calls["load"]) == (1, 2)  # the earlier step replayed
    assert f"retrying from step {load.name!r} (it failed with FileNotFoundError)" in caplog.text
    wid = analysis.id_for()
    store = runtime.store()
    assert store.get_workflow(wid).status == "succeeded"
    assert store.get_workflow(f"{wid}~1").status == "superseded"  # the failed run, kept
    assert analysis() == "JFK,LGA" and calls["load"] == 2  # finished now: replayed


def test_on_failure_replay_keeps_the_recorded_error(schema, calls, tmp_path):
    @dnb.step
    def load():
        calls("load")
        return (tmp_path / "missing.csv").read_text()

    @dnb.workflow(on_failure="replay")
    def analysis():
        return load()

    for _ in range(2):
        with pytest.raises(FileNotFoundError):
            analysis()
    assert calls["load"] == 1
    with pytest.raises(ValueError, match="on_failure must be 'retry' or 'replay'"):
        dnb.workflow(on_failure="again")(lambda: None)


def test_a_body_that_failed_outside_any_step_runs_again_its_steps_replayed(schema, calls):
    state = {"ok": False}

    @dnb.step
    def fetch():
        calls("fetch")
        return 41

    @dnb.workflow
    def analysis():
        value = fetch()
        if not state["ok"]:
            raise RuntimeError("the body's own bug")
        return value + 1

    with pytest.raises(RuntimeError):
        analysis()
    state["ok"] = True
    assert analysis() == 42
    assert calls["fetch"] == 1


def test_a_failed_child_replays_inside_its_resumed_parent(run_child, effects):
    """The parent caught its child's failure and was killed before it finished: resuming it
    must replay the failure (the parent may have acted on it), not retry the child."""
    body = """
    @dnb.step
    def flaky():
        hit("flaky")
        raise KeyError("missing column")

    @dnb.workflow
    def child():
        return flaky()

    @dnb.step
    def after(note):
        hit("after")
        return note

    @dnb.workflow
    def parent():
        try:
            child()
            note = "child ok"
        except KeyError:
            note = "child failed"
        crash_once("parent")
        return after(note)

    print(json.dumps(parent()))
    """
    first = run_child(body)
    assert first.returncode == 137
    second = run_child(body)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == "child failed"
    assert effects.count("flaky") == 1


def test_a_failed_cell_runs_again_once_fixed(shell, tmp_path):
    path = tmp_path / "rates.csv"
    cell = f"%%durable --id rates\nrates = open({str(path)!r}).read().split(',')\n"
    with pytest.raises(FileNotFoundError):
        shell.run(cell)
    path.write_text("1,2,3")
    shell.run(cell)
    assert shell.ip.user_ns["rates"] == ["1", "2", "3"]
    assert runtime.store().get_workflow("rates").status == "succeeded"


def test_a_finished_workflow_answers_from_its_record_without_its_lock(schema, sql, calls):
    @dnb.step
    def one():
        calls("one")
        return 1

    @dnb.workflow
    def wf():
        return one()

    assert wf() == 1
    store = runtime.store()
    sql.execute("SELECT pg_advisory_lock(%s)", [store.lock_key(wf.id_for())])  # someone holds it
    try:
        assert wf() == 1  # a rerun of a finished workflow reads its record: one query, no lock
    finally:
        sql.execute("SELECT pg_advisory_unlock(%s)", [store.lock_key(wf.id_for())])
    assert calls["one"] == 1


def test_resume_of_a_failed_workflow_reruns_what_followed_the_failure(schema, calls):
    """The workflow caught a failure and acted on it before failing: resuming it after the
    fix must not replay what it did on the strength of that failure."""
    broken = {"on": True}

    @dnb.step
    def fetch():
        calls("fetch")
        if broken["on"]:
            raise ConnectionError("service down")
        return "fresh"

    @dnb.step
    def note(source):
        calls("note")
        return f"used {source}"

    @dnb.workflow(on_failure="replay")  # resume retries all the same
    def report():
        try:
            source = fetch()
        except ConnectionError:
            source = "stale cache"
        used = note(source)
        if source != "fresh":
            raise RuntimeError(used)
        return used

    with pytest.raises(RuntimeError, match="used stale cache"):
        report()
    broken["on"] = False
    assert dnb.resume(report.id_for()).result(timeout=30) == "used fresh"
    assert (calls["fetch"], calls["note"]) == (2, 2)
    assert runtime.store().get_workflow(report.id_for() + "~1").status == "superseded"

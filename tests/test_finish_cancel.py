"""The finish is durable before the call returns, and a cancel stops a workflow before its
next step — from another process, inside `dnb.map`, in started children — without the
caller and the record ever disagreeing. Real processes; effects counted in files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import durablenb as dnb

from .conftest import REPO

FINISH_THEN_DIE = """
import signal

@dnb.step
def answer():
    return 41

@dnb.workflow
def wf():
    return answer() + 1

with dnb.workflow_id(sys.argv[1]):
    result = wf()
os.kill(os.getpid(), signal.SIGKILL)  # microseconds after the call returned
"""

RETRIEVE = """
print(json.dumps([dnb.retrieve(wid).result(timeout=10) for wid in sys.argv[1:]]))
"""


def test_a_workflow_that_returned_is_recorded_finished_even_if_the_process_dies_at_once(
    run_child, sql, schema
):
    ids = [f"finish-{i}" for i in range(6)]
    for wid in ids:
        assert run_child(FINISH_THEN_DIE, wid).returncode == -9
    status = dict(sql.execute(f'SELECT id, status FROM "{schema}".workflows').fetchall())
    assert status == dict.fromkeys(ids, "succeeded")
    out = run_child(RETRIEVE, *ids)  # a handle in another process gets the result
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [42] * len(ids)


TWO_STEPS = """
import time

@dnb.step
def first():
    hit("first")
    while not (EFFECTS / "go").exists():
        time.sleep(0.01)
    return 1

@dnb.step
def second():
    hit("second")
    return 2

@dnb.workflow
def two():
    return [first(), second()]

@dnb.workflow
def one():
    return first()

@dnb.step
def quick():
    return 0

@dnb.workflow
def between():
    a = quick()
    hit("between")  # the workflow's own code, between two steps: the cancel lands here
    while not (EFFECTS / "go").exists():
        time.sleep(0.01)
    return [a, second()]

with dnb.workflow_id(sys.argv[2]):
    try:
        print(json.dumps({"two": two, "one": one, "between": between}[sys.argv[1]]()))
    except dnb.WorkflowCancelledError:
        print(json.dumps("cancelled"))
"""


def _cli(*args: str) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-m", "durablenb", *args], env=env, capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def _wait_for(effects, name, n=1, timeout=60.0):
    deadline = time.monotonic() + timeout
    while effects.count(name) < n:
        assert time.monotonic() < deadline, f"{name} never happened {n} times"
        time.sleep(0.02)


def _status(sql, schema, wid):
    return sql.execute(f'SELECT status FROM "{schema}".workflows WHERE id = %s', [wid]).fetchone()[0]


@pytest.mark.parametrize("shape,waits_in", [("two", "first"), ("between", "between")])
def test_a_cancel_from_the_cli_stops_the_workflow_before_its_next_step(
    run_child, effects, sql, schema, shape, waits_in
):
    proc = run_child(TWO_STEPS, shape, "cancel-me", background=True)
    _wait_for(effects, waits_in)  # inside a step, or in the workflow's code between steps
    assert _cli("cancel", "cancel-me") == "cancelled"
    (effects.root / "go").write_text("go")
    out, err = proc.communicate(timeout=60)
    assert json.loads(out) == "cancelled", err[-2000:]
    assert effects.count("second") == 0
    assert _status(sql, schema, "cancel-me") == "cancelled"


def test_a_cancel_after_the_last_step_is_what_the_caller_sees(run_child, effects, sql, schema):
    proc = run_child(TWO_STEPS, "one", "late-cancel", background=True)
    _wait_for(effects, "first")
    assert _cli("cancel", "late-cancel") == "cancelled"
    (effects.root / "go").write_text("go")
    out, err = proc.communicate(timeout=60)
    assert json.loads(out) == "cancelled", err[-2000:]  # not the body's 1
    assert _status(sql, schema, "late-cancel") == "cancelled"
    # A cancel after the call returned comes too late, and says so; the outcome stands.
    done = run_child(TWO_STEPS, "one", "finished")
    assert json.loads(done.stdout) == 1
    assert _cli("cancel", "finished") == "not running"
    assert _status(sql, schema, "finished") == "succeeded"


MAP = """
import time

@dnb.step
def item(i):
    hit("item", i)
    time.sleep(0.3)
    return i

@dnb.workflow
def many():
    return dnb.map(item, range(20), workers=2)

with dnb.workflow_id("map-cancel"):
    try:
        print(json.dumps(many()))
    except dnb.WorkflowCancelledError:
        print(json.dumps("cancelled"))
"""


def test_map_items_honour_a_cancel(run_child, effects, sql, schema):
    proc = run_child(MAP, background=True)
    _wait_for(effects, "item", 2)
    assert _cli("cancel", "map-cancel") == "cancelled"
    started = effects.count("item")
    out, err = proc.communicate(timeout=60)
    assert json.loads(out) == "cancelled", err[-2000:]
    ran = effects.count("item")
    # Only items already under way when the cancel was heard: the two workers' (and, on a
    # loaded machine, the next two, taken while the notification was on its way).
    assert ran <= started + 4
    recorded = sql.execute(f'SELECT count(*) FROM "{schema}".steps').fetchone()[0]
    assert recorded <= ran  # items that ran are recorded; none that did not
    assert _status(sql, schema, "map-cancel") == "cancelled"


STARTED = """
import time

@dnb.step
def tick(i):
    hit("tick", i)
    while not (EFFECTS / f"go-{i}").exists():
        time.sleep(0.01)
    return i

@dnb.workflow
def child(n):
    return [tick(i) for i in range(n)]

@dnb.workflow
def parent():
    with dnb.workflow_id("report-child"):  # an id of its own, not derived from the parent's
        h = dnb.start(child, 3)
    return h.result()

with dnb.workflow_id("parent"):
    try:
        print(json.dumps(parent()))
    except dnb.WorkflowCancelledError:
        print(json.dumps("cancelled"))
"""


def test_started_children_honour_a_cancel_of_their_parent(run_child, effects, sql, schema):
    proc = run_child(STARTED, background=True)
    _wait_for(effects, "tick")
    assert _cli("cancel", "parent") == "cancelled"
    for i in range(3):
        (effects.root / f"go-{i}").write_text("go")
    out, err = proc.communicate(timeout=60)
    assert json.loads(out) == "cancelled", err[-2000:]
    assert effects.count("tick") == 1  # the child stopped before its next step
    assert _status(sql, schema, "report-child") == "cancelled"


RESUMED = """
import time

@dnb.step
def first():
    hit("first")
    while not (EFFECTS / "go").exists():
        time.sleep(0.01)
    return 1

@dnb.step
def second():
    return 2

@dnb.workflow
def wf():
    return [first(), second()]

with dnb.workflow_id("resumed"):
    h = dnb.start(wf)
while not (EFFECTS / "first.log").exists():
    time.sleep(0.01)
dnb.cancel("resumed")
(EFFECTS / "go").write_text("go")
try:
    h.result(timeout=30)
except dnb.WorkflowCancelledError:
    print("cancelled")
dnb.resume("resumed")
print(json.dumps(h.result(timeout=30)))  # the handle follows the record, not its first run
"""


def test_a_handle_follows_a_resume_after_a_cancel(run_child):
    out = run_child(RESUMED)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "cancelled" and json.loads(lines[1]) == [1, 2]


def test_cancel_of_an_unknown_workflow_is_a_clear_error(schema):
    try:
        dnb.cancel("no-such-workflow")
    except dnb.WorkflowNotFoundError as exc:
        assert "no-such-workflow" in str(exc)
    else:
        raise AssertionError("cancel of an unknown id did not raise")

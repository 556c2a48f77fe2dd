"""Timeouts: a step's attempt is interrupted and recorded as `StepTimeoutError` (its retry
policy applies), in the main thread, in `dnb.map` threads and processes, in async steps and
in transactions (rolled back); a workflow past its deadline is cancelled, and the deadline
is recorded, so it holds across a kill and a rerun. Real processes, effects counted in files."""

from __future__ import annotations

import json
import signal
import time

import pytest

import durablenb as dnb

STEP_TIMEOUTS = """
import time

@dnb.step(timeout=0.5)
def sleeper():
    hit("sleeper")
    time.sleep(60)  # one blocking call: SIGALRM wakes it in the main thread

@dnb.step(timeout=0.5)
def stubborn():
    hit("stubborn")
    t0 = time.time()
    while time.time() - t0 < 3:
        try:
            time.sleep(0.02)
        except BaseException:  # swallows the interrupt: the attempt still timed out
            pass
    return "finished late"

@dnb.step(timeout=0.5, retries=2, interval=0)
def flaky():
    hit("flaky")
    if EFFECTS.joinpath("flaky.log").read_text().count("\\n") < 2:
        time.sleep(60)
    return "second try"

@dnb.workflow
def wf():
    out = []
    for step in (sleeper, stubborn, flaky):
        try:
            out.append(step())
        except dnb.StepTimeoutError as exc:
            out.append(type(exc).__name__)
    return out

t0 = time.time()
with dnb.workflow_id("steps"):
    result = wf()
print(json.dumps({"result": result, "seconds": time.time() - t0}))
"""


def test_a_step_past_its_timeout_is_interrupted_and_recorded_and_retries_apply(
    run_child, effects, sql, schema
):
    out = run_child(STEP_TIMEOUTS)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["result"] == ["StepTimeoutError", "StepTimeoutError", "second try"]
    assert got["seconds"] < 20  # the 60 s sleeps were cut short
    rows = sql.execute(
        f'SELECT name, status, error_type, attempts FROM "{schema}".steps ORDER BY position'
    ).fetchall()
    assert rows == [
        ("sleeper", "failed", "durablenb.errors.StepTimeoutError", 1),
        ("stubborn", "failed", "durablenb.errors.StepTimeoutError", 1),
        ("flaky", "succeeded", None, 2),
    ]
    # A second process replays the records: nothing runs again.
    again = run_child(STEP_TIMEOUTS)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout.strip().splitlines()[-1])["result"] == got["result"]
    assert (effects.count("sleeper"), effects.count("stubborn"), effects.count("flaky")) == (1, 1, 2)


MAP_AND_ASYNC = """
import asyncio, time

@dnb.step(timeout=0.5)
def item(n):
    hit(f"item-{n}")
    t0 = time.time()
    while n % 2 and time.time() - t0 < 30:  # odd items hang (in Python: a thread is reachable)
        time.sleep(0.01)
    return n

@dnb.step(timeout=0.5)
async def waits():
    hit("waits")
    await asyncio.sleep(60)

@dnb.workflow
def fan(where):
    try:
        return dnb.map(item, range(4), workers=2, processes=where == "processes")
    except dnb.StepTimeoutError as exc:  # the first failure; the other items finished
        return type(exc).__name__

@dnb.workflow
async def waiting():
    try:
        await waits()
    except dnb.StepTimeoutError as exc:
        return str(exc)

if __name__ == "__main__":
    with dnb.workflow_id("fan-" + sys.argv[1]):
        result = fan(sys.argv[1])
    with dnb.workflow_id("async-" + sys.argv[1]):
        message = asyncio.run(waiting())
    print(json.dumps([result, message]))
"""


@pytest.mark.parametrize("where", ["threads", "processes"])
def test_map_items_and_async_steps_time_out(run_child, effects, sql, schema, where):
    out = run_child(MAP_AND_ASYNC, where)
    assert out.returncode == 0, out.stderr[-3000:]
    result, message = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == "StepTimeoutError"
    assert "ran past its timeout of 0.5 s" in message
    items = sql.execute(
        f"SELECT label, status, error_type FROM \"{schema}\".steps WHERE workflow_id = %s ORDER BY position",
        [f"fan-{where}"],
    ).fetchall()
    timed_out = ("failed", "durablenb.errors.StepTimeoutError")
    assert items == [("0", "succeeded", None), ("1", *timed_out), ("2", "succeeded", None), ("3", *timed_out)]
    waited = sql.execute(f"SELECT status, error_type FROM \"{schema}\".steps WHERE name = 'waits'").fetchall()
    assert waited == [timed_out]
    assert [effects.count(f"item-{n}") for n in range(4)] == [1, 1, 1, 1]


TXN_TIMEOUT = """
@dnb.transaction(timeout=0.5)
def book(n):
    hit("book")
    dnb.connection().execute(f'INSERT INTO "{os.environ["DURABLENB_SCHEMA"]}".ledger VALUES (%s)', [n])
    dnb.connection().execute("SELECT pg_sleep(60)")

@dnb.workflow
def wf():
    try:
        book(1)
    except dnb.StepTimeoutError as exc:
        return "timed out: " + type(exc.__cause__).__name__
    return "committed"

with dnb.workflow_id("txn"):
    print(json.dumps(wf()))
"""


def test_a_transaction_past_its_timeout_rolls_back_and_is_recorded(run_child, effects, sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".ledger (n int)')
    t0 = time.monotonic()
    out = run_child(TXN_TIMEOUT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert time.monotonic() - t0 < 30
    assert json.loads(out.stdout.strip().splitlines()[-1]).startswith("timed out")
    assert sql.execute(f'SELECT count(*) FROM "{schema}".ledger').fetchone()[0] == 0
    row = sql.execute(f'SELECT status, error_type FROM "{schema}".steps').fetchone()
    assert row == ("failed", "durablenb.errors.StepTimeoutError")
    idle = sql.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%' AND state = 'active'"
    ).fetchone()[0]
    assert idle == 0  # the server's statement was cancelled, not left running


WORKFLOW_TIMEOUT = """
import time

@dnb.step
def tick(i):
    hit("tick", i)
    if i == 2 and sys.argv[1] == "crash":
        crash_once("ticks")
    time.sleep(0.4)
    return i

@dnb.workflow(timeout=float(sys.argv[2]))
def ticks():
    return [tick(i) for i in range(12)]

t0 = time.time()
try:
    with dnb.workflow_id("ticks"):
        out = ticks()
except dnb.WorkflowTimeoutError as exc:
    out = str(exc)
print(json.dumps({"out": out, "seconds": time.time() - t0}))
"""


def test_a_workflow_past_its_timeout_is_cancelled_before_its_next_step(run_child, effects, sql, schema):
    out = run_child(WORKFLOW_TIMEOUT, "run", "1.5")
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "ran past its timeout of 1.5 s" in got["out"]
    assert got["seconds"] < 4
    ran = effects.count("tick")
    assert 2 <= ran <= 6  # 0.4 s a step: about four before the deadline, none after the next
    status, message = sql.execute(f'SELECT status, error_message FROM "{schema}".workflows').fetchone()
    assert status == "cancelled" and "timeout" in message
    # Called again: the recorded outcome, nothing runs.
    again = run_child(WORKFLOW_TIMEOUT, "run", "1.5")
    assert "ran past its timeout" in json.loads(again.stdout.strip().splitlines()[-1])["out"]
    assert effects.count("tick") == ran


def test_a_deadline_holds_across_a_kill_and_resume_gives_a_new_one(run_child, effects, sql, schema):
    first = run_child(WORKFLOW_TIMEOUT, "crash", "2.5")
    assert first.returncode == 137  # killed in its third step, before the deadline
    assert effects.count("tick") == 3
    time.sleep(2.6)  # the recorded deadline passes while nothing runs
    rerun = run_child(WORKFLOW_TIMEOUT, "crash", "2.5")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    got = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert "ran past its timeout of 2.5 s" in got["out"]
    assert effects.count("tick") == 3  # cancelled before any step ran again
    # dnb.resume clears the deadline: the run it starts gets a new one and goes further.
    resume = run_child(
        "import time\n" + WORKFLOW_TIMEOUT.split("t0 = time.time()")[0]
        + "h = dnb.resume('ticks')\n"
        + "try:\n    h.result()\nexcept dnb.WorkflowTimeoutError as e:\n    print(json.dumps(str(e)))\n",
        "run", "1.5",
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "ran past its timeout of 1.5 s" in resume.stdout
    assert effects.count("tick") > 3


@pytest.mark.parametrize("bad", [0, -1, "5", True, float("nan")])
def test_bad_timeouts_are_refused_at_the_decoration(bad):
    with pytest.raises(ValueError, match="timeout"):
        dnb.step(timeout=bad)(lambda: 1)
    with pytest.raises(ValueError, match="timeout"):
        dnb.workflow(timeout=bad)(lambda: 1)


def test_a_step_timeout_leaves_the_alarm_as_it_found_it(schema):
    fired: list[int] = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)

        @dnb.step(timeout=0.2)
        def slow() -> None:
            time.sleep(5)

        @dnb.workflow
        def wf() -> str:
            try:
                slow()
            except dnb.StepTimeoutError:
                return "timed out"
            return "no"

        assert wf() == "timed out"
        time.sleep(1.6)
        assert fired == [1]  # the caller's own alarm still went off, once
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

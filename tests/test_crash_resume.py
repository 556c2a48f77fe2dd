"""Crash and resume in real child processes; effects counted in files and tables."""

from __future__ import annotations

import json
import time

import pytest

CHECKOUT = """
SCHEMA = os.environ["DURABLENB_SCHEMA"]
CRASH_IN = os.environ.get("CRASH_IN", "")

@dnb.transaction
def reserve_ticket(ticket):
    row = dnb.connection().execute(
        f'UPDATE "{SCHEMA}".tickets SET reserved = true WHERE id = %s AND NOT reserved RETURNING id',
        [ticket]).fetchone()
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["reserve"])
    return row is not None

@dnb.step
def process_payment(payment):
    if CRASH_IN == "payment":
        crash_once("payment")
    hit("payment", payment)
    return False          # the card is declined

@dnb.transaction
def undo_reserve_ticket(ticket):
    dnb.connection().execute(f'UPDATE "{SCHEMA}".tickets SET reserved = false WHERE id = %s', [ticket])
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["undo"])
    if CRASH_IN == "undo":
        crash_once("undo")   # killed inside the transaction, before it commits
    return True

@dnb.workflow
def checkout_workflow(ticket_info, payment_info):
    hit("workflow-body")
    reserved = reserve_ticket(ticket_info)
    if not reserved:
        return False
    payment_successful = process_payment(payment_info)
    if payment_successful:
        return True
    undo_reserve_ticket(ticket_info)
    return False

print(json.dumps(checkout_workflow(7, "card-4242")))
"""


def _setup_tickets(sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".tickets (id int PRIMARY KEY, reserved bool NOT NULL)')
    sql.execute(f'CREATE TABLE "{schema}".ledger (id serial PRIMARY KEY, event text NOT NULL)')
    sql.execute(f'INSERT INTO "{schema}".tickets VALUES (7, false)')


def _ledger(sql, schema):
    rows = sql.execute(f'SELECT event, count(*) FROM "{schema}".ledger GROUP BY event').fetchall()
    return dict(rows)


@pytest.mark.parametrize("crash_in", ["undo", "payment"])
def test_checkout_resumes_exactly_once(run_child, effects, sql, schema, crash_in):
    _setup_tickets(sql, schema)
    env = {"CRASH_IN": crash_in}

    first = run_child(CHECKOUT, env=env)
    assert first.returncode == 137, first.stderr
    # The killed transaction left nothing behind; committed ones stay.
    if crash_in == "undo":
        assert _ledger(sql, schema) == {"reserve": 1}
        assert effects.count("payment") == 1
    else:
        assert _ledger(sql, schema) == {"reserve": 1}
        assert effects.count("payment") == 0

    second = run_child(CHECKOUT, env=env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) is False
    assert _ledger(sql, schema) == {"reserve": 1, "undo": 1}
    assert effects.count("payment") == 1
    reserved = sql.execute(f'SELECT reserved FROM "{schema}".tickets WHERE id = 7').fetchone()[0]
    assert reserved is False
    body_runs = effects.count("workflow-body")

    third = run_child(CHECKOUT, env=env)
    assert third.returncode == 0, third.stderr
    assert json.loads(third.stdout) is False
    assert _ledger(sql, schema) == {"reserve": 1, "undo": 1}
    assert effects.count("payment") == 1
    assert effects.count("workflow-body") == body_runs  # finished: not even the body re-ran
    steps = sql.execute(
        f'SELECT position, name, status FROM "{schema}".steps ORDER BY position'
    ).fetchall()
    assert steps == [
        (0, "reserve_ticket", "succeeded"),
        (1, "process_payment", "succeeded"),
        (2, "undo_reserve_ticket", "succeeded"),
    ]


PIPELINE = """
CRASH_AT = int(os.environ.get("CRASH_AT", "-1"))

@dnb.step
def stage(i, acc):
    hit(f"stage{i}")
    if i == CRASH_AT:
        crash_once(f"stage{i}")
    return acc + [i * i]

@dnb.workflow
def pipeline(n):
    acc = []
    for i in range(n):
        acc = stage(i, acc)
    return sum(acc)

print(json.dumps(pipeline(6)))
"""


def test_completed_steps_never_rerun_after_crash(run_child, effects):
    first = run_child(PIPELINE, env={"CRASH_AT": "3"})
    assert first.returncode == 137, first.stderr
    assert [effects.count(f"stage{i}") for i in range(6)] == [1, 1, 1, 1, 0, 0]

    second = run_child(PIPELINE, env={"CRASH_AT": "3"})
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout) == sum(i * i for i in range(6))
    # Stages 0-2 were recorded before the crash: never run again. Stage 3 crashed inside its
    # body, before its record: a plain step is at-least-once, so it ran again.
    assert [effects.count(f"stage{i}") for i in range(6)] == [1, 1, 1, 2, 1, 1]

    third = run_child(PIPELINE)
    assert json.loads(third.stdout) == sum(i * i for i in range(6))
    assert [effects.count(f"stage{i}") for i in range(6)] == [1, 1, 1, 2, 1, 1]


EXCEPTIONS = """
class LedgerError(Exception):
    def __init__(self, account, amount):
        super().__init__(f"account {account} short by {amount}")
        self.account, self.amount = account, amount

class Unpicklable(Exception):
    def __init__(self, msg):
        super().__init__(msg)
        import threading
        self.handle = threading.Lock()   # cannot be pickled in any way

MODE = os.environ["MODE"]

@dnb.step
def fails():
    hit("fails")
    if MODE == "builtin":
        raise ValueError("bad row 17")
    if MODE == "custom":
        raise LedgerError("acme", 12)
    raise Unpicklable("opaque failure")

@dnb.workflow(on_failure="replay")  # a failure's record is what a call gets
def wf(mode):
    hit("body")
    try:
        fails()
    except Exception as exc:
        hit("caught", type(exc).__name__)
        raise

try:
    wf(MODE)
except Exception as exc:
    print(json.dumps({"type": type(exc).__name__, "msg": str(exc),
                      "extra": getattr(exc, "account", None)}))
"""


@pytest.mark.parametrize(
    "mode,expected_type,expected_msg,extra",
    [
        ("builtin", "ValueError", "bad row 17", None),
        ("custom", "LedgerError", "account acme short by 12", "acme"),
        ("opaque", "RecordedError", "__main__.Unpicklable: opaque failure", None),
    ],
)
def test_recorded_exceptions_replay_with_their_type(
    run_child, effects, mode, expected_type, expected_msg, extra
):
    first = run_child(EXCEPTIONS, env={"MODE": mode})
    assert first.returncode == 0, first.stderr
    got = json.loads(first.stdout)
    assert got["type"] == expected_type.replace("RecordedError", "Unpicklable")
    rerun = run_child(EXCEPTIONS, env={"MODE": mode})
    assert rerun.returncode == 0, rerun.stderr
    got = json.loads(rerun.stdout)
    assert got["type"] == expected_type
    assert got["msg"] == expected_msg
    assert got["extra"] == extra
    assert effects.count("fails") == 1
    assert effects.count("body") == 1  # the finished workflow re-raises without running


def test_recorded_step_exception_replays_inside_resumed_workflow(run_child, effects):
    body = """
    @dnb.step
    def flaky():
        hit("flaky")
        raise KeyError("missing column")

    @dnb.step
    def after():
        hit("after")
        crash_once("after")
        return 1

    @dnb.workflow
    def wf():
        try:
            flaky()
        except KeyError as exc:
            hit("caught", repr(exc))
        return after()

    print(json.dumps(wf()))
    """
    assert run_child(body).returncode == 137
    out = run_child(body)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == 1
    assert effects.count("flaky") == 1  # replayed from its record as the same KeyError
    assert effects.count("caught") == 2
    caught = effects.path("caught").read_text()
    assert caught.count("KeyError('missing column')") == 2


NONDET = """
ORDER = os.environ["ORDER"].split(",")

@dnb.step
def extract():
    hit("extract"); return 1

@dnb.step
def transform():
    hit("transform"); crash_once("transform"); return 2

@dnb.workflow
def wf():
    steps = {"extract": extract, "transform": transform}
    return [steps[n]() for n in ORDER]

try:
    print(json.dumps(wf()))
except dnb.NonDeterministicWorkflowError as exc:
    print(json.dumps({"error": str(exc), "recorded": exc.recorded, "called": exc.called,
                      "position": exc.position}))
"""


def test_changed_step_order_raises_determinism_error(run_child, effects):
    first = run_child(NONDET, env={"ORDER": "extract,transform"})
    assert first.returncode == 137
    second = run_child(NONDET, env={"ORDER": "transform,extract"})
    assert second.returncode == 0, second.stderr
    got = json.loads(second.stdout)
    assert got["recorded"] == "extract" and got["called"] == "transform"
    assert got["position"] == 0
    assert "'extract'" in got["error"] and "'transform'" in got["error"]
    assert effects.count("extract") == 1 and effects.count("transform") == 1
    # The workflow is still resumable with the original order.
    third = run_child(NONDET, env={"ORDER": "extract,transform"})
    assert json.loads(third.stdout) == [1, 2]
    assert effects.count("extract") == 1


CONCURRENT = """
MODE = os.environ["MODE"]
GO = EFFECTS / "go"

@dnb.step
def slow(i):
    hit(f"step{i}")
    import time; time.sleep(0.3)
    return i

@dnb.workflow(on_busy=MODE)
def shared():
    return [slow(i) for i in range(4)]

import time
while not GO.exists():
    time.sleep(0.01)
try:
    print(json.dumps({"result": shared()}))
except dnb.WorkflowBusyError as exc:
    print(json.dumps({"busy": exc.workflow_id}))
"""


@pytest.mark.parametrize("mode", ["wait", "error"])
def test_two_processes_on_one_workflow_run_each_step_once(run_child, effects, mode):
    procs = [run_child(CONCURRENT, background=True, env={"MODE": mode}) for _ in range(2)]
    time.sleep(1.5)  # both interpreters are up and polling for the go signal
    effects.path("go").parent.mkdir(exist_ok=True)
    (effects.root / "go").write_text("1")
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        outs.append(json.loads(stdout))
    assert [effects.count(f"step{i}") for i in range(4)] == [1, 1, 1, 1]
    results = [o for o in outs if "result" in o]
    if mode == "wait":
        assert outs == [{"result": [0, 1, 2, 3]}] * 2
    else:
        assert len(results) == 1 and results[0] == {"result": [0, 1, 2, 3]}
        assert sum(1 for o in outs if "busy" in o) == 1

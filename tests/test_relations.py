"""Relations between workflows live in columns, never in ids: forget, gc, cancel and recover
next to look-alike ids, in child processes, effects counted in tables and files."""

from __future__ import annotations

import json
import time

import durablenb as dnb

LOOKALIKES = """
SCHEMA = os.environ["DURABLENB_SCHEMA"]

@dnb.transaction
def book(tag):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', [tag])
    return tag

@dnb.workflow
def job(tag):
    return book(tag)

for wid in sys.argv[1:]:
    with dnb.workflow_id(wid):
        print(json.dumps(job(wid)))
"""


def _ledger(sql, schema) -> dict[str, int]:
    return dict(sql.execute(f'SELECT event, count(*) FROM "{schema}".ledger GROUP BY event').fetchall())


def _ids(sql, schema) -> set[str]:
    return {r[0] for r in sql.execute(f'SELECT id FROM "{schema}".workflows').fetchall()}


def test_forget_touches_only_its_own_workflow(run_child, sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".ledger (id serial PRIMARY KEY, event text NOT NULL)')
    first = run_child(LOOKALIKES, "job", "job/1", "job~1", "job-2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert dnb.forget("job") == 1
    assert _ids(sql, schema) == {"job/1", "job~1", "job-2"}
    again = run_child(LOOKALIKES, "job/1", "job~1", "job-2")  # finished: nothing runs again
    assert again.returncode == 0, again.stderr[-2000:]
    assert _ledger(sql, schema) == {"job": 1, "job/1": 1, "job~1": 1, "job-2": 1}


SLOW = """
@dnb.step
def wait_for(name):
    hit("started-" + name.replace("/", "_"))
    while not (EFFECTS / ("go-" + name.replace("/", "_"))).exists():
        time.sleep(0.02)
    return name

@dnb.step
def after(name):
    hit("after-" + name.replace("/", "_"))
    return name

@dnb.workflow
def slow(name):
    return [wait_for(name), after(name)]

import time
with dnb.workflow_id(sys.argv[1]):
    try:
        print(json.dumps(slow(sys.argv[1])))
    except dnb.WorkflowCancelledError:
        print(json.dumps("cancelled"))
"""


def _wait_for(effects, name, timeout=60.0):
    deadline = time.monotonic() + timeout
    while effects.count(name) == 0:
        assert time.monotonic() < deadline, f"{name} never happened"
        time.sleep(0.02)


def test_gc_and_cancel_never_reach_a_running_look_alike(run_child, effects, sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".ledger (id serial PRIMARY KEY, event text NOT NULL)')
    assert run_child(LOOKALIKES, "job").returncode == 0
    running = run_child(SLOW, "job/2", background=True)
    try:
        _wait_for(effects, "started-job_2")
        time.sleep(0.2)
        assert dnb.gc(0) == 1  # the finished "job", not the running "job/2"
        assert _ids(sql, schema) == {"job/2"}
        assert run_child(LOOKALIKES, "job").returncode == 0
        assert dnb.cancel("job") is False  # "job" has finished; "job/2" is not its child
        status = sql.execute(f"SELECT status FROM \"{schema}\".workflows WHERE id = 'job/2'")
        assert status.fetchone()[0] == "running"
    finally:
        (effects.root / "go-job_2").write_text("go")
        out, err = running.communicate(timeout=60)
    assert json.loads(out) == ["job/2", "job/2"], err[-2000:]
    assert effects.count("after-job_2") == 1


STARTED_CHILD = """
import time

@dnb.step
def tick(i):
    hit("tick", i)
    while not (EFFECTS / "go").exists():
        time.sleep(0.02)
    return i

@dnb.workflow
def child(n):
    return sum(tick(i) for i in range(n))

@dnb.workflow
def parent():
    h = dnb.start(child, 3)
    return h.workflow_id

if sys.argv[1] == "start":
    with dnb.workflow_id("parent"):
        print(json.dumps(parent()), flush=True)
    while True:  # the parent has finished; the child runs until this process is killed
        time.sleep(1)
else:
    handles = dnb.recover()
    print(json.dumps([[h.workflow_id, h.result(timeout=60)] for h in handles]))
"""


def test_recover_resumes_a_started_child_of_a_finished_parent(run_child, effects, sql, schema):
    proc = run_child(STARTED_CHILD, "start", background=True)
    try:
        _wait_for(effects, "tick")
        assert json.loads(proc.stdout.readline()) == "parent/0"
    finally:
        proc.kill()
        proc.wait()
    status = dict(sql.execute(f'SELECT id, status FROM "{schema}".workflows').fetchall())
    assert status == {"parent": "succeeded", "parent/0": "running"}
    (effects.root / "go").write_text("go")
    out = run_child(STARTED_CHILD, "recover")
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [["parent/0", 3]]
    assert effects.count("tick") == 4  # tick 0 was cut off by the kill, then ticks 0, 1, 2


UPGRADED = """
SCHEMA = os.environ["DURABLENB_SCHEMA"]

@dnb.step
def load():
    hit("load")
    return 1

@dnb.transaction
def book(x):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".ledger (event) VALUES (%s)', ["book"])
    return x + 1

@dnb.workflow
def wf():
    return book(load())

with dnb.workflow_id("upgraded"):
    print(json.dumps(wf()))
"""


def test_records_of_an_earlier_version_replay_after_the_upgrade(run_child, effects, sql, dsn):
    """A schema at version 3 with an interrupted workflow whose code hashes were computed by
    the earlier algorithm: after the upgrade its recorded steps replay, none re-runs."""
    import uuid

    from durablenb.store._migrate import migrations

    name = "t_up_" + uuid.uuid4().hex[:8]
    q = f'"{name}"'
    try:
        sql.execute(f"CREATE SCHEMA {q}")
        sql.execute(f"CREATE TABLE {q}.schema_version (version integer PRIMARY KEY, "
                    "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
        for number, fname, text in migrations()[:3]:
            sql.execute(text.replace("{schema}", q))
            sql.execute(f"INSERT INTO {q}.schema_version VALUES (%s, %s)", [number, fname])
        sql.execute(f"CREATE TABLE {q}.ledger (id serial PRIMARY KEY, event text NOT NULL)")
        sql.execute(f"INSERT INTO {q}.ledger (event) VALUES ('book')")
        sql.execute(f"INSERT INTO {q}.workflows (id, name, status, inputs, inputs_codec, code_hash) "
                    "VALUES ('upgraded', 'wf', 'running', '[[],{}]', 'json', 'ab12')")  # fmt: skip
        for pos, step, out in ((0, "load", b"1"), (1, "book", b"2")):
            kind = "step" if pos == 0 else "transaction"
            sql.execute(
                f"INSERT INTO {q}.steps (workflow_id, position, name, kind, status, output, codec, "
                "code_hash, started_at, finished_at) VALUES ('upgraded', %s, %s, %s, 'succeeded', "
                "%s, 'json', 'old-ast-hash', now(), now())",
                [pos, step, kind, out],
            )
        out = run_child(UPGRADED, env={"DURABLENB_SCHEMA": name})
        assert out.returncode == 0, out.stderr[-2000:]
        assert json.loads(out.stdout) == 2
        assert effects.count("load") == 0  # replayed, not re-run for a changed hash algorithm
        assert sql.execute(f"SELECT count(*) FROM {q}.ledger").fetchone()[0] == 1
        hashes = {r[0] for r in sql.execute(f"SELECT code_hash FROM {q}.steps").fetchall()}
        assert hashes == {"v1:old-ast-hash"}
    finally:
        sql.execute(f"DROP SCHEMA IF EXISTS {q} CASCADE")

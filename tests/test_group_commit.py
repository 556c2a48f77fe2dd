"""Group commit of `dnb.map` items: records of items that finish together are written in one
batch (one statement, one commit), outcomes are handed back only after it, the winner rule
holds per position, and a SIGKILL at any moment (between batches, before and after a batch's
commit) never makes an item whose record committed run again."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest

import durablenb as dnb
from durablenb import _faults
from durablenb.engine import _groupcommit, events
from durablenb.engine.context import current
from durablenb.store import StepRecord
from durablenb.store._batch import STEP_TYPES
from durablenb.store.records import columns


def test_every_step_column_has_a_batch_type():
    assert list(STEP_TYPES) == columns(StepRecord)


def test_batches_are_bounded_by_count_and_by_what_is_still_out():
    finished = _groupcommit.Finished(1200)
    for i in range(1200):
        finished.put(i)
    assert [len(finished.take()) for _ in range(3)] == [500, 500, 200]
    assert finished.left == 0
    last = _groupcommit.Finished(3, wait=60.0)
    for i in range(3):
        last.put(i)
    assert last.take() == [0, 1, 2]  # every item still out is here: no waiting for more
    alone = _groupcommit.Finished(10, wait=0.001)
    alone.put("x")
    assert alone.take() == ["x"] and alone.left == 9  # the wait is bounded


def test_worker_loops_wait_for_the_recorder_and_go_when_the_map_is_abandoned():
    finished = _groupcommit.Finished(5000, max_size=10)
    for i in range(10 * _groupcommit.BACKLOG):
        finished.put(i)
    waited = threading.Thread(target=finished.hold_back, daemon=True)
    waited.start()
    waited.join(0.2)
    assert waited.is_alive()  # a full backlog: the loop waits...
    assert len(finished.take()) == 10
    waited.join(10)
    assert not waited.is_alive()  # ...until the recorder took a batch
    for i in range(10):
        finished.put(i)
    stuck = threading.Thread(target=finished.hold_back, daemon=True)
    stuck.start()
    finished.close()  # the map was abandoned: nothing will take the backlog
    stuck.join(10)
    assert not stuck.is_alive()


def _batches(tmp_path, fn):
    """Run *fn* counting the kill points reached (in this process)."""
    counts = tmp_path / "points.log"
    _faults.configure("", str(counts))
    try:
        fn()
    finally:
        _faults.configure("", "")
    return Counter(counts.read_text().split()) if counts.exists() else Counter()


@pytest.mark.parametrize("durability", ["full", "kernel"])
def test_many_items_are_recorded_in_few_batches(schema, tmp_path, durability):
    @dnb.step
    def tiny(x):
        return x

    unflushed: list[int] = []

    @dnb.workflow(durability=durability)
    def wf(n):
        out = dnb.map(tiny, range(n), workers=3)
        unflushed.extend(current().lease.unflushed)
        return out

    points = _batches(tmp_path, lambda: wf(3000))
    assert wf(3000) == list(range(3000))  # replayed
    assert 6 <= points["batch.before_commit"] == points["batch.after_commit"] < 3000
    assert points["record.written"] == 0  # no record of its own for any item
    st = dnb.steps(wf.id_for(3000))
    assert st["position"].tolist() == list(range(3000)) and (st["status"] == "succeeded").all()
    assert ((st["started_at"] <= st["finished_at"]) & st["label"].notna()).all()
    # Under kernel durability every batch is remembered until a synchronous commit flushes it.
    assert sorted(unflushed) == (list(range(3000)) if durability == "kernel" else [])


def test_listeners_never_hear_an_item_start_after_its_record(schema):
    """Items recorded in one batch free their places for waiting items: never for one of
    the same batch, which is recorded already."""
    order: list[tuple[str, int]] = []
    lock = threading.Lock()

    class Listener(events.Listener):
        def step_started(self, run: Any, position: int, name: str, kind: str) -> None:
            with lock:
                order.append(("started", position))

        def step_finished(self, run: Any, record: Any, replayed: bool) -> None:
            with lock:
                order.append(("finished", record.position))

    @dnb.step
    def tiny(x):
        return x

    @dnb.workflow
    def wf():
        return dnb.map(tiny, range(2000), workers=3)

    listener = Listener()
    events.add_listener(listener)
    try:
        assert wf() == list(range(2000))
    finally:
        events.remove_listener(listener)
    finished: set[int] = set()
    running: set[int] = set()
    for what, position in order:
        assert position not in finished, f"position {position} {what} after its record"
        if what == "started":
            running.add(position)
        else:
            running.discard(position)
            finished.add(position)
    assert finished == set(range(2000)) and not running
    assert len([p for what, p in order if what == "started"]) >= 3


def test_a_position_recorded_by_another_executor_wins_in_its_batch(schema, sql):
    store = dnb.connect()
    seen: list[tuple[int, bool]] = []

    class Listener(events.Listener):
        def step_finished(self, run: Any, record: Any, replayed: bool) -> None:
            seen.append((record.position, replayed))

    @dnb.step
    def item(x):
        if x == 0:  # another executor records position 5 while the map runs
            rec = StepRecord(workflow_id=current_id[0], position=5, name=item.name, kind="step",
                             status="succeeded", output=b"999", codec="json", checksum=None,
                             started_at=time.time(), finished_at=time.time())  # fmt: skip
            import zlib

            rec.checksum = zlib.crc32(rec.output)
            with store.connection() as conn:
                assert store.insert_step_in(conn, rec)
            gate.set()
        else:
            gate.wait(10)
        return x

    gate = threading.Event()
    current_id: list[str] = []

    @dnb.workflow
    def wf():
        current_id.append(current().id)
        return dnb.map(item, range(10), workers=2)

    listener = Listener()
    events.add_listener(listener)
    try:
        out = wf()
    finally:
        events.remove_listener(listener)
    assert out == [0, 1, 2, 3, 4, 999, 6, 7, 8, 9]
    assert sorted(seen) == [(p, p == 5) for p in range(10)]
    assert dnb.steps(wf.id_for())["status"].tolist() == ["succeeded"] * 10


def test_an_output_that_cannot_be_recorded_fails_only_its_item(schema, calls):
    @dnb.step
    def item(x):
        calls(str(x))
        return threading.Lock() if x == 3 else x * 2

    @dnb.workflow
    def wf():
        return dnb.map(item, range(6))

    with pytest.raises(dnb.UnserializableOutputError):
        wf()
    st = dnb.steps(wf.id_for())
    assert st["status"].tolist() == ["succeeded"] * 3 + ["failed"] + ["succeeded"] * 2
    with pytest.raises(dnb.UnserializableOutputError):
        wf()  # its first failure cannot be recorded: the recorded outcome stands
    assert [calls[str(x)] for x in range(6)] == [1] * 6


def test_large_outputs_are_blobs_written_before_their_batch(schema, sql):
    store = dnb.connect(schema=schema, blob_threshold=1024)

    @dnb.step
    def big(i):
        return np.full(1000, i, dtype=np.int64)  # 8 kB: a blob each

    @dnb.workflow
    def wf():
        return dnb.map(big, range(8))

    out = wf()
    assert [int(a[0]) for a in out] == list(range(8))
    blobs = sql.execute(f'SELECT blob FROM "{schema}".steps ORDER BY position').fetchall()
    assert len(blobs) == 8 and all(b for (b,) in blobs)
    replayed = wf()
    assert all((a == b).all() for a, b in zip(out, replayed, strict=True))
    assert store.settings.blob_threshold == 1024


# -- SIGKILL at any moment: real processes ---------------------------------------------------

CHILD = """
import os, sys, json
N, DURABILITY, TAG = int(sys.argv[1]), sys.argv[2], sys.argv[3]
fd = os.open(EFFECTS / "items.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
PID = os.getpid()

@dnb.step
def item(i):
    os.write(fd, f"{i} {PID}\\n".encode())  # one write: whole lines, kept by a SIGKILL
    return i

@dnb.workflow(durability=DURABILITY)
def many(n, tag):
    return dnb.map(item, range(n))

out = many(N, TAG)
print(json.dumps({"ok": out == list(range(N)), "len": len(out), "id": many.id_for(N, TAG)}))
"""

N_ITEMS = 5000


def _executions(effects) -> list[tuple[int, int]]:
    path = effects.path("items")
    if not path.exists():
        return []
    return [(int(a), int(b)) for a, b in (line.split() for line in path.read_text().splitlines())]


def _recorded(sql, schema: str) -> set[int]:
    """Positions recorded in *schema* (which holds this test's one workflow), once the
    session of a killed run is gone: a statement it had sent still commits after the kill."""
    row = sql.execute(f'SELECT id FROM "{schema}".workflows').fetchone()
    if row is not None:
        key = dnb.connect().lock_key(row[0])
        deadline = time.monotonic() + 60
        while not sql.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]:
            assert time.monotonic() < deadline, "the killed run's session never ended"
            time.sleep(0.01)
        sql.execute("SELECT pg_advisory_unlock(%s)", [key])
    return {p for (p,) in sql.execute(f'SELECT position FROM "{schema}".steps').fetchall()}


def _kill_when_running(proc, effects, delay: float) -> None:
    """SIGKILL *proc* *delay* seconds after its map started running items (or not at all,
    if it ends first)."""
    before = len(_executions(effects))
    deadline = time.monotonic() + 120
    while len(_executions(effects)) == before and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)


@dataclasses.dataclass
class _Run:
    ran: set[int]  # the items this run executed
    recorded_after: set[int]  # the positions recorded when it ended
    killed: bool


def _run_once(run_child, effects, sql, schema: str, args: tuple[str, ...], kill: str | None,
              delay: float) -> tuple[_Run, str]:  # fmt: skip
    """One child run: killed at the fault point *kill*, after *delay* s of running items
    (``timer``), or left to finish (None)."""
    seen = {pid for _, pid in _executions(effects)}
    if kill == "timer":
        proc = run_child(CHILD, *args, background=True)
        _kill_when_running(proc, effects, delay)
        out, err = proc.communicate(timeout=180)
        code = proc.returncode
    else:
        done = run_child(CHILD, *args, env={"DURABLENB_FAULT": kill} if kill else None)
        out, err, code = done.stdout, done.stderr, done.returncode
    killed = code in (-9, 137)
    assert killed or code == 0, err[-3000:]
    ran = {i for i, pid in _executions(effects) if pid not in seen}
    return _Run(ran, _recorded(sql, schema), killed), out


@pytest.mark.parametrize("durability", ["full", "kernel"])
def test_sigkill_at_any_moment_never_reruns_a_recorded_item(schema, run_child, effects, sql, durability):
    """5,000 tiny items, each appending its index to a file; the child is killed before a
    batch commits, right after one committed, and at random moments while items run (seeded),
    then runs to the end."""
    rng = random.Random(7 if durability == "full" else 8)
    args = (str(N_ITEMS), durability, "t")
    plan = ["batch.before_commit@1", f"batch.after_commit@{rng.randint(1, 3)}", "timer", "timer", "timer"]
    runs: list[_Run] = []
    for kill in [*plan, None]:
        run, out = _run_once(run_child, effects, sql, schema, args, kill, rng.uniform(0.0, 0.3))
        runs.append(run)
        if kill and kill != "timer":
            assert run.killed, f"{kill} was not reached"
        if not run.killed:
            result = out.strip().splitlines()[-1]
            assert '"ok": true' in result and f'"len": {N_ITEMS}' in result, result
            break
    assert not runs[-1].killed
    _check(runs, _executions(effects), sql, schema)


def _check(runs: list[_Run], executions: list[tuple[int, int]], sql, schema: str) -> None:
    # Every position recorded exactly once, with the item's own output.
    rows = sql.execute(f"SELECT position, convert_from(output, 'UTF8'), status FROM \"{schema}\".steps "
                       "ORDER BY position").fetchall()  # fmt: skip
    assert [(p, int(o), s) for p, o, s in rows] == [(i, i, "succeeded") for i in range(N_ITEMS)]
    assert Counter(executions).most_common(1)[0][1] == 1  # no item ran twice in one run
    assert {i for i, _ in executions} == set(range(N_ITEMS))
    for k, run in enumerate(runs):
        later = {i for after in runs[k + 1:] for i in after.ran}
        # An item recorded when a run ended (killed or not) never ran again...
        assert not (run.recorded_after & later), sorted(run.recorded_after & later)[:10]
        # ...and one it ran without its record committing ran again later.
        assert run.ran - run.recorded_after <= later, sorted(run.ran - run.recorded_after - later)[:10]
    runs_per_item = Counter(i for i, _ in executions)
    lost_in_kills = {i for run in runs if run.killed for i in run.ran - run.recorded_after}
    assert {i for i, n in runs_per_item.items() if n > 1} <= lost_in_kills


def test_scalars_encode_as_json_does():
    from durablenb import codecs

    for value in [0, -5, 2**70, 1.5, 1e300, -0.0, 'a"b\\\n\u00e9\u2028', "", True, False, None]:
        fast, general = codecs.encode_scalar(value), codecs.encode(value, codecs.JSON)
        assert fast is not None and (fast.codec, fast.data, fast.checksum) == (
            general.codec, general.data, general.checksum)
    assert codecs.encode_scalar(float("nan")) is None and codecs.encode_scalar([1]) is None

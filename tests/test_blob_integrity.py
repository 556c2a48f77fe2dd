"""Blobs that are never poisoned: writes complete whatever the file takes per call, a damaged
blob heals when its value is recomputed, and parts of writes that died are swept. Child
processes, on both backends, with blobs in a folder and in the store's default place."""

from __future__ import annotations

import io
import json
import os
import time

import pytest

from durablenb.store.blobs import HashingWriter

HEAL = """
import numpy as np
import pandas as pd
from durablenb.engine import runtime

@dnb.step
def make():
    hit("make")
    rng = np.random.default_rng(3)
    return pd.DataFrame({"x": rng.random(300_000), "n": np.arange(300_000)})

@dnb.workflow
def wf():
    return float(make()["x"].sum())

mode = sys.argv[1]
store = runtime.store()
if mode == "refresh":  # what %durable refresh heal 0 does
    store.set_step_code_hash("heal", [0], "refresh")
with dnb.workflow_id("heal"):
    try:
        print(json.dumps(wf()))
    except dnb.CorruptRecordError as exc:
        print(json.dumps("corrupt: " + str(exc)))
"""


def _damage(sql, schema, where: str) -> str:
    ref = sql.execute(f'SELECT blob FROM "{schema}".steps WHERE workflow_id = %s', ["heal"]).fetchone()[0]
    if where == "postgres":
        sql.execute(f"UPDATE \"{schema}\".blob_chunks SET data = overlay(data placing '\\xff'::bytea "
                    "from 101) WHERE ref = %s AND seq = 0", [ref])  # fmt: skip
    else:
        path = where + f"/{schema}/{ref[:2]}/{ref}"
        data = bytearray(open(path, "rb").read())
        data[100] ^= 0xFF
        with open(path, "wb") as f:
            f.write(data)
    return ref


@pytest.mark.parametrize("place", ["folder", "default"])
def test_a_damaged_blob_heals_when_its_step_runs_again(run_child, effects, sql, schema, tmp_path,
                                                       backend, place):  # fmt: skip
    env = {"DURABLENB_BLOB_THRESHOLD": "100000"}
    if place == "folder":
        env["DURABLENB_BLOB_URL"] = str(tmp_path / "blobs")
        where = str(tmp_path / "blobs")
    elif backend == "embedded":
        where = os.environ["DURABLENB_HOME"] + "/blobs"
    else:
        where = "postgres"
    first = run_child(HEAL, "run", env=env)
    good = json.loads(first.stdout)
    assert isinstance(good, float), first.stderr[-2000:]
    _damage(sql, schema, where)
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")  # as after a crash
    broken = run_child(HEAL, "run", env=env)
    text = json.loads(broken.stdout)
    assert text.startswith("corrupt:") and "make" in text and "heal" in text, broken.stderr[-2000:]
    status = sql.execute(f'SELECT status FROM "{schema}".workflows').fetchone()[0]
    assert status == "running"  # resumable, not recorded as failed
    healed = run_child(HEAL, "refresh", env=env)
    assert json.loads(healed.stdout) == good, healed.stderr[-2000:]
    assert effects.count("make") == 2
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")
    again = run_child(HEAL, "run", env=env)  # the healed blob replays: nothing runs
    assert json.loads(again.stdout) == good
    assert effects.count("make") == 2


class _Stingy(io.RawIOBase):
    """A raw file that takes at most *limit* bytes per write, like a full disk or a pipe."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        view = memoryview(b).cast("B")[: self.limit]
        self.buf += view
        return len(view)


def test_a_write_completes_whatever_the_file_takes_per_call():
    """The > 2 GiB case of a single write that the OS shortens, simulated at the file layer:
    this machine cannot spare the memory for such a value in every test run."""
    raw = _Stingy(limit=4096)
    w = HashingWriter(raw)  # type: ignore[arg-type]
    payload = os.urandom(1_000_003)
    assert w.write(payload) == len(payload)
    assert bytes(raw.buf) == payload and w.size == len(payload)
    import hashlib
    import zlib

    assert w.ref == hashlib.sha256(payload).hexdigest() and w.crc == zlib.crc32(payload)


def test_parts_of_writes_that_died_are_swept(tmp_path):
    from durablenb.store.blobs import FolderBlobs

    tmp = tmp_path / "blobs" / "tmp"
    tmp.mkdir(parents=True)
    old, young = tmp / "dead.part", tmp / "writing.part"
    old.write_bytes(b"x" * 10)
    young.write_bytes(b"y" * 10)
    hour_ago = time.time() - 7200
    os.utime(old, (hour_ago, hour_ago))
    FolderBlobs(tmp_path / "blobs")  # opened at start-up
    assert not old.exists() and young.exists()


GC = """
import numpy as np
import pandas as pd
from durablenb.engine import runtime

@dnb.step
def shared():
    return np.arange(200_000, dtype=np.int64)  # the same blob in every workflow

@dnb.step
def own(seed):
    return pd.DataFrame({"x": np.random.default_rng(seed).random(200_000)})

@dnb.workflow
def wf(seed, big_input):
    return int(shared()[-1]) + len(own(seed)) + len(big_input)

def run(wid, seed):
    with dnb.workflow_id(wid):
        return wf(seed, np.full(150_000, seed))

mode = sys.argv[1]
if mode == "make":
    print(json.dumps([run("w1", 1), run("w2", 2)]))
    dnb.fork("w2", from_step=1).result(timeout=60)  # a fork holds what it copied
elif mode == "forget":
    print(json.dumps(dnb.forget(sys.argv[2])))
elif mode == "replay":
    print(json.dumps(run(sys.argv[2], int(sys.argv[3]))))
elif mode == "gc":
    runtime.store().sweep_blobs()
    print(json.dumps("swept"))
elif mode == "forget-all":
    for wid in list(dnb.workflows(limit=None)["workflow_id"]):
        try:
            dnb.forget(wid)
        except dnb.WorkflowNotFoundError:
            pass  # removed with its parent or source already
    print(json.dumps("forgot"))
"""


def _blobs(sql, schema, where: str) -> set[str]:
    if where == "postgres":
        return {r[0] for r in sql.execute(f'SELECT ref FROM "{schema}".blob_objects').fetchall()}
    root = os.path.join(where, schema)
    return {f for d in os.listdir(root) if len(d) == 2 for f in os.listdir(os.path.join(root, d))}


def _held(sql, schema) -> set[str]:
    return {r[0] for r in sql.execute(f'SELECT DISTINCT ref FROM "{schema}".blob_refs').fetchall()}


@pytest.mark.parametrize("place", ["folder", "default"])
def test_forgetting_removes_the_blobs_nothing_holds_and_a_kill_loses_none(
    run_child, sql, schema, tmp_path, backend, place
):
    env = {"DURABLENB_BLOB_THRESHOLD": "100000"}
    if place == "folder":
        env["DURABLENB_BLOB_URL"] = where = str(tmp_path / "blobs")
    elif backend == "embedded":
        where = os.environ["DURABLENB_HOME"] + "/blobs"
    else:
        where = "postgres"
    made = run_child(GC, "make", env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    before = _blobs(sql, schema, where)
    assert len(before) >= 5 and before == _held(sql, schema)  # every blob is held
    # A kill in the middle of w1's collection: w1's records are gone, the blob it shared with
    # w2 (and w2's fork) must survive, its own blobs may stay behind for the sweep.
    killed = run_child(GC, "forget", "w1", env={**env, "DURABLENB_FAULT": "blob.collect@1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert _held(sql, schema) <= _blobs(sql, schema, where)  # nothing held was lost
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running' WHERE id = 'w2'")
    replay = run_child(GC, "replay", "w2", "2", env=env)  # every step replays from its blob
    assert replay.returncode == 0, replay.stderr[-2000:]
    assert json.loads(replay.stdout) == 199_999 + 200_000 + 150_000
    assert run_child(GC, "gc", env=env).returncode == 0  # the sweep takes what the kill left
    assert _blobs(sql, schema, where) == _held(sql, schema)
    assert run_child(GC, "forget-all", env=env).returncode == 0
    assert _blobs(sql, schema, where) == set()
    assert sql.execute(f'SELECT count(*) FROM "{schema}".blob_refs').fetchone()[0] == 0

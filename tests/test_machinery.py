"""Errors of the machinery are typed and never recorded as an outcome; signatures bind a record
to its place; every error pickles with its fields; bad ids are clear errors. Child processes,
effects counted in files."""

from __future__ import annotations

import base64
import json
import os
import pickle
import subprocess
from pathlib import Path

import pytest

import durablenb as dnb
from durablenb import errors


def _status(sql, schema, wid):
    row = sql.execute(f'SELECT status FROM "{schema}".workflows WHERE id = %s', [wid]).fetchone()
    return row[0] if row else None


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB tmpfs for blobs (root), and a function that makes it 64 MB."""
    if os.geteuid() != 0:
        pytest.fail("this test mounts a tmpfs: run it as root (CI does)")
    mnt = tmp_path / "tiny-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)

    yield mnt, grow
    subprocess.run(["umount", "-l", str(mnt)], check=False)


FULL_DISK = """
import numpy as np

@dnb.step
def small():
    hit("small")
    return 1

@dnb.step
def big():
    hit("big")
    return np.ones(1_000_000)  # 8 MB: a blob

@dnb.workflow
def wf():
    return [small(), float(big().sum())]

with dnb.workflow_id("full-disk"):
    try:
        print(json.dumps(wf()))
    except dnb.StorageError as exc:
        print(json.dumps("storage"))
"""


def test_a_full_blob_disk_leaves_the_workflow_resumable(run_child, effects, sql, schema, tiny_disk):
    mnt, grow = tiny_disk
    env = {"DURABLENB_BLOB_URL": str(mnt), "DURABLENB_BLOB_THRESHOLD": "100000"}
    first = run_child(FULL_DISK, env=env)
    assert json.loads(first.stdout) == "storage", first.stderr[-2000:]
    assert _status(sql, schema, "full-disk") == "running"  # not recorded as failed
    steps = sql.execute(f'SELECT name, status FROM "{schema}".steps ORDER BY position').fetchall()
    assert [s[1] for s in steps] == ["succeeded"]  # only `small`
    grow()
    second = run_child(FULL_DISK, env=env)
    assert json.loads(second.stdout) == [1, 1_000_000.0], second.stderr[-2000:]
    assert effects.count("small") == 1 and effects.count("big") == 2
    assert _status(sql, schema, "full-disk") == "succeeded"


RECORDED_ERROR = """
@dnb.step
def flaky():
    hit("flaky")
    raise ValueError("bad input")

@dnb.step
def after():
    hit("after")
    crash_once("after")
    return 2

@dnb.workflow
def wf():
    try:
        flaky()
    except ValueError:
        pass
    return after()

with dnb.workflow_id("secret-change"):
    try:
        print(json.dumps(wf()))
    except dnb.CorruptRecordError as exc:
        print(json.dumps("corrupt"))
"""


@pytest.mark.parametrize("first,second", [("", "newly-set"), ("one-secret", "another-secret")])
def test_an_unverifiable_recorded_error_is_never_recorded_as_the_outcome(
    run_child, effects, sql, schema, first, second
):
    assert run_child(RECORDED_ERROR, env={"DURABLENB_SECRET": first}).returncode == 137
    out = run_child(RECORDED_ERROR, env={"DURABLENB_SECRET": second})
    assert json.loads(out.stdout) == "corrupt", out.stderr[-2000:]
    assert _status(sql, schema, "secret-change") == "running"  # resumable, not failed
    back = run_child(RECORDED_ERROR, env={"DURABLENB_SECRET": first})
    assert json.loads(back.stdout) == 2, back.stderr[-2000:]
    assert effects.count("flaky") == 1 and effects.count("after") == 2


SIGNED = """
@dnb.step
def a():
    return ("a", {"v": 1})  # a tuple: pickled, so signed

@dnb.step
def b():
    return ("b", {"v": 2})

@dnb.workflow
def wf(tag):
    return [a(), b()]

for wid in sys.argv[1:]:
    with dnb.workflow_id(wid):
        try:
            print(json.dumps(wf(wid)))
        except dnb.CorruptRecordError as exc:
            print(json.dumps(str(exc)))
"""


def test_a_signed_record_copied_to_another_place_is_refused(run_child, sql, schema):
    env = {"DURABLENB_SECRET": "correct horse battery staple"}
    first = run_child(SIGNED, "w1", "w2", env=env)
    assert first.stdout.count('[["a", {"v": 1}], ["b", {"v": 2}]]') == 2, first.stderr[-2000:]
    s = f'"{schema}".steps'
    # Another step of the same workflow: w1's position 0 over its position 1.
    sql.execute(f"UPDATE {s} t SET output = f.output, codec = f.codec, checksum = f.checksum FROM {s} f "
                "WHERE t.workflow_id = 'w1' AND t.position = 1 AND f.workflow_id = 'w1' AND f.position = 0")
    # Another workflow: that copy (signed for w1's position 0) over w2's position 1.
    sql.execute(f"UPDATE {s} t SET output = f.output, codec = f.codec, checksum = f.checksum FROM {s} f "
                "WHERE t.workflow_id = 'w2' AND t.position = 1 AND f.workflow_id = 'w1' AND f.position = 1")
    sql.execute(f"""UPDATE "{schema}".workflows SET status = 'running'""")
    second = run_child(SIGNED, "w1", "w2", env=env)
    results = [json.loads(line) for line in second.stdout.strip().splitlines()]
    assert len(results) == 2, second.stderr[-2000:]
    for text in results:
        assert isinstance(text, str) and "fails its signature" in text
    # A legitimate copy (a fork) still verifies.
    fork = run_child(SIGNED + 'print(json.dumps(dnb.fork("w1", from_step=1).result(timeout=30)))\n',
                     env=env)  # fmt: skip
    assert json.loads(fork.stdout) == [["a", {"v": 1}], ["b", {"v": 2}]], fork.stderr[-2000:]


def _examples() -> list[BaseException]:
    e = errors
    return [
        e.DurableError("root"),
        e.StoreUnavailableError("cannot reach", dsn="postgresql://u:***@h/db", sqlstate="53100"),
        e.RecordsLostError("wf-1", [4, 5], row_lost=True),
        e.StorePermissionError("no access", schema="durablenb_alice", role="bob", owner="alice"),
        e.StorageError("disk full"),
        e.SchemaVersionError("newer"),
        e.CorruptRecordError("bad crc"),
        e.NonDeterministicWorkflowError("wf-1", 3, "load", "save"),
        e.CodeChangedError("changed"),
        e.WorkflowBusyError("wf-1", "host:42"),
        e.WorkflowCancelledError("wf-1"),
        e.WorkflowTimeoutError("wf-1", "it ran past its timeout of 5 s"),
        e.StepTimeoutError("fetch", 2.5),
        e.WorkflowConflictError("conflict"),
        e.WorkflowNotFoundError("no workflow 'x' is recorded"),
        e.WorkflowNotRegisteredError("not here"),
        e.DurableUsageError("misuse"),
        e.InvalidIdError("bad id"),
        e.UnserializableError("cannot"),
        e.UnserializableArgumentsError("args"),
        e.UnhashableArgumentsError("unhashable"),
        e.UnserializableOutputError("output", step="load", type_name="x.Lock"),
        e.RecordedError("pkg.Boom", "it broke", "Traceback..."),
    ]


PICKLE_ERRORS = """
import base64, pickle
sys.path.insert(0, os.environ["TESTS_DIR"])
from test_machinery import _examples
print(base64.b64encode(pickle.dumps(_examples())).decode())
"""


def test_every_error_pickles_with_its_fields_across_processes(run_child):
    assert {type(x).__name__ for x in _examples()} == set(errors.__all__)
    out = run_child(PICKLE_ERRORS, env={"TESTS_DIR": str(Path(__file__).parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    for sent, back in zip(_examples(), pickle.loads(base64.b64decode(out.stdout)), strict=True):
        assert type(back) is type(sent)
        assert str(back) == str(sent) and back.args == sent.args
        assert vars(back) == vars(sent)


@pytest.mark.parametrize("bad", ["nul\x00id", "lone\udcffsurrogate", "x" * 1001, "é" * 501, ""])
def test_bad_ids_are_clear_value_errors(schema, bad):
    @dnb.workflow
    def wf():
        return 1

    with pytest.raises(dnb.InvalidIdError) as info:
        with dnb.workflow_id(bad):
            wf()
    assert isinstance(info.value, ValueError)
    for verb in (dnb.cancel, dnb.forget, dnb.resume):
        with pytest.raises(dnb.InvalidIdError):
            verb(bad)


@pytest.mark.parametrize("bad", ["nul\x00name", "lone\udcffsurrogate", "n" * 10_000])
def test_bad_names_are_refused_when_decorating(bad):
    for decorator in (dnb.workflow, dnb.step, dnb.transaction):
        with pytest.raises(dnb.InvalidIdError):
            decorator(name=bad)(lambda: 1)

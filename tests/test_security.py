"""Signed pickles (DURABLENB_SECRET), masked passwords, and four processes at once."""

from __future__ import annotations

import json
import logging
import time
import zlib

import pytest

import durablenb as dnb


@pytest.fixture
def secret(schema, monkeypatch):
    monkeypatch.setenv("DURABLENB_SECRET", "correct horse battery staple")
    dnb.connect(schema=schema)  # settings are read when connecting


def _workflow(calls):
    @dnb.step
    def make():
        calls.append(1)
        return (1, {"k": [1, 2]})  # a tuple: pickled

    @dnb.workflow
    def wf():
        return make()

    return wf


def test_signed_pickles_replay_and_tampering_is_refused(schema, secret, sql):
    calls: list[int] = []
    wf = _workflow(calls)
    assert wf() == (1, {"k": [1, 2]})
    codec, data = sql.execute(f'SELECT codec, output FROM "{schema}".steps').fetchone()
    assert codec.startswith("pickle;sig2=")
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")
    assert wf() == (1, {"k": [1, 2]})  # verified and replayed
    # An attacker rewrites the pickle (and fixes the CRC so only the signature can tell).
    import pickle

    evil = pickle.dumps((6, {"k": [6]}))
    sql.execute(f'UPDATE "{schema}".steps SET output = %s, checksum = %s', [evil, zlib.crc32(evil)])
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")
    with pytest.raises(dnb.CorruptRecordError, match="fails its signature"):
        wf()
    assert calls == [1]


def test_unsigned_records_are_refused_when_a_secret_is_set(schema, monkeypatch, sql):
    calls: list[int] = []
    wf = _workflow(calls)
    wf()  # written without a secret
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")
    monkeypatch.setenv("DURABLENB_SECRET", "s3")
    dnb.connect(schema=schema)
    with pytest.raises(dnb.CorruptRecordError, match="unsigned pickle"):
        wf()


def test_tampered_recorded_exceptions_are_not_unpickled(schema, secret, sql):
    @dnb.step
    def bad():
        raise KeyError("missing")

    @dnb.workflow(on_failure="replay")
    def wf():
        return bad()

    with pytest.raises(KeyError):
        wf()
    with pytest.raises(KeyError):
        wf()  # signed: rebuilt with its own type
    sql.execute(
        f"UPDATE \"{schema}\".workflows SET error = overlay(error placing '\\x00'::bytea from 10)"
    )
    with pytest.raises(dnb.CorruptRecordError, match="fails its signature"):
        wf()  # altered: never unpickled, and not re-raised as if it were the outcome


def test_passwords_never_reach_errors_reprs_or_logs(caplog):
    dsn = "postgresql://ann:sup3rs3cret@127.0.0.1:1/db?connect_timeout=1"
    with caplog.at_level(logging.DEBUG), pytest.raises(dnb.StoreUnavailableError) as info:
        dnb.connect(dsn)
    assert "sup3rs3cret" not in str(info.value) + repr(info.value) + caplog.text
    from durablenb.store import mask_dsn

    assert mask_dsn(dsn) == "postgresql://ann:***@127.0.0.1:1/db?connect_timeout=1"


CONCURRENT4 = """
import time
GO = EFFECTS / "go"
KEY = os.environ["KEY"]

@dnb.step
def work(k, i):
    hit(f"{k}-{i}")
    time.sleep(0.05)
    return i

@dnb.transaction
def book(k):
    SCHEMA = os.environ["DURABLENB_SCHEMA"]
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".booked VALUES (%s)', [k])
    return k

@dnb.workflow(on_busy="wait")
def job(k):
    return [work(k, i) for i in range(5)] + [book(k)]

while not GO.exists():
    time.sleep(0.01)
print(json.dumps(job(KEY)))
"""


def test_four_processes_same_and_distinct_workflows(run_child, effects, sql, schema):
    sql.execute(f'CREATE TABLE "{schema}".booked (k text)')
    keys = ["shared"] * 4 + ["a", "b", "c", "d"]
    # Eight kernels of one notebook (a workflow defined in a notebook belongs to it).
    one = {"JPY_SESSION_NAME": "/home/ann/analysis.ipynb"}
    procs = [run_child(CONCURRENT4, background=True, env={"KEY": k, **one}, name=f"p{i}.py")
             for i, k in enumerate(keys)]  # fmt: skip
    time.sleep(2.0)
    (effects.root / "go").write_text("1")
    for p, k in zip(procs, keys, strict=True):
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err
        assert json.loads(out) == [0, 1, 2, 3, 4, k]
    for k in set(keys):
        assert [effects.count(f"{k}-{i}") for i in range(5)] == [1] * 5  # each effect once
    rows = sql.execute(f'SELECT k, count(*) FROM "{schema}".booked GROUP BY k').fetchall()
    assert dict(rows) == {k: 1 for k in set(keys)}
    wf = dnb.workflows()
    assert len(wf) == 5 and set(wf["status"]) == {"succeeded"} and set(wf["steps"]) == {6}

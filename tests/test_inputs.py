"""A workflow's inputs are digested first and encoded only when a new run needs them: a
rerun of a finished workflow with a large DataFrame argument writes nothing."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest

import durablenb as dnb
from durablenb.engine import runtime
from durablenb.engine.identity import args_digest


@pytest.fixture
def writes(monkeypatch):
    """Every blob written in this process, by the blob store's one entry point."""
    store = runtime.store()
    seen: list[str] = []
    put = store.blobs.put

    def counting(produce, owner=None):
        ref = put(produce, owner)
        seen.append(ref[0])
        return ref

    monkeypatch.setattr(store.blobs, "put", counting)
    return seen


def _frame(n: int = 400_000) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    return pd.DataFrame({"x": rng.random(n), "carrier": rng.choice(["AA", "UA", "DL"], n)})


def test_rerunning_a_finished_workflow_writes_no_input(schema, writes, calls):
    frame = _frame()

    @dnb.step
    def mean(df):
        calls("mean")
        return float(df.x.mean())

    @dnb.workflow
    def analysis(df, label):
        return label, mean(df)

    first = analysis(frame, "all")
    assert len(writes) == 1  # the inputs, as a blob (the output is small)
    writes.clear()
    assert analysis(frame.copy(), "all") == first
    assert writes == [] and calls["mean"] == 1
    # The recorded inputs are complete: resuming from them needs no caller.
    row = runtime.store().get_workflow(analysis.id_for(frame, "all"))
    assert row.inputs_blob is not None and row.inputs_codec


def test_inputs_lost_before_they_were_recorded_are_recorded_by_the_next_call(schema, sql):
    frame = _frame()

    @dnb.workflow
    def analysis(df):
        return len(df)

    wid = analysis.id_for(frame)
    # What a kernel killed between the row and its inputs leaves behind.
    sql.execute(f'INSERT INTO "{schema}".workflows (id, name, status, args_digest, run_started_at, '
                "lineage_id) VALUES (%s, %s, 'running', %s, now(), %s)",
                [wid, analysis.name, args_digest(analysis.name, (frame,), {}), wid])  # fmt: skip
    assert analysis(frame) == len(frame)
    row = runtime.store().get_workflow(wid)
    assert row.status == "succeeded" and row.inputs_blob is not None
    assert dnb.resume(wid).result(timeout=30) == len(frame)  # from the recorded inputs


def test_large_arguments_that_cannot_be_recorded_leave_no_workflow(schema):
    frame = _frame(200_000)
    lock = threading.Lock()
    frame["lock"] = [lock] * len(frame)  # a lock cannot be pickled

    @dnb.workflow
    def analysis(df, tag):
        return tag

    with pytest.raises(dnb.UnserializableArgumentsError):
        with dnb.workflow_id("unrecordable-args"):
            analysis(frame, 1)
    assert runtime.store().get_workflow("unrecordable-args") is None

"""`dnb.map` items: recorded start times are when a worker picked the item up (not when it
was queued), at most `workers` items are running at a time, and items carry labels."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

import durablenb as dnb
from durablenb import verbs
from durablenb.engine import events


def _nap(job: tuple[str, int]) -> int:
    """Write the real start time of item *i* to a file in *folder*, then sleep."""
    folder, i = job
    Path(folder, str(i)).write_text(repr(time.time()))
    time.sleep(0.3)
    return i


def _check_start_times(workflow_id: str, folder: Path, n: int) -> None:
    st = dnb.steps(workflow_id)
    assert len(st) == n
    for i in range(n):
        real = float(Path(folder, str(i)).read_text())
        recorded = st.loc[i, "started_at"].timestamp()
        # Recorded when the worker picked the item up: never long before it really started
        # (queue time), never after it (beyond clock resolution and scheduling).
        assert real - 0.1 <= recorded <= real + 0.1, (i, recorded - real)
        took = (st.loc[i, "finished_at"] - st.loc[i, "started_at"]).total_seconds()
        assert 0.29 <= took < 1.0, (i, took)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_items_start_when_a_worker_picks_them_up(schema, tmp_path, processes):
    @dnb.workflow
    def wf(folder):
        return dnb.map(_nap, [(folder, i) for i in range(6)], workers=2, processes=processes)

    assert wf(str(tmp_path)) == list(range(6))
    _check_start_times(wf.id_for(str(tmp_path)), tmp_path, 6)


class _Collector(events.Listener):
    """Items running now (started, not yet recorded), the most at once, labels seen."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: set[int] = set()
        self.peak = 0
        self.started: dict[int, str | None] = {}
        self.finished: dict[int, str | None] = {}

    def step_started(self, run: Any, position: int, name: str, kind: str, label: str | None = None) -> None:
        with self.lock:
            self.running.add(position)
            self.peak = max(self.peak, len(self.running))
            self.started[position] = label

    def step_finished(self, run: Any, record: Any, replayed: bool) -> None:
        with self.lock:
            self.running.discard(record.position)
            self.finished[record.position] = record.label


class _OldListener(events.Listener):
    """A listener written before labels: four parameters."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def step_started(self, run: Any, position: int, name: str, kind: str) -> None:  # type: ignore[override]
        self.started.append(position)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_listeners_see_at_most_workers_items_running(schema, processes):
    collector, old = _Collector(), _OldListener()
    events.add_listener(collector)
    events.add_listener(old)
    try:

        @dnb.workflow
        def wf():
            return dnb.map(_sleepy, ["AA", "UA", "DL", "WN", "B6", "NK", "AS"], workers=3,
                           processes=processes)  # fmt: skip

        assert wf() == ["AA", "UA", "DL", "WN", "B6", "NK", "AS"]
    finally:
        events.remove_listener(collector)
        events.remove_listener(old)
    labels = {0: "AA", 1: "UA", 2: "DL", 3: "WN", 4: "B6", 5: "NK", 6: "AS"}
    assert 2 <= collector.peak <= 3
    assert collector.running == set()
    assert collector.finished == labels
    # An item recorded before a place among the running ones was free is never announced.
    assert len(collector.started) >= 3 and collector.started.items() <= labels.items()
    assert sorted(old.started) == sorted(collector.started)  # the label is not passed to it


def _sleepy(x: str) -> str:
    time.sleep(0.05)
    return x


def test_default_labels(schema):
    @dnb.step
    def fit(item):
        return item

    items = ["AA", "UA", "x" * 30, 3, 2.5, True, ("AA", 2), {"carrier": "AA"}, None, "", "a\nb"]

    @dnb.workflow
    def wf():
        return dnb.map(fit, items, workers=2)

    assert wf() == items
    st = dnb.steps(wf.id_for())
    assert "label" in st.columns and str(st["label"].dtype) == "string"
    assert st["label"].tolist() == ["AA", "UA", "2", "3", "2.5", "True", "('AA', 2)", "7", "8",
                                    "''", "'a\\nb'"]  # fmt: skip
    table = verbs.step_table(wf.id_for())
    assert table["name"].tolist()[:2] == [f"{st.loc[0, 'name']}[AA]", f"{st.loc[1, 'name']}[UA]"]
    assert table.loc[7, "name"].endswith("fit[7]")


def test_label_function_and_replay(schema, calls):
    @dnb.step
    def fit(row):
        calls(row["carrier"])
        return row["delay"]

    rows = [{"carrier": "AA", "delay": 1.5}, {"carrier": "UA", "delay": 2.0}]
    state = {"lower": False, "crash": True}

    def carrier(row):
        return row["carrier"].lower() if state["lower"] else row["carrier"]

    @dnb.workflow
    def wf():
        out = dnb.map(fit, rows, label=carrier)
        if state["crash"]:
            raise RuntimeError("after the map")
        return out

    with pytest.raises(RuntimeError):
        wf()
    assert dnb.steps(wf.id_for())["label"].tolist() == ["AA", "UA"]
    state.update(lower=True, crash=False)  # labels are not part of the determinism check
    assert wf() == [1.5, 2.0]  # the items replay: nothing runs, the records keep their labels
    assert calls["AA"] == calls["UA"] == 1
    st = dnb.steps(wf.id_for())
    assert st["label"].tolist() == ["AA", "UA"] and st["status"].tolist() == ["replayed"] * 2


def test_a_bad_label_function_is_a_type_error_before_anything_runs(schema, calls):
    @dnb.step
    def fit(x):
        calls(x)
        return x

    def boom(x):
        if x == 2:
            raise KeyError("carrier")
        return str(x)

    with pytest.raises(TypeError, match="item 2") as info:
        dnb.map(fit, [0, 1, 2], label=boom)
    assert isinstance(info.value.__cause__, KeyError)
    with pytest.raises(TypeError, match=r"returned 1 \(int, not str\) for item 1"):
        dnb.map(fit, [0, 1, 2], label=lambda x: x if x else "zero")

    @dnb.workflow
    def wf():
        return dnb.map(fit, [0, 1, 2], label=boom)

    with pytest.raises(TypeError, match="item 2"):
        wf()
    assert sum(calls.n.values()) == 0
    assert dnb.steps(wf.id_for()).empty


def test_labels_outside_a_workflow_and_of_other_steps(schema):
    assert dnb.map(_sleepy, ["a", "b"], label=str.upper) == ["a", "b"]

    @dnb.step
    def one():
        return 1

    @dnb.workflow
    def wf():
        return one()

    wf()
    st = dnb.steps(wf.id_for())
    assert st["label"].isna().all()
    assert verbs.step_table(wf.id_for())["name"].tolist() == [st.loc[0, "name"]]

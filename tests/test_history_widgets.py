"""History DataFrames and the timeline widget, headless (by their traits and HTML)."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pandas as pd
import pytest

import durablenb as dnb
from durablenb.widgets import live, render_html, render_text, timeline_widget


class Crash(BaseException):
    pass


@pytest.fixture
def mixed(schema):
    """A workflow whose steps succeed, retry, fail (caught) and, after a crash, replay."""
    state = {"crash": True, "flaky": 0}

    @dnb.step
    def load():
        return list(range(1000))

    @dnb.step(retries=2, interval=0.01)
    def flaky(xs):
        state["flaky"] += 1
        if state["flaky"] == 1:
            raise ConnectionError("try again")
        return sum(xs)

    @dnb.step
    def broken():
        raise ValueError("column 'delay' missing")

    @dnb.step
    def final(total):
        if state["crash"]:
            raise Crash()
        return total * 2

    @dnb.workflow
    def analysis():
        total = flaky(load())
        try:
            broken()
        except ValueError:
            pass
        return final(total)

    with pytest.raises(Crash):
        analysis()
    state["crash"] = False
    return analysis, state


def test_steps_frame_columns_dtypes_and_states(mixed):
    analysis, _ = mixed
    before = dnb.steps(analysis.id_for())
    assert list(before["status"]) == ["succeeded", "retried", "failed"]
    assert analysis() == 2 * sum(range(1000))
    st = dnb.steps(analysis.id_for())
    assert list(st.columns) == [
        "workflow_id", "position", "name", "label", "kind", "status", "started_at",
        "finished_at", "duration", "attempts", "output_bytes", "codec", "error_type",
        "error_message", "child_id", "code_hash",
    ]  # fmt: skip
    assert list(st["status"]) == ["replayed", "replayed", "failed", "succeeded"]  # failures stay failed
    assert list(st["attempts"]) == [1, 2, 1, 1]
    assert str(st["started_at"].dtype) == "datetime64[us, UTC]" or st["started_at"].dt.tz
    assert st["duration"].dtype.kind == "m"
    assert (st["duration"] >= pd.Timedelta(0)).all()
    assert st.loc[1, "duration"] >= pd.Timedelta(seconds=0.01)  # the retry waited
    assert st.loc[0, "codec"] == "pickle" and st.loc[0, "output_bytes"] > 1000
    assert st.loc[2, "error_type"] == "ValueError"
    assert st.loc[2, "error_message"] == "column 'delay' missing"
    assert pd.isna(st.loc[3, "error_type"])
    for col, kind in [("position", "Int64"), ("attempts", "Int64"), ("name", "string"),
                      ("status", "string")]:  # fmt: skip
        assert str(st[col].dtype) == kind


def test_workflows_frame_filters(mixed, schema):
    analysis, _ = mixed
    assert list(dnb.workflows()["status"]) == ["interrupted"]
    analysis()

    @dnb.workflow
    def fails():
        raise RuntimeError("nope")

    with pytest.raises(RuntimeError):
        fails()
    wf = dnb.workflows()
    assert list(wf["name"]) == [fails.name, analysis.name]  # newest first
    assert list(wf["status"]) == ["failed", "succeeded"]
    assert wf.loc[1, "steps"] == 4 and wf.loc[1, "failed_steps"] == 1
    assert wf.loc[0, "error_type"] == "RuntimeError"
    assert wf["duration"].dtype.kind == "m"
    assert list(dnb.workflows(status="failed")["name"]) == [fails.name]
    assert list(dnb.workflows(status=["succeeded", "failed"], name=analysis.name)["name"]) == [
        analysis.name
    ]
    now = dt.datetime.now(dt.timezone.utc)
    assert len(dnb.workflows(since=now + dt.timedelta(minutes=1))) == 0
    assert len(dnb.workflows(until=now - dt.timedelta(hours=1))) == 0
    assert len(dnb.workflows(since=now - dt.timedelta(hours=1), limit=1)) == 1


def test_running_step_appears_in_the_frame(schema):
    gate = threading.Event()

    @dnb.step
    def wait():
        gate.wait(10)
        return 1

    @dnb.workflow
    def slow():
        return wait()

    h = dnb.start(slow)
    for _ in range(100):
        st = dnb.steps(h.workflow_id)
        if len(st):
            break
        time.sleep(0.02)
    assert list(st["status"]) == ["running"] and pd.isna(st.loc[0, "finished_at"])
    gate.set()
    h.result(timeout=10)
    assert list(dnb.steps(h.workflow_id)["status"]) == ["succeeded"]


@pytest.fixture
def shown(monkeypatch):
    """Pretend to be in a kernel: widgets are created and "displayed" into a list."""
    displayed = []
    monkeypatch.setattr(timeline_widget, "in_kernel", lambda: True)
    monkeypatch.setattr(timeline_widget.TimelineWidget, "show",
                        lambda self: displayed.append(self) or self)  # fmt: skip
    monkeypatch.setattr(timeline_widget, "REDRAW_INTERVAL", 0.01)
    live.enable()
    yield displayed
    live.disable()


def test_live_widget_follows_a_resumed_workflow(mixed, shown):
    analysis, _ = mixed
    analysis()
    assert len(shown) == 1
    w = shown[0]
    assert w.workflow_id == analysis.id_for()
    assert w.status == "succeeded"
    assert [s["state"] for s in w.steps] == ["replayed", "replayed", "failed", "succeeded"]
    assert [s["attempts"] for s in w.steps] == [1, 2, 1, 1]
    html = w._repr_mimebundle_()[0]["text/html"]
    assert html.count("class='durablenb-bar'") == 4
    assert "data-state='replayed'" in html and "data-workflow-status='succeeded'" in html
    assert "ValueError" in html  # the recorded error, on hover and in its column
    bundle = w._repr_mimebundle_()[0]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "replayed" in bundle["text/plain"]


def test_live_widget_of_a_background_run_with_map_progress(schema, shown):
    gate = threading.Event()

    @dnb.step
    def square(x):
        if x == 0:
            gate.wait(10)
        return x * x

    @dnb.workflow
    def grid():
        return dnb.map(square, range(6), workers=3)

    h = dnb.start(grid)
    w = shown[0]
    for _ in range(200):
        if any(s["state"] == "running" for s in w.steps):
            break
        time.sleep(0.01)
    assert w.status == "running"
    assert any(s["state"] == "running" for s in w.steps)
    gate.set()
    assert h.result(timeout=10) == [x * x for x in range(6)]
    for _ in range(200):
        if w.status == "succeeded":
            break
        time.sleep(0.01)
    assert w.status == "succeeded"
    assert [s["state"] for s in w.steps] == ["succeeded"] * 6
    assert w.progress == "map square: 6/6 items"


def test_cancelled_and_failed_workflows_show_their_end(schema, shown):
    @dnb.step
    def bad():
        raise KeyError("k")

    @dnb.workflow(on_failure="replay")
    def wf():
        return bad()

    with pytest.raises(KeyError):
        wf()
    assert shown[0].status == "failed"
    assert [s["state"] for s in shown[0].steps] == ["failed"]
    # A finished workflow returns its record: no new widget.
    with pytest.raises(KeyError):
        wf()
    assert len(shown) == 1


def test_timeline_outside_jupyter_is_text_and_html(mixed):
    analysis, _ = mixed
    analysis()
    t = dnb.timeline(analysis.id_for())
    text = repr(t)
    assert text.splitlines()[0].startswith(analysis.id_for())
    assert len(text.splitlines()) == 5 and "replayed" in text
    assert t._repr_html_().count("class='durablenb-bar'") == 4


def test_render_squeezes_long_gaps():
    rows = [
        {"position": 0, "name": "a", "state": "replayed", "started": 0.0, "finished": 1.0},
        {"position": 1, "name": "b", "state": "succeeded", "started": 3600.0, "finished": 3601.0},
    ]
    html = render_html("w", rows, now=3601.0)
    assert "border-left:1px dashed" in html  # the hour-long gap is drawn as a break
    assert html.count("class='durablenb-bar'") == 2
    assert "b" in render_text("w", rows)


def test_interrupted_step_shows_as_cancelled(schema, shown):
    @dnb.step
    def cut():
        raise KeyboardInterrupt

    @dnb.workflow
    def wf():
        return cut()

    with pytest.raises(KeyboardInterrupt):
        wf()
    w = shown[0]
    assert w.status == "interrupted"
    assert [s["state"] for s in w.steps] == ["cancelled"]
    assert "data-state='cancelled'" in w._repr_mimebundle_()[0]["text/html"]

"""History DataFrames and the timeline widget, headless (by their traits and HTML)."""

from __future__ import annotations

import datetime as dt
import re
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


def test_frames_draw_compact_tables_in_notebooks(mixed):
    analysis, _ = mixed
    analysis()
    wf = dnb.workflows()
    assert isinstance(wf, dnb.history.HistoryFrame) and isinstance(wf, pd.DataFrame)
    html = wf._repr_html_()
    assert "<span class='dnb-state' data-state='succeeded'>succeeded</span>" in html
    assert "more column" in html and "<th>executor</th>" not in html  # compact: the main columns
    st = dnb.steps(analysis.id_for())
    html = st._repr_html_()
    assert html.count("class='dnb-state' data-state='replayed'") == 2
    assert re.search(r"<td class='dnb-dur'>\d+\.\d (s|min)</td>", html)
    # Derived frames stay frames; without a status column they draw as pandas does.
    failed = st[st["status"] == "failed"]
    assert len(failed) == 1 and "data-state='failed'" in failed._repr_html_()
    assert "dnb-state" not in st[["name", "position"]]._repr_html_()
    pd.testing.assert_frame_equal(pd.DataFrame(st), st, check_frame_type=False)
    with pd.option_context("display.max_rows", 3, "display.min_rows", 2):
        assert "… 2 more rows" in st._repr_html_()


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


class _Handle:
    """A display handle that keeps what it was updated to."""

    def __init__(self, data):
        self.data = data

    def update(self, data, raw=False):
        self.data = data


@pytest.fixture
def shown(monkeypatch):
    """Pretend to be in a kernel: widgets are created, "displayed" (with their stand-ins) and
    their messages to the browser kept."""
    displayed = []

    def fake_display(data, metadata=None, raw=False, display_id=False):
        handle = _Handle(data)
        displayed[-1].outputs.append(handle)
        return handle

    import IPython.display

    monkeypatch.setattr(IPython.display, "display", fake_display)
    monkeypatch.setattr(timeline_widget, "in_kernel", lambda: True)
    original_show = timeline_widget.TimelineWidget.show

    def show(self):
        self.outputs, self.sent = [], []
        displayed.append(self)
        return original_show(self)

    monkeypatch.setattr(timeline_widget.TimelineWidget, "show", show)
    monkeypatch.setattr(timeline_widget.TimelineWidget, "send",
                        lambda self, content, buffers=None: self.sent.append(content))  # fmt: skip
    monkeypatch.setattr(timeline_widget, "SEND_INTERVAL", 0.01)
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
    # The run ended: the live view's output became the final static copy, the stand-in empty.
    live_out, standin = w.outputs
    html = live_out.data["text/html"]
    assert "application/vnd.jupyter.widget-view+json" not in live_out.data
    assert standin.data == {"text/plain": ""}
    assert html.count("class='dnb-bar'") == 4
    assert "data-state='replayed'" in html and "data-workflow-status='succeeded'" in html
    assert "2 replayed (" in html and "2 ran" in html  # the summary
    assert "ValueError</b>: column &#x27;delay&#x27; missing" in html  # the error, on opening
    assert f"dnb.output({analysis.id_for()!r}, 3)".replace("'", "&#x27;") in html
    assert "<script" not in html
    assert "replayed" in live_out.data["text/plain"]


def test_live_view_gets_changes_and_details(mixed, shown):
    analysis, _ = mixed
    analysis()
    w = shown[0]
    rows = [r for m in w.sent if m["kind"] == "rows" for r in m["rows"]]
    assert {r["p"] for r in rows} == {0, 1, 2, 3}
    assert all(set(r) <= {"p", "n", "k", "l", "s", "t0", "t1", "a", "b"} for r in rows)
    w.sent.clear()
    w._on_view_message(w, {"kind": "sync"}, [])
    assert [r["p"] for r in w.sent[0]["rows"]] == [0, 1, 2, 3]
    w._on_view_message(w, {"kind": "detail", "p": 2}, [])
    detail = w.sent[-1]
    assert detail["error_type"] == "ValueError" and "delay" in detail["error_message"]
    assert "broken" in detail["traceback"]
    assert detail["load"] == f"dnb.output({analysis.id_for()!r}, 2)"
    w._on_view_message(w, {"kind": "detail", "p": "x"}, [])  # nonsense is answered, not raised
    assert w.sent[-1] == {"kind": "detail", "p": "x"}


def test_a_thousand_steps_send_little(schema, shown):
    @dnb.step
    def tick(i):
        return i

    @dnb.workflow
    def many():
        return sum(tick(i) for i in range(1000))

    assert many() == sum(range(1000))
    w = shown[0]
    import json

    sent = sum(len(json.dumps(m)) for m in w.sent)
    assert sent < 250_000, sent  # changed rows only, batched; no whole documents
    final = w.outputs[0].data["text/html"]
    assert len(final) < 40_000, len(final)  # one group row, a few members
    assert "tick ×1000" in final and "… 990 more" in final


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
    final = w.outputs[0].data["text/html"]
    assert "class='dnb-progress' data-done='6' data-total='6'" in final
    assert "square ×6" in final


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


def test_notes_show_in_the_timeline_not_below_it(schema, shown, capsys):
    import logging

    from durablenb import ipython

    state = {"crash": True}

    @dnb.step
    def first():
        return 1

    @dnb.workflow
    def wf():
        x = first()
        if state["crash"]:
            raise Crash()
        return x

    with pytest.raises(Crash):
        wf()
    state["crash"] = False

    @dnb.step  # the step's code changed before the rerun
    def first():  # type: ignore[no-redef]  # noqa: F811
        return 2

    logging.getLogger("durablenb").addHandler(ipython._notes)
    try:
        assert wf() == 2
    finally:
        logging.getLogger("durablenb").removeHandler(ipython._notes)
    notes = shown[-1].notes
    assert notes and "re-running from position 0" in notes[0]
    assert notes[0] not in capsys.readouterr().err  # shown in the timeline, not printed below
    assert _e(notes[0]) in shown[-1].outputs[0].data["text/html"]


def _e(text):
    import html

    return html.escape(text, quote=True)


def test_timeline_outside_jupyter_is_text_and_html(mixed):
    analysis, _ = mixed
    analysis()
    t = dnb.timeline(analysis.id_for())
    text = repr(t)
    assert text.splitlines()[0].startswith(analysis.id_for())
    assert len(text.splitlines()) == 5 and "replayed" in text
    assert t._repr_html_().count("class='dnb-bar'") == 4


def test_timeline_of_a_finished_workflow_in_a_kernel_is_static(mixed, shown):
    analysis, _ = mixed
    analysis()
    t = dnb.timeline(analysis.id_for())
    assert isinstance(t, timeline_widget.StaticTimeline)  # nothing that needs the kernel later


def test_render_squeezes_long_gaps_and_has_a_scale():
    rows = [
        {"position": 0, "name": "a", "state": "replayed", "started": 0.0, "finished": 1.0},
        {"position": 1, "name": "b", "state": "succeeded", "started": 3600.0, "finished": 3601.0},
    ]
    html = render_html("w", rows, now=3601.0)
    assert html.count("class='dnb-break'") == 2  # the hour-long gap: a break in each track
    assert html.count("class='dnb-bar'") == 2
    assert "class='dnb-ticks'" in html and ">1 s<" in html
    assert "1 replayed (1.0 s saved) · 1 ran · 1.0 s" in html
    assert "b" in render_text("w", rows)


def test_standin_says_interrupted():
    rows = [{"position": 0, "name": "a", "state": "succeeded", "started": 0.0, "finished": 1.0},
            {"position": 1, "name": "b", "state": "running", "started": 1.0, "finished": None}]
    html = render_html("w", rows, status="running", now=5.0, standin=True)
    assert "durablenb-standin" in html and "rerun the cell to resume" in html
    import re

    body = re.sub(r"<style>.*?</style>", "", html)
    assert "data-state='interrupted'" in body and "running" not in body


def test_interrupted_step_reads_like_its_workflow(schema, shown):
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
    html = w.outputs[0].data["text/html"]
    assert "class='dnb-state' data-state='interrupted'" in html

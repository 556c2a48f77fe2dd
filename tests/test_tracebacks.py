"""Tracebacks show the user's code in any interpreter, and a replayed error shows the
traceback recorded when it ran."""

from __future__ import annotations

import re

from durablenb.engine._tracebacks import user_text

FAILING = """
@dnb.step
def load(path):
    return open(path).read()

@dnb.workflow(on_failure="replay")
def analysis(path):
    text = load(path)
    return len(text)

analysis(os.path.join(os.environ["EFFECTS_DIR"], "missing.csv"))
"""


def _frames(stderr: str) -> list[str]:
    return re.findall(r'File "([^"]+)", line \d+', stderr)


def test_plain_python_shows_the_users_frames(run_child):
    first = run_child(FAILING)
    assert "FileNotFoundError" in first.stderr
    files = _frames(first.stderr)
    ours = [f for f in files if "/durablenb/" in f]
    assert len(ours) == 1, first.stderr  # the call that re-raises; none of the engine's
    assert "return open(path).read()" in first.stderr and "text = load(path)" in first.stderr

    again = run_child(FAILING)  # replayed from its record in a new process
    assert "re-raised from the record of workflow" in again.stderr
    when = again.stderr.split("When it ran:", 1)[1]
    assert "return open(path).read()" in when and "text = load(path)" in when
    assert "/durablenb/" not in when, again.stderr


def test_an_error_raised_inside_durablenb_keeps_every_frame(run_child):
    broken = """
    from durablenb.engine import values
    values.encode_value = None  # calling it fails inside the engine

    @dnb.step
    def one():
        return 1

    @dnb.workflow
    def wf():
        return one()

    wf()
    """
    out = run_child(broken)
    assert "'NoneType' object is not callable" in out.stderr
    assert sum("/durablenb/engine/" in f for f in _frames(out.stderr)) >= 3, out.stderr


def test_recorded_texts_of_earlier_versions_lose_the_engines_entries():
    text = (
        "Traceback (most recent call last):\n"
        '  File "/home/ann/analysis.py", line 8, in analysis\n'
        "    text = load(path)\n"
        f'  File "{_pkg()}engine/kinds.py", line 60, in attempt\n'
        "    value = spec.fn(*args, **kwargs)\n"
        "            ^^^^^^^^^^^^^^^^^^^^^^^^\n"
        '  File "/home/ann/analysis.py", line 5, in load\n'
        "    return open(path).read()\n"
        "FileNotFoundError: missing\n"
    )
    shown = user_text(text)
    assert "kinds.py" not in shown and "spec.fn" not in shown
    assert "text = load(path)" in shown and shown.endswith("FileNotFoundError: missing")


def _pkg() -> str:
    from durablenb.engine._tracebacks import PACKAGE

    return PACKAGE


def test_an_argument_that_cannot_be_recorded_is_named(schema):
    import threading

    import pytest

    import durablenb as dnb

    @dnb.workflow
    def analysis(frame, path=None):
        return 1

    lock = threading.Lock()
    unrecordable = pytest.raises(dnb.UnserializableArgumentsError, match=r"argument path= \(_thread\.lock\)")
    with dnb.workflow_id("named-1"), unrecordable as info:
        analysis(1, path=lock)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one short chain
    with dnb.workflow_id("named-2"), pytest.raises(dnb.UnserializableArgumentsError,
                                                   match=r"argument arguments\[1\]"):  # fmt: skip
        analysis(1, lock)


def test_a_typed_error_of_durablenb_shows_no_engine_frames(run_child):
    out = run_child("""
    import threading
    @dnb.workflow
    def analysis(frame, path=None):
        return 1
    with dnb.workflow_id("typed"):
        analysis(1, path=threading.Lock())
    """)
    assert "UnserializableArgumentsError: argument path=" in out.stderr
    assert sum("/durablenb/" in f for f in _frames(out.stderr)) == 1, out.stderr

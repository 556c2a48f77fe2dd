"""The IPython extension in an in-process shell: magics, %%durable cells, completion."""

from __future__ import annotations

import linecache

import pytest
from IPython.core.error import UsageError

import durablenb as dnb
from durablenb.engine import hashing, runtime
from durablenb.errors import WorkflowNotFoundError
from durablenb.ipython import _complete, _source_from_history
from durablenb.ipython.commands import parse_duration

from .conftest import Shell

DEFS = """
import durablenb as dnb
calls = []

@dnb.step
def load(n):
    calls.append("load")
    import pandas as pd
    return pd.DataFrame({"a": range(n)})

@dnb.step
def total(df):
    calls.append("total")
    return int(df.a.sum())

@dnb.workflow
def analysis(n):
    return total(load(n))
"""


def test_load_ext_reports_workflows_an_earlier_kernel_left(schema, capsys):
    class Crash(BaseException):
        pass

    @dnb.step
    def s():
        raise Crash()

    @dnb.workflow
    def left_behind():
        return s()

    with pytest.raises(Crash):
        left_behind()
    sh = Shell()
    sh.run("%load_ext durablenb")
    out = capsys.readouterr().out
    assert "connected to" in out and schema in out
    assert "1 workflow left unfinished" in out
    assert left_behind.id_for() in out
    assert f"%durable resume {left_behind.id_for()}" in out
    assert "%durable recover" in out


def test_list_steps_timeline_info(shell, capsys):
    shell.run(DEFS)
    assert shell.run("analysis(4)") == 6
    wid = shell.run("analysis.id_for(4)")
    listed = shell.run("%durable list")
    assert list(listed["workflow_id"]) == [wid]
    assert list(shell.run(f"%durable steps {wid}")["name"]) == ["load", "total"]
    html = shell.run(f"%durable timeline {wid}")._repr_html_()
    assert html.count("class='dnb-state' data-state='succeeded'") == 2
    shell.run("%durable info")
    out = capsys.readouterr().out
    assert "schema:" in out and "1 succeeded" in out
    assert len(shell.run("%durable list --status failed")) == 0


def test_usage_errors_are_usage_errors(shell):
    for line in ["%durable bogus", "%durable steps", "%durable gc", "%durable gc --older-than 7x",
                 "%durable fork x", "%durable keep x"]:  # fmt: skip
        with pytest.raises(UsageError):
            shell.run(line)
    with pytest.raises(WorkflowNotFoundError):  # an unknown id is the same error everywhere
        shell.run("%durable steps no-such-id")
    assert parse_duration("7d") == 7 * 86400 and parse_duration("90") == 90
    assert parse_duration("1.5h") == 5400


def test_diff_keep_and_refresh(shell, capsys):
    shell.run(DEFS)
    shell.run("analysis(3)")
    wid = shell.run("analysis.id_for(3)")
    d = shell.run(f"%durable diff {wid}")
    assert list(d["on rerun"]) == ["reuse", "reuse"]
    # An edit of `load` invalidates it and every step after it.
    shell.run(DEFS.split("@dnb.step\ndef total")[0].replace('calls.append("load")',
                                                            'calls.append("load v2")'))  # fmt: skip
    d = shell.run(f"%durable diff {wid}")
    assert list(d["on rerun"]) == ["re-run", "re-run"]
    assert list(d["why"]) == ["the code of 'load' changed", "after the change at position 0"]
    # Keep the record despite the (cosmetic, here) edit: nothing runs again.
    shell.run(f"%durable keep {wid} load")
    assert list(shell.run(f"%durable diff {wid}")["on rerun"]) == ["reuse", "reuse"]
    shell.ns["calls"].clear()
    assert shell.run("analysis(3)") == 3
    assert shell.ns["calls"] == []
    # Refresh forces the step (and what follows) to run again.
    shell.run(f"%durable refresh {wid} 1")
    assert list(shell.run(f"%durable diff {wid}")["on rerun"]) == ["reuse", "re-run"]
    assert shell.run("analysis(3)") == 3
    assert shell.ns["calls"] == ["total"]


def test_edited_step_reruns_from_the_edit_and_says_so(shell, capsys):
    shell.run(DEFS)
    shell.run("analysis(5)")
    shell.run(DEFS.split("@dnb.workflow")[0].replace("int(df.a.sum())", "int(df.a.sum()) + 1"))
    shell.ns["calls"].clear()
    capsys.readouterr()
    assert shell.run("analysis(5)") == 11
    assert shell.ns["calls"] == ["total"]
    err = capsys.readouterr().err
    assert "durablenb: workflow" in err and "the code of 'total' changed" in err
    assert "re-running from position 1" in err


def test_durable_cell_records_and_restores_names(shell, capsys):
    shell.run(DEFS)
    cell = "%%durable --id report\nimport math\ndf = load(4)\nt = total(df)\nroot = math.sqrt(t)\nt * 10\n"
    assert shell.run(cell) == 60
    assert shell.ns["calls"] == ["load", "total"]
    for name in ("df", "t", "root", "math"):
        del shell.ns[name]
    assert shell.run(cell) == 60
    assert shell.ns["calls"] == ["load", "total"]  # nothing ran
    assert shell.ns["t"] == 6 and shell.ns["root"] == 6**0.5
    assert list(shell.ns["df"].a) == [0, 1, 2, 3]
    assert shell.ns["math"].sqrt(4) == 2
    assert "already finished; restored df, t, root" in capsys.readouterr().out
    steps = dnb.steps("report")
    assert list(steps["name"]) == ["load", "total"]


def test_durable_cell_without_id_and_unencodable_names(shell, capsys):
    shell.run(DEFS)
    cell = "%%durable\nimport threading\nlock = threading.Lock()\nn = total(load(2))\n"
    shell.run(cell)
    assert "not recorded (cannot be encoded): lock" in capsys.readouterr().out
    wf = dnb.workflows()
    assert any(w.startswith("cell-") for w in wf["workflow_id"])
    with pytest.raises(UsageError):
        shell.run("%%durable list\nx = 1\n")


def test_interrupt_in_a_durable_cell_leaves_it_resumable(shell):
    shell.run(DEFS)
    shell.run("""
@dnb.step
def stop_here():
    raise KeyboardInterrupt
""")
    with pytest.raises(KeyboardInterrupt):
        shell.run("%%durable --id cut\nx = total(load(2))\nstop_here()\n")
    assert dnb.workflows().loc[0, "status"] == "interrupted"


def test_completion_offers_commands_and_ids(shell):
    shell.run(DEFS)
    shell.run("analysis(2)")
    wid = shell.run("analysis.id_for(2)")

    class Event:
        def __init__(self, line):
            self.line = line

    assert "resume" in _complete(shell.ip, Event("%durable re"))
    assert _complete(shell.ip, Event("%durable resume ")) == [wid]
    assert _complete(shell.ip, Event("%durable steps anal")) == [wid]
    assert _complete(shell.ip, Event("%durable steps zzz")) == []
    _, matches = shell.ip.complete("", "%durable steps anal")
    assert wid in matches or any(m.endswith(wid) for m in matches)


def test_code_hash_falls_back_to_the_cell_source(shell):
    shell.run("def helper(x):\n    return x + 1\n")
    fn = shell.ns["helper"]
    h = hashing.code_hash(fn)
    filename = fn.__code__.co_filename
    saved = linecache.cache.pop(filename, None)
    try:
        import inspect

        with pytest.raises(OSError):
            inspect.getsource(fn)
        assert _source_from_history(fn) is not None
        assert hashing.code_hash(fn) == h
    finally:
        if saved is not None:
            linecache.cache[filename] = saved


def test_replayed_error_traceback_ends_at_a_label(shell, capsys):
    shell.run(DEFS)
    shell.run("@dnb.step\ndef bad():\n    raise ValueError('bad row')\n"
              "@dnb.workflow(on_failure='replay')\ndef fails():\n    return bad()\n")  # fmt: skip
    for _ in range(2):
        with pytest.raises(ValueError, match="bad row"):
            shell.run("fails()")
    shell.ip.showtraceback()
    err = capsys.readouterr()
    text = err.out + err.err
    assert "recorded error of workflow" in text
    assert runtime.registered("fails") is not None


def test_map_on_processes_from_a_notebook(shell):
    shell.run("""
import durablenb as dnb

def cube(x):
    return x ** 3

@dnb.workflow
def cubes():
    return dnb.map(cube, [1, 2, 3], workers=2, processes=True)
""")
    assert shell.run("cubes()") == [1, 8, 27]


def test_each_cell_variable_holds_its_blob_until_the_cell_is_forgotten(shell, schema, sql, monkeypatch):
    monkeypatch.setenv("DURABLENB_BLOB_THRESHOLD", "100000")
    dnb.connect(schema=schema)
    shell.run("import numpy as np")
    shell.run("%%durable --id big-cell\na = np.arange(300_000)\nb = np.ones(300_000)\nsmall = 3")
    held = sql.execute(f'SELECT workflow_id, count(*) FROM "{schema}".blob_refs GROUP BY 1').fetchall()
    assert held == [("big-cell", 2)]  # a and b, each its own blob
    blobs = runtime.store().blobs
    assert len(list(blobs.listing())) == 2
    dnb.gc(3600)  # nothing old enough to forget, and nothing loose: every blob stays
    assert len(list(blobs.listing())) == 2
    shell.run("%durable forget big-cell")
    assert list(blobs.listing()) == []


def test_the_notebook_is_named_by_the_front_end(shell, monkeypatch):
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    shell.ns.pop("__vsc_ipynb_file__", None)
    assert runtime.notebook() is None  # an IPython console: no notebook
    shell.ns["__vsc_ipynb_file__"] = "/home/ann/vscode/q3.ipynb"  # VS Code's name for it
    assert runtime.notebook() == "/home/ann/vscode/q3.ipynb"
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ann/lab/q3.ipynb")  # JupyterLab's
    assert runtime.notebook() == "/home/ann/lab/q3.ipynb"

"""``%%durable`` cells that come back as they ran: what they printed, a trailing ``;``,
IPython syntax in the body, the notebook's own functions and classes, and a restore that
never fails (a name that cannot be restored makes the cell run again)."""

from __future__ import annotations

from durablenb.engine import values

from .conftest import Shell
from .test_kernels import _no_traceback, kernels  # noqa: F401  (a fixture)


def _new_kernel(shell: Shell) -> None:
    """What a restarted kernel has: an empty namespace and the extension loaded."""
    shell.ip.reset()
    shell.run("%load_ext durablenb")


def test_prints_are_shown_again_and_a_semicolon_still_hides_the_result(shell, capsys):
    cell = "%%durable --id printed\nprint('loaded 336776 flights')\nn = 336776\nn * 2;\n"
    assert shell.run(cell) is None  # the trailing ; hides the result, as in any cell
    assert "loaded 336776 flights" in capsys.readouterr().out
    _new_kernel(shell)
    assert shell.run(cell) is None
    out = capsys.readouterr().out
    assert "loaded 336776 flights" in out and "without running it" in out
    assert shell.ns["n"] == 336776
    shown = "%%durable --id shown\nm = 21\nm * 2\n"
    assert shell.run(shown) == 42
    _new_kernel(shell)
    assert shell.run(shown) == 42


def test_ipython_syntax_runs_inside_the_cell(shell):
    cell = "%%durable --id magics\nimport os\n%env DURABLENB_DEMO_X=5\nx = os.environ['DURABLENB_DEMO_X']\n"
    shell.run(cell)
    assert shell.ns["x"] == "5"
    _new_kernel(shell)
    shell.run(cell)
    assert shell.ns["x"] == "5"


def test_the_notebooks_functions_and_classes_come_back(shell, capsys):
    cell = """%%durable --id defs
def shifted(v):
    return v + 1

class Carrier:
    def __init__(self, code):
        self.code = code

hub = Carrier("AA")
y = shifted(2)
"""
    shell.run(cell)
    _new_kernel(shell)
    shell.run(cell)
    out = capsys.readouterr().out
    assert "without running it" in out and "ran the cell again" not in out
    assert shell.ns["y"] == 3 and shell.ns["shifted"](4) == 5
    assert shell.ns["hub"].code == "AA" and type(shell.ns["hub"]) is shell.ns["Carrier"]


def test_a_name_that_cannot_be_restored_makes_the_cell_run_again(shell, capsys, monkeypatch):
    cell = "%%durable --id fragile\ncalls = globals().get('calls', 0) + 1\ntotal = 40 + 2\n"
    shell.run(cell)
    _new_kernel(shell)
    real = values.decode_value

    def failing(store, codec, data, checksum, blob, what, place):
        if place[1] == "var:total":
            raise ModuleNotFoundError("No module named 'gone'")
        return real(store, codec, data, checksum, blob, what, place)

    monkeypatch.setattr(values, "decode_value", failing)
    shell.run(cell)  # not an error
    monkeypatch.setattr(values, "decode_value", real)
    out = capsys.readouterr().out
    assert "ran the cell again: could not restore total (ModuleNotFoundError" in out
    assert shell.ns["total"] == 42 and shell.ns["calls"] == 1  # ran in the new namespace
    _new_kernel(shell)
    shell.run(cell)  # recorded anew: restores now
    assert "without running it" in capsys.readouterr().out and shell.ns["total"] == 42


CELLS = [
    "%%durable --id c1\nprint('cell one')\nbase = 10\n",
    "%%durable --id c2\ndef grow(v):\n    return v * 3\nclass Box:\n    def __init__(self, v):\n"
    "        self.v = v\nbox = Box(grow(base))\nprint('box', box.v)\n",
    "%%durable --id c3\nimport os\n%env DURABLENB_CELL_C3=1\nprint('three', box.v + 1)\nbox.v;\n",
]


def test_a_notebook_of_durable_cells_killed_midway_reruns_to_the_same_outputs(kernels):  # noqa: F811
    setup = "%load_ext durablenb\n"

    def run_all(k, cells):
        _no_traceback(k.run(setup))
        outs = [k.run(c) for c in cells]
        for o in outs:
            assert o["errors"] == [], o["errors"]
        return outs

    whole = run_all(kernels(), CELLS)  # uninterrupted (c3 is recorded, so forget it below)
    first = kernels()
    run_all(first, [c.replace("--id c", "--id k") for c in CELLS[:2]])
    first.kill()  # after cell 2
    again = run_all(kernels(), [c.replace("--id c", "--id k") for c in CELLS])
    for before, after in zip(whole, again, strict=True):
        assert after["results"] == before["results"]
        printed = [line for line in after["stdout"].splitlines() if not line.startswith("durablenb:")]
        assert printed == before["stdout"].splitlines()


def test_in_place_changes_to_names_a_cell_only_reads_are_recorded(shell):
    cells = [
        "import numpy as np, pandas as pd\nx = np.zeros((2, 2))\ndf = pd.DataFrame({'a': [1, 2]})\n"
        "rng = np.random.default_rng(0)\n",
        "%%durable --id inplace\nx[0, 0] = 12\ndf['e'] = 1.25\nfirst = rng.random()\n",
        "%%durable --id after\nsecond = rng.random()\n",
    ]
    for c in cells:
        shell.run(c)
    expected = {k: shell.ns[k] for k in ("first", "second")}
    _new_kernel(shell)
    shell.run(cells[0])  # an ordinary cell: runs again
    shell.run(cells[1])  # restored: the in-place changes come back with it
    assert shell.ns["x"][0, 0] == 12 and list(shell.ns["df"]["e"]) == [1.25, 1.25]
    assert shell.ns["first"] == expected["first"]
    shell.ip.run_cell("import durablenb as dnb; dnb.forget('after')")
    shell.run(cells[2])  # runs anew from the restored generator: the same draw as before
    assert shell.ns["second"] == expected["second"]


PLOT = """%%durable --id plot
import matplotlib.pyplot as plt
from IPython.display import HTML, display
fig, ax = plt.subplots(figsize=(3, 2))
ax.plot([1, 3, 2])
display(HTML("<b>delays by month</b>"))
print("plotted")
"""


def test_a_plotting_cell_shows_one_image_again_after_a_restart(kernels):  # noqa: F811
    def run(k):
        _no_traceback(k.run("%load_ext durablenb\n%matplotlib inline\n"))
        out = k.run(PLOT)
        assert out["errors"] == [], out["errors"]
        return out

    first = run(kernels())
    images = [d for d in first.get("displays", []) if "image/png" in d]
    assert len(images) == 1 and ["text/html", "text/plain"] in first["displays"]
    again = run(kernels())  # a new kernel: the cell is restored, not run
    assert "without running it" in again["stdout"] and "plotted" in again["stdout"]
    shown = [d for d in first["displays"] if "application/vnd.jupyter.widget-view+json" not in d]
    assert sorted(again.get("displays", [])) == sorted(shown)  # one image, as before
    k = kernels()
    run(k)
    linked = k.run("print(ax.figure is fig, len(fig.axes))")
    assert "True 1" in linked["stdout"], linked


def test_names_that_share_objects_still_share_them(shell):
    cell = ("%%durable --id shared\nfrom fractions import Fraction\nf = Fraction(1, 3)\n"
            "holder = [f, {'f': f}]\n")
    shell.run(cell)
    _new_kernel(shell)
    shell.run(cell)
    assert shell.ns["holder"][0] is shell.ns["f"] and shell.ns["holder"][1]["f"] is shell.ns["f"]


def test_a_pickled_name_holding_a_frame_or_array_still_shares_it(shell, capsys):
    """Frames and arrays are recorded on their own (Arrow, npy); a pickled name that holds
    one refers to it, so ``pair[0] is df`` after a restore as before."""
    cells = [
        "%%durable --id holds-one\nimport numpy as np, pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})\n"
        "pair = [df, 'label']\n",
        "%%durable --id holds-many\narr = np.arange(4.0)\nframe = df.assign(b=3)\n"
        "box = {'arr': arr, 'frames': [frame, frame]}\nlabel = 'x'\n",
    ]
    for c in cells:
        shell.run(c)
    _new_kernel(shell)
    for c in cells:
        shell.run(c)
    assert capsys.readouterr().out.count("without running it") == 2
    ns = shell.ns
    assert ns["pair"][0] is ns["df"] and ns["pair"][1] == "label"
    assert ns["box"]["arr"] is ns["arr"] and ns["box"]["frames"][0] is ns["frame"] is ns["box"]["frames"][1]
    ns["arr"][0] = 9.0
    assert ns["box"]["arr"][0] == 9.0 and list(ns["frame"].b) == [3, 3]


def test_views_come_back_as_views_and_writes_through_them_as_writes(shell):
    cells = [
        "%%durable --id base\nimport numpy as np\nx = np.arange(16.0).reshape(4, 4)\n"
        "sub = x[1:3, ::-2]\nflat = x.reshape(16)\n",
        "%%durable --id through\nsub[0, 0] = -1.0\n",
    ]
    for c in cells:
        shell.run(c)
    expected = shell.ns["x"].copy()
    _new_kernel(shell)
    for c in cells:
        shell.run(c)  # both restored, not run
    import numpy as np

    x, sub, flat = shell.ns["x"], shell.ns["sub"], shell.ns["flat"]
    assert np.array_equal(x, expected) and x[1, 3] == -1.0
    assert np.shares_memory(sub, x) and np.shares_memory(flat, x)
    sub[1, 1] = 99.0  # still a view: the write lands in x
    assert x[2, 1] == 99.0 and flat[9] == 99.0


def test_a_cell_gets_a_timeline_only_when_it_records_steps(shell, monkeypatch):
    from durablenb.widgets import live, timeline_widget

    displayed: list = []
    monkeypatch.setattr(timeline_widget, "in_kernel", lambda: True)
    monkeypatch.setattr(timeline_widget.TimelineWidget, "show",
                        lambda self: displayed.append(self) or self)  # fmt: skip
    live.enable()
    try:
        shell.run("%%durable --id plain\nx = 1\n")
        assert displayed == []  # no steps: no empty "0 steps" timeline
        shell.run("import durablenb as dnb\n@dnb.step\ndef one():\n    return 1\n")
        shell.run("%%durable --id stepped\ny = one()\n")
        assert [w.workflow_id for w in displayed] == ["stepped"]
        assert [s["state"] for s in displayed[0].steps] == ["succeeded"]
    finally:
        live.disable()


def test_the_global_state_a_cell_changed_comes_back(shell, tmp_path):
    import os
    import random

    import numpy as np

    start = os.getcwd()
    cell = (f"%%durable --id seeded\nimport os, random\nimport numpy as np\nnp.random.seed(3)\n"
            f"random.seed(4)\nos.chdir({str(tmp_path)!r})\n")  # fmt: skip
    try:
        shell.run(cell)
        expected = (np.random.random(), random.random())
        _new_kernel(shell)
        np.random.seed(99)
        random.seed(99)
        os.chdir(start)
        shell.run(cell)  # restored, not run: the state it left is put back
        assert (np.random.random(), random.random()) == expected
        assert os.getcwd() == str(tmp_path)
    finally:
        os.chdir(start)

"""A notebook of ``%%durable`` cells covering what a real notebook's state is made of —
prints, its own functions and classes, in-place edits, a view written through, a random
generator, masked arrays and recarrays, a plot with ``fig``/``ax``, ``%timeit``, a trailing
``;``, a cell that raises — killed after every cell in turn and rerun whole in a new kernel: each cell shows
what the uninterrupted run showed, and the namespace ends up the same."""

from __future__ import annotations

import json
import re

import pytest

from .test_kernels import _no_traceback, kernels  # noqa: F401  (a fixture)

CELLS = [
    "import numpy as np, pandas as pd\nrng = np.random.default_rng(7)\n"
    "df = pd.DataFrame({'a': rng.integers(0, 10, 20)})\nprint('rows', len(df))\n",
    "def scale(v):\n    return v * 2\n\nclass Stat:\n    def __init__(self, v):\n        self.v = v\n\n"
    "stat = Stat(scale(int(df.a.sum())))\nprint('stat', stat.v)\n",
    "df['b'] = df.a * 1.5\nx = np.zeros((2, 2))\nx[0, 0] = rng.random()\nrow = x[0]\n"
    "print('x', round(x[0, 0], 6))\n",
    "m = np.ma.masked_array([1.0, 2.0, 3.0], mask=[0, 1, 0])\n"
    "r = np.rec.fromarrays([[1, 2], [3.0, 4.0]], names='p,q')\nprint('m', m.sum(), 'r', r.q.sum())\n",
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(2, 2))\nax.plot(df.a)\n"
    "print('axes', len(fig.axes))\n",
    "%timeit -n1 -r1 sum(range(10))\ny = scale(3)\nrow[1] = 5.0\nprint('y', y)\n",
    "z = y + stat.v\nz;\n",
    "raise ValueError('a cell that raises')\n",
    "print('final', float(df.b.sum()), type(m).__name__, list(m.mask), type(r).__name__,\n"
    "      ax.figure is fig, x[0, 0] == round(x[0, 0], 12), z, float(rng.random()),\n"
    "      x[0, 1], np.shares_memory(row, x))\n",
]
SETUP = "%load_ext durablenb\n%matplotlib inline\n"
_TIMING = re.compile(r"per loop|±")


def _cells(prefix: str) -> list[str]:
    return [f"%%durable --id {prefix}-{i}\n{body}" for i, body in enumerate(CELLS)]


def _shown(out: dict) -> tuple:
    """What a cell showed, as compared: printed lines (durablenb's own notes and timings
    aside), the result, the number of images, the error's name."""
    printed = [line for line in out["stdout"].splitlines()
               if not line.startswith("durablenb:") and not _TIMING.search(line)]  # fmt: skip
    images = sum("image/png" in d for d in out.get("displays", []))
    return printed, out["results"], images, [e["ename"] for e in out["errors"]]


#: A plain cell printing the namespace: each name, its type and a digest of its value, or
#: else its repr (unless that holds an address: a function, a class).
NAMESPACE = (
    "import json as _json\nfrom durablenb.ipython.cell import fingerprint as _fp\n"
    "def _value(v):\n    r = repr(v)\n    return _fp(v) or (None if ' at 0x' in r else r)\n"
    "_skip = ('In', 'Out', 'exit', 'quit', 'get_ipython')\n"
    "print(_json.dumps({k: [type(v).__module__, type(v).__qualname__, _value(v)]\n"
    "                   for k, v in globals().items() if not k.startswith('_') and k not in _skip},\n"
    "                  sort_keys=True))\n"
)


def _run(kernel, cells: list[str], restored: list[bool] | None = None) -> list[tuple]:
    """Run *cells*, then print the namespace (the last entry); *restored* collects whether
    each cell was restored without running."""
    _no_traceback(kernel.run(SETUP))
    shown = []
    for c in cells:
        out = kernel.run(c)
        shown.append(_shown(out))
        if restored is not None:
            restored.append("without running it" in out["stdout"] or "recomputed" in out["stdout"])
    names = kernel.run(NAMESPACE)
    _no_traceback(names)
    shown.append(tuple(json.loads(names["stdout"]).items()))
    return shown


@pytest.fixture
def baseline(kernels):  # noqa: F811
    shown = _run(kernels(), _cells("whole"))
    assert shown[7][3] == ["ValueError"] and shown[4][2] == 1 and shown[6][1] == []
    return shown


@pytest.mark.parametrize("killed_after", range(1, len(CELLS)))
def test_killed_after_any_cell_the_rerun_shows_the_same_notebook(kernels, baseline, killed_after):  # noqa: F811
    cells = _cells(f"kill{killed_after}")
    first = kernels()
    _run(first, cells[:killed_after])
    first.kill()
    restored: list[bool] = []
    again = _run(kernels(), cells, restored)
    for i, (before, after) in enumerate(zip(baseline, again, strict=True)):
        what = "the namespace" if i == len(CELLS) else f"cell {i}"
        assert after == before, f"{what} after a kill after cell {killed_after}: {after} != {before}"
    # Every cell that finished before the kill was restored, not run (the one that raised
    # runs again: a cell's error is not final); the others ran.
    assert restored == [i < killed_after and i != 7 for i in range(len(CELLS))]

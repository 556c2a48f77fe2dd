"""`durablenb run`: notebooks executed headless in real kernels, killed, and resumed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat

REPO = Path(__file__).resolve().parent.parent
FLIGHTS = REPO / "notebooks" / "flights_analysis.ipynb"


def _durablenb(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> Any:
    full = dict(os.environ, **(env or {}))
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "durablenb", *args], env=full, capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


def _notebook(path: Path, cells: list[str], tags: dict[int, list[str]] | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": (tags or {}).get(i, [])})
                for i, src in enumerate(cells)]  # fmt: skip
    nbformat.write(nb, str(path))
    return path


def _texts(path: Path) -> list[list[tuple[str, str]]]:
    """Each code cell's outputs as (type, text), timelines left out (they hold times)."""
    nb = nbformat.read(str(path), as_version=4)
    out = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        shown = []
        for o in cell.outputs:
            data = o.get("data", {})
            if "durablenb-tl" in str(data.get("text/html", "")):
                continue
            text = o.get("text") or data.get("text/plain") or o.get("ename") or ""
            shown.append((o.output_type, "".join(text), ",".join(sorted(data))))
        out.append(shown)
    return out


def _printed(cell: Any) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")


def _effects(root: Path) -> dict[str, int]:
    return {p.name: len(p.read_text()) for p in sorted(root.glob("cell-*"))}


def _instrumented(tmp: Path, name: str) -> tuple[Path, int]:
    """flights_analysis.ipynb with every code cell counting its runs in a file (a restored
    cell does not run), and able to kill its kernel when a flag file says so."""
    nb = nbformat.read(str(FLIGHTS), as_version=4)
    code = 0
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        code += 1
        probe = ("import os as _os\n"
                 f"_flag = _os.environ['KILL_FLAG'] + '.{i}'\n"
                 "if _os.path.exists(_flag):\n"
                 "    _os.remove(_flag); _os.kill(_os.getpid(), 9)\n"
                 f"open(_os.environ['EFFECTS_DIR'] + '/cell-{i:02d}', 'a').write('x')\n")  # fmt: skip
        cell.source = probe + cell.source
    path = tmp / name
    nbformat.write(nb, str(path))
    return path, code


def test_a_run_killed_at_a_random_cell_resumes_to_the_same_notebook(schema, tmp_path, effects):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    killed, n = _instrumented(tmp_path, "killed.ipynb")
    base, _ = _instrumented(tmp_path, "base.ipynb")
    source = nbformat.read(str(killed), as_version=4)
    code_cells = [i for i, c in enumerate(source.cells) if c.cell_type == "code"]
    victim = rng.choice(code_cells[1:])  # after %load_ext
    flag = tmp_path / "kill"
    env = {"KILL_FLAG": str(flag), "EFFECTS_DIR": str(effects.root)}

    base_effects = tmp_path / "base-effects"
    base_effects.mkdir()
    ok = _durablenb("run", str(base), "-o", str(tmp_path / "base-out.ipynb"),
                    env={**env, "EFFECTS_DIR": str(base_effects)})  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]

    (flag.parent / f"kill.{victim}").touch()
    out = tmp_path / "out.ipynb"
    first = _durablenb("run", str(killed), "-o", str(out), env=env)
    assert first.returncode == 3, (seed, victim, first.stdout, first.stderr[-3000:])
    assert "run the same command again to resume" in first.stderr
    second = _durablenb("run", str(killed), "-o", str(out), env=env)
    assert second.returncode == 0, (seed, victim, second.stderr[-3000:])

    # No finished cell ran twice; every cell ran once in all.
    assert _effects(effects.root) == {f"cell-{i:02d}": 1 for i in code_cells}, (seed, victim)
    meta = nbformat.read(str(out), as_version=4).metadata["durablenb"]
    assert meta["restored_cells"] == [i for i in code_cells if i < victim], (seed, victim, meta)
    assert meta["executed_cells"] == [i for i in code_cells if i >= victim]
    # The output notebook is the uninterrupted run's (times aside), and it runs under nbval.
    steps_cell = next(k for k, i in enumerate(code_cells) if "dnb.steps(" in source.cells[i].source)
    got, want = _texts(out), _texts(tmp_path / "base-out.ipynb")
    assert len(got) == len(want) == n
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if k != steps_cell:  # the steps table shows each run's own durations
            assert g == w, (seed, victim, k, g, w)
    check_env = {**os.environ, **env, "KILL_FLAG": str(tmp_path / "none")}
    checked = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                              "--nbval-lax", str(out)], env=check_env, capture_output=True, text=True,
                             timeout=600)  # fmt: skip
    assert checked.returncode == 0, checked.stdout[-3000:]
    # A parameter changes the result and makes another run.
    aa = _durablenb("run", str(base), "-p", "carrier", "AA", "-o", str(tmp_path / "aa.ipynb"),
                    env={**env, "EFFECTS_DIR": str(base_effects)})  # fmt: skip
    assert aa.returncode == 0, aa.stderr[-3000:]
    one = nbformat.read(str(tmp_path / "aa.ipynb"), as_version=4)
    all_ = nbformat.read(str(tmp_path / "base-out.ipynb"), as_version=4)
    assert one.metadata["durablenb"]["run_id"] != all_.metadata["durablenb"]["run_id"]
    def report(nb: Any) -> str:  # the parameter cell shifts the cells: find it by its code
        return next(_printed(c) for c in nb.cells if 'print(result["report"])' in c.get("source", ""))

    assert "1 carriers" in report(one) and "16 carriers" in report(all_)


def test_parameters_change_the_result_and_the_run_id(schema, tmp_path):
    pick = ("import durablenb as dnb\n\n@dnb.step\ndef pick(c, n):\n    return f'{c or \"all\"} x{n}'\n\n"
            "print(pick(carrier, limit))")  # fmt: skip
    nb = _notebook(tmp_path / "p.ipynb", ["carrier = None\nlimit = 2", pick], tags={0: ["parameters"]})
    a = _durablenb("run", str(nb), "-o", str(tmp_path / "a.ipynb"))
    b = _durablenb("run", str(nb), "-p", "carrier", "AA", "-p", "limit", "3", "-o", str(tmp_path / "b.ipynb"))
    assert a.returncode == 0 and b.returncode == 0, (a.stderr[-2000:], b.stderr[-2000:])
    na, nb_ = (nbformat.read(str(tmp_path / f), as_version=4) for f in ("a.ipynb", "b.ipynb"))
    assert na.metadata["durablenb"]["run_id"] != nb_.metadata["durablenb"]["run_id"]
    assert "all x2" in _printed(na.cells[1])
    # papermill's way: the values in a new cell after the one tagged "parameters"
    assert nb_.cells[1].metadata["tags"] == ["injected-parameters"]
    assert nb_.cells[1].source == "# Parameters\ncarrier = 'AA'\nlimit = 3\n"
    assert "AA x3" in _printed(nb_.cells[2])
    assert nb_.metadata["durablenb"]["parameters"] == {"carrier": "'AA'", "limit": "3"}
    listed = _durablenb("runs")
    assert listed.returncode == 0 and na.metadata["durablenb"]["run_id"] in listed.stdout, listed


def test_an_edited_cell_runs_again_from_there_on(schema, tmp_path, effects):
    count = "open(__import__('os').environ['EFFECTS_DIR'] + '/cell-{i}', 'a').write('x')\n"
    cells = [count.format(i=0) + "a = 1", count.format(i=1) + "b = a + 1",
             count.format(i=2) + "c = b * 10\nc"]  # fmt: skip
    path = _notebook(tmp_path / "e.ipynb", cells)
    env = {"EFFECTS_DIR": str(effects.root)}
    assert _durablenb("run", str(path), env=env).returncode == 0
    cells[1] = count.format(i=1) + "b = a + 2"
    _notebook(path, cells)
    again = _durablenb("run", str(path), env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    out = nbformat.read(str(tmp_path / "e-run.ipynb"), as_version=4)
    assert out.metadata["durablenb"]["restored_cells"] == [0]
    assert out.metadata["durablenb"]["executed_cells"] == [1, 2]
    assert out.cells[2].outputs[0]["data"]["text/plain"] == "30"
    assert _effects(effects.root) == {"cell-0": 1, "cell-1": 2, "cell-2": 2}


def test_a_cell_whose_names_cannot_be_recorded_runs_again_and_says_so(schema, tmp_path, effects):
    count = "open(__import__('os').environ['EFFECTS_DIR'] + '/cell-{i}', 'a').write('x')\n"
    cells = [count.format(i=0) + "import threading\nlock = threading.Lock()\nn = 5",
             count.format(i=1) + "with lock:\n    print('total', n * 2)"]  # fmt: skip
    path = _notebook(tmp_path / "u.ipynb", cells)
    env = {"EFFECTS_DIR": str(effects.root)}
    assert _durablenb("run", str(path), env=env).returncode == 0
    again = _durablenb("run", str(path), env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    out = nbformat.read(str(tmp_path / "u-run.ipynb"), as_version=4)
    said = _printed(out.cells[0])
    assert "ran the cell again: lock could not be recorded" in said
    assert out.metadata["durablenb"]["executed_cells"] == [0]
    assert _effects(effects.root) == {"cell-0": 2, "cell-1": 1}
    assert "total 10" in _printed(out.cells[1])


def test_a_failing_cell_stops_the_run_and_the_fix_resumes_it(schema, tmp_path, effects):
    count = "open(__import__('os').environ['EFFECTS_DIR'] + '/cell-{i}', 'a').write('x')\n"
    cells = [count.format(i=0) + "x = 21", count.format(i=1) + "y = x * 2\nassert y == 0, 'not yet'",
             count.format(i=2) + "print('done', y)"]  # fmt: skip
    path = _notebook(tmp_path / "f.ipynb", cells)
    env = {"EFFECTS_DIR": str(effects.root)}
    failed = _durablenb("run", str(path), env=env)
    assert failed.returncode == 1 and "not yet" in failed.stderr, failed.stderr[-2000:]
    out = nbformat.read(str(tmp_path / "f-run.ipynb"), as_version=4)
    assert out.cells[1].outputs[-1]["output_type"] == "error"
    cells[1] = count.format(i=1) + "y = x * 2"
    _notebook(path, cells)
    fixed = _durablenb("run", str(path), env=env)
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert _effects(effects.root) == {"cell-0": 1, "cell-1": 2, "cell-2": 1}
    out = nbformat.read(str(tmp_path / "f-run.ipynb"), as_version=4)
    assert "done 42" in _printed(out.cells[2])
    json.dumps(out.metadata["durablenb"])  # plain data in the metadata

"""Store or recompute: a finished ``%%durable`` cell that touched nothing outside its kernel
may run again instead of being restored, and only gives back the recorded values; a cell
with an outside effect (a file written, a subprocess, a thread, a workflow) never runs
again, in-process and in real kernels killed midway."""

from __future__ import annotations

import builtins

import pytest

from durablenb.ipython import _effects, _recompute

from .conftest import Shell
from .test_kernels import _no_traceback, kernels  # noqa: F401  (a fixture)

#: A cell that counts its runs where no audit event sees it (a probe for the tests).
COUNTED = "import builtins\nbuiltins._dnb_runs = getattr(builtins, '_dnb_runs', 0) + 1\n"


@pytest.fixture
def always(monkeypatch):
    """Every cell that may run again does (whatever its timings)."""
    monkeypatch.setattr(_recompute, "worth_it", lambda out: bool(out.get("recompute")))
    builtins._dnb_runs = 0  # type: ignore[attr-defined]
    yield
    del builtins._dnb_runs  # type: ignore[attr-defined]


def _restart(shell: Shell) -> None:
    shell.ip.reset()
    shell.run("%load_ext durablenb")


def test_a_pure_cell_runs_again_shows_its_record_once_and_says_so(shell, capsys, always):
    cell = f"%%durable --id pure\n{COUNTED}total = sum(range(10))\nprint('total', total)\ntotal * 2\n"
    assert shell.run(cell) == 90
    _restart(shell)
    capsys.readouterr()
    assert shell.run(cell) == 90
    out = capsys.readouterr().out
    assert builtins._dnb_runs == 2 and shell.ns["total"] == 45  # type: ignore[attr-defined]
    assert out.count("total 45") == 1 and "recomputed total" in out and "without running it" not in out


def test_the_record_says_how_long_a_cell_ran_and_restores(shell):
    from durablenb.engine import runtime
    from durablenb.engine.replay import recorded_outcome

    shell.run("%%durable --id timed\nimport time\ntime.sleep(0.05)\nx = [1, 2, 3]\n")
    row = runtime.store().get_workflow("timed")
    out = recorded_outcome(row, runtime.store())
    assert out["run_s"] >= 0.05 and out["effects"] == []
    plan = out["recompute"]
    assert set(plan["fingerprints"]) == {"x"} and plan["restore_s"] > 0 and plan["check_s"] > 0
    assert not _recompute.worth_it(out)  # 50 ms of sleep against microseconds of decoding


@pytest.mark.parametrize("effect", [
    "open({path!r}, 'a').write('x')\n",
    "import subprocess\nsubprocess.run(['sh', '-c', 'printf x >> {path}'])\n",
    "import threading, time\nt = threading.Thread(target=lambda: open({path!r}, 'a').write('x'))\n"
    "t.start(); t.join()\ndel t\n",
])  # fmt: skip
def test_a_cell_with_an_outside_effect_is_restored_never_run_again(shell, capsys, always, tmp_path, effect):
    path = str(tmp_path / "effects.txt")
    cell = f"%%durable --id effect\n{COUNTED}{effect.format(path=path)}done = 1\n"
    shell.run(cell)
    _restart(shell)
    shell.run(cell)
    assert "without running it" in capsys.readouterr().out
    assert open(path).read() == "x" and builtins._dnb_runs == 1  # type: ignore[attr-defined]


def test_a_cell_that_calls_a_workflow_is_restored(shell, capsys, always, tmp_path):
    shell.run("import durablenb as dnb\n@dnb.workflow\ndef doubled(v):\n    return 2 * v\n")
    cell = f"%%durable --id calls\n{COUNTED}d = doubled(4)\n"
    shell.run(cell)
    _restart(shell)
    shell.run("import durablenb as dnb\n@dnb.workflow\ndef doubled(v):\n    return 2 * v\n")
    shell.run(cell)
    assert "without running it" in capsys.readouterr().out and shell.ns["d"] == 8
    assert builtins._dnb_runs == 1  # type: ignore[attr-defined]


def test_a_rerun_that_gives_other_values_restores_the_recorded_ones(shell, capsys, always):
    import random

    cell = "%%durable --id random\nimport os, random\ntoken = os.urandom(8).hex()\nr = random.random()\n"
    shell.run(cell)
    token, r, following = shell.ns["token"], shell.ns["r"], random.getstate()
    _restart(shell)
    random.seed(12345)  # another state than the one the cell started from
    shell.run(cell)
    out = capsys.readouterr().out
    assert "gave other values" in out and "without running it" in out
    assert shell.ns["token"] == token and shell.ns["r"] == r
    assert random.getstate() == following  # the generator's recorded state came back too


def test_no_recompute_and_the_setting_keep_a_cell_restored(shell, capsys, always, monkeypatch):
    shell.run(f"%%durable --id flagged --no-recompute\n{COUNTED}a = 1\n")
    shell.run(f"%%durable --id by-setting\n{COUNTED}b = 2\n")
    _restart(shell)
    shell.run(f"%%durable --id flagged --no-recompute\n{COUNTED}a = 1\n")
    from durablenb.engine import runtime

    monkeypatch.setattr(runtime.store(), "settings", runtime.store().settings.replace(recompute=False))
    shell.run(f"%%durable --id by-setting\n{COUNTED}b = 2\n")
    assert capsys.readouterr().out.count("without running it") == 2
    assert builtins._dnb_runs == 2  # type: ignore[attr-defined]


def test_effects_seen_by_audit_events():
    with _effects.watch() as w:
        open(__file__).read()
        sorted([3, 1])
    assert w.seen == []
    with _effects.watch() as w:
        import os

        os.listdir(".")
        os.system("true")
    assert w.seen == ["os.system"]


SETUP = ("%load_ext durablenb\nimport durablenb.ipython._recompute as _r\n"
         "_r.worth_it = lambda out: bool(out.get('recompute'))\n")


def test_killed_midway_pure_cells_run_again_and_effects_happen_once(kernels, tmp_path):  # noqa: F811
    log = tmp_path / "writes.txt"
    cells = [
        "%%durable --id k-a\nimport numpy as np\nx = np.arange(5) * 2\nprint('x', x.sum())\n",
        f"%%durable --id k-b\nwith open({str(log)!r}, 'a') as f:\n    f.write('w')\ny = int(x.sum()) + 1\n",
        "%%durable --id k-c\nx[0] = 100\nz = y + 1\nprint('z', z)\n",
        "%%durable --id k-d\nprint('end', int(x.sum()), y, z)\n",
    ]
    first = kernels()
    _no_traceback(first.run(SETUP))
    for c in cells[:3]:
        _no_traceback(first.run(c))
    first.kill()
    again = kernels()
    _no_traceback(again.run(SETUP))
    outs = [again.run(c) for c in cells]
    for o in outs:
        _no_traceback(o)
    assert "recomputed x" in outs[0]["stdout"] and outs[0]["stdout"].count("x 20") == 1
    assert "without running it" in outs[1]["stdout"]  # it wrote a file: restored
    assert "recomputed" in outs[2]["stdout"] and "z 22" in outs[2]["stdout"]
    assert "end 120 21 22" in outs[3]["stdout"]
    assert log.read_text() == "w"

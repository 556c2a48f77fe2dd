"""Finished cells read ahead: a rerun of a notebook reads its finished cells in one query;
what this process changes (a forget, a rerun) is never answered from that read, a record
another process forgets is seen once the read expires, and a cell that finishes elsewhere
meanwhile is still found finished."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from durablenb.engine import runtime
from durablenb.store import _ahead

from .conftest import Shell

CELLS = [f"%%durable --id ahead-{i}\nv{i} = {i} * 7\nprint('cell', {i})\n" for i in range(5)]


def _restart(shell: Shell) -> None:
    """What a new kernel has: an empty namespace, nothing read ahead."""
    shell.ip.reset()
    shell.run("%load_ext durablenb")
    runtime.store().drop_ahead()


@pytest.fixture
def queries(monkeypatch):
    """Connections taken from the store, counted."""
    store = runtime.store()
    taken = []
    real = store.connection

    def counting():
        taken.append(1)
        return real()

    monkeypatch.setattr(store, "connection", counting)
    return taken


def test_a_rerun_reads_every_finished_cell_in_one_query(shell, capsys, queries):
    for c in CELLS:
        shell.run(c)
    _restart(shell)
    queries.clear()
    for c in CELLS:
        shell.run(c)
    assert capsys.readouterr().out.count("without running it") == len(CELLS)
    assert len(queries) == 1 and [shell.ns[f"v{i}"] for i in range(5)] == [0, 7, 14, 21, 28]
    shell.run(CELLS[0])  # asked again: handed out once, so read again
    assert len(queries) == 2 and "without running it" in capsys.readouterr().out


def test_a_cell_this_process_forgets_runs_again(shell, capsys):
    shell.run(CELLS[1])
    _restart(shell)
    shell.run(CELLS[0])  # reads ahead, ahead-1 among the finished
    assert runtime.store()._ahead["ahead-1"] is not None
    shell.run("%durable forget ahead-1")
    shell.run(CELLS[1])
    out = capsys.readouterr().out
    assert out.count("without running it") == 0 and "cell 1" in out


def test_a_cell_another_process_forgets_is_seen_once_the_read_expires(shell, capsys, monkeypatch):
    monkeypatch.setattr(_ahead, "AHEAD_SECONDS", 0.5)
    shell.run(CELLS[2])
    _restart(shell)
    shell.run(CELLS[0])  # reads ahead
    assert runtime.store()._ahead["ahead-2"] is not None
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-m", "durablenb", "forget", "ahead-2"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    import time

    time.sleep(0.6)
    shell.run(CELLS[2])
    out = capsys.readouterr().out
    assert "ahead-2 already finished" not in out and "cell 2" in out


def test_a_cell_finished_elsewhere_after_the_read_is_still_found_finished(shell, capsys):
    shell.run(CELLS[0])  # reads ahead: ahead-3 is not finished yet
    assert "ahead-3" not in runtime.store()._ahead
    code = ("import durablenb, IPython\nfrom IPython.testing.globalipapp import start_ipython\n"
            "ip = start_ipython()\nip.run_line_magic('load_ext', 'durablenb')\n"
            f"ip.run_cell({CELLS[3]!r})\n")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True,
                          text=True, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr
    capsys.readouterr()
    shell.run(CELLS[3])
    assert "ahead-3 already finished" in capsys.readouterr().out and shell.ns["v3"] == 21

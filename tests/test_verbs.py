"""The verbs the magics and the command line share: unknown ids, wrong types, help,
durations, any step's output on demand, and live state refused as an output."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pandas as pd
import pytest

import durablenb as dnb
from durablenb import cli
from durablenb._durations import format_seconds
from durablenb.ipython.commands import COMMANDS, USAGE

from .conftest import REPO


@pytest.fixture
def recorded(schema):
    @dnb.step
    def load():
        return pd.DataFrame({"carrier": ["AA", "UA"], "delay": [1.5, 2.0]})

    @dnb.step
    def mean(df):
        return float(df.delay.mean())

    @dnb.workflow
    def analysis():
        df = load()
        return mean(df)

    assert analysis() == 1.75
    return analysis.id_for()


def test_unknown_ids_are_workflow_not_found_everywhere(schema, shell, capsys):
    for call in (lambda: dnb.steps("typo"), lambda: dnb.timeline("typo"),
                 lambda: dnb.output("typo", 0), lambda: dnb.cancel("typo"),
                 lambda: dnb.forget("typo"), lambda: dnb.resume("typo"),
                 lambda: dnb.retrieve("typo")):  # fmt: skip
        with pytest.raises(dnb.WorkflowNotFoundError, match="'typo'"):
            call()
    for verb in ("steps", "timeline", "cancel", "forget", "resume", "diff"):
        with pytest.raises(dnb.WorkflowNotFoundError):
            shell.run(f"%durable {verb} typo")
    for verb in (["steps", "typo"], ["timeline", "typo"], ["output", "typo", "0"],
                 ["cancel", "typo"], ["forget", "typo"]):  # fmt: skip
        assert cli.main(verb) == 1
        assert "no workflow 'typo' is recorded" in capsys.readouterr().err


def test_wrong_types_are_type_errors(schema):
    for call in (lambda: dnb.steps(0), lambda: dnb.output(0, 0), lambda: dnb.forget(None)):
        with pytest.raises(TypeError, match="a workflow id is a string, not"):
            call()


def test_help_for_every_command(shell, capsys):
    assert set(USAGE) == set(COMMANDS)
    for line in ("%durable --help", "%durable -h", "%durable help"):
        shell.run(line)
        text = capsys.readouterr().out
        assert all(USAGE[c] in text for c in COMMANDS), text
    shell.run("%durable help output")
    assert capsys.readouterr().out.strip() == USAGE["output"]


def test_durations_read_as_seconds(shell, recorded):
    assert [format_seconds(s) for s in (34.165764, 0.0123, 300, 9000, 400000)] == \
        ["34.2 s", "0.0 s", "5.0 min", "2.5 h", "4.6 d"]  # fmt: skip
    listed = shell.ip.run_line_magic("durable", "list --all")
    assert listed["duration"].str.fullmatch(r"\d+\.\d (s|min|h|d)").all(), listed["duration"]
    steps = shell.ip.run_line_magic("durable", f"steps {recorded}")
    assert steps["duration"].str.endswith(" s").all()


def test_any_steps_output_on_demand(shell, recorded, tmp_path, dsn, schema):
    frame = pd.DataFrame({"carrier": ["AA", "UA"], "delay": [1.5, 2.0]})
    assert dnb.output(recorded, 0).equals(frame)
    assert dnb.output(recorded, "load").equals(frame)
    assert dnb.output(recorded, 1) == 1.75
    assert shell.ip.run_line_magic("durable", f"output {recorded} load").equals(frame)
    target = tmp_path / "load.parquet"
    shell.ip.run_line_magic("durable", f"output {recorded} 0 --to {target}")
    assert pd.read_parquet(target).equals(frame)
    # The command line, in its own process.
    csv = tmp_path / "load.csv"
    env = {"DURABLENB_SCHEMA": schema, "PYTHONPATH": str(REPO), **_store_env()}
    out = subprocess.run([sys.executable, "-m", "durablenb", "output", recorded, "load", "--to",
                          str(csv)], capture_output=True, text=True, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert pd.read_csv(csv).equals(frame)
    printed = subprocess.run([sys.executable, "-m", "durablenb", "output", recorded, "1"],
                             capture_output=True, text=True, env=env)  # fmt: skip
    assert json.loads(printed.stdout) == 1.75
    missing = subprocess.run([sys.executable, "-m", "durablenb", "output", recorded, "7"],
                             capture_output=True, text=True, env=env)  # fmt: skip
    assert missing.returncode == 1 and "has no recorded step 7" in missing.stderr


def _store_env() -> dict[str, str]:
    import os

    keys = ("DURABLENB_HOME", "DURABLENB_DATABASE_URL", "PATH", "HOME")
    return {k: os.environ[k] for k in keys if k in os.environ}


def test_open_files_are_refused_as_outputs(schema, tmp_path):
    path = tmp_path / "flights.csv"
    path.write_text("AA,1\n")

    @dnb.step
    def opens():
        return open(path)

    @dnb.workflow
    def wf():
        return opens()

    with pytest.raises(dnb.UnserializableOutputError, match="open file or socket"):
        wf()

    @dnb.step
    def buffered():
        return {"text": io.StringIO("AA,1\n")}  # in memory: not live state

    @dnb.workflow
    def wf2():
        return buffered()["text"].getvalue()

    assert wf2() == "AA,1\n"

"""The flights notebook, cut off by a killed kernel and rerun in a new one."""

from __future__ import annotations

import os
import time
from pathlib import Path

import nbformat
import pytest

import durablenb as dnb

from .test_kernels import Kernel

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "flights_analysis.ipynb"


def code_cells() -> list[str]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def run_all(kernel: Kernel, cells: list[str]) -> str:
    out = ""
    for src in cells:
        res = kernel.run(src, timeout=240)
        assert res["errors"] == [], (src[:80], res["errors"])
        out += res["stdout"]
    return out


def report_of(stdout: str) -> str:
    start = stdout.index("completed flights")
    return stdout[stdout.rfind("\n", 0, start) + 1 :].split("\n\n")[0].strip()


@pytest.fixture
def kernel_env(schema):
    def env(**extra: str) -> dict[str, str]:
        e = dict(os.environ)
        e.update(extra)
        return e

    return env


def test_flights_notebook_resumes_after_its_kernel_is_killed(kernel_env, schema):
    cells = code_cells()
    run_at = next(i for i, c in enumerate(cells) if c.strip() == "result = flights_analysis(carrier)")

    # An uninterrupted run, in its own schema, gives the report to expect.
    ref = Kernel(kernel_env(DURABLENB_SCHEMA=schema + "_ref"))
    try:
        expected = report_of(run_all(ref, cells))
    finally:
        ref.close()
        import psycopg

        with psycopg.connect(dnb.engine.runtime.store().dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA IF EXISTS "{schema}_ref" CASCADE')

    # A slow run, killed while its third stage runs.
    slow = Kernel(kernel_env(FLIGHTS_STAGE_PAUSE="1.5"))
    try:
        run_all(slow, cells[:run_at])
        slow.send(cells[run_at])
        deadline = time.monotonic() + 120
        while True:
            wf = dnb.workflows()
            if len(wf) and wf.loc[0, "steps"] >= 2:
                break
            assert time.monotonic() < deadline, "the first two stages never finished"
            time.sleep(0.1)
        slow.kill()
    finally:
        slow.close()
    wid = dnb.workflows().loc[0, "workflow_id"]
    cut = dnb.steps(wid)
    assert dnb.workflows().loc[0, "status"] == "interrupted"
    done_before = len(cut)
    assert 2 <= done_before < 21

    fresh = Kernel(kernel_env())
    try:
        out = run_all(fresh, cells)
    finally:
        fresh.close()
    assert report_of(out) == expected
    steps = dnb.steps(wid)
    assert len(steps) == 21  # five stages and sixteen carrier models
    # Every stage finished before the kill was replayed, none executed again.
    assert list(steps["status"][:done_before]) == ["replayed"] * done_before
    assert set(steps["status"][done_before:]) == {"succeeded"}
    assert list(steps["name"][:2]) == ["load_flights", "clean"]

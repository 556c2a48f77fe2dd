"""`durablenb run NOTEBOOK`: execute a notebook headless, each cell checkpointed, and resume
it after a crash where it stopped.

Every code cell runs as a ``%%durable`` cell (``--runner``) in a fresh kernel (nbclient).
Its workflow id chains the run id, the cell's position and the digests of its code and of
every code cell before it, so an edited cell runs again from that cell on, and a rerun of
the same command restores the cells that finished (their outputs and names) and goes on at
the first unfinished one. Parameters work as in papermill: a cell tagged ``parameters``,
values injected in a new cell after it.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .ipython.cell import RUNNER_MIME, cell_hash

__all__ = ["RunResult", "run_notebook", "run_id_for", "parse_value", "runs_table"]

#: Tags of the cells the runner adds.
INJECTED = "injected-parameters"
SETUP = "durablenb-setup"


class RunError(Exception):
    """A notebook run could not start (a bad notebook, a missing package)."""


@dataclass
class RunResult:
    """How a run went: its id, the output notebook, and which cells ran or were restored."""

    run_id: str
    output: Path
    executed: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    error: str | None = None
    kernel_died: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_value(text: str) -> Any:
    """A ``-p`` value as papermill reads it: ``True``/``False``/``None``, an int, a float,
    else the text itself."""
    if text in ("True", "False", "None"):
        return {"True": True, "False": False, "None": None}[text]
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def run_id_for(notebook: Path, parameters: dict[str, Any]) -> str:
    """``run-…``: the notebook's absolute path and its parameters, digested."""
    key = json.dumps([str(notebook.resolve()), sorted(parameters.items())], default=repr)
    return "run-" + hashlib.blake2b(key.encode(), digest_size=8).hexdigest()


def _inject(nb: Any, parameters: dict[str, Any]) -> None:
    """Add a cell assigning *parameters* after the cell tagged ``parameters`` (at the top
    when there is none)."""
    import nbformat

    if not parameters:
        return
    source = "# Parameters\n" + "".join(f"{k} = {v!r}\n" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED]})
    at = next((i + 1 for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])), 0)
    nb.cells.insert(at, cell)


def _wrap(nb: Any, run_id: str) -> list[int]:
    """Turn every code cell into a ``%%durable --runner`` cell; returns their indexes."""
    import nbformat

    chain, code_cells = run_id, []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        chain = hashlib.blake2b(f"{chain}\0{cell_hash(cell.source)}".encode(), digest_size=8).hexdigest()
        cell.metadata.setdefault("durablenb", {})["workflow_id"] = wid = f"{run_id}:{i}:{chain}"
        cell.source = f"%%durable --runner --id {wid}\n{cell.source}"
        code_cells.append(i)
    nb.cells.insert(0, nbformat.v4.new_code_cell("%load_ext durablenb", metadata={"tags": [SETUP]}))
    return [i + 1 for i in code_cells]


def _check_parses(nb: Any) -> None:
    """A cell that is not Python (after IPython syntax) fails before anything runs."""
    from IPython.core.inputtransformer2 import TransformerManager

    tm = TransformerManager()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and not cell.source.lstrip().startswith("%%"):
            try:
                ast.parse(tm.transform_cell(cell.source))
            except SyntaxError as exc:
                raise RunError(f"cell {i} is not valid Python: {exc}") from None


class _Progress:
    """``[cell 3/12] 0:42 result = flights_analysis()`` on stderr, one line rewritten."""

    def __init__(self, total: int) -> None:
        self.total, self.t0, self.tty = total, time.monotonic(), sys.stderr.isatty()

    def show(self, n: int, source: str) -> None:
        first = next((ln for ln in source.splitlines()[1:] if ln.strip()), "")[:60]
        took = int(time.monotonic() - self.t0)
        line = f"[cell {n}/{self.total}] {took // 60}:{took % 60:02d} {first}"
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def run_notebook(notebook: Path, output: Path | None = None, parameters: dict[str, Any] | None = None,
                 run_id: str | None = None, kernel_name: str | None = None,
                 progress: bool = True) -> RunResult:  # fmt: skip
    """Execute *notebook* durably; write the executed notebook to *output* (also when a cell
    fails or the kernel dies: rerunning the same call resumes)."""
    try:
        import nbclient
        import nbformat
    except ImportError as exc:  # pragma: no cover - the run extra
        raise RunError(f"durablenb run needs nbclient and nbformat: pip install 'durablenb[run]' "
                       f"({exc})") from None
    parameters = dict(parameters or {})
    source_nb = nbformat.read(str(notebook), as_version=4)
    run_id = run_id or run_id_for(notebook, parameters)
    output = output or notebook.with_name(f"{notebook.stem}-run.ipynb")
    nb = copy.deepcopy(source_nb)
    _inject(nb, parameters)
    _check_parses(nb)
    original = copy.deepcopy(nb)
    code_cells = _wrap(nb, run_id)
    result = RunResult(run_id, output)
    bar = _Progress(len(code_cells)) if progress else None

    def on_cell_start(cell: Any, cell_index: int, **_: Any) -> None:
        if bar is not None and cell_index in code_cells:
            bar.show(code_cells.index(cell_index) + 1, cell.source)

    kernel = kernel_name or nb.metadata.get("kernelspec", {}).get("name", "python3")
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=None, allow_errors=False,
                                     resources={"metadata": {"path": str(notebook.parent.resolve())}},
                                     on_cell_start=on_cell_start)  # fmt: skip
    env_before = os.environ.get("JPY_SESSION_NAME")
    os.environ["JPY_SESSION_NAME"] = str(notebook.resolve())  # the kernel's notebook, for ids
    try:
        client.execute()
    except nbclient.exceptions.DeadKernelError as exc:
        result.error, result.kernel_died = f"the kernel died: {exc}", True
    except nbclient.exceptions.CellExecutionError as exc:
        result.error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    finally:
        if env_before is None:
            os.environ.pop("JPY_SESSION_NAME", None)
        else:
            os.environ["JPY_SESSION_NAME"] = env_before
        if bar is not None:
            bar.done()
    _finish(nb, original, result, parameters)
    nbformat.write(nb, str(output))
    return result


def _finish(nb: Any, original: Any, result: RunResult, parameters: dict[str, Any]) -> None:
    """Put the cells' own code back, take the runner's reports out of the outputs and into
    the metadata, drop the setup cell."""
    nb.cells.pop(0)
    for i, (cell, source) in enumerate(zip(nb.cells, original.cells, strict=True)):
        if cell.cell_type != "code":
            continue
        cell.source = source.source
        kept, report = [], None
        for out in cell.get("outputs", []):
            if out.get("output_type") == "display_data" and RUNNER_MIME in out.get("data", {}):
                report = out["data"][RUNNER_MIME]
            elif out.get("output_type") == "display_data" and out.get("data") == {"text/plain": ""}:
                continue  # a timeline's emptied stand-in
            else:
                kept.append(out)
        cell.outputs = kept
        meta = cell.metadata.setdefault("durablenb", {})
        if report is not None:
            restored = not report.get("executed")
            meta["restored"] = restored
            (result.restored if restored else result.executed).append(i)
    nb.metadata["durablenb"] = {"run_id": result.run_id,
                                "parameters": {k: repr(v) for k, v in parameters.items()},
                                "restored_cells": result.restored, "executed_cells": result.executed,
                                "error": result.error}  # fmt: skip


def runs_table(limit: int = 50) -> Any:
    """The notebook runs recorded: one row a run id, newest first (a DataFrame)."""
    import pandas as pd

    from . import history

    wf = history.workflows(limit=None)
    cells = wf[wf["name"].str.startswith("%%durable:run-", na=False)].copy()
    if cells.empty:
        return pd.DataFrame(columns=["run_id", "notebook", "cells", "finished", "status", "updated_at"])
    cells["run_id"] = cells["workflow_id"].str.split(":").str[0]
    rows = []
    for rid, g in cells.groupby("run_id", sort=False):
        statuses = set(g["status"])
        status = next((s for s in ("running", "interrupted", "failed") if s in statuses), "succeeded")
        where = g["notebook"].dropna()
        rows.append({"run_id": rid, "notebook": where.iloc[0] if len(where) else "", "cells": len(g),
                     "finished": int((g["status"] == "succeeded").sum()), "status": status,
                     "updated_at": g["updated_at"].max()})  # fmt: skip
    out = pd.DataFrame(rows).sort_values("updated_at", ascending=False).head(limit)
    return out.reset_index(drop=True)

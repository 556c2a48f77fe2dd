"""What the ``%durable`` magics and the ``durablenb`` command share: the tables they show and
the verbs that do more than call one function of the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from . import api, history
from ._durations import format_durations

__all__ = ["workflow_table", "step_table", "step_of", "output", "write_value"]

WORKFLOW_COLUMNS = ["workflow_id", "name", "status", "steps", "created_at", "duration", "error_type"]
STEP_COLUMNS = ["position", "name", "kind", "status", "duration", "attempts", "output_bytes", "error_type"]


def workflow_table(frame: pd.DataFrame, notebook: bool = False) -> pd.DataFrame:
    """The columns of `history.workflows` a listing shows, durations as text."""
    table = frame[WORKFLOW_COLUMNS + (["notebook"] if notebook else [])].copy()
    table["duration"] = format_durations(table["duration"])
    return table


def step_table(workflow_id: str) -> pd.DataFrame:
    """The columns of `history.steps` a listing shows, durations as text; a `dnb.map` item's
    name with its label: ``fit_carrier[AA]``."""
    steps = history.steps(workflow_id)
    table = steps[STEP_COLUMNS].copy()
    labelled = steps["label"].notna()
    if labelled.any():
        table["name"] = table["name"].where(~labelled, table["name"] + "[" + steps["label"] + "]")
    table["duration"] = format_durations(table["duration"])
    return table


def step_of(text: str) -> int | str:
    """A step given on a command line: a position (digits) or a name."""
    return int(text) if text.strip().isdigit() else text


def output(workflow_id: str, step: str, to: str | None = None) -> Any:
    """The recorded output of *step* of *workflow_id*; with *to*, also written to that file."""
    value = api.output(workflow_id, step_of(step))
    if to:
        write_value(value, Path(to))
    return value


def write_value(value: Any, path: Path) -> None:
    """Write *value* to *path* in the format its suffix names: ``.parquet``, ``.csv`` and
    ``.feather`` for frames, ``.npy`` for arrays, ``.json`` for plain data, ``.pkl`` for
    anything; `ValueError` for a suffix that does not fit the value."""
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".csv", ".feather"):
        frame = _frame(value, suffix)
        {".parquet": frame.to_parquet, ".csv": lambda p: frame.to_csv(p, index=False),
         ".feather": frame.to_feather}[suffix](path)  # fmt: skip
    elif suffix == ".npy":
        import numpy as np

        np.save(path, np.asarray(value), allow_pickle=False)
    elif suffix == ".json":
        import json

        path.write_text(json.dumps(value, indent=2, default=str))
    elif suffix in (".pkl", ".pickle"):
        import pickle

        path.write_bytes(pickle.dumps(value, protocol=5))
    else:
        raise ValueError(f"cannot tell how to write {path.name!r}: use .parquet, .csv, .feather, "
                         ".npy, .json or .pkl")  # fmt: skip


def _frame(value: Any, suffix: str) -> pd.DataFrame:
    if isinstance(value, pd.Series):
        return value.to_frame()
    if isinstance(value, pd.DataFrame):
        return value
    if type(value).__module__.startswith("polars"):
        return value.to_pandas()
    raise ValueError(f"a {type(value).__qualname__} cannot be written as {suffix}: use .pkl or .json")

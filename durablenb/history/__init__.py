"""Workflows and steps as pandas DataFrames."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pandas as pd

from ..engine import events, runtime
from ..engine.identity import check_id
from ..errors import WorkflowNotFoundError
from ._frame import HistoryFrame

__all__ = ["workflows", "steps", "HistoryFrame"]

_WF_DTYPES = {
    "workflow_id": "string",
    "name": "string",
    "status": "string",
    "executor": "string",
    "runs": "Int64",
    "parent_id": "string",
    "forked_from": "string",
    "error_type": "string",
    "notebook": "string",
    "error_message": "string",
    "steps": "Int64",
    "failed_steps": "Int64",
}

_STEP_DTYPES = {
    "workflow_id": "string",
    "position": "Int64",
    "name": "string",
    "label": "string",
    "kind": "string",
    "status": "string",
    "attempts": "Int64",
    "output_bytes": "Int64",
    "codec": "string",
    "error_type": "string",
    "error_message": "string",
    "child_id": "string",
    "code_hash": "string",
}


def _frame(cols: list[str], rows: list[tuple[Any, ...]], dtypes: dict[str, str]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(rows, columns=cols)
    for col in cols:
        if col.endswith("_at"):
            df[col] = pd.to_datetime(df[col], utc=True)
    return df.astype({k: v for k, v in dtypes.items() if k in df.columns})


def workflows(
    status: str | list[str] | None = None,
    name: str | None = None,
    since: Any = None,
    limit: int | None = 100,
    until: Any = None,
    notebook: str | None = None,
) -> pd.DataFrame:
    """One row a workflow, newest first.

    *status*: one status or a list (``running``, ``interrupted``, ``succeeded``, ``failed``,
    ``cancelled``, ``superseded``); *name*: the workflow's name; *since* / *until*: created
    at or after / before these times (datetimes, tz-aware or UTC); *limit*: the most rows
    (None for all); *notebook*: started from this notebook or script (its path, as in the
    ``notebook`` column). A running workflow that no live executor holds is shown as
    ``interrupted``.
    """
    store = runtime.store()
    wanted = None if status is None else ([status] if isinstance(status, str) else list(status))
    db_status = None
    if wanted is not None:
        db_status = sorted({"running" if s == "interrupted" else s for s in wanted})
    cols, rows = store.query_workflows(db_status, name, since, None if wanted else limit, until,
                                       notebook)  # fmt: skip
    held = store.held_keys() if any(r[2] == "running" for r in rows) else set()
    fixed = []
    for row in rows:
        r = list(row)
        if r[2] == "running" and store.lock_key(r[0]) not in held:
            r[2] = "interrupted"
        fixed.append(tuple(r))
    if wanted is not None:
        fixed = [r for r in fixed if r[2] in wanted]
        if limit is not None:
            fixed = fixed[:limit]
    df = _frame(cols, fixed, _WF_DTYPES)
    df.insert(6, "duration", df["finished_at"] - df["created_at"])
    return HistoryFrame(df.reset_index(drop=True))


def steps(workflow_id: str) -> pd.DataFrame:
    """One row a recorded step of *workflow_id*, in position order.

    *status* is ``succeeded``, ``failed``, ``retried`` (succeeded after more than one
    attempt), ``replayed`` (recorded before the workflow's latest run began, so that run
    returned the record) or ``running`` (executing now in this process; no record yet).
    *label* names the item of a `dnb.map` (``AA`` of ``fit_carrier[AA]``), else it is missing.
    *started_at* is when the step began executing: for a map item, when a worker picked it up.
    """
    store = runtime.store()
    cols, rows = store.query_steps(check_id(workflow_id))
    if not rows and not _known_here(workflow_id) and store.get_workflow(workflow_id) is None:
        raise WorkflowNotFoundError(f"no workflow {workflow_id!r} is recorded")
    ci = cols.index("codec")
    rows = [r[:ci] + ((r[ci].split(";sig=")[0] + " (signed)" if r[ci] and ";sig=" in r[ci]
                       else r[ci]),) + r[ci + 1 :] for r in rows]  # fmt: skip
    rows = rows + _running_rows(workflow_id, cols, {r[1] for r in rows})
    rows.sort(key=lambda r: r[1])
    df = _frame(cols, rows, _STEP_DTYPES)
    df.insert(cols.index("finished_at") + 1, "duration", df["finished_at"] - df["started_at"])
    return HistoryFrame(df.reset_index(drop=True))


def _known_here(workflow_id: str) -> bool:
    """Whether this process runs *workflow_id* or has just started it (its row may not be
    written yet)."""
    from ..engine import handles

    return workflow_id in events.active_runs or workflow_id in handles._inflight


def _running_rows(workflow_id: str, cols: list[str], recorded: set[int]) -> list[tuple[Any, ...]]:
    """Rows for the steps of *workflow_id* executing in this process right now."""
    run = events.active_runs.get(workflow_id)
    if run is None:
        return []
    out = []
    for pos, (name, kind, t0, label) in list(run.running.items()):
        if pos in recorded:
            continue
        row = dict.fromkeys(cols)
        started = _dt.datetime.fromtimestamp(t0, tz=_dt.timezone.utc)
        row.update(workflow_id=workflow_id, position=pos, name=name, label=label, kind=kind,
                   status="running", started_at=started, attempts=1)  # fmt: skip
        out.append(tuple(row[c] for c in cols))
    return out

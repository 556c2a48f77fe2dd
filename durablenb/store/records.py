"""Plain records exchanged between the store and the engine.

Each dataclass names its columns: rows are read into them by name (psycopg's `class_row`)
and they are built with keyword arguments, so a column added to the schema never shifts a
positional read.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any


@dataclass(kw_only=True, slots=True)
class StepRecord:
    """One recorded step: its output (or error) at a position of a workflow."""

    workflow_id: str
    position: int
    name: str
    kind: str
    status: str  # "succeeded" | "failed"
    output: bytes | None = None
    codec: str | None = None
    checksum: int | None = None
    output_bytes: int | None = None
    error: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    attempts: int = 1
    code_hash: str | None = None
    child_id: str | None = None
    started_at: float | datetime | None = None
    finished_at: float | datetime | None = None
    blob: str | None = None
    #: Which item of a `dnb.map` this is (``AA`` of ``fit_carrier[AA]``); None otherwise.
    label: str | None = None

    def filled(self) -> tuple[tuple[str, ...], tuple[Any, ...]]:
        """The names and values of the fields that are not None, in column order."""
        pairs = [(n, v) for n in _STEP_NAMES if (v := getattr(self, n)) is not None]
        return tuple(n for n, _ in pairs), tuple(v for _, v in pairs)


@dataclass(kw_only=True)
class WorkflowRow:
    """A workflow's record."""

    id: str
    name: str
    status: str
    args_digest: str | None = None
    inputs: bytes | None = None
    inputs_codec: str | None = None
    inputs_checksum: int | None = None
    output: bytes | None = None
    output_codec: str | None = None
    output_checksum: int | None = None
    error: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    code_hash: str | None = None
    executor: str | None = None
    parent_id: str | None = None
    parent_position: int | None = None
    forked_from: str | None = None
    runs: int = 1
    created_at: datetime | None = None
    updated_at: datetime | None = None
    finished_at: datetime | None = None
    run_started_at: datetime | None = None
    output_blob: str | None = None
    inputs_blob: str | None = None
    lineage_id: str | None = None
    archive_of: str | None = None
    notebook: str | None = None
    #: When it is cancelled for running past its ``timeout=`` (None: no timeout).
    deadline: datetime | None = None

    @property
    def lineage(self) -> str:
        """The id signatures of this workflow's records are bound to."""
        return self.lineage_id or self.id


def columns(cls: type) -> list[str]:
    """The column names of a record class, in declaration order."""
    return [f.name for f in fields(cls)]


_STEP_NAMES = tuple(columns(StepRecord))
STEP_COLUMNS = ", ".join(_STEP_NAMES)
#: The ``error_type`` of a workflow cancelled because it ran past its ``timeout=``
#: (`Store.cancel` with a reason).
TIMED_OUT = "durablenb.errors.WorkflowTimeoutError"
WORKFLOW_COLUMNS = ", ".join(columns(WorkflowRow))


@dataclass(kw_only=True)
class NewWorkflow:
    """What is recorded before a workflow starts."""

    id: str
    name: str
    args_digest: str | None
    inputs: bytes | None
    inputs_codec: str
    inputs_checksum: int | None
    code_hash: str | None
    executor: str
    parent_id: str | None = None
    parent_position: int | None = None
    forked_from: str | None = None
    inputs_blob: str | None = None
    #: The notebook or script it was started from (`durablenb.engine.runtime.notebook`).
    notebook: str | None = None


@dataclass(kw_only=True)
class Outcome:
    """How a workflow ended: an encoded output or an encoded error."""

    status: str  # "succeeded" | "failed"
    output: bytes | None = None
    codec: str | None = None
    checksum: int | None = None
    error: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    blob: str | None = None

"""Plain records exchanged between the store and the engine."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

STEP_COLUMNS = (
    "workflow_id, position, name, kind, status, output, codec, checksum, output_bytes, "
    "error, error_type, error_message, error_traceback, attempts, code_hash, child_id, "
    "started_at, finished_at, blob"
)

WORKFLOW_COLUMNS = (
    "id, name, status, args_digest, inputs, inputs_codec, inputs_checksum, output, "
    "output_codec, output_checksum, error, error_type, error_message, error_traceback, "
    "code_hash, executor, parent_id, parent_position, forked_from, runs, created_at, "
    "updated_at, finished_at, run_started_at, output_blob, inputs_blob"
)


@dataclass
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

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StepRecord:
        return cls(*row)


@dataclass
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

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> WorkflowRow:
        return cls(*row)


@dataclass
class NewWorkflow:
    """What is recorded before a workflow starts."""

    id: str
    name: str
    args_digest: str | None
    inputs: bytes
    inputs_codec: str
    inputs_checksum: int
    code_hash: str | None
    executor: str
    parent_id: str | None = None
    parent_position: int | None = None
    forked_from: str | None = None
    inputs_blob: str | None = None


@dataclass
class Outcome:
    """How a workflow ended: an encoded output or an encoded error."""

    status: str  # "succeeded" | "failed" | "cancelled"
    output: bytes | None = None
    codec: str | None = None
    checksum: int | None = None
    error: bytes | None = None
    error_type: str | None = None
    error_message: str | None = None
    error_traceback: str | None = None
    blob: str | None = None

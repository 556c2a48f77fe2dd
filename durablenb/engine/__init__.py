"""The replay loop: workflow context, step positions, determinism checks, retries, ownership."""

from __future__ import annotations

from . import runtime
from .context import connection, current
from .defs import Step, Transaction, Workflow
from .handles import WorkflowHandle, retrieve, start
from .kinds import record_value
from .mapping import map
from .replay import call_workflow, execute, recorded_outcome

__all__ = [
    "Step",
    "Transaction",
    "Workflow",
    "WorkflowHandle",
    "call_workflow",
    "connection",
    "current",
    "execute",
    "map",
    "record_value",
    "recorded_outcome",
    "retrieve",
    "runtime",
    "start",
]

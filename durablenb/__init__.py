"""durablenb: durable notebook analyses.

Decorate functions as workflows and steps; every step's output is checkpointed to
PostgreSQL, and rerunning a workflow after a crash resumes it from the last finished step::

    import durablenb as dnb

    @dnb.step
    def load(path): ...

    @dnb.workflow
    def analysis(path):
        return summarise(load(path))

    analysis("flights.csv")   # rerun after a kernel restart: finished steps are not re-run
"""

from __future__ import annotations

from .api import (
    cancel,
    connect,
    forget,
    fork,
    gc,
    now,
    output,
    random,
    recover,
    resume,
    sleep,
    step,
    transaction,
    workflow,
    workflow_id,
)
from .engine import Step, Transaction, Workflow, WorkflowHandle, connection, map, retrieve, start
from .errors import (
    CodeChangedError,
    CorruptRecordError,
    DurableError,
    DurableUsageError,
    InvalidIdError,
    NonDeterministicWorkflowError,
    RecordedError,
    RecordsLostError,
    SchemaVersionError,
    StepTimeoutError,
    StorageError,
    StorePermissionError,
    StoreUnavailableError,
    UnhashableArgumentsError,
    UnserializableArgumentsError,
    UnserializableError,
    UnserializableOutputError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowConflictError,
    WorkflowNotFoundError,
    WorkflowNotRegisteredError,
    WorkflowTimeoutError,
)
from .history import steps, workflows
from .widgets import timeline

__version__ = "0.1.0"


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext durablenb``: the magics, a connection, and a list of unfinished workflows."""
    from .ipython import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext durablenb``."""
    from .ipython import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "workflow", "step", "transaction", "workflow_id", "connection", "connect", "start",
    "retrieve", "map", "sleep", "now", "random", "workflows", "steps", "timeline", "output", "resume",
    "cancel",
    "fork", "forget", "recover", "gc", "Step", "Transaction", "Workflow", "WorkflowHandle",
    "DurableError", "StoreUnavailableError", "SchemaVersionError", "CorruptRecordError",
    "NonDeterministicWorkflowError", "CodeChangedError", "WorkflowBusyError",
    "WorkflowCancelledError", "WorkflowConflictError", "WorkflowNotFoundError",
    "WorkflowNotRegisteredError", "UnserializableError", "UnserializableArgumentsError",
    "UnserializableOutputError", "RecordedError", "DurableUsageError", "InvalidIdError",
    "StorageError", "UnhashableArgumentsError", "RecordsLostError", "StorePermissionError",
    "StepTimeoutError", "WorkflowTimeoutError",
]  # fmt: skip

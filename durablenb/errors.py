"""Exceptions raised by durablenb.

Every error a user can meet derives from `DurableError`::

    DurableError
    ├── StoreUnavailableError          the database cannot be reached (DSN shown, password masked)
    │   ├── RecordsLostError           a database crash lost records the running workflow wrote
    │   └── StorePermissionError       the connecting role may not read or write the schema
    ├── StorageError                   the blob store cannot be written or read (disk full, access)
    ├── SchemaVersionError             the database holds a newer durablenb schema than this code
    ├── CorruptRecordError             a stored record fails its checksum or cannot be decoded
    ├── NonDeterministicWorkflowError  a replay met another step than the one recorded there
    ├── CodeChangedError               code changed and the workflow asked for ``on_change="error"``
    ├── WorkflowBusyError              another executor (kernel, process) runs this workflow now
    ├── WorkflowCancelledError         the workflow was cancelled
    ├── WorkflowConflictError          an explicit id is reused with another workflow or arguments
    ├── WorkflowNotFoundError          no workflow with that id is recorded
    ├── WorkflowNotRegisteredError     the workflow's function is not defined in this process
    ├── DurableUsageError              a durable function used where its guarantee cannot hold
    ├── InvalidIdError                 an id or name PostgreSQL cannot store (also a `ValueError`)
    ├── UnserializableError            a value cannot be encoded (also a `TypeError`)
    │   ├── UnserializableArgumentsError   arguments of a workflow or step
    │   │   └── UnhashableArgumentsError   arguments with no identity equal in every process
    │   └── UnserializableOutputError      the output of a step or workflow
    └── RecordedError                  a recorded exception that cannot be rebuilt as its own type

Every error pickles with its fields (errors cross process pools and cluster workers).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DurableError",
    "StoreUnavailableError",
    "RecordsLostError",
    "StorePermissionError",
    "StorageError",
    "SchemaVersionError",
    "CorruptRecordError",
    "NonDeterministicWorkflowError",
    "CodeChangedError",
    "WorkflowBusyError",
    "WorkflowCancelledError",
    "WorkflowTimeoutError",
    "StepTimeoutError",
    "WorkflowConflictError",
    "WorkflowNotFoundError",
    "WorkflowNotRegisteredError",
    "DurableUsageError",
    "InvalidIdError",
    "UnserializableError",
    "UnserializableArgumentsError",
    "UnhashableArgumentsError",
    "UnserializableOutputError",
    "RecordedError",
]


def _rebuild(cls: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class DurableError(Exception):
    """Root of every error raised by durablenb."""

    def __reduce__(self) -> Any:
        # Rebuilt without calling __init__, so subclasses whose __init__ formats a message
        # from fields come back with the same message and fields.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class StoreUnavailableError(DurableError):
    """The PostgreSQL store cannot be reached, stopped answering, or failed a statement of its
    own (*sqlstate* then says which: a full disk on the server, a damaged schema)."""

    def __init__(self, message: str, dsn: str | None = None, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.dsn = dsn
        self.sqlstate = sqlstate

    @property
    def transient(self) -> bool:
        """Whether waiting and retrying can help (a lost connection, exhausted resources)."""
        state = self.sqlstate
        return state is None or state[:2] in ("08", "53", "57", "40")


class RecordsLostError(StoreUnavailableError):
    """The database crashed while a workflow ran under ``kernel`` durability and came back
    without records it had acknowledged (their log was not flushed yet). The run stops; the
    workflow stays resumable, and rerunning it runs the lost *positions* again."""

    def __init__(self, workflow_id: str, positions: list[int], row_lost: bool = False) -> None:
        what = "its own record" if row_lost and not positions else (
            f"the records of position{'s' if len(positions) > 1 else ''} "
            f"{', '.join(map(str, positions))}" + (" and its own record" if row_lost else ""))
        super().__init__(
            f"the database restarted after a crash and lost {what} of workflow {workflow_id!r}: "
            "they were written with durability='kernel' and their log was not flushed yet. "
            "This run stops here; rerun the workflow to resume it (the lost steps run again)."
        )
        self.workflow_id = workflow_id
        self.positions = list(positions)
        self.row_lost = row_lost

    @property
    def transient(self) -> bool:
        return False


class StorePermissionError(StoreUnavailableError):
    """The connecting *role* may not do this in *schema* (owned by *owner*): PostgreSQL
    refused it (SQLSTATE 42501). Never retried, never recorded as an outcome; the message
    says how to get access (``durablenb grant ROLE --read``, run by the owner)."""

    def __init__(self, message: str, *, schema: str | None = None, role: str | None = None,
                 owner: str | None = None, dsn: str | None = None) -> None:  # fmt: skip
        super().__init__(message, dsn=dsn, sqlstate="42501")
        self.schema = schema
        self.role = role
        self.owner = owner

    @property
    def transient(self) -> bool:
        return False


class StorageError(DurableError):
    """The blob store could not write or read a value: a full disk, missing permissions, an
    unreachable object store. Never recorded as an outcome: the workflow stays resumable."""


class SchemaVersionError(DurableError):
    """The database schema was created by a newer durablenb than the one running."""


class CorruptRecordError(DurableError):
    """A stored value fails its checksum or cannot be decoded."""


class NonDeterministicWorkflowError(DurableError):
    """A replay called a different step than the one recorded at that position."""

    def __init__(self, workflow_id: str, position: int, recorded: str, called: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} is not deterministic: at step position {position} "
            f"the record holds {recorded!r} but the replay called {called!r}, and the code "
            "of the workflow and its steps is unchanged. Move non-deterministic decisions "
            "(time, randomness, I/O) into steps, or use dnb.now()/dnb.random()."
        )
        self.workflow_id = workflow_id
        self.position = position
        self.recorded = recorded
        self.called = called


class CodeChangedError(DurableError):
    """The code of a recorded workflow or step changed and ``on_change="error"`` was asked."""


class WorkflowBusyError(DurableError):
    """Another live executor holds the workflow."""

    def __init__(self, workflow_id: str, executor: str | None = None) -> None:
        who = f" by {executor}" if executor else ""
        super().__init__(
            f"workflow {workflow_id!r} is running{who} right now; wait for it to finish, "
            "call it with on_busy='wait', or cancel it with dnb.cancel(id)"
        )
        self.workflow_id = workflow_id
        self.executor = executor


class WorkflowCancelledError(DurableError):
    """The workflow was cancelled; it runs no further steps."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(
            f"workflow {workflow_id!r} was cancelled; dnb.resume(id) runs it again, "
            "dnb.forget(id) removes it"
        )
        self.workflow_id = workflow_id


class WorkflowTimeoutError(WorkflowCancelledError):
    """The workflow ran past its ``timeout=`` and was cancelled; it runs no further steps."""

    def __init__(self, workflow_id: str, why: str | None = None) -> None:
        DurableError.__init__(
            self,
            f"workflow {workflow_id!r} was cancelled: {why or 'it ran past its timeout'}; "
            "dnb.resume(id) runs it again with a new timeout, dnb.forget(id) removes it",
        )
        self.workflow_id = workflow_id


class StepTimeoutError(DurableError, TimeoutError):
    """A step ran past its ``timeout=`` and was interrupted. Recorded as the step's error;
    its retry policy applies (``retry_on`` covers it unless it names other types)."""

    def __init__(self, step: str, seconds: float) -> None:
        super().__init__(f"step {step!r} ran past its timeout of {seconds:g} s and was interrupted")
        self.step = step
        self.seconds = seconds


class WorkflowConflictError(DurableError):
    """An explicit workflow id is already recorded for another workflow or other arguments."""


class WorkflowNotFoundError(DurableError, KeyError):
    """No workflow with the given id is recorded."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0]) if self.args else ""


class WorkflowNotRegisteredError(DurableError):
    """The recorded workflow's function is not defined in this process."""


class DurableUsageError(DurableError, RuntimeError):
    """A durable function was called where its guarantee cannot hold (a `@transaction` inside
    a `@step`, a step from a thread the workflow did not create, an async transaction)."""


class InvalidIdError(DurableError, ValueError):
    """A workflow id or name that PostgreSQL cannot store as given (NUL, lone surrogates, too
    long)."""


class UnserializableError(DurableError, TypeError):
    """A value cannot be encoded for the store."""


class UnserializableArgumentsError(UnserializableError):
    """The arguments of a workflow (or of a step that must ship them) cannot be encoded."""


class UnhashableArgumentsError(UnserializableArgumentsError):
    """The arguments have no digest equal in every process, so no default workflow id can be
    derived from them; give the call an id with ``dnb.workflow_id(...)``."""


class UnserializableOutputError(UnserializableError):
    """A step's or workflow's output cannot be encoded; names the step and the type."""

    def __init__(self, message: str, step: str | None = None, type_name: str | None = None):
        super().__init__(message)
        self.step = step
        self.type_name = type_name


class RecordedError(DurableError):
    """Stands in for a recorded exception whose own type cannot be rebuilt."""

    def __init__(self, type_name: str, message: str, traceback_text: str | None = None):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.traceback_text = traceback_text

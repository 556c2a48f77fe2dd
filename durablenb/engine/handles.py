"""Background runs: `start` and the `WorkflowHandle` it returns."""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import threading
import time
from typing import Any

from ..errors import (
    DurableError,
    WorkflowBusyError,
    WorkflowNotFoundError,
)
from . import events, runtime
from .defs import Workflow
from .replay import (
    _explicit_id,
    _record,
    current,
    encode_inputs,
    execute,
    lookup,
    recorded_outcome,
    replay,
)

_pool_lock = threading.Lock()
_pool: cf.ThreadPoolExecutor | None = None


def _executor() -> cf.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ThreadPoolExecutor(max_workers=32, thread_name_prefix="durablenb")
        return _pool


class WorkflowHandle:
    """A workflow running (or run) elsewhere: its id, status and result."""

    def __init__(self, workflow_id: str, future: cf.Future[Any] | None = None) -> None:
        self.workflow_id = workflow_id
        self._future = future

    def __repr__(self) -> str:
        return f"<WorkflowHandle {self.workflow_id!r}>"

    def status(self) -> str:
        """``running``, ``interrupted`` (no live executor), ``succeeded``, ``failed`` or ``cancelled``."""
        store = runtime.store()
        row = store.get_workflow(self.workflow_id)
        if row is None:
            if self._future is not None and not self._future.done():
                return "running"
            raise WorkflowNotFoundError(f"no workflow {self.workflow_id!r} is recorded")
        if row.status == "running":
            if self._future is not None and not self._future.done():
                return "running"
            return "running" if store.is_held(self.workflow_id) else "interrupted"
        return row.status

    def done(self) -> bool:
        """True once the workflow has finished (in any way)."""
        return self.status() not in ("running",)

    def result(self, timeout: float | None = None, poll: float = 0.1) -> Any:
        """Wait for the workflow and return its output (or raise its error)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._future is not None:
            try:
                return self._future.result(timeout)
            except WorkflowBusyError:
                pass  # another executor runs it: wait for its record below
            except cf.TimeoutError:
                raise TimeoutError(f"workflow {self.workflow_id!r} is still running") from None
        store = runtime.store()
        while True:
            row = store.get_workflow(self.workflow_id)
            if row is None:
                raise WorkflowNotFoundError(f"no workflow {self.workflow_id!r} is recorded")
            if row.status not in ("running", "superseded"):
                return recorded_outcome(row, store)
            if row.status == "running" and not store.is_held(self.workflow_id):
                # Re-read: it may have finished between the two queries.
                row = store.get_workflow(self.workflow_id)
                if row is not None and row.status == "running":
                    raise DurableError(
                        f"workflow {self.workflow_id!r} was interrupted and nobody runs it; "
                        "rerun it, or call dnb.resume(id)"
                    )
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.workflow_id!r} is still running")
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)

    def cancel(self) -> bool:
        """Cancel the workflow (it stops at its next step)."""
        return runtime.store().cancel(self.workflow_id)


def submit(fn: Any, *args: Any) -> cf.Future[Any]:
    """Run *fn* on the background pool in a fresh context (no enclosing workflow)."""
    ctx = contextvars.Context()
    return _executor().submit(ctx.run, fn, *args)


def start(wf: Workflow, *args: Any, **kwargs: Any) -> WorkflowHandle:
    """Run workflow *wf* in the background; returns its handle at once.

    Inside a workflow the child's id is recorded at the caller's next position, so a replay
    gets the same handle and resumes the child if it was interrupted.
    """
    if not isinstance(wf, Workflow):
        raise TypeError(f"dnb.start takes a @dnb.workflow function, got {wf!r}")
    parent = current()
    digest, inputs = encode_inputs(parent.store if parent else runtime.store(), wf, args, kwargs)
    explicit = _explicit_id.get()
    if parent is None:
        store = runtime.store()
        wid = explicit or wf.id_for(*args, **kwargs)
        if events.listeners:
            events.emit("workflow_submitted", wid, wf.name)
        fut = submit(execute, store, wf, wid, args, kwargs, digest, inputs)
        return WorkflowHandle(wid, fut)
    pos = parent.take()
    rec = lookup(parent, pos, wf.name, "start", wf.code_hash)
    if rec is not None:
        wid = replay(parent.store, parent.id, rec)
    else:
        wid = explicit or f"{parent.id}/{pos}"
        t0 = time.time()
        rec = _record(parent.store, parent.id, pos, wf.name, "start", wf.code_hash, True, wid, 1, t0, t0,
                      child_id=wid)  # fmt: skip
        winner = parent.lease.record_step(rec)
        if winner is not rec:
            wid = replay(parent.store, parent.id, winner)
    fut = submit(execute, parent.store, wf, wid, args, kwargs, digest, inputs, parent.id, pos)
    return WorkflowHandle(wid, fut)


def retrieve(workflow_id: str) -> WorkflowHandle:
    """A handle on a recorded workflow."""
    if runtime.store().get_workflow(workflow_id) is None:
        raise WorkflowNotFoundError(f"no workflow {workflow_id!r} is recorded")
    return WorkflowHandle(workflow_id)


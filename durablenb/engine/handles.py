"""Background runs: `start` and the `WorkflowHandle` it returns."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import threading
import time
from typing import Any

from ..errors import (
    DurableError,
    WorkflowBusyError,
    WorkflowCancelledError,
    WorkflowNotFoundError,
)
from . import events, runtime
from .checkpoint import Call, Done, open_slot
from .context import _explicit_id, current
from .defs import Workflow
from .identity import args_digest, check_id
from .inputs import encode_inputs, inputs_for
from .replay import _top_level, execute, execute_async, recorded_outcome

_pool_lock = threading.Lock()
_pool: cf.ThreadPoolExecutor | None = None


def _executor() -> cf.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ThreadPoolExecutor(max_workers=32, thread_name_prefix="durablenb")
        return _pool


def run_recorded(spec: Workflow, *args: Any, **kw: Any) -> Any:
    """`execute` (or, for an ``async def`` workflow, `execute_async` in a new event loop)."""
    __tracebackhide__ = True
    if spec.is_async:
        return asyncio.run(execute_async(kw.pop("store"), spec, *args, **kw))
    return execute(kw.pop("store"), spec, *args, **kw)


#: Background runs of this process, by workflow id (a handle made earlier follows them).
_inflight: dict[str, cf.Future[Any]] = {}


def submit(fn: Any, *args: Any, **kwargs: Any) -> cf.Future[Any]:
    """Run *fn* on the background pool in a fresh context (no enclosing workflow)."""
    ctx = contextvars.Context()
    return _executor().submit(ctx.run, fn, *args, **kwargs)


def launch(wf: Workflow, wid: str, *args: Any, **kwargs: Any) -> WorkflowHandle:
    """Run workflow *wid* in the background (`run_recorded`); its handle."""
    fut = submit(run_recorded, wf, wid, *args, **kwargs)
    _inflight[wid] = fut
    fut.add_done_callback(lambda f: _inflight.pop(wid, None) if _inflight.get(wid) is f else None)
    return WorkflowHandle(wid, fut)


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
        """Wait for the workflow and return its output (or raise its error).

        The answer is the record's: when this handle's own run was cancelled or met another
        executor, the workflow's record is followed instead (resumed since, it may succeed).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._future is not None:
            try:
                return self._future.result(timeout)
            except WorkflowBusyError:
                pass  # another executor runs it: wait for its record below
            except WorkflowCancelledError:
                row = runtime.store().get_workflow(self.workflow_id)
                if row is None or row.status == "cancelled":
                    raise
            except cf.TimeoutError:
                raise TimeoutError(f"workflow {self.workflow_id!r} is still running") from None
        return self._wait_for_record(deadline, poll)

    def _wait_for_record(self, deadline: float | None, poll: float) -> Any:
        store = runtime.store()
        unheld_since: float | None = None
        while True:
            other = _inflight.get(self.workflow_id)
            if other is not None and other is not self._future:
                return WorkflowHandle(self.workflow_id, other).result(
                    None if deadline is None else max(deadline - time.monotonic(), 0), poll)
            row = store.get_workflow(self.workflow_id)
            if row is None:
                raise WorkflowNotFoundError(f"no workflow {self.workflow_id!r} is recorded")
            if row.status not in ("running", "superseded"):
                return recorded_outcome(row, store)
            if row.status == "running" and not store.is_held(self.workflow_id):
                # Nobody holds it: interrupted, unless an executor is about to take it (a
                # resume elsewhere reopens it a moment before it locks it).
                unheld_since = unheld_since or time.monotonic()
                if time.monotonic() - unheld_since > 2.0:
                    raise DurableError(
                        f"workflow {self.workflow_id!r} was interrupted and nobody runs it; "
                        "rerun it, or call dnb.resume(id)"
                    )
            else:
                unheld_since = None
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"workflow {self.workflow_id!r} is still running")
            time.sleep(poll)
            poll = min(poll * 1.5, 1.0)

    def cancel(self) -> bool:
        """Cancel the workflow and its children (they stop before their next step); False
        when it had already finished."""
        return bool(runtime.store().cancel(self.workflow_id))


def start(wf: Workflow, *args: Any, **kwargs: Any) -> WorkflowHandle:
    """Run workflow *wf* in the background; returns its handle at once.

    Inside a workflow the child's id is recorded at the caller's next position, so a replay
    gets the same handle and resumes the child if it was interrupted.
    """
    if not isinstance(wf, Workflow):
        raise TypeError(f"dnb.start takes a @dnb.workflow function, got {wf!r}")
    parent = current()
    if parent is None:
        store, wid, digest, inputs = _top_level(wf, args, kwargs)
        if events.listeners:
            events.emit("workflow_submitted", wid, wf.name)
        return launch(wf, wid, args, kwargs, digest, inputs, store=store)
    explicit = _explicit_id.get()
    slot = open_slot(parent, Call("start", wf.name, wf.code_hash))
    if slot.recorded is not None:
        wid = slot.replay()
        inputs = inputs_for(parent.store, wf, wid, args, kwargs)
    else:
        wid = check_id(explicit) if explicit else f"{parent.id}/{slot.position}"
        try:
            inputs = encode_inputs(parent.store, wf, wid, args, kwargs)
        except BaseException:
            slot.release()
            raise
        wid = slot.close(Done(True, wid, child_id=wid))
    digest = args_digest(wf.name, args, kwargs, required=False)
    return launch(wf, wid, args, kwargs, digest, inputs, store=parent.store, position=slot.position,
                  parent_id=parent.id, durability=parent.lease.durability)  # fmt: skip


def retrieve(workflow_id: str) -> WorkflowHandle:
    """A handle on a recorded workflow."""
    if runtime.store().get_workflow(workflow_id) is None:
        raise WorkflowNotFoundError(f"no workflow {workflow_id!r} is recorded")
    return WorkflowHandle(workflow_id)

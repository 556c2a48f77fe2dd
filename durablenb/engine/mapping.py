"""`map`: one checkpointed position per item, run on a thread or process pool.

Positions are reserved in the workflow's thread, one per item in input order, and each goes
through the checkpoint protocol: recorded items replay, the others run on the pool and are
recorded as they finish (in the workflow's thread). A cancel stops items that have not
started; items already running finish and are recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import multiprocessing
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import UnserializableArgumentsError, WorkflowCancelledError
from . import events
from .checkpoint import NOT_RECORDED, Done, Slot, open_slot
from .context import WorkflowRun, check_thread, current
from .defs import Step, Transaction
from .kinds import _outside, attempt, attempt_async, call_of, run_transaction


def _as_step(fn: Callable[..., Any]) -> Step:
    if isinstance(fn, Step):
        return fn
    if callable(fn):
        return Step(fn)
    raise TypeError(f"dnb.map takes a step or a function, got {fn!r}")


def _in_process(payload: bytes) -> bytes:
    """Worker side of a process pool: run one item with retries, return a pickled `Done`."""
    import cloudpickle

    spec, item = cloudpickle.loads(payload)
    done = _attempt_item(spec, item)
    try:
        return cloudpickle.dumps(done)
    except Exception as exc:  # an output that cannot cross back
        return cloudpickle.dumps(Done(False, TypeError(f"cannot send the output back: {exc}"),
                                      done.attempts))  # fmt: skip


def _attempt_item(spec: Step, item: Any) -> Done:
    if spec.is_async:
        return asyncio.run(attempt_async(spec, (item,), {}))
    return attempt(spec, (item,), {})


class _Cancelled(Exception):
    """The workflow was cancelled before this item started: nothing to record."""


def _run_item(spec: Step, item: Any, slot: Slot | None) -> Done:
    """Thread-pool side: run one item (its record, for a transaction, in its transaction)."""
    if slot is not None and slot.run.is_cancelled():
        raise _Cancelled
    if isinstance(spec, Transaction):
        run = slot.run if slot is not None else None
        from . import runtime

        return run_transaction(run.store if run else runtime.store(), spec, (item,), {}, slot)
    return _attempt_item(spec, item)


def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int = 4,
    processes: bool = False,
) -> list[Any]:
    """Apply *fn* to every item, each call a checkpointed step; results in input order.

    Inside a workflow, items finished before a crash are not run again. When items fail,
    the others still finish and are recorded; then the first failure (in input order) is
    raised. *processes*: run items in worker processes instead of threads (the function
    and items must pickle; transactions always use threads).
    """
    spec = _as_step(fn)
    items = list(items)
    if workers < 1:
        raise ValueError("workers must be >= 1")
    run = current()
    if run is None:
        _outside(f"dnb.map over {spec.name!r}")
    else:
        check_thread(run, f"dnb.map over {spec.name!r}")
    use_processes = processes and not isinstance(spec, Transaction)
    payloads = _payloads(spec, items) if use_processes else {}
    results: list[Any] = [None] * len(items)
    failures: dict[int, BaseException] = {}
    slots: dict[int, Slot | None] = {}
    if run is None:
        slots = dict.fromkeys(range(len(items)))
    else:
        first, call = run.take(len(items)), call_of(spec)
        for i in range(len(items)):
            slot = open_slot(run, call, first + i)
            if slot.recorded is None:
                slots[i] = slot
                continue
            try:
                results[i] = slot.replay()
            except NOT_RECORDED:
                raise
            except Exception as exc:
                failures[i] = exc
    if slots:
        _run_pending(spec, items, slots, run, workers, payloads, results, failures)
    if failures:
        failure = failures[min(failures)]
        if len(failures) > 1 and hasattr(failure, "add_note"):
            failure.add_note(f"dnb.map: {len(failures)} of {len(items)} items failed; "
                             f"items {sorted(failures)}")  # fmt: skip
        raise failure
    return results


def _payloads(spec: Step, items: list[Any]) -> dict[int, bytes]:
    import cloudpickle

    out = {}
    for i, item in enumerate(items):
        try:
            out[i] = cloudpickle.dumps((spec, item))
        except Exception as exc:
            raise UnserializableArgumentsError(
                f"dnb.map(processes=True) cannot send item {i} of {spec.name!r} to a worker "
                f"process: {exc}"
            ) from exc
    return out


def _pool(workers: int, use_processes: bool) -> cf.Executor:
    if use_processes:
        # IPython and Jupyter kernels replace __main__ with a module that has no __spec__,
        # which spawn reads; the workers need nothing from __main__ (items are cloudpickled).
        main = sys.modules.get("__main__")
        if main is not None and not hasattr(main, "__spec__"):
            main.__spec__ = None
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="durablenb-map")


def _run_pending(
    spec: Step, items: list[Any], slots: dict[int, Slot | None], run: WorkflowRun | None,
    workers: int, payloads: dict[int, bytes], results: list[Any], failures: dict[int, BaseException],
) -> None:  # fmt: skip
    pool = _pool(min(workers, len(slots)), bool(payloads))
    try:
        futures: dict[cf.Future[Any], int] = {}
        for i, slot in slots.items():
            if payloads:
                futures[pool.submit(_in_process, payloads[i])] = i
            else:
                ctx = contextvars.copy_context()
                futures[pool.submit(ctx.run, _run_item, spec, items[i], slot)] = i
        cancelled = _collect(futures, slots, run, spec, len(items), bool(payloads), results, failures)
    except BaseException:
        for slot in slots.values():
            if slot is not None:
                slot.release()
        # An interrupt (or a crash stand-in) must not wait for every running item.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    if cancelled and run is not None:
        raise WorkflowCancelledError(run.id)


def _collect(
    futures: dict[cf.Future[Any], int], slots: dict[int, Slot | None], run: WorkflowRun | None,
    spec: Step, total: int, pickled: bool, results: list[Any], failures: dict[int, BaseException],
) -> bool:  # fmt: skip
    """Record each item as it finishes; returns whether a cancel stopped some."""
    import pickle

    done_count, cancelled = total - len(slots), False
    for fut in cf.as_completed(futures):
        i = futures[fut]
        slot = slots[i]
        done_count += 1
        if run is not None and events.listeners:
            events.emit("map_progress", run, spec.name, done_count, total)
        try:
            out = fut.result()
            done: Done = pickle.loads(out) if pickled else out
        except _Cancelled:
            cancelled = True
            if slot is not None:
                slot.release()
            continue
        except NOT_RECORDED:
            raise
        except Exception as exc:  # a worker process died, for instance
            done = Done(False, exc)
        if slot is None:
            if done.ok:
                results[i] = done.value
            else:
                failures[i] = done.value
            continue
        try:
            results[i] = slot.close(done)
        except NOT_RECORDED:
            raise
        except Exception as exc:
            failures[i] = exc
    return cancelled

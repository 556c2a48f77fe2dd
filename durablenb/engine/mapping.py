"""`map`: one checkpointed step per item, run on a thread or process pool."""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from .. import _faults
from ..errors import UnserializableArgumentsError
from ..store import StepRecord
from . import events
from .defs import Step, Transaction
from .replay import (
    NOT_RECORDED,
    _record,
    attempt,
    current,
    lookup,
    replay,
    run_transaction,
)
from .replay import (
    finished as mark_finished,
)
from .replay import (
    started as mark_started,
)


def _in_process(payload: bytes) -> bytes:
    """Worker side of a process pool: run one item with retries, return a pickled outcome."""
    import cloudpickle

    spec, item = cloudpickle.loads(payload)
    ok, value, attempts = attempt(spec, (item,), {})
    try:
        return cloudpickle.dumps((ok, value, attempts))
    except Exception as exc:  # an output that cannot cross back
        return cloudpickle.dumps((False, TypeError(f"cannot send the output back: {exc}"), attempts))


def _as_step(fn: Callable[..., Any]) -> Step:
    if isinstance(fn, Step):
        return fn
    if callable(fn):
        return Step(fn)
    raise TypeError(f"dnb.map takes a step or a function, got {fn!r}")


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
    use_processes = processes and not isinstance(spec, Transaction)
    payloads: dict[int, bytes] = {}
    if use_processes:
        import cloudpickle

        for i, item in enumerate(items):
            try:
                payloads[i] = cloudpickle.dumps((spec, item))
            except Exception as exc:
                raise UnserializableArgumentsError(
                    f"dnb.map(processes=True) cannot send item {i} of {spec.name!r} to a worker "
                    f"process: {exc}"
                ) from exc
    results: list[Any] = [None] * len(items)
    failures: dict[int, BaseException] = {}
    first = run.take(len(items)) if run is not None else 0
    pending: list[int] = []
    for i in range(len(items)):
        if run is None:
            pending.append(i)
            continue
        rec = lookup(run, first + i, spec.name, spec.kind, spec.code_hash)
        if rec is None:
            pending.append(i)
            continue
        mark_finished(run, rec, True)
        try:
            results[i] = replay(run.store, run.id, rec)
        except Exception as exc:
            failures[i] = exc
    if pending:
        _run_pending(spec, items, pending, first, run, workers, use_processes, payloads,
                     results, failures)  # fmt: skip
    if failures:
        i = min(failures)
        exc = failures[i]
        if len(failures) > 1 and hasattr(exc, "add_note"):
            exc.add_note(f"dnb.map: {len(failures)} of {len(items)} items failed; "
                         f"items {sorted(failures)}")  # fmt: skip
        raise exc
    return results


def _run_pending(
    spec: Step, items: list[Any], pending: list[int], first: int, run: Any, workers: int,
    use_processes: bool, payloads: dict[int, bytes], results: list[Any],
    failures: dict[int, BaseException],
) -> None:  # fmt: skip
    started: dict[int, float] = {}
    is_txn = isinstance(spec, Transaction)
    if use_processes:
        # IPython and Jupyter kernels replace __main__ with a module that has no __spec__,
        # which spawn reads; the workers need nothing from __main__ (items are cloudpickled).
        main = sys.modules.get("__main__")
        if main is not None and not hasattr(main, "__spec__"):
            main.__spec__ = None
        pool: cf.Executor = cf.ProcessPoolExecutor(
            max_workers=min(workers, len(pending)), mp_context=multiprocessing.get_context("spawn")
        )
    else:
        pool = cf.ThreadPoolExecutor(max_workers=min(workers, len(pending)),
                                     thread_name_prefix="durablenb-map")  # fmt: skip
    try:
        _drive(pool, spec, items, pending, first, run, use_processes, is_txn, payloads, started,
               results, failures)  # fmt: skip
    except BaseException:
        # An interrupt (or a crash stand-in) must not wait for every running item.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _drive(
    pool: cf.Executor, spec: Step, items: list[Any], pending: list[int], first: int, run: Any,
    use_processes: bool, is_txn: bool, payloads: dict[int, bytes], started: dict[int, float],
    results: list[Any], failures: dict[int, BaseException],
) -> None:  # fmt: skip
    futures: dict[cf.Future[Any], int] = {}
    for i in pending:
        started[i] = time.time()
        if run is not None:
            mark_started(run, first + i, spec.name, spec.kind, started[i])
        if use_processes:
            fut = pool.submit(_in_process, payloads[i])
        elif is_txn:
            ctx = contextvars.copy_context()
            fut = pool.submit(ctx.run, run_transaction, run.store if run else _store(), spec,
                              (items[i],), {}, run.id if run else None,
                              first + i if run else None)  # fmt: skip
        else:
            ctx = contextvars.copy_context()
            fut = pool.submit(ctx.run, attempt, spec, (items[i],), {})
        futures[fut] = i
    done = len(items) - len(pending)
    for fut in cf.as_completed(futures):
        i = futures[fut]
        done += 1
        if run is not None and events.listeners:
            events.emit("map_progress", run, spec.name, done, len(items))
        try:
            out = fut.result()
        except NOT_RECORDED:
            raise
        except Exception as exc:  # a worker process died, for instance
            out = (False, exc, 1)
        if use_processes:
            import pickle

            out = pickle.loads(out)
        if is_txn:
            ok, value, winner = out
            attempts = 1
            if winner is not None:
                mark_finished(run, winner, True)
                _store_result(i, lambda w=winner: replay(run.store, run.id, w), results, failures)
                continue
            if ok:
                if run is not None:
                    mark_finished(run, StepRecord(run.id, first + i, spec.name, spec.kind,
                                                  "succeeded", started_at=started[i],
                                                  finished_at=time.time()), False)  # fmt: skip
                results[i] = value
                continue
        else:
            ok, value, attempts = out
        if run is None:
            if ok:
                results[i] = value
            else:
                failures[i] = value
            continue
        rec = _record(run.store, run.id, first + i, spec.name, spec.kind, spec.code_hash, ok, value,
                      attempts, started[i], time.time())  # fmt: skip
        winner = run.lease.record_step(rec)
        if _faults.ACTIVE:
            _faults.point("record.written")
        mark_finished(run, winner, winner is not rec)
        if winner is not rec or (ok and rec.status != "succeeded"):
            _store_result(i, lambda w=winner: replay(run.store, run.id, w), results, failures)
        elif ok:
            results[i] = value
        else:
            failures[i] = value


def _store_result(
    i: int, get: Callable[[], Any], results: list[Any], failures: dict[int, BaseException]
) -> None:
    try:
        results[i] = get()
    except Exception as exc:
        failures[i] = exc


def _store() -> Any:
    from . import runtime

    return runtime.store()


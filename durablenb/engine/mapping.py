"""`map`: one checkpointed position per item, run on a thread or process pool, a caller's
executor or a Dask cluster (`_pools`), within a rate and a cap on items in flight.

Positions are reserved in the workflow's thread, one per item in input order, and each goes
through the checkpoint protocol: recorded items replay, the others run on the pool and are
recorded as they finish, in the workflow's thread, those that finish together in one batch
and one commit (`_groupcommit`; each item's output is encoded by the worker that ran it).
On dnb.map's own threads with no rate or cap, each worker loops over the items (no future
per item). A cancel stops items that have not started; items already running finish and
are recorded.

An item is running from the moment a worker picks it up until its record is written: that
is its recorded start (queue time is not part of its duration) and when listeners hear
`step_started`. Each item has a label (`default_label`, or `map(label=...)`), recorded with
it and shown as ``name[label]``; labels are not compared on replay.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextvars
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import UnserializableArgumentsError
from ._groupcommit import Finished, record
from ._pools import Cancelled as _Cancelled
from ._pools import Feeder, Pool, check_max_in_flight, parse_rate, pool_for
from .checkpoint import NOT_RECORDED, Done, Slot, open_slot
from .context import WorkflowRun, check_thread, current
from .defs import Step, Transaction
from .identity import MAX_NAME_BYTES, _check_text
from .kinds import _outside, attempt, attempt_async, call_of, run_transaction

#: Longest text of an item that is its own default label; longer items are labelled by index.
DEFAULT_LABEL_CHARS = 24
_SCALARS = (str, int, float, bool)


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
    started = time.time()  # the item's recorded start: the workflow's thread cannot see it
    done = _attempt_item(spec, item)
    done.started_at = started
    try:
        return cloudpickle.dumps(done)
    except Exception as exc:  # an output that cannot cross back
        return cloudpickle.dumps(Done(False, TypeError(f"cannot send the output back: {exc}"),
                                      done.attempts, started_at=started))  # fmt: skip


def _attempt_item(spec: Step, item: Any) -> Done:
    if spec.is_async:
        return asyncio.run(attempt_async(spec, (item,), {}))
    return attempt(spec, (item,), {})


class _Running:
    """Which items of a map count as running: at most one per worker, each from when it is
    picked up until its record is written (in the workflow's thread).

    A thread-pool worker notes its item running when it picks it up (`picked`), in its own
    thread. A worker that finished an item picks up the next one before the workflow's thread
    has recorded the first; rather than wait for that record (a worker idle for a record's
    write on every item), the new item runs at once, its start time taken then, and it is
    noted running when a recorded item frees a place (`recorded`, in the workflow's thread),
    a moment later; an item recorded before that is never noted running (its step_finished
    comes without a step_started). So listeners and `dnb.steps` never see more items running
    than there are workers, and recorded starts are exact.

    With processes nothing is seen of a pickup: items wait in submission order (`queue`), the
    order the pool hands them out, and each recorded item lets the next one be noted running;
    the recorded start is the one the worker process measured (`Done.started_at`).
    """

    def __init__(self, workers: int) -> None:
        self._lock = threading.Lock()
        self._free = workers
        #: Items not noted running yet, with when they were picked up (None: not known).
        self._waiting: deque[tuple[Slot, float | None]] = deque()
        self._shown: set[int] = set()
        self._recorded: set[int] = set()
        self._closed = False

    def picked(self, slot: Slot) -> bool:
        """A worker picked *slot*'s item up now; False once the map was abandoned."""
        slot.started_at = t0 = time.time()  # its recorded start, whenever it is noted running
        return self._wait(slot, t0)

    def queue(self, slot: Slot) -> None:
        """*slot*'s item was handed to the pool, to be picked up in this order."""
        self._wait(slot, None)

    def _wait(self, slot: Slot, t0: float | None) -> bool:
        with self._lock:
            if self._closed:
                return False
            now = self._free > 0
            if now:
                self._free -= 1
                self._shown.add(slot.position)
            else:
                self._waiting.append((slot, t0))
        if now:
            slot.begin(t0)
        return True

    def recorded(self, slots: list[Slot]) -> None:
        """The records of *slots* were written (their step_finished emitted): their places
        go to the next waiting items."""
        starting = []
        with self._lock:
            self._recorded.update(slot.position for slot in slots)  # none of them starts now
            for slot in slots:
                if slot.position not in self._shown:
                    continue
                self._shown.discard(slot.position)
                while self._waiting and self._waiting[0][0].position in self._recorded:
                    self._waiting.popleft()
                if not self._waiting:
                    self._free += 1
                    continue
                nxt, t0 = self._waiting.popleft()
                self._shown.add(nxt.position)
                starting.append((nxt, t0))
        for nxt, t0 in starting:
            nxt.begin(t0)

    def close(self) -> None:
        """Abandon the map: items picked up from now on do not run."""
        with self._lock:
            self._closed = True


def _run_item(spec: Step, item: Any, slot: Slot | None, running: _Running) -> Done:
    """Thread-pool side: run one item (its record, for a transaction, in its transaction)."""
    if slot is not None and (slot.run.is_cancelled() or not running.picked(slot)):
        raise _Cancelled
    if isinstance(spec, Transaction):
        run = slot.run if slot is not None else None
        from . import runtime

        return run_transaction(run.store if run else runtime.store(), spec, (item,), {}, slot)
    done = _attempt_item(spec, item)
    if slot is not None:
        try:  # encode the output (and write its blob) here, off the workflow's thread
            slot.prepare(done)
        except Exception:  # built again when the item is recorded, which reports the error
            pass
    return done


def map(
    fn: Callable[[Any], Any],
    items: Iterable[Any],
    *,
    workers: int | None = None,
    processes: bool = False,
    executor: Any = None,
    rate: str | float | None = None,
    max_in_flight: int | None = None,
    label: Callable[[Any], str] | None = None,
) -> list[Any]:
    """Apply *fn* to every item, each call a checkpointed step; results in input order.

    Inside a workflow, items finished before a crash are not run again. When items fail,
    the others still finish and are recorded; then the first failure (in input order) is
    raised. Items run on a pool of *workers* threads (4 by default); *processes*: worker
    processes instead (the function and items must pickle; transactions always use threads).
    An item's recorded start is when a worker picked it up.

    *executor*: run items on a `concurrent.futures.Executor` or a Dask `distributed.Client`
    instead (the caller's: it is never shut down). On a `ThreadPoolExecutor` items run as
    with *workers*; on anything else the function and items must pickle (cloudpickle), each
    item runs with its retries where the executor puts it, and a `@dnb.transaction` is
    refused (`TypeError`). Every outcome is recorded here, in the workflow's thread.

    *rate*: items start no faster than this: ``"N/s"``, ``"N/min"``, ``"N/h"`` or a number
    per second (one at a time, 1/rate apart; no burst after a pause). *max_in_flight*: at
    most this many items running at once, whatever the pool's size. Items replayed from
    their records count against neither. A bad value is a `ValueError` before any item runs.

    *label*: a function item -> str naming each item in records and listings
    (``fit_carrier[AA]``); by default a short str, number or bool (or a tuple of them) is
    its own label and any other item is labelled by its index (`default_label`). A label
    function that raises or returns something else than a string is a `TypeError` before
    any item runs. Labels are recorded, not compared: changing them does not fork a run.
    """
    spec = _as_step(fn)
    items = list(items)
    what = f"dnb.map over {spec.name!r}"
    pool = pool_for(executor, workers=workers, processes=processes,
                    transaction=isinstance(spec, Transaction), what=what)  # fmt: skip
    limits = (check_max_in_flight(max_in_flight), parse_rate(rate))
    labels = _labels(spec, items, label)
    run = current()
    if run is None:
        _outside(what)
    else:
        check_thread(run, what)
    payloads = _payloads(spec, items, pool) if pool.pickled else {}
    results: list[Any] = [None] * len(items)
    failures: dict[int, BaseException] = {}
    slots = _open_slots(run, spec, labels, results, failures)
    if slots:
        _run_pending(spec, items, slots, run, pool, limits, payloads, results, failures)
    if failures:
        failure = failures[min(failures)]
        if len(failures) > 1 and hasattr(failure, "add_note"):
            failure.add_note(f"dnb.map: {len(failures)} of {len(items)} items failed; "
                             f"items {sorted(failures)}")  # fmt: skip
        raise failure
    return results


def _open_slots(
    run: WorkflowRun | None, spec: Step, labels: list[str], results: list[Any],
    failures: dict[int, BaseException],
) -> dict[int, Slot | None]:  # fmt: skip
    """Reserve a position per item, in input order: replay the recorded ones (into *results*
    and *failures*); the slots of the others (None outside a workflow), to run."""
    if run is None:
        return dict.fromkeys(range(len(labels)))
    slots: dict[int, Slot | None] = {}
    first, call = run.take(len(labels)), call_of(spec)
    for i in range(len(labels)):
        slot = open_slot(run, call, first + i, queued=True, label=labels[i])
        if slot.recorded is None:
            slots[i] = slot
            continue
        try:
            results[i] = slot.replay()
        except NOT_RECORDED:
            raise
        except Exception as exc:
            failures[i] = exc
    return slots


def default_label(item: Any, index: int) -> str:
    """The label of *item* at *index* of a `dnb.map`: a str itself (its repr when empty or
    not printable), a number, bool or tuple of those as its repr, when that is at most
    `DEFAULT_LABEL_CHARS` characters; otherwise the index."""
    kind = type(item)
    if kind is str:
        if len(item) > DEFAULT_LABEL_CHARS:
            return str(index)
        text = item if item and item.isprintable() else repr(item)
    elif kind in _SCALARS or (kind is tuple and _short_scalars(item)):
        try:
            text = repr(item)
        except ValueError:  # an int too long to print
            return str(index)
    else:
        return str(index)
    return text if len(text) <= DEFAULT_LABEL_CHARS else str(index)


def _short_scalars(items: tuple[Any, ...]) -> bool:
    """Whether *items* are few strs, numbers and bools, none a long str (cheap to print)."""
    return len(items) <= DEFAULT_LABEL_CHARS // 3 and all(
        type(x) in _SCALARS and not (type(x) is str and len(x) > DEFAULT_LABEL_CHARS) for x in items
    )


def _labels(spec: Step, items: list[Any], label: Callable[[Any], str] | None) -> list[str]:
    """Every item's label, checked before anything runs."""
    if label is None:
        return [default_label(item, i) for i, item in enumerate(items)]
    if not callable(label):
        raise TypeError(f"dnb.map(label=...) takes a function item -> str, got {label!r:.60}")
    out = []
    for i, item in enumerate(items):
        try:
            text = label(item)
        except NOT_RECORDED:
            raise
        except Exception as exc:
            raise TypeError(
                f"dnb.map over {spec.name!r}: the label function raised {type(exc).__name__} "
                f"for item {i}: {exc}; no item ran"
            ) from exc
        if not isinstance(text, str):
            raise TypeError(
                f"dnb.map over {spec.name!r}: the label function returned {text!r:.60} "
                f"({type(text).__name__}, not str) for item {i}; no item ran"
            )
        out.append(_check_text(text, f"label (of item {i} of dnb.map over {spec.name!r})", MAX_NAME_BYTES))
    return out


def _payloads(spec: Step, items: list[Any], pool: Pool) -> dict[int, bytes]:
    """Every item with the function, cloudpickled for *pool*, checked before any runs."""
    import cloudpickle

    out = {}
    for i, item in enumerate(items):
        try:
            out[i] = cloudpickle.dumps((spec, item))
        except Exception as exc:
            raise UnserializableArgumentsError(
                f"dnb.map cannot send item {i} of {spec.name!r} to {pool.where}: {exc}"
            ) from exc
    return out


def _run_pending(
    spec: Step, items: list[Any], slots: dict[int, Slot | None], run: WorkflowRun | None, pool: Pool,
    limits: tuple[int | None, float | None], payloads: dict[int, bytes], results: list[Any],
    failures: dict[int, BaseException],
) -> None:  # fmt: skip
    """Run the items of *slots* on *pool* within *limits* (max_in_flight, rate) and record
    them as they finish."""
    if not pool.pickled and limits == (None, None):
        return _run_threads(spec, items, slots, run, pool, results, failures)
    max_in_flight, rate = limits
    pool.start(len(slots))
    running = _Running(min(pool.size or len(slots), max_in_flight or len(slots), len(slots)))
    feeder = Feeder(pool, _launcher(spec, items, slots, pool, running, payloads),
                    (lambda: False) if run is None else run.is_cancelled,
                    max_in_flight=max_in_flight, rate=rate)  # fmt: skip
    try:
        futures = feeder.start(list(slots))
        cancelled = _collect(futures, slots, run, spec, len(items), pool.pickled, running, results,
                             failures)  # fmt: skip
    except BaseException:
        running.close()
        for slot in slots.values():
            if slot is not None:
                slot.release()
        # An interrupt (or a crash stand-in) must not wait for every running item.
        feeder.stop()
        pool.close(wait=False)
        raise
    feeder.join()
    pool.close(wait=True)
    if cancelled and run is not None:
        raise run.cancelled_error()


def _launcher(
    spec: Step, items: list[Any], slots: dict[int, Slot | None], pool: Pool, running: _Running,
    payloads: dict[int, bytes],
) -> Callable[[int], Any]:  # fmt: skip
    """How item *i* is handed to *pool* (called in order, by the `Feeder`)."""
    if pool.pickled:

        def launch(i: int) -> Any:
            # Which item a worker picked up is not visible from here: items are noted running
            # in the order they are handed out, as many as the pool runs at once, and one
            # more each time one is recorded; the recorded start is the worker's own (`Done`).
            # Noted before it is handed out: it cannot be recorded (in the workflow's thread)
            # before it is noted, so its step_started never follows its step_finished.
            slot = slots[i]
            if slot is not None:
                running.queue(slot)
            return pool.submit(spec.name, _in_process, payloads[i])

        return launch
    base = contextvars.copy_context()  # the workflow thread's: each item runs in a copy

    def launch_thread(i: int) -> Any:
        return pool.submit(spec.name, base.copy().run, _run_item, spec, items[i], slots[i], running)

    return launch_thread


def _collect(
    futures: dict[cf.Future[Any], int], slots: dict[int, Slot | None], run: WorkflowRun | None,
    spec: Step, total: int, pickled: bool, running: _Running, results: list[Any],
    failures: dict[int, BaseException],
) -> bool:  # fmt: skip
    """Record the items as they finish, in batches (group commit: `_groupcommit`); returns
    whether a cancel stopped some."""
    import pickle

    def outcome(fut: cf.Future[Any]) -> tuple[int, Done | None]:
        try:
            out = fut.result()
            return futures[fut], pickle.loads(out) if pickled else out
        except _Cancelled:
            return futures[fut], None
        except NOT_RECORDED:
            raise
        except Exception as exc:  # a worker process died, for instance
            return futures[fut], Done(False, exc)

    return record(Finished.of(futures), outcome, slots, run, spec.name, total, running, results, failures)


def _run_threads(
    spec: Step, items: list[Any], slots: dict[int, Slot | None], run: WorkflowRun | None, pool: Pool,
    results: list[Any], failures: dict[int, BaseException],
) -> None:  # fmt: skip
    """Run the items of *slots* on *pool*'s threads with no limits: as many loops as it has
    workers, each taking the next item when done with one (no future per item: tiny items
    cost microseconds), each outcome queued for the workflow's thread to record in batches."""
    pool.start(len(slots))
    size = min(pool.size or len(slots), len(slots))
    running, order, finished = _Running(size), deque(slots), Finished(len(slots))

    def loop() -> None:
        while True:
            try:
                i = order.popleft()
            except IndexError:
                return
            finished.hold_back()
            try:
                finished.put((i, _run_item(spec, items[i], slots[i], running)))
            except _Cancelled:
                finished.put((i, None))
            except BaseException as exc:  # noqa: B036 -- raised in the workflow's thread
                finished.put((i, exc))

    def outcome(entry: tuple[int, Any]) -> tuple[int, Done | None]:
        i, got = entry
        if not isinstance(got, BaseException):
            return i, got
        if isinstance(got, NOT_RECORDED) or not isinstance(got, Exception):
            raise got
        return i, Done(False, got)

    base = contextvars.copy_context()  # the workflow thread's: each loop runs in a copy
    try:
        for _ in range(size):
            pool.submit(spec.name, base.copy().run, loop)
        cancelled = record(finished, outcome, slots, run, spec.name, len(items), running, results, failures)
    except BaseException:
        order.clear()
        finished.close()
        running.close()
        for slot in slots.values():
            if slot is not None:
                slot.release()
        pool.close(wait=False)
        raise
    pool.close(wait=True)
    if cancelled and run is not None:
        raise run.cancelled_error()

"""Where `dnb.map` runs its items, and how fast it hands them out.

A `Pool` is dnb.map's own thread or process pool (started per map, shut down after it), a
caller's `concurrent.futures.Executor` (never shut down here: the caller owns it) or a Dask
`distributed.Client` (items run on the cluster's workers). Items run in this process on a
thread pool; on any other pool they travel cloudpickled and come back as a pickled `Done`.

A `Feeder` hands the items to the pool in input order: at most `max_in_flight` of them
submitted and not finished, and one at a time no faster than `rate` (a token bucket that
holds one token: after a pause the next item starts at once, the ones after it
1/rate apart). With a rate, no more items are handed out than the pool has workers (when it
is known), so an item starts when it is handed out rather than waiting in the pool's queue
and bunching up behind a slow one. Without limits every item is handed out at once (the
pool or the Dask scheduler queues them). While items are out the feeder asks about a cancel
every `CANCEL_POLL` seconds: then it hands out no more and cancels those handed out that
have not started (`Pool.cancel_queued`). Each item has a stand-in future, finished when the
pool's future is: the workflow's thread collects those as they finish, whatever the pool.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from ..errors import DurableUsageError

RATE_FORMS = "'N/s', 'N/min', 'N/h' or a number of items per second (N > 0)"
_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}
_RATE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(s|min|h)\s*")


#: How often (seconds) a map with items out asks whether its workflow was cancelled (a
#: look at a flag the store's listener sets: no query unless a cancel was announced).
CANCEL_POLL = 0.1


class Cancelled(Exception):
    """The workflow was cancelled before this item started: nothing to record."""


def parse_rate(rate: str | float | None) -> float | None:
    """Items per second for `dnb.map(rate=...)`; None: no limit."""
    if rate is None:
        return None
    per_second = -1.0
    if isinstance(rate, str):
        m = _RATE.fullmatch(rate)
        if m:
            per_second = float(m[1]) / _UNITS[m[2]]
    elif isinstance(rate, (int, float)) and not isinstance(rate, bool):
        per_second = float(rate)
    if not (per_second > 0 and math.isfinite(per_second)):
        raise ValueError(f"dnb.map(rate=...) takes {RATE_FORMS}, got {rate!r:.60}")
    return per_second


def check_max_in_flight(value: int | None) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    raise ValueError(f"dnb.map(max_in_flight=...) takes a whole number >= 1 (or None: no cap), "
                     f"got {value!r:.60}")  # fmt: skip


def _dask_client(obj: Any) -> bool:
    dd = sys.modules.get("distributed")
    return dd is not None and isinstance(obj, dd.Client)


class Pool:
    """Where a map's items run. *pickled*: items travel cloudpickled (any pool but threads);
    *size*: how many items it runs at once, when known; *owned*: dnb.map's own pool."""

    def __init__(self, executor: Any, *, pickled: bool, size: int | None, owned: bool, where: str) -> None:
        self.executor = executor
        self.pickled = pickled
        self.size = size
        self.owned = owned
        #: Where items go, for messages.
        self.where = where

    def start(self, pending: int) -> None:
        """Create dnb.map's own pool for *pending* items (a caller's pool is there already)."""
        if self.owned and self.executor is None:
            self.size = min(self.size or pending, pending)
            self.executor = _own_pool(self.size, self.pickled)

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args)

    def watch(self, fut: Any, done: Callable[[Any, BaseException | None], None]) -> None:
        """Call *done(output, None)* or *done(None, error)* once *fut* has ended."""

        def ended(f: Any) -> None:
            try:
                out = f.result()
            except BaseException as exc:
                done(None, exc)
            else:
                done(out, None)

        fut.add_done_callback(ended)

    def cancel(self, futures: list[Any]) -> None:
        """Cancel *futures* that have not started (after an interrupt)."""
        for fut in futures:
            fut.cancel()

    def cancel_queued(self, futures: list[Any]) -> None:
        """The workflow was cancelled: cancel those of *futures* (handed out, in order, and
        not finished) that have not started; the others finish and are recorded."""
        self.cancel(futures)  # a concurrent.futures future that has started cannot be cancelled

    def close(self, wait: bool) -> None:
        """Shut dnb.map's own pool down (without waiting for running items unless *wait*)."""
        if self.owned and self.executor is not None:
            self.executor.shutdown(wait=wait, cancel_futures=not wait)


class DaskPool(Pool):
    """A Dask `distributed.Client`: each item is a task, run once (``pure=False``); the
    tasks' results are fetched by `distributed.as_completed` (in the client's event loop, as
    each ends) and handed over by a thread of this map's, which then drops them so that the
    cluster releases them at once."""

    def __init__(self, client: Any, size: int | None) -> None:
        super().__init__(client, pickled=True, size=size, owned=False, where="the Dask cluster")
        self._cond = threading.Condition()
        self._waiting: dict[int, Callable[[Any, BaseException | None], None]] = {}
        self._closed = False
        self._ended: Any = None  # the distributed.as_completed, once the first task is out

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        # The key names the step in Dask's dashboard; the uuid makes every submission new.
        key = "dnb-" + re.sub(r"\W+", "_", name).strip("_") + "-" + uuid.uuid4().hex
        return self.executor.submit(fn, *args, pure=False, key=key)

    def watch(self, fut: Any, done: Callable[[Any, BaseException | None], None]) -> None:
        with self._cond:
            if self._ended is None:
                from distributed import as_completed

                self._ended = as_completed(with_results=True, raise_errors=False, loop=self.executor.loop)
                threading.Thread(target=self._hand_over, name="durablenb-map-dask", daemon=True).start()
            self._waiting[id(fut)] = done
            self._ended.add(fut)
            self._cond.notify_all()

    def _hand_over(self) -> None:
        while True:
            try:
                fut, result = next(self._ended)
            except StopIteration:  # nothing out now: wait for the next task, or the end
                with self._cond:
                    while not self._waiting and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                continue
            with self._cond:
                done = self._waiting.pop(id(fut))
            if fut.status == "error":  # raise_errors=False: (type, error, traceback)
                done(None, result[1].with_traceback(result[2]))
            elif isinstance(result, BaseException):  # cancelled
                done(None, result)
            else:
                done(result, None)
            del fut, result  # the last reference: the cluster forgets the task now
            if self._closed:
                return

    def cancel(self, futures: list[Any]) -> None:
        if futures:
            self.executor.cancel(futures)

    def cancel_queued(self, futures: list[Any]) -> None:
        # Dask would drop a running task's result too, and does not tell which have started;
        # it starts them by priority, that is in submission order: the oldest `size` are
        # taken to be running (one that was not runs to its end; one that was and is
        # cancelled is not recorded, and runs again on a rerun).
        self.cancel(futures[self.size or 0 :])

    def close(self, wait: bool) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def pool_for(executor: Any, *, workers: int | None, processes: bool, transaction: bool, what: str) -> Pool:
    """The pool a map runs on, checked before anything runs."""
    if executor is None:
        n = 4 if workers is None else workers
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"workers must be a whole number >= 1, got {n!r:.60}")
        where = "a worker process" if processes and not transaction else "a worker thread"
        return Pool(None, pickled=processes and not transaction, size=n, owned=True, where=where)
    if workers is not None or processes:
        raise ValueError(
            f"{what}: workers= and processes= size dnb.map's own pool; with executor= the "
            "executor's own workers run the items (cap them with max_in_flight=)"
        )
    if isinstance(executor, cf.ThreadPoolExecutor):
        size = getattr(executor, "_max_workers", None)
        return Pool(executor, pickled=False, size=size, owned=False, where="the executor's threads")
    dask = _dask_client(executor)
    if not (dask or isinstance(executor, cf.Executor)):
        raise TypeError(f"{what}: executor= takes a concurrent.futures.Executor or a Dask "
                        f"distributed.Client, got {executor!r:.80}")  # fmt: skip
    if transaction:
        raise TypeError(
            f"{what}: a @dnb.transaction writes its record in its own database transaction, "
            f"in this process, so it runs on threads only: use workers= or a "
            f"ThreadPoolExecutor, not {type(executor).__name__}"
        )
    if dask:
        size = sum(executor.nthreads().values()) or None
        return DaskPool(executor, size)
    size = getattr(executor, "_max_workers", None) if isinstance(executor, cf.ProcessPoolExecutor) else None
    return Pool(executor, pickled=True, size=size, owned=False, where="the executor")


def _own_pool(workers: int, use_processes: bool) -> cf.Executor:
    if use_processes:
        # IPython and Jupyter kernels replace __main__ with a module that has no __spec__,
        # which spawn reads; the workers need nothing from __main__ (items are cloudpickled).
        main = sys.modules.get("__main__")
        if main is not None and not hasattr(main, "__spec__"):
            main.__spec__ = None
        return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    return cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="durablenb-map")


class Feeder:
    """Hands items to a pool in order, within `max_in_flight` and `rate` (see the module),
    in a thread of its own, then watches for a cancel until the last item handed out ends.

    *launch(i)* submits item *i* and returns the pool's future; *cancelled()* says whether
    the workflow was cancelled: then no item is handed out any more, and those handed out
    that have not started are cancelled (`Pool.cancel_queued`).
    """

    def __init__(
        self, pool: Pool, launch: Callable[[int], Any], cancelled: Callable[[], bool], *,
        max_in_flight: int | None, rate: float | None,
    ) -> None:  # fmt: skip
        self._pool, self._launch, self._cancelled = pool, launch, cancelled
        self._interval = None if rate is None else 1.0 / rate
        cap = max_in_flight
        if rate is not None and pool.size is not None:  # an item handed out starts at once
            cap = min(cap or pool.size, pool.size)
        self._cap = cap
        self._cond = threading.Condition()
        self._next = 0.0  # when the rate lets the next item go (time.monotonic)
        self._stopped = self._cancelling = False
        #: The pool's futures of items handed out and not finished, by id, in handing order.
        self._inflight: dict[int, Any] = {}
        self._thread: threading.Thread | None = None

    def start(self, order: list[int]) -> dict[cf.Future[Any], int]:
        """Begin handing out items *order*; their stand-in futures, each to its index."""
        proxies: dict[int, cf.Future[Any]] = {i: cf.Future() for i in order}
        self._thread = threading.Thread(target=self._run, args=(order, proxies),
                                        name="durablenb-map-feeder", daemon=True)  # fmt: skip
        self._thread.start()
        return {fut: i for i, fut in proxies.items()}

    def stop(self) -> None:
        """Hand out no more items; cancel those handed out that have not started."""
        with self._cond:
            self._stopped = True
            handed = list(self._inflight.values())
            self._cond.notify_all()
        self._pool.cancel(handed)
        self.join()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self, order: list[int], proxies: dict[int, cf.Future[Any]]) -> None:
        for n, i in enumerate(order):
            turn: bool | None = None
            while turn is None:  # asks about a cancel at least every CANCEL_POLL seconds
                try:
                    cancelled = self._cancelled()
                except Exception as exc:  # the store, asked about a cancel
                    proxies[i].set_exception(exc)
                    return
                if cancelled:
                    self._cancel_queued()
                    for j in order[n:]:
                        proxies[j].set_exception(Cancelled())
                    return
                turn = self._turn()
            if not turn or not self._hand_out(i, proxies[i]):
                return
        self._watch()

    def _hand_out(self, i: int, proxy: cf.Future[Any]) -> bool:
        try:
            fut = self._launch(i)
        except Exception as exc:  # not the item's outcome: not recorded, it runs on a rerun
            err = DurableUsageError(f"dnb.map could not hand item {i} to {self._pool.where}: "
                                    f"{type(exc).__name__}: {exc}")  # fmt: skip
            err.__cause__ = exc
            proxy.set_exception(err)
            return False
        with self._cond:
            self._inflight[id(fut)] = fut
        self._pool.watch(fut, partial(self._finished, proxy, id(fut)))
        return True

    def _watch(self) -> None:
        """Every item is out: until they all end, a cancel cancels those not started."""
        while True:
            with self._cond:
                if self._stopped or not self._inflight:
                    return
                self._cond.wait(CANCEL_POLL)
                if self._stopped or not self._inflight:
                    return
            try:
                if self._cancelled():
                    self._cancel_queued()
                    return
            except Exception:  # the store is unreachable: the items end as they are
                return

    def _cancel_queued(self) -> None:
        with self._cond:
            self._cancelling = True
            handed = list(self._inflight.values())
        self._pool.cancel_queued(handed)

    def _turn(self) -> bool | None:
        """True: the next item may go now; False: stopped; None: not yet (after a wait of at
        most CANCEL_POLL seconds for a place or a token)."""
        with self._cond:
            if self._stopped:
                return False
            if self._cap is not None and len(self._inflight) >= self._cap:
                self._cond.wait(CANCEL_POLL)
                return None
            if self._interval is not None:
                now = time.monotonic()
                if now < self._next:
                    self._cond.wait(min(self._next - now, CANCEL_POLL))
                    return None
                self._next = now + self._interval
            return True

    def _finished(self, proxy: cf.Future[Any], key: int, out: Any, error: BaseException | None) -> None:
        """The item handed out as future *key* ended (in whichever thread the pool says so)."""
        with self._cond:
            self._inflight.pop(key, None)
            self._cond.notify_all()
        if error is None:
            proxy.set_result(out)
        elif isinstance(error, cf.CancelledError) and self._cancelling:  # by a workflow cancel
            proxy.set_exception(Cancelled())
        elif isinstance(error, cf.CancelledError):  # by the pool's owner (or a Dask restart)
            err = DurableUsageError(f"dnb.map: {self._pool.where} cancelled an item ({error!r:.80}); it "
                                    "is not recorded and runs again when the workflow is rerun")  # fmt: skip
            proxy.set_exception(err)
        else:
            proxy.set_exception(error)

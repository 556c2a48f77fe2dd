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
and bunching up behind a slow one. Each item has a stand-in future, finished when the
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

    def cancel(self, futures: list[Any]) -> None:
        """Cancel *futures* that have not started (after an interrupt)."""
        for fut in futures:
            fut.cancel()

    def close(self, wait: bool) -> None:
        """Shut dnb.map's own pool down (without waiting for running items unless *wait*)."""
        if self.owned and self.executor is not None:
            self.executor.shutdown(wait=wait, cancel_futures=not wait)


class DaskPool(Pool):
    """A Dask `distributed.Client`: each item is a task, run once (``pure=False``)."""

    def submit(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        # The key names the step in Dask's dashboard; the uuid makes every submission new.
        key = "dnb-" + re.sub(r"\W+", "_", name).strip("_") + "-" + uuid.uuid4().hex
        return self.executor.submit(fn, *args, pure=False, key=key)

    def cancel(self, futures: list[Any]) -> None:
        if futures:
            self.executor.cancel(futures)


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
        return DaskPool(executor, pickled=True, size=size, owned=False, where="the Dask cluster")
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
    """Hands items to a pool in order, within `max_in_flight` and `rate` (see the module).

    *launch(i)* submits item *i* and returns the pool's future; *cancelled()* says whether
    the workflow was cancelled (no item is handed out after that). With no limit every item
    is handed out at once, in the caller's thread; otherwise a thread of its own does it.
    """

    def __init__(
        self, pool: Pool, launch: Callable[[int], Any], cancelled: Callable[[], bool], *,
        max_in_flight: int | None, rate: float | None,
    ) -> None:  # fmt: skip
        self._pool, self._launch, self._cancelled = pool, launch, cancelled
        self._interval = None if rate is None else 1.0 / rate
        cap = max_in_flight
        if rate is not None and pool.size is not None:
            cap = min(cap or pool.size, pool.size)
        self._cap = cap
        self._cond = threading.Condition()
        self._next = 0.0  # when the rate lets the next item go (time.monotonic)
        self._stopped = False
        #: The pool's futures of items handed out and not finished, by id.
        self._inflight: dict[int, Any] = {}
        self._thread: threading.Thread | None = None

    def start(self, order: list[int]) -> dict[cf.Future[Any], int]:
        """Begin handing out items *order*; their stand-in futures, each to its index."""
        proxies: dict[int, cf.Future[Any]] = {i: cf.Future() for i in order}
        if self._cap is None and self._interval is None:
            self._feed(order, proxies)
        else:
            self._thread = threading.Thread(target=self._feed, args=(order, proxies),
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

    def _feed(self, order: list[int], proxies: dict[int, cf.Future[Any]]) -> None:
        for n, i in enumerate(order):
            proxy = proxies[i]
            try:
                if not self._turn():
                    return
                if self._cancelled():
                    for j in order[n:]:
                        proxies[j].set_exception(Cancelled())
                    return
            except Exception as exc:  # the store, asked about a cancel
                proxy.set_exception(exc)
                return
            try:
                fut = self._launch(i)
            except Exception as exc:  # not the item's outcome: not recorded, it runs on a rerun
                err = DurableUsageError(f"dnb.map could not hand item {i} to {self._pool.where}: "
                                        f"{type(exc).__name__}: {exc}")  # fmt: skip
                err.__cause__ = exc
                proxy.set_exception(err)
                return
            with self._cond:
                self._inflight[id(fut)] = fut
            fut.add_done_callback(partial(self._finished, proxy))

    def _turn(self) -> bool:
        """Wait until the next item may go; False once stopped."""
        with self._cond:
            while not self._stopped:
                if self._cap is not None and len(self._inflight) >= self._cap:
                    self._cond.wait()
                    continue
                if self._interval is not None:
                    now = time.monotonic()
                    if now < self._next:
                        self._cond.wait(self._next - now)
                        continue
                    self._next = now + self._interval
                return True
            return False

    def _finished(self, proxy: cf.Future[Any], fut: Any) -> None:
        """The pool's future *fut* is done (in whichever thread the pool calls back)."""
        with self._cond:
            self._inflight.pop(id(fut), None)
            self._cond.notify_all()
        try:
            out = fut.result()  # for Dask: fetched from the worker now, then released
        except cf.CancelledError as exc:  # by the pool's owner (or a Dask restart), not by dnb
            err = DurableUsageError(f"dnb.map: {self._pool.where} cancelled an item ({exc!r:.80}); it "
                                    "is not recorded and runs again when the workflow is rerun")  # fmt: skip
            proxy.set_exception(err)
        except BaseException as exc:
            proxy.set_exception(exc)
        else:
            proxy.set_result(out)

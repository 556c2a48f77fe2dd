"""Group commit of `dnb.map` items: the records of items that finish close together are
written in one batch, one statement and one commit (`checkpoint.close_many`).

The workflow's thread takes finished items in the order they finish and closes them in
batches: it waits for one, then takes every other one already finished, and waits a little
for more while items are still out, until `BATCH_MAX` records wait or `BATCH_WAIT` seconds
have passed since the first of them finished. A batch is written at once when it holds every
item still out (the end of a map, or its last slow items). While a batch commits, the workers
go on: the next batch gathers meanwhile, so the batches grow with the rate items finish at.

Why these bounds: a batch's commit costs one round trip and, under ``full`` durability, one
log flush, whatever its size; 500 records spread that over enough rows that the rows
themselves dominate (docs/performance.md, Group commit), while a batch still takes only
milliseconds to write and a crash loses at most a few batches of finished work. 5 ms bounds
how long a record waits for companions, far less than a step usually runs; it is reached only
when items finish slower than 500 per 5 ms, when there is little to gain from waiting longer.
Worker loops (`hold_back`) stop taking new items while `BACKLOG` full batches wait: beyond
that, running more items only takes the interpreter from the thread that records them.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from . import events
from .checkpoint import Done, Slot, close_many
from .context import WorkflowRun

#: A batch is written once this many records wait...
BATCH_MAX = 500
#: ...or this many seconds after the first of them finished (or at once when it holds every
#: item still out).
BATCH_WAIT = 0.005
#: Worker loops wait while this many full batches wait to be recorded.
BACKLOG = 2


class Finished:
    """Outcomes of a map's items, handed to the workflow's thread in batches as they finish.

    Whatever finishes an item puts its entry here (`put`, from any thread): a worker loop
    its outcome, a future itself (`of`: a done-callback). A batch costs nothing per item
    still running, whatever their number.
    """

    def __init__(self, count: int, *, max_size: int | None = None, wait: float | None = None) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        #: Items not handed out in a batch yet.
        self.left = count
        self.max_size = BATCH_MAX if max_size is None else max_size
        self.wait = BATCH_WAIT if wait is None else wait
        self.put = self._queue.put
        self._room = threading.Event()
        self._closed = False

    def hold_back(self) -> None:
        """Wait while `BACKLOG` batches are finished and not recorded yet (in a worker loop,
        before it runs an item): beyond that, running more items only takes the interpreter
        from the thread that records them. `take` wakes the waiting loops."""
        q, most = self._queue, self.max_size * BACKLOG
        while q.qsize() >= most and not self._closed:
            self._room.clear()
            if q.qsize() >= most and not self._closed:
                self._room.wait(0.05)

    def close(self) -> None:
        """Nothing will be taken any more (the map was abandoned): let waiting loops go."""
        self._closed = True
        self._room.set()

    @classmethod
    def of(cls, futures: Iterable[Any]) -> Finished:
        """The futures *futures*, each an entry once it is done."""
        futures = list(futures)
        finished = cls(len(futures))
        for fut in futures:
            fut.add_done_callback(finished.put)
        return finished

    def take(self) -> list[Any]:
        """The next batch of entries (at least one; blocks until an item finishes)."""
        q = self._queue
        batch = [q.get()]
        limit = min(self.max_size, self.left)
        deadline = time.monotonic() + self.wait
        while len(batch) < limit:
            try:
                batch.append(q.get_nowait())
                continue
            except queue.Empty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(q.get(timeout=left))
            except queue.Empty:
                break
        self.left -= len(batch)
        self._room.set()
        return batch


class Running(Protocol):
    """What learns that items were recorded (dnb.map's running items)."""

    def recorded(self, slots: list[Slot]) -> None: ...


def record(
    finished: Finished, outcome: Callable[[Any], tuple[int, Done | None]], slots: dict[int, Slot | None],
    run: WorkflowRun | None, name: str, total: int, running: Running, results: list[Any],
    failures: dict[int, BaseException],
) -> bool:  # fmt: skip
    """Record a map's items as they finish, in batches, in the workflow's thread: *outcome*
    tells which item an entry of *finished* is and how it ended (None: cancelled before it
    started); *results* and *failures* get what holds for each once its batch committed.
    Returns whether a cancel stopped some."""
    done_count, cancelled = total - len(slots), False
    while finished.left:
        batch = finished.take()
        done_count += len(batch)
        if run is not None and events.listeners:
            events.emit("map_progress", run, name, done_count, total)
        closing: list[tuple[int, Slot, Done]] = []
        for entry in batch:
            i, done = outcome(entry)
            slot = slots[i]
            if done is None:  # cancelled before it started
                cancelled = True
                if slot is not None:
                    slot.release()
            elif slot is not None:
                closing.append((i, slot, done))
            elif done.ok:  # outside a workflow: nothing to record
                results[i] = done.value
            else:
                failures[i] = done.value
        if closing:
            _close(closing, running, results, failures)
    return cancelled


def _close(closing: list[tuple[int, Slot, Done]], running: Running, results: list[Any],
           failures: dict[int, BaseException]) -> None:  # fmt: skip
    """Record a batch of finished items in one commit; only then are their outcomes theirs."""
    slots = [slot for _, slot, _ in closing]
    outcomes = close_many(slots, [done for _, _, done in closing])
    for (i, _, _), (ok, value) in zip(closing, outcomes, strict=True):
        if ok:
            results[i] = value
        else:
            failures[i] = value
    running.recorded(slots)

"""Timeouts: a step's (an interrupt raised into its body) and a workflow's (a deadline
recorded with the workflow and enforced as a cancel).

A step's body is interrupted where it runs: in the main thread by ``SIGALRM`` (which also
wakes a blocking sleep or socket wait), in any other thread by an asynchronous exception
(`PyThreadState_SetAsyncExc`, delivered at the thread's next Python instruction). The
interrupt is a `KeyboardInterrupt` subclass, so the body's own ``except Exception`` cannot
swallow it and psycopg cancels a query it interrupts, as on Ctrl-C. The attempt then ends
with `StepTimeoutError`, which is recorded like any error of the step and follows its
retry policy.

A workflow's deadline is its first start plus its timeout, written to its row: a resume
after a crash keeps it. At the deadline the workflow is cancelled (`Store.cancel`, with the
reason recorded), so it runs no further step and its caller gets `WorkflowTimeoutError`.
`dnb.resume` clears it; the run it starts gets a new deadline.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import DurableError, StepTimeoutError, WorkflowCancelledError, WorkflowTimeoutError
from ..store import TIMED_OUT

if TYPE_CHECKING:
    from ..store import WorkflowRow
    from .context import WorkflowRun

logger = logging.getLogger("durablenb")


def check_timeout(timeout: float | None, what: str) -> float | None:
    """*timeout* as seconds (None: no timeout); a clear error for a bad value."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"{what} timeout must be a positive number of seconds or None, not {timeout!r}")
    return float(timeout)


# -- steps ------------------------------------------------------------------------------------


class _Expired(KeyboardInterrupt):
    """Raised into a step's body when its timeout passes."""


def _set_async_exc(thread: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread),
                                               ctypes.py_object(exc) if exc else None)  # fmt: skip


class _Timer:
    """Interrupts the thread that starts it once *seconds* pass, unless stopped first."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.thread = threading.get_ident()
        self.lock = threading.Lock()
        self.done = self.fired = False
        main = threading.current_thread() is threading.main_thread()
        self.by_signal = main and hasattr(signal, "setitimer")
        self.old_handler: Any = None
        self.old_timer = (0.0, 0.0)
        self.watchdog: threading.Timer | None = None
        self.started = time.monotonic()

    def start(self) -> None:
        if self.by_signal:
            self.old_handler = signal.signal(signal.SIGALRM, self._on_alarm)
            self.old_timer = signal.setitimer(signal.ITIMER_REAL, self.seconds)
        else:
            self.watchdog = threading.Timer(self.seconds, self._inject)
            self.watchdog.daemon = True
            self.watchdog.name = "durablenb-step-timeout"
            self.watchdog.start()

    def _on_alarm(self, signum: int, frame: Any) -> None:
        if not self.done and not self.fired:
            self.fired = True
            raise _Expired

    def _inject(self) -> None:
        with self.lock:
            if self.done:
                return
            self.fired = True
            _set_async_exc(self.thread, _Expired)

    def stop(self) -> None:
        """Disarm (idempotent); an interrupt not delivered yet is withdrawn."""
        with self.lock:
            first, self.done = not self.done, True
            if first and self.fired and not self.by_signal:
                _set_async_exc(self.thread, None)
        if not first:
            return
        if self.watchdog is not None:
            self.watchdog.cancel()
        if self.by_signal:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old_handler)
            if self.old_timer[0] > 0:  # someone else's timer was running: give it back
                left = self.old_timer[0] - (time.monotonic() - self.started)
                signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), self.old_timer[1])


def call_with_timeout(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                      seconds: float | None, name: str) -> Any:  # fmt: skip
    """``fn(*args, **kwargs)``, interrupted after *seconds* with `StepTimeoutError`."""
    __tracebackhide__ = True
    if seconds is None:
        return fn(*args, **kwargs)
    timer = _Timer(seconds)
    try:
        timer.start()
        try:
            value = fn(*args, **kwargs)
        finally:
            timer.stop()
    except BaseException as exc:
        timer.stop()  # when the interrupt landed inside the first stop
        if not timer.fired:
            raise
        # the interrupt, or what it caused (a cancelled query, a closed connection)
        raise StepTimeoutError(name, seconds) from (None if isinstance(exc, _Expired) else exc)
    if timer.fired:  # the body caught the interrupt and went on
        raise StepTimeoutError(name, seconds)
    return value


async def await_with_timeout(make: Callable[[], Awaitable[Any]], seconds: float | None, name: str) -> Any:
    """``await make()``, cancelled after *seconds* with `StepTimeoutError`."""
    __tracebackhide__ = True
    if seconds is None:
        return await make()
    t0 = time.monotonic()
    try:
        return await asyncio.wait_for(make(), seconds)
    except (asyncio.TimeoutError, TimeoutError):
        if time.monotonic() - t0 < seconds:  # the body's own TimeoutError
            raise
        raise StepTimeoutError(name, seconds) from None


# -- workflows --------------------------------------------------------------------------------


def recorded_cancel(row: WorkflowRow) -> WorkflowCancelledError:
    """The error a caller gets for the cancelled workflow *row*."""
    if row.error_type == TIMED_OUT:
        return WorkflowTimeoutError(row.id, row.error_message)
    return WorkflowCancelledError(row.id)


def arm(run: WorkflowRun, timeout: float | None) -> None:
    """Give *run* its deadline: the one recorded for it, else now + *timeout*, recorded now
    (so a resume after a crash keeps it). Past already: *run* is cancelled at once."""
    if timeout is None:
        return
    run.timeout = timeout
    run.deadline = run.lease.set_deadline(time.time() + timeout)


def overdue(run: WorkflowRun) -> bool:
    """Whether *run* has a deadline and it passed."""
    return run.deadline is not None and time.time() >= run.deadline


def _why(run: WorkflowRun) -> str:
    return f"it ran past its timeout of {run.timeout:g} s"


def timed_out(run: WorkflowRun) -> WorkflowTimeoutError:
    """The error the caller of *run* gets once its deadline cancelled it."""
    return WorkflowTimeoutError(run.id, _why(run))


def expire(run: WorkflowRun) -> None:
    """Cancel *run* (and its running descendants): its deadline passed."""
    try:
        run.store.cancel(run.id, reason=_why(run))
    except DurableError as exc:  # the next step's check tries again
        logger.warning("workflow %s passed its deadline but could not be cancelled: %s", run.id, exc)


class Watch:
    """Cancels *run* at its deadline while its body runs (a step may be running then: the
    workflow stops before its next one)."""

    def __init__(self, run: WorkflowRun) -> None:
        self.timer: threading.Timer | None = None
        if run.deadline is not None:
            self.timer = threading.Timer(max(run.deadline - time.time(), 0.0), expire, (run,))
            self.timer.daemon = True
            self.timer.name = "durablenb-deadline"
            self.timer.start()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()

"""How each kind of position runs: steps (with retries), transactions, recorded values.

Each kind hands the checkpoint protocol (`checkpoint.py`) a function that runs its body and
returns a `Done`; replay, recording and conflicts are the protocol's business.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg

from .. import _faults
from ..errors import DurableUsageError, StoreUnavailableError
from ..store import RETRYABLE_SQL, Store
from . import runtime
from .checkpoint import NOT_RECORDED, Call, Done, Slot, checkpoint, checkpoint_async
from .context import _in_step, _txn_conn, check_orphan, current, enclosing, in_step
from .defs import Step, Transaction
from .timeouts import await_with_timeout, call_with_timeout

logger = logging.getLogger("durablenb")

#: How often a transaction is retried after a serialization failure or a deadlock before
#: the error counts as the transaction's own (its retry policy then applies).
TXN_CONFLICT_RETRIES = 10


def call_of(spec: Step) -> Call:
    return Call(spec.kind, spec.name, spec.code_hash)


def _retry_delay(spec: Step, attempts: int, exc: Exception) -> float | None:
    """Seconds to wait before trying *spec* again after *exc*, or None to stop."""
    if attempts <= spec.retries and isinstance(exc, spec.retry_on):
        delay = spec.delay(attempts)
        logger.info("step %s failed (%r); retry %d in %.2fs", spec.name, exc, attempts, delay)
        return delay
    return None


# -- steps ------------------------------------------------------------------------------------


def attempt(spec: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Done:
    """Run *spec* with its retries; errors of the machinery propagate unrecorded."""
    __tracebackhide__ = True
    token = _in_step.set(True)
    try:
        attempts = 0
        while True:
            attempts += 1
            try:
                if _faults.ACTIVE:
                    _faults.point("step.before")
                value = call_with_timeout(spec.fn, args, kwargs, spec.timeout, spec.name)
                if _faults.ACTIVE:
                    _faults.point("step.after")
                return Done(True, value, attempts)
            except NOT_RECORDED:
                raise
            except Exception as exc:
                delay = _retry_delay(spec, attempts, exc)
                if delay is None:
                    return Done(False, exc, attempts)
                time.sleep(delay)
    finally:
        _in_step.reset(token)


async def attempt_async(spec: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Done:
    """`attempt` for an ``async def`` step."""
    __tracebackhide__ = True
    token = _in_step.set(True)
    try:
        attempts = 0
        while True:
            attempts += 1
            try:
                if _faults.ACTIVE:
                    _faults.point("step.before")
                value = await await_with_timeout(lambda: spec.fn(*args, **kwargs), spec.timeout, spec.name)
                if _faults.ACTIVE:
                    _faults.point("step.after")
                return Done(True, value, attempts)
            except NOT_RECORDED:
                raise
            except Exception as exc:
                delay = _retry_delay(spec, attempts, exc)
                if delay is None:
                    return Done(False, exc, attempts)
                await asyncio.sleep(delay)
    finally:
        _in_step.reset(token)


def _outside(what: str) -> None:
    """Checks for a durable call made outside any workflow context."""
    if not in_step():
        check_orphan(what)


def call_step(spec: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run or replay one step of the current workflow (a plain call outside workflows)."""
    __tracebackhide__ = True
    run = current()
    if run is None:
        _outside(f"step {spec.name!r}")
        return spec.fn(*args, **kwargs)
    return checkpoint(run, call_of(spec), lambda slot: attempt(spec, args, kwargs))


async def call_step_async(spec: Step, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """`call_step` for an ``async def`` step."""
    __tracebackhide__ = True
    run = current()
    if run is None:
        _outside(f"step {spec.name!r}")
        return await spec.fn(*args, **kwargs)
    return await checkpoint_async(run, call_of(spec), lambda slot: attempt_async(spec, args, kwargs))


# -- transactions -------------------------------------------------------------------------------


class _RolledBack(Exception):
    """Leave the transaction block so it rolls back, with the outcome to report."""

    def __init__(self, done: Done | None) -> None:
        super().__init__()
        self.done = done


def _transaction_once(store: Store, spec: Transaction, args: tuple[Any, ...], kwargs: dict[str, Any],
                      slot: Slot | None, attempts: int) -> Done:  # fmt: skip
    # the server's own limit, a little later, where the interrupt cannot reach a C wait
    with store.transaction(None if spec.timeout is None else spec.timeout + 0.25) as conn:
        token, tstep = _txn_conn.set(conn), _in_step.set(True)
        try:
            if _faults.ACTIVE:
                _faults.point("step.before")
            done = Done(True, call_with_timeout(spec.fn, args, kwargs, spec.timeout, spec.name), attempts)
        finally:
            _txn_conn.reset(token)
            _in_step.reset(tstep)
        if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
            raise psycopg.errors.InFailedSqlTransaction(
                f"transaction {spec.name!r} returned after one of its statements failed (the "
                "error was caught in its body), so nothing it wrote can commit; let the error "
                "propagate, or use a savepoint (with dnb.connection().transaction(): ...)"
            )
        if slot is None:
            return done
        rec = slot.record(done)
        if not done.ok:  # the output cannot be encoded: roll the body back, record the error
            raise _RolledBack(done)
        lease = slot.run.lease
        if not store.insert_step_in(conn, rec, asynchronous=lease.asynchronous):  # recorded first: roll back
            raise _RolledBack(None)
        if _faults.ACTIVE:
            _faults.point("txn.before_commit")
        done.written = rec
    if _faults.ACTIVE:
        _faults.point("txn.after_commit")
    return done


def run_transaction(
    store: Store, spec: Transaction, args: tuple[Any, ...], kwargs: dict[str, Any], slot: Slot | None
) -> Done:
    """Run *spec*'s body and, at a *slot* of a workflow, its record in one database
    transaction; retried after serialization failures and deadlocks (`TXN_CONFLICT_RETRIES`)
    and by the transaction's own retry policy. The body's SQL errors are its own errors."""
    attempts = conflicts = 0
    deadline = time.monotonic() + store.retry_seconds
    while True:
        attempts += 1
        try:
            return _transaction_once(store, spec, args, kwargs, slot, attempts)
        except _RolledBack as rb:
            if rb.done is not None:
                return rb.done
            assert slot is not None
            return Done(True, None, attempts, winner=store.get_step(slot.run.id, slot.position))
        except StoreUnavailableError as exc:
            # Rolled back with the connection, or committed with its record (then the retry
            # meets that record and rolls back): running the body again is safe in a workflow.
            if slot is None or not exc.transient or time.monotonic() >= deadline:
                raise
            store._putconn(store.wait_for_connection(deadline))
        except NOT_RECORDED:
            raise
        except Exception as exc:
            if isinstance(exc, RETRYABLE_SQL) and conflicts < TXN_CONFLICT_RETRIES:
                conflicts += 1
                time.sleep(min(0.01 * 2**conflicts, 1.0) * random.uniform(0.5, 1.5))
                continue
            delay = _retry_delay(spec, attempts, exc)
            if delay is None:
                return Done(False, exc, attempts)
            time.sleep(delay)


def call_transaction(spec: Transaction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run or replay a transaction of the current workflow: exactly once."""
    __tracebackhide__ = True
    if _txn_conn.get() is not None:  # nested in another transaction: share it
        return spec.fn(*args, **kwargs)
    run = current()
    if run is None:
        outer = enclosing()
        if in_step() and outer is not None:
            raise DurableUsageError(
                f"transaction {spec.name!r} was called inside a step of workflow "
                f"{outer.id!r}: a crash would re-run the step and the transaction with "
                "it, so it could commit twice. Call it from the workflow's body, or make the "
                "enclosing step a @dnb.transaction."
            )
        _outside(f"transaction {spec.name!r}")
        done = run_transaction(runtime.store(), spec, args, kwargs, None)
        if done.ok:
            return done.value
        raise done.value
    return checkpoint(run, call_of(spec), lambda slot: run_transaction(run.store, spec, args, kwargs, slot))


# -- recorded values ----------------------------------------------------------------------------


def record_value(kind: str, name: str, compute: Callable[[], Any]) -> Any:
    """Record *compute()* at the next position of the current workflow; replay it after."""
    __tracebackhide__ = True
    run = current()
    if run is None:
        _outside(name)
        return compute()
    return checkpoint(run, Call(kind, name), lambda slot: Done(True, compute()))

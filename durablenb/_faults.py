"""Fault injection for the kill-matrix tests.

``DURABLENB_FAULT=phase@n`` kills this process with SIGKILL (no cleanup, no atexit) the
n-th time execution reaches `point(phase)`. ``DURABLENB_FAULT_COUNT=file`` instead appends
every point reached to *file*, to list the kill points a workflow offers. Both are read by
`connect()` (see `durablenb.settings`); with neither set, `ACTIVE` is False and callers
skip the call entirely.
"""

from __future__ import annotations

import os
import signal
import threading

_phase = ""
_target = 0
_count_file = ""
_seen = 0
_lock = threading.Lock()

ACTIVE = False


def configure(fault: str, count_file: str) -> None:
    """Arm the kill point *fault* (``phase@n``) or the counting file *count_file*."""
    global _phase, _target, _count_file, _seen, ACTIVE
    phase, _, nth = fault.partition("@")
    _phase, _target, _count_file, _seen = phase, int(nth) if nth.isdigit() else 0, count_file, 0
    ACTIVE = bool((_phase and _target) or _count_file)

PHASES = (
    "workflow.begun",      # the workflow row is written and locked, the body not started
    "step.before",         # a step is about to run its body
    "step.after",          # a step's body returned; its record is not written yet
    "record.written",      # a step record was just committed
    "batch.before_commit",  # a batch of dnb.map records is built (blobs written), not written
    "batch.after_commit",  # a batch of dnb.map records committed; no outcome handed back yet
    "txn.before_commit",   # a transaction's body and record are written, not committed
    "txn.after_commit",    # a transaction committed
    "blob.mid_write",      # half-way through writing a large value
    "blob.before_commit",  # a blob is written, not yet fsync'd and renamed (or committed)
    "finish.before",       # the workflow returned; its end is not recorded yet
    "finish.after",        # the workflow's end was committed
    "return.after",        # the workflow call returned to its caller
)

#: Kill points outside a workflow's run.
OTHER_PHASES = (
    "blob.collect",        # a garbage collection is about to delete a blob nothing holds
)


def point(phase: str) -> None:
    """Die here if this is the configured kill point; count it in count mode."""
    global _seen
    if _count_file:
        with _lock, open(_count_file, "a") as f:
            f.write(phase + "\n")
        return
    if phase != _phase:
        return
    with _lock:
        _seen += 1
        hit = _seen == _target
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)

"""Store or recompute: a finished ``%%durable`` cell that is cheaper to run than to restore
is run again, and its values are checked against the record.

When a cell first runs, its record notes how long it ran and, for a cell that may be run
again, how long its recorded values take to decode and to fingerprint. A cell may be run
again only when its first run touched nothing outside the kernel (`_effects`), recorded
every name it assigned, kept every value inline (no blob, 8 MiB in all at most) and every
value has a fingerprint. On a rerun it runs again, its output hidden, when running and
checking take under half of decoding (and save at least `MIN_SAVED`); what it printed and
displayed is shown from the record, and every recorded name and the global state must
come out equal to the record, or the recorded values are restored over them.
"""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import _outputs

if TYPE_CHECKING:
    from .cell import _Parts

#: A cell runs again only when that saves this many seconds and half of its restore: below,
#: both are too quick to matter and the restore is the choice that runs no code.
MIN_SAVED = 0.001
#: Cells whose values take more than this many bytes are always restored (measuring their
#: decoding and fingerprints would cost their first run too much).
MEASURED_BYTES = 8 << 20
#: Cells that ran longer than this are always restored (their values are not measured).
RUN_AT_MOST = 1.0


def plan(parts: _Parts, out: dict[str, Any], run_s: float, effects: list[str]) -> dict[str, Any] | None:
    """What the record keeps to run the cell again: the fingerprint of each of its names and
    the seconds to fingerprint and to decode them; None when it must be restored."""
    from .cell import fingerprint

    if effects or out["skipped"] or run_s > RUN_AT_MOST:
        return None
    encoded = out["names"].values()
    if any(blob for *_, blob in encoded) or sum(len(data or b"") for _, data, *_ in encoded) > MEASURED_BYTES:
        return None
    started = time.perf_counter()
    prints: dict[str, str] = {}
    for name in checked_names(out):
        fp = fingerprint(parts.ns[name]) if name in parts.ns else None
        if fp is None:
            return None
        prints[name] = fp
    check_s = time.perf_counter() - started
    from .cell import decode_names

    started = time.perf_counter()
    _decoded, failed = decode_names(out, parts.wid)
    if failed:  # what cannot be decoded now is restored, or fails, later
        return None
    restore_s = time.perf_counter() - started
    return {"fingerprints": prints, "check_s": check_s, "restore_s": restore_s}


def checked_names(out: dict[str, Any]) -> list[str]:
    """The names a rerun must give back equal: those recorded, together or alone, and views."""
    names = [n for n in out["names"] if n != "*"] + list(out.get("grouped", []))
    return names + [n for n in out.get("views", {}) if n not in names]


def worth_it(out: dict[str, Any]) -> bool:
    """Whether running the finished cell again is clearly faster than restoring it."""
    found = out.get("recompute")
    if not found:
        return False
    again = out.get("run_s", 1e9) + found["check_s"]
    return bool(again < found["restore_s"] / 2 and found["restore_s"] - again >= MIN_SAVED)


def run_again(parts: _Parts, out: dict[str, Any]) -> bool:
    """Run the cell again with its output hidden; whether its names and the global state
    came out as recorded (then what it showed is shown from the record)."""
    __tracebackhide__ = True
    from .cell import fingerprint

    before = _outputs.global_state()
    figures = _outputs.figure_numbers()
    try:
        with _hidden(parts.shell):
            ok = _execute(parts)
    finally:
        _outputs.close_new_figures(figures)  # drawn by the first run, shown from the record
    expected = {**before, **out.get("state", {})}
    if ok:
        prints = out["recompute"]["fingerprints"]
        ok = all(n in parts.ns and fingerprint(parts.ns[n]) == fp for n, fp in prints.items())
        after = _outputs.global_state()
        ok = ok and all(_outputs.dumped(after.get(k)) == _outputs.dumped(v) for k, v in expected.items())
    if not ok:
        _outputs.set_global_state(expected)
        return False
    _outputs.replay_outputs(out)
    return True


def _execute(parts: _Parts) -> bool:
    __tracebackhide__ = True
    try:
        parts.run()
    except Exception:  # noqa: BLE001  (it ran differently: its record is restored)
        return False
    return True


@contextmanager
def _hidden(shell: Any) -> Iterator[None]:
    """What is printed or displayed meanwhile is dropped."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = io.StringIO(), io.StringIO()
    pub = getattr(shell, "display_pub", None)
    if pub is not None:
        pub.publish = lambda *args, **kwargs: None
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        if pub is not None:
            pub.__dict__.pop("publish", None)

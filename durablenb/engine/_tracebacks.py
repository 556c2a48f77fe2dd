"""Tracebacks that show the user's code, not the engine's.

IPython and pytest hide frames marked ``__tracebackhide__``; plain Python shows them all.
`user_traceback` drops durablenb's own frames from a traceback whose exception was raised in
the user's code (or re-raised from a record), or is one of durablenb's typed errors (whose
message says what happened), in any interpreter. Any other exception raised inside durablenb
keeps every frame: a fault of the engine is found from the engine's frames.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from types import TracebackType
from typing import TypeVar

from ..errors import DurableError

T = TypeVar("T")

#: The folder of the durablenb package.
PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
#: Frames of re-raised records (`checkpoint.raise_recorded`) are labels the user should see.
LABEL = "<durablenb:"


def _ours(tb: TracebackType) -> bool:
    return tb.tb_frame.f_code.co_filename.startswith(PACKAGE)


def user_traceback(
    tb: TracebackType | None, exc: BaseException | None = None
) -> TracebackType | None:
    """*tb* (of *exc*) without durablenb's frames, when the exception comes from the user's
    code, a record, or is a `DurableError`; else *tb* as it is."""
    entries = []
    while tb is not None:
        entries.append(tb)
        tb = tb.tb_next
    if not entries or (_ours(entries[-1]) and not isinstance(exc, DurableError)):
        return entries[0] if entries else None
    kept: TracebackType | None = None
    for entry in reversed(entries):
        if not _ours(entry):
            kept = TracebackType(kept, entry.tb_frame, entry.tb_lasti, entry.tb_lineno)
    return kept


def hide_engine(exc: BaseException) -> BaseException:
    """*exc* with `user_traceback` as its traceback."""
    return exc.with_traceback(user_traceback(exc.__traceback__, exc))


async def awaited(coro: Awaitable[T]) -> T:
    """Await *coro*; an exception leaves with `user_traceback`."""
    __tracebackhide__ = True
    try:
        return await coro
    except BaseException as exc:
        raise hide_engine(exc)  # noqa: B904  (the same exception: its chain stays as it is)


def user_text(text: str) -> str:
    """A formatted traceback *text* without the entries of durablenb's own frames (records
    written by earlier versions kept them), when its innermost frame is the user's."""
    lines = text.splitlines()
    entries: list[list[str]] = []
    head: list[str] = []
    tail: list[str] = []
    for line in lines:
        if line.startswith('  File "'):
            entries.append([line])
        elif entries and line.startswith("    "):
            entries[-1].append(line)
        elif entries:
            tail.append(line)
        else:
            head.append(line)
    if not entries or _is_ours(entries[-1][0]):
        return text
    kept = [line for entry in entries if not _is_ours(entry[0]) for line in entry]
    return "\n".join(head + kept + tail)


def _is_ours(file_line: str) -> bool:
    return file_line[len('  File "'):].startswith(PACKAGE)

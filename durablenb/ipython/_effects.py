"""What a cell did outside its kernel, as Python's audit events (PEP 578) report it.

A cell is run again instead of restored only when its first run raised no audit event
but those that stay inside the process: compiling, importing, reading files. Anything
else — a file opened for writing, a socket, a subprocess, a thread, a durablenb workflow
or step, an event this list does not know — marks the cell as having outside effects.
Code that does I/O from C without an audit event (a C library writing its own files or
sockets) is not seen; ``%%durable --no-recompute`` or ``DURABLENB_RECOMPUTE=0`` keeps
such cells restored only.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Audit events that change nothing outside the process.
HARMLESS = frozenset({
    "compile", "exec", "import", "marshal.loads", "marshal.load", "code.__new__",
    "function.__new__", "builtins.id", "sys._getframe", "sys._getframemodulename",
    "object.__getattr__", "object.__setattr__", "object.__delattr__", "os.listdir",
    "os.scandir", "glob.glob", "glob.glob/2", "os.getcwd", "os.chdir", "pickle.find_class",
    "array.__new__", "time.sleep", "socket.gethostname", "gc.get_referrers",
    "gc.get_referents", "gc.get_objects", "sys.set_asyncgen_hooks_firstiter",
    "sys.set_asyncgen_hooks_finalizer", "sys._current_frames", "sys._current_exceptions",
    "cpython.PyInterpreterState_Clear", "os.listxattr", "os.getxattr", "sys.excepthook",
    "cpython.run_command", "locale.getlocale", "pathlib.Path.glob", "pathlib.Path.rglob",
})  # fmt: skip
_WRITES = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def _reads_only(args: tuple[Any, ...]) -> bool:
    """Whether an ``open`` event's (path, mode, flags) opens for reading only."""
    mode = args[1] if len(args) > 1 else None
    flags = args[2] if len(args) > 2 else 0
    if isinstance(mode, str):
        return not set(mode) & set("wax+")
    return isinstance(flags, int) and not flags & _WRITES


class Watch:
    """The events with outside effects seen while open, on any thread (a few are kept), and
    the threads started meanwhile that are still running when it closes."""

    KEPT = 8

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.threads_before = {t.ident for t in threading.enumerate()}

    def note(self, event: str, args: tuple[Any, ...]) -> None:
        if event in HARMLESS or (event == "open" and _reads_only(args)):
            return
        if len(self.seen) < self.KEPT and event not in self.seen:
            self.seen.append(event)

    def close(self) -> None:
        if any(t.ident not in self.threads_before for t in threading.enumerate()):
            self.note("threading.Thread.start", ())


_active: list[Watch] = []
_installed = False
_install_lock = threading.Lock()


def _hook(event: str, args: tuple[Any, ...]) -> None:
    for w in _active:
        w.note(event, args)


@contextmanager
def watch() -> Iterator[Watch]:
    """While open, audit events with outside effects are collected (from every thread: a
    thread the cell started writes on its own)."""
    global _installed
    if not _installed:
        with _install_lock:
            if not _installed:
                sys.addaudithook(_hook)  # for the process's life: hooks cannot be removed
                _installed = True
    w = Watch()
    _active.append(w)
    try:
        yield w
    finally:
        _active.remove(w)
        w.close()

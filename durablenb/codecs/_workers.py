"""Threads that check and decode parts of a large value beside the calling thread."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

#: Workers besides the calling thread: up to four cores in all.
WORKERS = 3

_lock = threading.Lock()
#: (pid, pool): a forked child makes its own (its parent's threads are not in it).
_pool: list[tuple[int, ThreadPoolExecutor]] = []


def pool() -> ThreadPoolExecutor:
    """This process's pool. Its tasks never wait for one another, so none can starve."""
    with _lock:
        if not _pool or _pool[0][0] != os.getpid():
            threads = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="durablenb-codec")
            _pool[:] = [(os.getpid(), threads)]
        return _pool[0][1]

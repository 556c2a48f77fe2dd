"""SHA-256 and CRC-32 of a file while it is being written, in threads beside the writer.

Each hash reads the file behind the writer (mapped, in steps of a few MB) from the pages
the writes just filled, so the writer never waits for a hash and never has to keep its
buffers for one: on two cores, hashing a large value costs little more than writing it.
Both `hashlib` and `zlib.crc32` release the GIL on large buffers.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
import zlib
from collections.abc import Callable
from typing import Any

#: Bytes a hash reads at a time: a multiple of every platform's mapping granularity.
STEP = 4 << 20


class _Follower:
    """Folds *fold* over the bytes of file *fd* up to what `advance` published, in a thread."""

    def __init__(self, fd: int, fold: Callable[[Any], None], name: str) -> None:
        self.fd = os.dup(fd)  # its own descriptor: valid until the thread ends
        self.fold = fold
        self.cond = threading.Condition()
        self.end = 0
        self.closing = self.abandoned = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def advance(self, end: int) -> None:
        """The file now holds *end* bytes."""
        with self.cond:
            ready = end // STEP > self.end // STEP
            self.end = end
            if ready:
                self.cond.notify()

    def close(self, abandon: bool = False) -> None:
        """Wait until every published byte is folded (or, with *abandon*, stop at once);
        `error` then holds what the thread raised, if anything."""
        with self.cond:
            self.closing, self.abandoned = True, abandon
            self.cond.notify()
        self.thread.join()

    def _run(self) -> None:
        try:
            pos = 0
            while (end := self._next(pos)) is not None:
                with mmap.mmap(self.fd, end - pos, access=mmap.ACCESS_READ, offset=pos) as view:
                    self.fold(view)
                pos = end
        except BaseException as exc:  # reported by close()
            self.error = exc
        finally:
            os.close(self.fd)

    def _next(self, pos: int) -> int | None:
        """Where the next step from *pos* ends, once written; None when all is folded."""
        with self.cond:
            while not self.closing and self.end - pos < STEP:
                self.cond.wait()
            if self.abandoned or (self.closing and self.end <= pos):
                return None
            if self.closing and self.end - pos < STEP:
                return self.end
            return pos + STEP


class FileDigest:
    """SHA-256 and CRC-32 of file *fd* (open for reading) as a writer appends to it."""

    def __init__(self, fd: int) -> None:
        self._sha = hashlib.sha256()
        self._crc = 0
        self._followers = [
            _Follower(fd, self._sha.update, "durablenb-sha256"),
            _Follower(fd, self._fold_crc, "durablenb-crc32"),
        ]

    def _fold_crc(self, data: Any) -> None:
        self._crc = zlib.crc32(data, self._crc)

    def advance(self, end: int) -> None:
        """The file now holds *end* bytes."""
        for f in self._followers:
            f.advance(end)

    def result(self) -> tuple[Any, int]:
        """``(sha256 object, crc32)`` of all the bytes published, once hashed."""
        for f in self._followers:
            f.close()
        for f in self._followers:
            if f.error is not None:
                raise f.error
        return self._sha, self._crc

    def abandon(self) -> None:
        """Stop hashing (the write failed)."""
        for f in self._followers:
            f.close(abandon=True)

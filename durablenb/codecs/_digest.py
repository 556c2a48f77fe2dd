"""SHA-256 and CRC-32 of what a blob writer writes (`HashingWriter`, `written`).

Written to a file, the bytes are hashed in threads beside the writer: each hash reads the
file behind it (mapped, in steps of a few MB) from the pages the writes just filled, so the
writer never waits for a hash and never has to keep its buffers for one; on two cores,
hashing a large value costs little more than writing it. Both `hashlib` and the CRC-32
(`_crc`) release the GIL on large buffers.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from .. import _faults
from . import _crc

#: Bytes a hash reads at a time: a multiple of every platform's mapping granularity.
STEP = 4 << 20
#: Bytes written between early flushes of a file that is fsync'd at the end (`FileDigest`).
FLUSH_STEP = 16 << 20


class _Follower:
    """Folds *fold* over the bytes of file *fd* up to what `advance` published, in a thread."""

    def __init__(self, fd: int, fold: Callable[[Any], None], name: str, step: int = STEP) -> None:
        self.fd = os.dup(fd)  # its own descriptor: valid until the thread ends
        self.fold = fold
        self.step = step
        self.cond = threading.Condition()
        self.end = 0
        self.closing = self.abandoned = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def advance(self, end: int) -> None:
        """The file now holds *end* bytes."""
        with self.cond:
            ready = end // self.step > self.end // self.step
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
            while not self.closing and self.end - pos < self.step:
                self.cond.wait()
            if self.abandoned or (self.closing and self.end <= pos):
                return None
            if self.closing and self.end - pos < self.step:
                return self.end
            return pos + self.step


class FileDigest:
    """SHA-256 and CRC-32 of file *fd* (open for reading) as a writer appends to it.

    *also*: called in a third thread with every `STEP` bytes of the file in order (the last
    piece shorter), to send them on while they are written; the piece is valid during the
    call only. *flush*: another thread flushes the file to disk every `FLUSH_STEP` bytes
    written (until `flushed`), so that the final fsync has little left to wait for.
    """

    def __init__(self, fd: int, also: Callable[[Any], None] | None = None, flush: bool = False) -> None:
        self._sha = hashlib.sha256()
        self._crc = 0
        self._followers = [
            _Follower(fd, self._sha.update, "durablenb-sha256"),
            _Follower(fd, self._fold_crc, "durablenb-crc32"),
        ]
        if also is not None:
            self._followers.append(_Follower(fd, also, "durablenb-send"))
        self._flusher = None
        if flush:
            sync = getattr(os, "fdatasync", os.fsync)
            self._flusher = _Follower(fd, lambda _: sync(fd), "durablenb-flush", FLUSH_STEP)

    def _fold_crc(self, data: Any) -> None:
        self._crc = _crc.update(data, self._crc)

    def advance(self, end: int) -> None:
        """The file now holds *end* bytes."""
        for f in self._followers:
            f.advance(end)
        if self._flusher is not None:
            self._flusher.advance(end)

    def flushed(self) -> None:
        """Stop the early flushes (before the final fsync); raise what one raised."""
        if self._flusher is not None:
            self._flusher.close(abandon=True)
            error, self._flusher = self._flusher.error, None
            if error is not None:
                raise error

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
        for f in self._followers + ([self._flusher] if self._flusher else []):
            f.close(abandon=True)


class HashingWriter:
    """A binary file wrapper that hashes and counts what goes through it.

    With *follow*, the descriptor of the file *raw* writes to unbuffered (open for reading
    too), the SHA-256 and CRC-32 are computed by two threads reading the file behind the
    writes (*also* and *flush*: see `FileDigest`), and `finish` waits for them; otherwise
    in the writing thread.
    """

    def __init__(self, raw: BinaryIO, follow: int | None = None,
                 also: Callable[[Any], None] | None = None, flush: bool = False) -> None:  # fmt: skip
        self.raw = raw
        self.sha = hashlib.sha256()
        self.crc = 0
        self.size = 0
        self.closed = False
        self._half = False
        self._digest = FileDigest(follow, also, flush) if follow is not None else None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        if _faults.ACTIVE and not self._half and self.size >= 1 << 20:
            self._half = True
            _faults.point("blob.mid_write")
        rest = view
        while rest.nbytes:  # a raw file may take part of it (a full disk): write the rest
            n = self.raw.write(rest)
            if not n:
                raise OSError(28, "no space left on device (a write took no bytes)")
            rest = rest[n:]
        self.size += view.nbytes
        if self._digest is not None:
            self._digest.advance(self.size)
        else:
            self.sha.update(view)
            self.crc = _crc.update(view, self.crc)
        return view.nbytes

    def flushed(self) -> None:
        """Stop the early flushes (see `FileDigest.flushed`)."""
        if self._digest is not None:
            self._digest.flushed()

    def finish(self) -> None:
        """Wait for the hashes of everything written (`ref` and `crc` are final then)."""
        if self._digest is not None:
            self.sha, self.crc = self._digest.result()
            self._digest = None

    def abandon(self) -> None:
        """Stop hashing: the write failed."""
        if self._digest is not None:
            self._digest.abandon()
            self._digest = None

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()

    def close(self) -> None:
        """Mark closed; the underlying file stays open for the store to finish."""
        self.closed = True

    @property
    def ref(self) -> str:
        return self.sha.hexdigest()


def written(raw: Any, produce: Callable[[Any], None], durable: bool = False,
             also: Callable[[Any], None] | None = None) -> HashingWriter:  # fmt: skip
    """*raw* (an unbuffered file open for reading and writing) once *produce* wrote into it,
    hashed by threads that follow the writes; *durable*: flushed to disk as it is written
    and fsync'd at the end, while the hashes finish."""
    w = HashingWriter(raw, follow=raw.fileno(), also=also, flush=durable)
    try:
        produce(w)
        if durable:
            w.flushed()
            if _faults.ACTIVE:
                _faults.point("blob.before_commit")
            os.fsync(raw.fileno())
        w.finish()
    except BaseException:  # the threads never outlive the write, even interrupted
        w.abandon()
        raise
    return w

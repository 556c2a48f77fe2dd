"""CRC-32 (zlib's checksum), computed by ISA-L where it is installed, and on several
threads for large buffers.

ISA-L's CRC-32 (`isal`) is the same checksum as `zlib.crc32`, about five times as fast
(34 against 6.4 GB/s on one x86 core); without it, zlib's is used. Both let go of the GIL
on large buffers, so the parts of a buffer can be checked side by side; their checksums are
then joined as zlib's ``crc32_combine`` does (which Python's zlib does not expose): the
first part's CRC is advanced over as many zero bytes as the second part holds, by GF(2)
operators precomputed once per power of two.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ._workers import pool

try:
    from isal.isal_zlib import crc32 as _crc32
    from isal.isal_zlib import crc32_combine as _combine
except ImportError:  # pragma: no cover - a platform without ISA-L's wheel
    from zlib import crc32 as _crc32

    _combine = None  # type: ignore[assignment]

#: Buffers from this size are checked in parts, one per thread.
PARALLEL_FROM = 32 << 20
#: Parts are cut on multiples of this many bytes.
_ALIGN = 1 << 16

_ops: list[list[int]] = []
_lock = threading.Lock()


def _times(mat: list[int], vec: int) -> int:
    out, i = 0, 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _square(mat: list[int]) -> list[int]:
    return [_times(mat, mat[n]) for n in range(32)]


def _operators(bits: int) -> list[list[int]]:
    """``[k]``: the operator advancing a CRC over 2**k zero bytes, for every k < *bits*
    (made once, as far as asked)."""
    if len(_ops) < bits:
        with _lock:
            if not _ops:
                one_bit = [0xEDB88320] + [1 << n for n in range(31)]
                _ops.append(_square(_square(_square(one_bit))))  # 8 zero bits: one byte
            while len(_ops) < bits:
                _ops.append(_square(_ops[-1]))
    return _ops


def combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32 of A + B from ``crc32(A)``, ``crc32(B)`` and ``len(B)``."""
    if _combine is not None:
        return int(_combine(crc1, crc2, len2))
    return _combine_here(crc1, crc2, len2)


def _combine_here(crc1: int, crc2: int, len2: int) -> int:
    """`combine` without ISA-L: its operators are made once per process (2 ms)."""
    ops, k = _operators(len2.bit_length()), 0
    while len2:
        if len2 & 1:
            crc1 = _times(ops[k], crc1)
        len2 >>= 1
        k += 1
    return crc1 ^ crc2


def update(data: Any, crc: int = 0) -> int:
    """``zlib.crc32(data, crc)``: the CRC-32 of what *crc* was the CRC-32 of, followed by
    *data* (in the calling thread)."""
    return _crc32(data, crc)


def crc32(data: Any) -> int:
    """``zlib.crc32(data)``, on up to as many threads as the machine has cores."""
    view = memoryview(data).cast("B")
    n = len(view)
    parts = min(os.cpu_count() or 1, 4)
    if n < PARALLEL_FROM or parts < 2:
        return _crc32(view)
    size = -(-n // parts // _ALIGN) * _ALIGN
    bounds = [(i, min(i + size, n)) for i in range(0, n, size)]
    rest = [pool().submit(_crc32, view[a:b]) for a, b in bounds[1:]]
    crc = _crc32(view[bounds[0][0] : bounds[0][1]])
    for (a, b), part in zip(bounds[1:], rest, strict=True):
        crc = combine(crc, part.result(), b - a)
    return crc

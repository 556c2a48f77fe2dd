"""CRC-32 of large buffers checked on several threads equals zlib's, and a damaged byte in
any part of a large blob is still caught."""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest

from durablenb import codecs
from durablenb.codecs import _crc
from durablenb.errors import CorruptRecordError
from durablenb.store.blobs import FolderBlobs


@pytest.mark.parametrize("size", [0, 1, 65_535, _crc.PARALLEL_FROM - 1, _crc.PARALLEL_FROM,
                                  _crc.PARALLEL_FROM + 12_345, 3 * _crc.PARALLEL_FROM + 7])  # fmt: skip
def test_large_buffers_checked_in_parts_give_zlibs_crc(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    assert _crc.crc32(data) == zlib.crc32(data) == _crc.crc32(memoryview(data.tobytes()))


def test_the_checksum_is_zlibs_and_computed_by_isa_l():
    """Every CRC-32 on record was zlib's: the faster one must give the same numbers, chained too."""
    assert _crc._crc32.__module__.startswith("isal")  # a dependency: its absence is a slow install
    rng = random.Random(7)
    for _ in range(300):
        a, b = os.urandom(rng.randint(0, 70_000)), os.urandom(rng.randint(0, 5000))
        assert _crc.update(b, _crc.update(a)) == zlib.crc32(a + b) == _crc.update(a + b)
    assert _crc.update(memoryview(b"durablenb")[2:]) == zlib.crc32(b"rablenb")


def test_combined_checksums_equal_the_checksum_of_the_whole():
    rng = random.Random(3)
    for _ in range(300):
        a, b = os.urandom(rng.randint(0, 5000)), os.urandom(rng.randint(0, 5000))
        whole = zlib.crc32(a + b)
        assert _crc.combine(zlib.crc32(a), zlib.crc32(b), len(b)) == whole
        assert _crc._combine_here(zlib.crc32(a), zlib.crc32(b), len(b)) == whole


@pytest.mark.parametrize("where", [0.1, 0.5, 0.99])
def test_a_damaged_byte_anywhere_in_a_large_blob_is_caught(tmp_path, where):
    blobs = FolderBlobs(tmp_path / "blobs")
    value = np.arange((_crc.PARALLEL_FROM * 2) // 8, dtype=np.float64)
    ref, size, crc = blobs.put(lambda f: codecs.write(value, codecs.NPY, f, None))
    path = blobs._path(ref)
    with open(path, "r+b") as f:
        f.seek(int(size * where))
        byte = f.read(1)
        f.seek(int(size * where))
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(CorruptRecordError, match="fails its checksum"):
        blobs.get(ref, crc=crc)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_checks_large_buffers_too():
    data = np.random.default_rng(9).integers(0, 256, _crc.PARALLEL_FROM + 99, dtype=np.uint8)
    expected = _crc.crc32(data)  # the parent's threads exist now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if _crc.crc32(data) == expected else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_without_isa_l_zlibs_checksum_is_used_and_gives_the_same_numbers():
    """A platform without ISA-L's wheel falls back to zlib, parts joined in Python."""
    import subprocess
    import sys

    code = (
        "import sys, zlib, numpy as np; sys.modules['isal'] = None\n"
        "from durablenb.codecs import _crc\n"
        "assert _crc._crc32 is zlib.crc32 and _crc._combine is None\n"
        f"data = np.random.default_rng(5).integers(0, 256, {_crc.PARALLEL_FROM * 2 + 77}, dtype=np.uint8)\n"
        "assert _crc.crc32(data) == zlib.crc32(data)\n"
        "assert _crc.update(b'ab', _crc.update(b'x')) == zlib.crc32(b'xab')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]

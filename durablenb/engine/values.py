"""Recorded values: small ones inline in the record, large ones as blobs beside it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from .. import codecs
from ..store import Store

#: Values whose encoding reaches this many bytes go to the blob store.
BLOB_THRESHOLD = int(os.environ.get("DURABLENB_BLOB_THRESHOLD", 1 << 20))


@dataclass(frozen=True)
class Stored:
    """An encoded value: inline *data*, or the SHA-256 *blob* it lives in; CRC-32 of either."""

    codec: str
    data: bytes | None
    checksum: int | None
    size: int
    blob: str | None = None


def encode_value(store: Store, value: Any) -> Stored:
    """Encode *value* for a record; large columnar values stream straight into a blob.

    Raises `codecs.EncodingError` when no codec can encode it.
    """
    codec = codecs.choose(value)
    blobs = store.blobs
    estimate = codecs.estimate_size(value) if codec in (codecs.ARROW, codecs.NPY) else None
    if estimate is not None and estimate >= BLOB_THRESHOLD:
        used: list[str] = []
        ref, size, crc = blobs.put(lambda f: used.append(codecs.write(value, codec, f, blobs.compression)))
        return Stored(used[0], None, crc, size, ref)
    enc = codecs.encode(value, codec)
    if enc.size >= BLOB_THRESHOLD:
        if blobs.compression:
            used = []
            ref, size, crc = blobs.put(
                lambda f: used.append(_compressed(enc, f, blobs.compression))  # type: ignore[arg-type]
            )
            return Stored(used[0], None, crc, size, ref)
        ref, size, crc = blobs.put_bytes(enc.data)
        return Stored(enc.codec, None, crc, size, ref)
    return Stored(enc.codec, enc.data, enc.checksum, enc.size)


def _compressed(enc: codecs.Encoded, sink: Any, compression: str) -> str:
    import pyarrow as pa

    with pa.CompressedOutputStream(pa.PythonFile(sink, mode="w"), compression) as out:
        out.write(enc.data)
    codec, sep, signature = enc.codec.partition(";sig=")
    return f"{codec}+{compression}{sep}{signature}"


def decode_value(
    store: Store, codec: str, data: Any, checksum: int | None, blob: str | None, what: str
) -> Any:
    """The value a record holds, read from its blob when it has one."""
    if blob:
        return codecs.decode(codec, store.blobs.get(blob, what, checksum), None, what=what)
    return codecs.decode(codec, data, checksum, what=what)

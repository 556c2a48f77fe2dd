"""Recorded values: small ones inline in the record, large ones as blobs beside it.

Every value is recorded at a *place* — ``(lineage, position)`` of a step, or
``(lineage, "inputs")`` and so on — which a signature binds it to when a secret is set.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .. import codecs
from ..codecs import Seal
from ..codecs._signing import binding
from ..store import Store
from ._tracebacks import user_traceback

Place = tuple[object, ...]

_SCALARS = frozenset({int, str, bool, float, type(None)})


@dataclass(frozen=True)
class Stored:
    """An encoded value: inline *data*, or the SHA-256 *blob* it lives in; CRC-32 of either."""

    codec: str
    data: bytes | None
    checksum: int | None
    size: int
    blob: str | None = None


@dataclass(frozen=True)
class Deferred:
    """Inputs too large to encode before it is known that a new run needs them: *encode*
    produces their `Stored` form (a blob written) only then."""

    encode: Callable[[], Stored]


def estimated_size(args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """A cheap lower bound of the encoded size of *args* and *kwargs* (their frames, arrays,
    strings and bytes at the top level)."""
    total = 0
    for value in (*args, *kwargs.values()):
        if isinstance(value, (bytes, bytearray, str)):
            total += len(value)
        else:
            total += codecs.estimate_size(value) or 0
    return total


def seal(store: Store, place: Place) -> Seal | None:
    """The seal of a record at *place*, or None when no secret is set."""
    key = store.settings.secret
    return None if key is None else Seal(key, binding(*place))


def encode_value(store: Store, value: Any, place: Place, owner: str | None = None,
                 refs: Mapping[int, str] | None = None) -> Stored:  # fmt: skip
    """Encode *value* for a record at *place*; large values stream straight into a blob,
    held by workflow *owner* (so that it stays as long as that workflow's records).
    *refs*: objects a pickle records as references to names (`codecs.encode`).

    Raises `codecs.EncodingError` when no codec can encode it, `StorageError` when the blob
    store cannot take it.
    """
    if type(value) in _SCALARS:  # the common small case
        enc = codecs.encode_scalar(value)
        if enc is not None and len(enc.data) < store.settings.blob_threshold:
            return Stored(enc.codec, enc.data, enc.checksum, len(enc.data))
    codec = codecs.choose(value)
    blobs = store.blobs
    threshold = store.settings.blob_threshold
    estimate = codecs.estimate_size(value) if codec in (codecs.ARROW, codecs.NPY) else None
    if estimate is not None and estimate >= threshold:
        used: list[str] = []
        ref, size, crc = blobs.put(lambda f: used.append(codecs.write(value, codec, f, blobs.compression)),
                                   owner)  # fmt: skip
        return Stored(used[0], None, crc, size, ref)
    enc = codecs.encode(value, codec, seal(store, place), refs)
    if enc.size >= threshold:
        compression = blobs.compression
        if compression:
            used = []
            ref, size, crc = blobs.put(lambda f: used.append(_compressed(enc, f, compression)), owner)
            return Stored(used[0], None, crc, size, ref)
        ref, size, crc = blobs.put_bytes(enc.data, owner)
        return Stored(enc.codec, None, crc, size, ref)
    return Stored(enc.codec, enc.data, enc.checksum, enc.size)


def _compressed(enc: codecs.Encoded, sink: Any, compression: str) -> str:
    import pyarrow as pa

    with pa.CompressedOutputStream(pa.PythonFile(sink, mode="w"), compression) as out:
        out.write(enc.data)
    codec, sep, signature = enc.codec.partition(";sig")
    return f"{codec}+{compression}{sep}{signature}"


def decode_value(
    store: Store, codec: str, data: Any, checksum: int | None, blob: str | None, what: str,
    place: Place, refs: Mapping[str, Any] | None = None,
) -> Any:  # fmt: skip
    """The value a record at *place* holds, read from its blob when it has one; *refs*: the
    objects by name a pickle refers to (`codecs.decode`)."""
    s = seal(store, place)
    if blob:
        return codecs.decode(codec, store.blobs.get(blob, what, checksum), None, what=what, seal=s, refs=refs)
    return codecs.decode(codec, data, checksum, what=what, seal=s, refs=refs)


def encode_error(store: Store, exc: BaseException, place: Place) -> codecs.EncodedError:
    """Record *exc* at *place*, with its traceback as the user's code saw it."""
    tb = user_traceback(exc.__traceback__, exc)
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return codecs.encode_exception(exc, seal(store, place), text)


def decode_error(
    store: Store, data: Any, type_name: str | None, message: str | None, traceback_text: str | None,
    place: Place, what: str = "error",
) -> BaseException:  # fmt: skip
    """The exception recorded at *place* (`CorruptRecordError` if its signature fails)."""
    return codecs.decode_exception(data, type_name, message, traceback_text, seal(store, place), what)

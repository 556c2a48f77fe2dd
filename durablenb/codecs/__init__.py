"""Values to bytes and back.

Every recorded value is an `Encoded`: the codec's name, the bytes and a CRC-32 checksum.
Small plain data (``None``, bools, numbers, strings and lists/dicts of them) is JSON, so it
stays readable from SQL; everything else is pickle protocol 5, with cloudpickle for what
plain pickle refuses (lambdas, closures, functions defined in a notebook).
"""

from __future__ import annotations

import json
import math
import pickle
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptRecordError, RecordedError
from . import _crc, _signing
from ._signing import Seal

__all__ = [
    "Encoded",
    "EncodingError",
    "encode",
    "decode",
    "checksum",
    "encode_exception",
    "decode_exception",
    "JSON",
    "PICKLE",
    "CLOUDPICKLE",
    "ARROW",
    "NPY",
    "choose",
    "write",
    "estimate_size",
    "Seal",
]

JSON = "json"
PICKLE = "pickle"
CLOUDPICKLE = "cloudpickle"
ARROW = "arrow"  # Arrow IPC file: pandas DataFrame/Series/Index, pyarrow and polars tables
NPY = "npy"  # numpy's .npy format: numeric, bool, datetime and string arrays

#: JSON is used only for values with at most this many scalars; larger ones pickle faster.
JSON_MAX_ITEMS = 1000

_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_JSON_STR = json.encoder.encode_basestring  # what _JSON.encode does with a str


class EncodingError(TypeError):
    """The value cannot be encoded by any codec."""


@dataclass(frozen=True)
class Encoded:
    """An encoded value: *codec* name, *data* bytes and their CRC-32 *checksum*."""

    codec: str
    data: bytes
    checksum: int

    @property
    def size(self) -> int:
        return len(self.data)


def checksum(data: bytes) -> int:
    """CRC-32 of *data*."""
    return _crc.update(data)


def _json_safe(value: Any, budget: list[int]) -> bool:
    budget[0] -= 1
    if budget[0] < 0:
        return False
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return True
    if t is float:
        return math.isfinite(value)
    if t is list:
        return all(_json_safe(v, budget) for v in value)
    if t is dict:
        return all(type(k) is str and _json_safe(v, budget) for k, v in value.items())
    return False


def encode_scalar(value: Any) -> Encoded | None:
    """The JSON of a str, int, float, bool or None, as `encode` makes it but without its
    general machinery (a `dnb.map` records thousands of these a second); None for anything
    else, a float that JSON cannot hold, or an int too long to print."""
    t = type(value)
    try:
        if t is int:
            text = int.__repr__(value)
        elif t is str:
            text = _JSON_STR(value)
        elif t is float and math.isfinite(value):
            text = float.__repr__(value)
        elif t is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        else:
            return None
    except ValueError:  # an int over the interpreter's digit limit
        return None
    data = text.encode()
    return Encoded(JSON, data, _crc.update(data))


def choose(value: Any) -> str:
    """The codec for *value*: json, arrow, npy, or pickle (cloudpickle decided on encoding)."""
    if _json_safe(value, [JSON_MAX_ITEMS]):
        return JSON
    mod = type(value).__module__.split(".", 1)[0]
    if mod in ("pandas", "pyarrow", "polars", "numpy"):
        from . import _columnar

        return _columnar.choose(value) or PICKLE
    return PICKLE


def estimate_size(value: Any) -> int | None:
    """A cheap estimate of the encoded size of a columnar value, else None."""
    mod = type(value).__module__.split(".", 1)[0]
    if mod in ("pandas", "pyarrow", "polars", "numpy"):
        from . import _columnar

        return _columnar.estimate_size(value)
    return None


def write(value: Any, codec: str, sink: Any, compression: str | None = None) -> str:
    """Stream *value* into the binary file object *sink*; returns the codec recorded.

    *codec* is what `choose` returned; *compression* (``"zstd"``, ``"lz4"``) compresses the
    stream. Raises `EncodingError` when the value cannot be encoded.
    """
    from . import _columnar

    return _columnar.write(value, codec, sink, compression)


def encode(value: Any, codec: str | None = None, seal: Seal | None = None,
           refs: Mapping[int, str] | None = None) -> Encoded:  # fmt: skip
    """Encode *value* in memory with the best codec for its type; `EncodingError` if none can.

    *seal*: signs a pickle for the place it is recorded at (when a secret is set). *refs*:
    objects (by ``id``) a pickle records as a reference to a name instead of by value,
    resolved by `decode`'s *refs* (objects recorded elsewhere that it shares).
    """
    codec = codec or choose(value)
    if codec == JSON:
        data = _JSON.encode(value).encode()
        return Encoded(JSON, data, _crc.update(data))
    if codec in (ARROW, NPY):
        import io

        sink = io.BytesIO()
        used = write(value, codec, sink)
        data = sink.getvalue()
        return Encoded(used, data, _crc.update(data))
    codec, data = pickled(value, refs)
    if seal is not None:
        codec = f"{codec}{_signing.SUFFIX}{seal.tag(codec, data)}"
    return Encoded(codec, data, _crc.update(data))


def pickled(value: Any, refs: Mapping[int, str] | None = None) -> tuple[str, bytes]:
    """``(codec, bytes)``: pickle protocol 5, or cloudpickle for what pickle refuses (never
    an open file: cloudpickle would record what it holds, and hand back a `StringIO`).
    *refs*: see `encode`."""
    import io

    try:
        if not refs:
            return PICKLE, pickle.dumps(value, protocol=5)
        out = io.BytesIO()
        _referring(pickle.Pickler)(out, refs).dump(value)
        return PICKLE, out.getvalue()
    except Exception as first:
        try:
            out = io.BytesIO()
            pickler = _refusing_pickler()
            (_referring(pickler)(out, refs) if refs else pickler(out, protocol=5)).dump(value)
            return CLOUDPICKLE, out.getvalue()
        except Exception as exc:
            raise EncodingError(
                f"cannot encode a value of type {type(value).__module__}."
                f"{type(value).__qualname__}: {exc or first}"
            ) from exc


def _referring(base: Any) -> Any:
    """*base* (a pickler class), pickling the objects of its *refs* as references."""

    class Referring(base):
        def __init__(self, file: Any, refs: Mapping[int, str]) -> None:
            super().__init__(file, protocol=5)
            self._refs = refs

        def persistent_id(self, obj: Any) -> str | None:
            return self._refs.get(id(obj))

    return Referring


class _Resolving(pickle.Unpickler):
    """An unpickler that resolves the references `_referring` wrote, from *refs*."""

    def __init__(self, data: Any, refs: Mapping[str, Any]) -> None:
        import io

        super().__init__(io.BytesIO(data))
        self._refs = refs

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self._refs[pid]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {pid!r}, which was not restored") from None


_REFUSING: Any = None


def _refusing_pickler() -> Any:
    """A cloudpickle pickler that refuses open files and sockets at any depth."""
    global _REFUSING
    if _REFUSING is None:
        import io
        import socket

        import cloudpickle

        memory = (io.BytesIO, io.StringIO)

        class Refusing(cloudpickle.Pickler):
            def reducer_override(self, obj: Any) -> Any:
                if isinstance(obj, (io.IOBase, socket.socket)) and not isinstance(obj, memory):
                    raise TypeError(
                        f"{type(obj).__module__}.{type(obj).__qualname__} is an open file or "
                        "socket, live state of this process: record its contents or its path"
                    )
                return super().reducer_override(obj)

        _REFUSING = Refusing
    return _REFUSING


def decode(
    codec: str, data: Any, expected_checksum: int | None = None, *, what: str = "value",
    seal: Seal | None = None, refs: Mapping[str, Any] | None = None,
) -> Any:  # fmt: skip
    """Decode *data* (bytes or a buffer) written by `encode` or `write`.

    `CorruptRecordError` when it fails its checksum or cannot be decoded, and, with a *seal*
    (a secret is set), when a pickle is not signed for this place. *refs*: the objects, by
    name, that a pickle written with `encode`'s *refs* refers to.
    """
    if data is None:
        raise CorruptRecordError(f"the recorded {what} has no data")
    if expected_checksum is not None and _crc.crc32(data) != expected_checksum:
        raise CorruptRecordError(
            f"the recorded {what} fails its checksum ({len(memoryview(data))} bytes, codec "
            f"{codec}); the record was altered or damaged"
        )
    codec, _, signature = codec.partition(_signing.SUFFIX)
    old_signed = _signing.OLD_SUFFIX in codec
    codec = codec.partition(_signing.OLD_SUFFIX)[0]
    base, _, compression = codec.partition("+")
    try:
        if compression:
            from . import _columnar

            data = _columnar.decompress(data, compression)
    except Exception as exc:
        raise CorruptRecordError(f"the recorded {what} cannot be decompressed ({codec}): {exc}") from exc
    if base in (PICKLE, CLOUDPICKLE) and seal is not None:
        _verify(seal, base, data, signature, old_signed, what)
    try:
        if base == JSON:
            return json.loads(bytes(data))
        if base in (PICKLE, CLOUDPICKLE):
            return _Resolving(data, refs).load() if refs else pickle.loads(data)
        if base in (ARROW, NPY):
            from . import _columnar

            return _columnar.decode(base, data)
    except (ModuleNotFoundError, AttributeError) as exc:
        # The value refers to a class or function this process does not define (yet).
        raise CorruptRecordError(
            f"the recorded {what} refers to code that is not defined in this process: {exc}. "
            "Run the cell or import the module that defines it, then rerun."
        ) from exc
    except Exception as exc:
        raise CorruptRecordError(f"the recorded {what} cannot be decoded ({codec}): {exc}") from exc
    raise CorruptRecordError(f"the recorded {what} uses an unknown codec {codec!r}")


def _verify(seal: Seal, kind: str, data: Any, signature: str, old: bool, what: str) -> None:
    if not signature:
        why = ("signed by an earlier durablenb without its place; rerun the step to record it "
               "again") if old else "an unsigned pickle (written without the secret, or by someone else)"
        raise CorruptRecordError(f"the recorded {what} is {why}, and DURABLENB_SECRET is set: refused")
    if not seal.valid(kind, data, signature):
        raise CorruptRecordError(
            f"the recorded {what} fails its signature: refused (altered, copied from another "
            "step or workflow, or signed with another DURABLENB_SECRET)"
        )


@dataclass(frozen=True)
class EncodedError:
    """A recorded exception: pickled instance (when it round-trips) plus readable text."""

    data: bytes | None
    type_name: str
    message: str
    traceback_text: str


def _type_name(exc: BaseException) -> str:
    t = type(exc)
    return t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


_EXC_STATE = "durablenb.exception-state"


def _rebuild_exception(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def _try_pickle(obj: Any) -> bytes | None:
    for dumps in _dumpers():
        try:
            blob = dumps(obj)
            loaded = pickle.loads(blob)
            if isinstance(loaded, tuple) and loaded and loaded[0] == _EXC_STATE:
                _rebuild_exception(*loaded[1:])
            return blob
        except Exception:
            continue
    return None


def _dumpers() -> list[Any]:
    out: list[Any] = [lambda o: pickle.dumps(o, protocol=5)]
    try:
        import cloudpickle

        out.append(lambda o: cloudpickle.dumps(o, protocol=5))
    except ImportError:  # pragma: no cover
        pass
    return out


def encode_exception(
    exc: BaseException, seal: Seal | None = None, tb_text: str | None = None
) -> EncodedError:
    """Record *exc*: pickled if it can be rebuilt from the bytes, always with type and text.

    Exceptions whose ``__init__`` does not take their ``args`` back (a common pattern) are
    rebuilt from their class, ``args`` and attributes without calling ``__init__``.
    *tb_text*: the traceback to record (default: *exc*'s, formatted).
    """
    tb = tb_text if tb_text is not None else "".join(
        traceback.format_exception(type(exc), exc, exc.__traceback__))
    data = _try_pickle(exc)
    if data is None:
        try:
            state = {k: v for k, v in vars(exc).items() if not k.startswith("__")}
        except TypeError:
            state = {}
        data = _try_pickle((_EXC_STATE, type(exc), tuple(exc.args), state))
    if data is not None and seal is not None:
        data = _signing.MAGIC + bytes.fromhex(seal.tag("exception", data)) + data
    return EncodedError(data, _type_name(exc), str(exc), tb)


def decode_exception(
    data: bytes | None, type_name: str | None, message: str | None,
    traceback_text: str | None = None, seal: Seal | None = None, what: str = "error",
) -> BaseException:  # fmt: skip
    """Rebuild a recorded exception, or a `RecordedError` naming its type when that fails.

    With a *seal* (a secret is set) an unsigned, altered or misplaced pickle is never loaded:
    `CorruptRecordError` is raised instead.
    """
    if data is not None:
        data = _unseal_exception(bytes(data), seal, what)
        try:
            exc = pickle.loads(data)
            if isinstance(exc, tuple) and exc and exc[0] == _EXC_STATE:
                exc = _rebuild_exception(*exc[1:])
            if isinstance(exc, BaseException):
                return exc
        except Exception:
            pass
    return RecordedError(type_name or "Exception", message or "", traceback_text)


def _unseal_exception(data: bytes, seal: Seal | None, what: str) -> bytes:
    for magic in (_signing.MAGIC, _signing.OLD_MAGIC):
        if data.startswith(magic):
            n = len(magic)
            signature, payload = data[n : n + 32].hex(), data[n + 32 :]
            if seal is not None:
                _verify(seal, "exception", payload, signature if magic == _signing.MAGIC else "",
                        magic == _signing.OLD_MAGIC, f"{what}")  # fmt: skip
            return payload
    if seal is not None:
        _verify(seal, "exception", data, "", False, what)
    return data

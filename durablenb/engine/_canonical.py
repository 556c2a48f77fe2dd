"""Digests of workflow arguments that are equal in every process and under any hash seed.

Plain data (numbers, strings, containers, namedtuples, dataclasses, dates, paths…) gets a
type-tagged encoding of its own, equal on every Python 3.10+.  Anything else is hashed by
joblib's pickling hasher, with set, frozenset and dict contents put in a seed-independent
order; joblib is imported only then.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import pathlib
import pickle
import reprlib
import struct
import sys
import types
import uuid
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import Any

__all__ = ["NotCanonical", "digest"]

_TAG = b"durablenb-args-v2"
_MAX_DEPTH = 200
_pack = struct.Struct(">Q").pack
_ARRAY_MODULES = frozenset({"numpy", "pandas", "pyarrow", "polars"})
_Out = list[bytes]


class NotCanonical(TypeError):
    """An argument cannot be digested the same way in every process."""

    def __init__(self, path: str, type_name: str, reason: str) -> None:
        self.path = path
        self.type_name = type_name
        self.reason = reason
        super().__init__(f"{path} cannot be digested the same way in every process: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.path, self.type_name, self.reason)


class _Fail(Exception):
    """A failure deep inside the walk; containers add their path segment on the way out."""

    def __init__(self, type_name: str, reason: str) -> None:
        super().__init__(reason)
        self.type_name, self.reason = type_name, reason
        self.segments: list[str] = []


def _name(t: type) -> str:
    module = getattr(t, "__module__", None)
    return t.__qualname__ if module in (None, "builtins") else f"{module}.{t.__qualname__}"


def digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """32 hex characters identifying *args* and *kwargs* by value; `NotCanonical` if some
    argument has no such identity."""
    out = [_TAG]
    seen: set[int] = set()
    try:
        _enc_seq(args if type(args) is tuple else tuple(args), out, seen, 0)
    except _Fail as fail:
        raise _error(fail, "args") from fail.__cause__
    try:
        _enc_dict(kwargs if type(kwargs) is dict else dict(kwargs), out, seen, 0)
    except _Fail as fail:
        raise _error(fail, "kwargs") from fail.__cause__
    return hashlib.blake2b(b"".join(out), digest_size=16).hexdigest()


def _error(fail: _Fail, label: str) -> NotCanonical:
    fail.segments.append(label)
    return NotCanonical("".join(reversed(fail.segments)), fail.type_name, fail.reason)


# -- plain data -------------------------------------------------------------------------------


def _enc(obj: Any, out: _Out, seen: set[int], depth: int) -> None:
    enc = _EXACT.get(type(obj))
    if enc is not None:
        enc(obj, out, seen, depth)
    else:
        _enc_other(obj, out, seen, depth)


def _sub(obj: Any, seen: set[int], depth: int) -> bytes:
    """The 16-byte digest of one value, to order set elements and dict keys."""
    out: _Out = []
    _enc(obj, out, seen, depth)
    return hashlib.blake2b(b"".join(out), digest_size=16).digest()


def _enter(obj: Any, seen: set[int], depth: int) -> int:
    """Check depth and cycles before walking into a container; its id."""
    key, name = id(obj), _name(type(obj))
    if depth > _MAX_DEPTH:
        raise _Fail(name, f"a {name} nests more than {_MAX_DEPTH} levels deep")
    if key in seen:
        raise _Fail(name, f"a {name} contains itself (a reference cycle)")
    seen.add(key)
    return key


def _text(out: _Out, tag: bytes, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    out += (tag, _pack(len(data)), data)


def _enc_int(obj: int, out: _Out, seen: set[int], depth: int) -> None:
    size = (obj.bit_length() + 8) >> 3
    out += (b"i", _pack(size), obj.to_bytes(size, "big", signed=True))


def _enc_seq(obj: list[Any] | tuple[Any, ...], out: _Out, seen: set[int], depth: int) -> None:
    key = id(obj)
    if depth > _MAX_DEPTH or key in seen:
        _enter(obj, seen, depth)
    seen.add(key)
    out += (b"l" if type(obj) is list else b"t", _pack(len(obj)))
    item = None
    try:
        for item in obj:
            enc = _EXACT.get(type(item))
            if enc is not None:
                enc(item, out, seen, depth + 1)
            else:
                _enc_other(item, out, seen, depth + 1)
    except _Fail as fail:
        fail.segments.append(f"[{next(i for i, x in enumerate(obj) if x is item)}]")
        raise
    finally:
        seen.discard(key)


def _enc_dict(obj: dict[Any, Any], out: _Out, seen: set[int], depth: int) -> None:
    if not obj:
        out.append(b"d" + _pack(0))
        return
    key = _enter(obj, seen, depth)
    try:
        items = sorted(((_keyed(k, seen, depth), k, v) for k, v in obj.items()), key=itemgetter(0))
        out += (b"d", _pack(len(items)))
        for kd, k, v in items:
            out.append(kd)
            try:
                _enc(v, out, seen, depth + 1)
            except _Fail as fail:
                fail.segments.append(f"[{reprlib.repr(k)}]")
                raise
    finally:
        seen.discard(key)


def _keyed(obj: Any, seen: set[int], depth: int, fmt: str = "<key {}>") -> bytes:
    try:
        return _sub(obj, seen, depth + 1)
    except _Fail as fail:
        fail.segments.append(fmt.format(reprlib.repr(obj)))
        raise


def _enc_set(obj: set[Any] | frozenset[Any], out: _Out, seen: set[int], depth: int) -> None:
    if depth > _MAX_DEPTH:
        _enter(obj, seen, depth)
    digests = sorted(_keyed(x, seen, depth, "{{{}}}") for x in obj)
    out += (b"S" if type(obj) is set else b"Z", _pack(len(digests)), *digests)


def _enc_fields(tag: bytes, obj: Any, names: Iterable[str], out: _Out, seen: set[int], depth: int) -> None:
    """An object as its class name and its (field name, value) pairs."""
    key = _enter(obj, seen, depth)
    try:
        names = tuple(names)
        _text(out, tag, _name(type(obj)))
        out.append(_pack(len(names)))
        for name in names:
            _text(out, b"s", name)
            try:
                _enc(getattr(obj, name), out, seen, depth + 1)
            except _Fail as fail:
                fail.segments.append(f".{name}")
                raise
    finally:
        seen.discard(key)


_EXACT: dict[type, Callable[[Any, _Out, set[int], int], None]] = {
    type(None): lambda o, out, s, d: out.append(b"N"),
    bool: lambda o, out, s, d: out.append(b"T" if o else b"F"),
    int: _enc_int,
    float: lambda o, out, s, d: out.append(b"f" + o.hex().encode() + b";"),
    str: lambda o, out, s, d: _text(out, b"s", o),
    bytes: lambda o, out, s, d: out.extend((b"b", _pack(len(o)), o)),
    bytearray: lambda o, out, s, d: out.extend((b"b", _pack(len(o)), bytes(o))),
    list: _enc_seq,
    tuple: _enc_seq,
    dict: _enc_dict,
    set: _enc_set,
    frozenset: _enc_set,
    complex: lambda o, out, s, d: out.append(b"c" + f"{o.real.hex()},{o.imag.hex()};".encode()),
    range: lambda o, out, s, d: _text(out, b"r", f"{o.start},{o.stop},{o.step}"),
}


def _scalar_text(obj: Any) -> str | None:
    """The text identifying a date, time, timedelta, decimal or UUID; None for other types."""
    if isinstance(obj, (_dt.datetime, _dt.time)):
        tz = obj.tzinfo
        return f"{obj.isoformat()}|{obj.fold}|{'' if tz is None else f'{_name(type(tz))}:{tz}'}"
    if isinstance(obj, _dt.date):
        return obj.isoformat()
    if isinstance(obj, _dt.timedelta):
        return f"{obj.days},{obj.seconds},{obj.microseconds}"
    return str(obj) if isinstance(obj, (decimal.Decimal, uuid.UUID)) else None


def _enc_other(obj: Any, out: _Out, seen: set[int], depth: int) -> None:
    t = type(obj)
    if isinstance(obj, enum.Enum):
        _text(out, b"e", f"{_name(t)}.{obj.name}")
    elif isinstance(obj, tuple) and isinstance(getattr(t, "_fields", None), tuple):
        _enc_fields(b"n", obj, t._fields, out, seen, depth)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _enc_fields(b"D", obj, (f.name for f in dataclasses.fields(obj)), out, seen, depth)
    elif isinstance(obj, pathlib.PurePath):  # pathlib's module differs between versions
        _text(out, b"w" if isinstance(obj, pathlib.PureWindowsPath) else b"p", str(obj))
    else:
        text = _scalar_text(obj)
        if text is not None:
            _text(out, b"v", f"{_name(t)}|{text}")
        else:
            out += (b"j", _joblib_digest(obj))


# -- everything else: joblib ------------------------------------------------------------------

_HASHERS: dict[bool, Any] = {}


def _not_by_name(fn: Any) -> str | None:
    """Why a function cannot be identified by its module and name, or None if it can."""
    module = getattr(fn, "__module__", None) or "__main__"
    qualname = getattr(fn, "__qualname__", "")
    if "<lambda>" in qualname or "<locals>" in qualname:
        return f"function {qualname} (a lambda or a local function) has no importable name"
    if module in ("__main__", "__mp_main__") or module.startswith("__ipython"):
        return (f"function {qualname} is defined in __main__ (a notebook or a script): "
                "another process may not have it")
    return None


def _save(self: Any, obj: Any) -> None:
    if isinstance(obj, types.FunctionType):
        reason = _not_by_name(obj)
        if reason is not None:
            raise _Fail(_name(type(obj)), reason)
    if isinstance(obj, (set, frozenset)) and type(obj) not in (set, frozenset):
        self.save((type(obj), set(obj), getattr(obj, "__dict__", None)))
        return
    try:
        self._base_save(obj)
    except Exception as exc:
        if not isinstance(exc, _Fail) and not hasattr(exc, "_dnb_offender"):
            exc._dnb_offender = _name(type(obj))  # type: ignore[attr-defined]
        raise


def _save_set(self: Any, obj: set[Any] | frozenset[Any]) -> None:
    digests = sorted(_sub(x, set(), 0) for x in obj)
    self.save(("durablenb:" + type(obj).__name__, tuple(digests)))


def _batch_setitems(self: Any, items: Any, *args: Any) -> None:
    pairs = sorted(((_sub(k, set(), 0), v) for k, v in items), key=itemgetter(0))
    pickle._Pickler._batch_setitems(self, iter(pairs), *args)  # type: ignore[attr-defined]


def _hasher(with_numpy: bool) -> Any:
    """A joblib hasher that orders sets and dicts by the digest of each element or key."""
    cls = _HASHERS.get(with_numpy)
    if cls is None:
        from joblib import hashing

        base: Any = hashing.NumpyHasher if with_numpy else hashing.Hasher
        dispatch = dict(base.dispatch)
        dispatch[set] = dispatch[frozenset] = _save_set
        members = {"dispatch": dispatch, "save": _save, "_base_save": base.save,
                   "_batch_setitems": _batch_setitems}  # fmt: skip
        cls = _HASHERS[with_numpy] = type("CanonicalHasher", (base,), members)
    hasher = cls()
    hasher._hash = hashlib.blake2b(digest_size=16)
    return hasher


def _hash_once(obj: Any) -> bytes:
    name = _name(type(obj))
    try:
        hasher = _hasher("numpy" in sys.modules)  # no ndarray can exist before numpy is imported
    except ImportError as exc:
        raise _Fail(name, f"digesting a {name} needs joblib ({exc})")
    try:
        hasher.hash(obj, return_digest=False)
    except _Fail:
        raise
    except Exception as exc:
        offender = getattr(exc, "_dnb_offender", name)
        detail = f"{type(exc).__name__}: {exc.args[0] if exc.args else exc}"
        if offender == name:
            reason = f"a {name} cannot be pickled ({detail})"
        else:
            reason = f"it is a {name} holding a {offender}, which cannot be pickled ({detail})"
        raise _Fail(offender, reason) from exc
    return bytes(hasher._hash.digest())


def _joblib_digest(obj: Any) -> bytes:
    """joblib's digest of *obj*, hashed twice (unless it is an array or a frame) to check
    that its pickled form is stable."""
    first = _hash_once(obj)
    if type(obj).__module__.partition(".")[0] not in _ARRAY_MODULES and _hash_once(obj) != first:
        reason = f"the pickled form of a {_name(type(obj))} changes from one digest to the next"
        raise _Fail(_name(type(obj)), reason)
    return first

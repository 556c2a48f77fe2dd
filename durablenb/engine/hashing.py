"""Identity of code and of arguments: code hashes and canonical argument digests."""

from __future__ import annotations

import ast
import dataclasses
import datetime as _dt
import decimal
import enum
import hashlib
import inspect
import pathlib
import pickle
import struct
import sys
import textwrap
import uuid
from collections.abc import Callable
from typing import Any

from ..errors import UnserializableArgumentsError

__all__ = ["code_hash", "args_digest", "default_workflow_id", "function_name"]


def function_name(fn: Callable[..., Any]) -> str:
    """A stable name: the qualified name, prefixed by the module unless it is ``__main__``."""
    fn = inspect.unwrap(fn)
    module = getattr(fn, "__module__", None) or "__main__"
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", repr(fn))
    qualname = qualname.replace(".<locals>", "")
    if module == "__main__" or module.startswith("__ipython") or module.startswith("ipykernel"):
        return qualname
    return f"{module}.{qualname}"


class _StripDocAndDecorators(ast.NodeTransformer):
    def _strip(self, node: Any) -> Any:
        node.decorator_list = []
        node.name = "_"
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
            if isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        self.generic_visit(node)
        return node

    visit_FunctionDef = _strip
    visit_AsyncFunctionDef = _strip


def _code_fingerprint(code: Any, out: list[bytes]) -> None:
    out.append(code.co_code)
    out.append(repr(code.co_names).encode())
    out.append(repr(code.co_varnames).encode())
    for const in code.co_consts:
        if inspect.iscode(const):
            _code_fingerprint(const, out)
        else:
            out.append(repr(const).encode())


#: Callables that find a function's source when `inspect.getsource` cannot (for example
#: the notebook's input history); each returns the source text or None.
source_finders: list[Callable[[Callable[..., Any]], str | None]] = []


def _find_source(fn: Callable[..., Any]) -> str | None:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        pass
    for finder in source_finders:
        try:
            src = finder(fn)
        except Exception:
            src = None
        if src:
            return src
    return None


def _source_text(fn: Callable[..., Any]) -> str | None:
    src = _find_source(fn)
    if src is None:
        return None
    try:
        tree = ast.parse(textwrap.dedent(src))
    except SyntaxError:
        return None
    name = getattr(fn, "__name__", None)
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if not funcs:
        return None
    node = funcs[0] if len(tree.body) == 1 else next((n for n in funcs if n.name == name), None)
    if node is None:
        return None
    return ast.dump(_StripDocAndDecorators().visit(node))


def code_hash(fn: Callable[..., Any], source: str | None = None) -> str:
    """Digest of *fn*'s code, blind to comments, formatting, docstrings and decorators.

    *source*: the function's source when `inspect.getsource` cannot find it.
    """
    fn = inspect.unwrap(fn)
    text = None
    if source is not None:
        try:
            tree = ast.parse(textwrap.dedent(source))
            node = next(
                n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            )
            text = ast.dump(_StripDocAndDecorators().visit(node))
        except (SyntaxError, StopIteration):
            text = None
    if text is None:
        text = _source_text(fn)
    h = hashlib.blake2b(digest_size=16)
    if text is not None:
        h.update(b"ast\0" + text.encode())
    else:
        code = getattr(fn, "__code__", None)
        if code is None:
            h.update(b"repr\0" + function_name(fn).encode())
        else:
            parts: list[bytes] = [f"py{sys.version_info[0]}.{sys.version_info[1]}".encode()]
            _code_fingerprint(code, parts)
            for part in parts:
                h.update(struct.pack(">I", len(part)) + part)
    return h.hexdigest()


# -- canonical digests of arguments ---------------------------------------------------------


def _feed(h: Any, obj: Any, depth: int = 0) -> None:
    if depth > 200:
        raise UnserializableArgumentsError("arguments nest too deeply to digest")
    t = type(obj)
    if obj is None or t is bool:
        h.update(b"c" + repr(obj).encode())
    elif t is int:
        h.update(b"i" + str(obj).encode() + b";")
    elif t is float:
        h.update(b"f" + obj.hex().encode() + b";")
    elif t is str:
        data = obj.encode("utf-8", "surrogatepass")
        h.update(b"s" + struct.pack(">Q", len(data)) + data)
    elif t is bytes or t is bytearray:
        h.update(b"b" + struct.pack(">Q", len(obj)) + bytes(obj))
    elif t is list or t is tuple:
        h.update((b"l" if t is list else b"t") + struct.pack(">Q", len(obj)))
        for item in obj:
            _feed(h, item, depth + 1)
    elif t is dict:
        items = sorted((_digest(k), k, v) for k, v in ((k, v) for k, v in obj.items()))
        h.update(b"d" + struct.pack(">Q", len(items)))
        for kd, _k, v in items:
            h.update(kd)
            _feed(h, v, depth + 1)
    elif t is set or t is frozenset:
        digests = sorted(_digest(x) for x in obj)
        h.update(b"S" + struct.pack(">Q", len(digests)) + b"".join(digests))
    elif isinstance(obj, enum.Enum):
        h.update(b"e" + f"{t.__module__}.{t.__qualname__}.{obj.name}".encode())
    elif isinstance(obj, (_dt.datetime, _dt.date, _dt.time, _dt.timedelta, decimal.Decimal,
                          uuid.UUID, pathlib.PurePath, complex)):  # fmt: skip
        h.update(b"r" + f"{t.__module__}.{t.__qualname__}:{obj!r}".encode())
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        h.update(b"D" + f"{t.__module__}.{t.__qualname__}".encode())
        for f in dataclasses.fields(obj):
            _feed(h, f.name)
            _feed(h, getattr(obj, f.name), depth + 1)
    elif _feed_arrays(h, obj):
        pass
    else:
        h.update(b"p" + _pickled(obj))


def _feed_arrays(h: Any, obj: Any) -> bool:
    mod = type(obj).__module__.split(".")[0]
    if mod == "numpy":
        import numpy as np

        if isinstance(obj, np.ndarray) and obj.dtype != object:
            arr = np.ascontiguousarray(obj)
            h.update(b"n" + arr.dtype.str.encode() + repr(arr.shape).encode())
            h.update(memoryview(arr).cast("B"))
            return True
        if isinstance(obj, np.generic):
            h.update(b"g" + obj.dtype.str.encode() + obj.tobytes())
            return True
    if mod == "pandas":
        import pandas as pd

        if isinstance(obj, (pd.DataFrame, pd.Series, pd.Index)):
            h.update(b"P" + type(obj).__name__.encode())
            if isinstance(obj, pd.DataFrame):
                _feed(h, [str(c) for c in obj.columns])
                _feed(h, [str(d) for d in obj.dtypes])
            else:
                _feed(h, str(obj.dtype))
                _feed(h, str(getattr(obj, "name", None)))
            try:
                values = pd.util.hash_pandas_object(obj, index=not isinstance(obj, pd.Index))
                h.update(memoryview(values.to_numpy()).cast("B"))
            except TypeError:  # unhashable cells (lists, dicts): fall back to pickle
                h.update(_pickled(obj))
            return True
    return False


def _pickled(obj: Any) -> bytes:
    try:
        return pickle.dumps(obj, protocol=5)
    except Exception:
        try:
            import cloudpickle

            return cloudpickle.dumps(obj, protocol=5)
        except Exception as exc:
            raise UnserializableArgumentsError(
                f"an argument of type {type(obj).__module__}.{type(obj).__qualname__} cannot be "
                f"encoded, so the workflow cannot be recorded: {exc}"
            ) from exc


def _digest(obj: Any) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    _feed(h, obj)
    return h.digest()


def args_digest(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Hex digest of the canonical encoding of *args* and *kwargs*."""
    h = hashlib.blake2b(digest_size=16)
    _feed(h, tuple(args))
    _feed(h, dict(kwargs))
    return h.hexdigest()


def default_workflow_id(name: str, digest: str) -> str:
    """The id a workflow call gets when none is given: its name and argument digest."""
    return f"{name}:{digest[:16]}"

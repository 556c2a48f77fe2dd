"""Identity of code: stable function names and code hashes.

A code hash digests the function's normalized source tokens (`_codehash`): comments,
formatting, docstrings, decorators and quote style do not count, and it is equal in every
process, under any hash seed and on every Python version. Functions whose source cannot be
found fall back to a digest of their bytecode, which is specific to the Python version.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from . import _codehash

__all__ = ["code_hash", "function_name", "source_finders", "source_digest"]


def function_name(fn: Callable[..., Any]) -> str:
    """A stable name: the qualified name, prefixed by the module unless it is ``__main__``."""
    fn = inspect.unwrap(fn)
    module = getattr(fn, "__module__", None) or "__main__"
    qualname = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
    qualname = qualname.replace(".<locals>", "")
    if module == "__main__" or module.startswith("__ipython") or module.startswith("ipykernel"):
        return qualname
    return f"{module}.{qualname}"


#: Callables that find a function's source when `inspect.getsource` cannot (for example
#: the notebook's input history); each returns the source text or None.
source_finders: list[Callable[[Callable[..., Any]], str | None]] = []


def code_hash(fn: Callable[..., Any], source: str | None = None) -> str:
    """Digest of *fn*'s code, blind to comments, formatting, docstrings and decorators.

    *source*: the function's source when `inspect.getsource` cannot find it.
    """
    fn = inspect.unwrap(fn)
    digest = _codehash.function_digest(fn, source)
    for finder in source_finders if digest is None else ():
        try:
            found = finder(fn)
        except Exception:
            found = None
        if found and (digest := _codehash.function_digest(fn, found)) is not None:
            break
    if digest is None:
        if getattr(fn, "__code__", None) is None:
            return _codehash.source_digest(f"<no code> {function_name(fn)}")
        digest = _codehash.code_fingerprint(fn)
    return digest


def source_digest(source: str) -> str:
    """Digest of a cell's or module's source, blind to comments and formatting."""
    return _codehash.source_digest(source)

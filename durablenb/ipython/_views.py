"""NumPy views among a notebook's names, kept through a ``%%durable`` cell's record.

``sub = x[:2, :2]`` makes ``sub`` a view: writing to it writes to ``x``. Encoded by value it
would come back as a copy. So a name a cell assigns whose array lies inside the memory of
another named array is recorded as a view of that name (its offset, shape, strides and
dtype), and rebuilt over it on restore. Arrays a cell changed in place (``x[0, 0] = 12``)
are restored in place, into the object already bound, so the views of them see the change
as they did when the cell ran.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any


def _numpy() -> Any:
    return sys.modules.get("numpy")  # no numpy imported: no arrays to look at


def _bounds(np: Any, a: Any) -> tuple[int, int]:
    """The first and one-past-last byte addresses *a* spans (``byte_bounds``, which NumPy 2
    moved to ``np.lib.array_utils``)."""
    utils = getattr(np.lib, "array_utils", None)
    fn = utils.byte_bounds if utils is not None else np.byte_bounds
    lo, hi = fn(a)
    return int(lo), int(hi)


def _root(a: Any, np: Any) -> Any:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _provider(a: Any, np: Any) -> bool:
    """Whether *a* can lend its memory to views rebuilt on restore."""
    return (type(a) is np.ndarray and (a.flags.c_contiguous or a.flags.f_contiguous) and a.size > 0
            and not a.dtype.hasobject)  # fmt: skip


def _fits(old: Any, value: Any, np: Any) -> bool:
    """Whether *value* can be copied into the array *old* instead of replacing it."""
    return (type(old) is np.ndarray and type(value) is np.ndarray and old.shape == value.shape
            and old.dtype == value.dtype and old.flags.writeable)  # fmt: skip


def find(
    ns: Mapping[str, Any], assigned: Iterable[str], exclude: Iterable[str] = ()
) -> dict[str, dict[str, Any]]:
    """``{name: view spec}`` for the *assigned* names (not in *exclude*) whose arrays lie in
    the memory of another named array, the widest one that shares their memory."""
    np = _numpy()
    if np is None:
        return {}
    skip = set(exclude)
    arrays = [n for n in assigned
              if n not in skip and type(ns.get(n)) is np.ndarray and ns[n].base is not None]  # fmt: skip
    if not arrays:
        return {}
    lenders: dict[int, list[tuple[int, str]]] = {}
    for name, value in ns.items():
        if not name.startswith("_") and _provider(value, np):
            lo, hi = _bounds(np, value)
            lenders.setdefault(id(_root(value, np)), []).append((hi - lo, name))
    specs: dict[str, dict[str, Any]] = {}
    for n in arrays:
        v = ns[n]
        lo, hi = _bounds(np, v)
        for _, m in sorted(lenders.get(id(_root(v, np)), []), key=lambda t: (-t[0], t[1])):
            if m == n or m in specs:
                continue
            base = ns[m]
            b_lo, b_hi = _bounds(np, base)
            if b_lo <= lo and hi <= b_hi:
                specs[n] = {"of": m, "offset": v.ctypes.data - base.ctypes.data, "shape": v.shape,
                            "strides": v.strides, "dtype": np.lib.format.dtype_to_descr(v.dtype)}  # fmt: skip
            break  # only the widest lender: the others are inside it
    return specs


def rebuild(
    specs: Mapping[str, Mapping[str, Any]], lookup: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The views of *specs* over the arrays *lookup* holds, and what could not be rebuilt."""
    np = _numpy()
    built: dict[str, Any] = {}
    failed: list[str] = []
    for n, spec in specs.items():
        base = lookup.get(spec["of"])
        try:
            if np is None or not _provider(base, np):
                raise TypeError(f"{spec['of']!r} is no longer an array it can view")
            built[n] = np.ndarray(spec["shape"], np.lib.format.descr_to_dtype(spec["dtype"]), buffer=base,
                                  offset=spec["offset"], strides=spec["strides"])  # fmt: skip
        except (TypeError, ValueError) as exc:
            failed.append(f"{n} (a view of {spec['of']}: {exc})")
    return built, failed


def bound(ns: Mapping[str, Any], values: Mapping[str, Any], in_place: Iterable[str]) -> dict[str, Any]:
    """What each name will be bound to once `assign` binds *values*: the array already
    there for an in-place change that fits it, else the value."""
    np = _numpy()
    keep = set(in_place)
    out = dict(ns)
    for n, value in values.items():
        if not (n in keep and np is not None and _fits(ns.get(n), value, np)):
            out[n] = value
    return out


def assign(ns: dict[str, Any], values: Mapping[str, Any], in_place: Iterable[str]) -> None:
    """Bind *values* in *ns*; an array of *in_place* is copied into the array already bound
    there when both have the same type, shape and dtype (so its views see it)."""
    np = _numpy()
    keep = set(in_place)
    for n, value in values.items():
        old = ns.get(n)
        if n in keep and np is not None and _fits(old, value, np):
            np.copyto(old, value)
        else:
            ns[n] = value

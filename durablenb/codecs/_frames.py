"""Frames restored without a copy: a frame of fixed-width columns over a blob's private
mapping.

A pandas frame whose columns are all integers, floats, timestamps (with or without a time
zone) or categoricals, without nulls, with a range index, lies in an Arrow file as one
contiguous buffer per column (a categorical's codes; its categories are small and
converted). Read from a private (copy on write) mapping of that file, each column can be a
NumPy array over the mapping itself: no conversion, no new memory, pages read from the page
cache on first touch and copied on first write, which stay in this process. Any other frame
is converted by Arrow.
"""

from __future__ import annotations

import mmap
import weakref
from typing import Any

#: The mappings values were left over. Each holds a file descriptor while it lives (Python
#: before 3.13 duplicates the file's), so they are capped below the process's limit.
_kept: weakref.WeakSet[mmap.mmap] = weakref.WeakSet()
_limit: list[int] = []


def may_keep(memory: Any) -> bool:
    """Whether a value may be left over *memory* instead of copied out of it: always for
    memory that is not a mapped file; for a mapping, while fewer than a quarter of the
    process's open-file limit (at most 4096) are kept."""
    if not isinstance(memory, mmap.mmap):
        return True
    if not _limit:
        try:
            import resource

            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):
            soft = 1024
        _limit.append(min(4096, max(16, (soft if soft > 0 else 1 << 16) // 4)))
    if memory not in _kept and len(_kept) >= _limit[0]:
        return False
    _kept.add(memory)
    return True


#: Arrow types whose buffer is the column's NumPy array as it is.
_PLAIN = frozenset("int8 int16 int32 int64 uint8 uint16 uint32 uint64 float float32 double float64".split())


def over_mapping(table: Any, memory: Any) -> Any:
    """The pandas frame of *table* (read from the writable buffer *memory* without copies)
    with its columns over *memory*, or None when it is not such a frame."""
    import numpy as np

    meta = table.schema.pandas_metadata
    if not meta or len(meta.get("column_indexes", [])) > 1 or not range_index(meta):
        return None
    try:
        view = memoryview(memory)
    except TypeError:
        return None
    if view.readonly:
        return None
    start = np.frombuffer(view, dtype=np.uint8).__array_interface__["data"][0]
    template = table.slice(0, 0).to_pandas()  # the column labels and dtypes Arrow would give
    columns = []
    for j, (field, column) in enumerate(zip(table.schema, table.columns, strict=True)):
        if column.num_chunks != 1 or column.null_count:
            return None
        made = _column(field.type, column.chunk(0), template.dtypes.iloc[j], view, start)
        if made is None:
            return None
        columns.append(made)
    return assemble(table.num_rows, meta, template, columns) if may_keep(memory) else None


def _column(kind: Any, chunk: Any, dtype: Any, view: memoryview, start: int) -> Any:
    """Arrow array *chunk* as the pandas column of *dtype* over *view* (whose first byte is
    at address *start*), or None when it cannot be."""
    import pyarrow as pa

    held = values_dtype(kind)
    if held is None:
        return None
    values = _over(chunk.indices if pa.types.is_dictionary(kind) else chunk, view, start, held)
    return None if values is None else as_column(kind, values, dtype)


def values_dtype(kind: Any) -> Any:
    """The NumPy dtype of the one buffer that holds the values of Arrow type *kind* (a
    dictionary's codes), or None when it has no such buffer."""
    import numpy as np
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        index = str(kind.index_type)
        return np.dtype(kind.index_type.to_pandas_dtype()) if index in _PLAIN and index[0] == "i" else None
    if pa.types.is_timestamp(kind):
        return np.dtype(f"M8[{kind.unit}]")
    return np.dtype(kind.to_pandas_dtype()) if str(kind) in _PLAIN else None


def as_column(kind: Any, values: Any, dtype: Any) -> Any:
    """The pandas column of *dtype* over *values* (from `values_dtype`), or None when
    *dtype* is not what they make."""
    import pandas as pd
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        if not isinstance(dtype, pd.CategoricalDtype):
            return None
        try:  # each code is checked to be in range: a bad one would read out of bounds
            return pd.Categorical.from_codes(values, dtype=dtype)
        except ValueError:  # left to Arrow's conversion, which reports it
            return None
    if pa.types.is_timestamp(kind) and kind.tz is not None:
        if not isinstance(dtype, pd.DatetimeTZDtype) or dtype.unit != kind.unit:
            return None
        try:  # the public constructors copy
            return pd.arrays.DatetimeArray._simple_new(values, dtype=dtype)
        except (AttributeError, TypeError, ValueError):  # pragma: no cover - another pandas
            return None
    return values if values.dtype == dtype else None


def _over(chunk: Any, view: memoryview, start: int, dtype: Any) -> Any:
    """The NumPy array of *dtype* over *view* of the fixed-width Arrow array *chunk*, or
    None when its buffer is not within *view* (or not aligned)."""
    import numpy as np

    data = chunk.buffers()[1]
    if data is None:
        return None
    offset = data.address - start + chunk.offset * dtype.itemsize
    if offset < 0 or offset + len(chunk) * dtype.itemsize > len(view) or offset % dtype.alignment:
        return None
    return np.frombuffer(view, dtype=dtype, count=len(chunk), offset=offset)


def range_index(meta: dict[str, Any]) -> bool:
    index = meta.get("index_columns", [])
    return not index or (len(index) == 1 and isinstance(index[0], dict) and index[0].get("kind") == "range")


def assemble(rows: int, meta: dict[str, Any], template: Any, columns: list[Any]) -> Any:
    """The frame of *columns* (*rows* long) labelled and indexed as *template*, or None when
    its dtypes are not the template's."""
    import pandas as pd

    frame = pd.DataFrame(dict(enumerate(columns)), copy=False)
    frame.columns = template.columns
    index = meta.get("index_columns", [])
    if index:
        r = index[0]
        frame.index = pd.RangeIndex(r["start"], r["stop"], r["step"], name=r.get("name"))
    if len(frame.index) != rows or not frame.dtypes.equals(template.dtypes):
        return None
    return frame

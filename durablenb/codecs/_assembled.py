"""Compressed frames assembled batch by batch into their final arrays.

A compressed Arrow file (a blob in PostgreSQL or in an object store) holds a frame in
record batches. Converted by Arrow, a group of columns is decompressed whole, then copied
into pandas' arrays: the restore holds both for a while, and one thread copies. A frame of
fixed-width columns without nulls, with a range index (the frames `_frames` restores over a
mapping when they are not compressed), is assembled here instead: one batch at a time is
decompressed (its buffers side by side, by Arrow), and its columns are copied straight into
their places in the final arrays on the codec threads. The restore then holds the frame and
one batch, and the copying and the new memory's first touch are shared by the threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _frames, _workers


def assembled(source: Any, schema: Any, release: Callable[[], None] | None) -> Any:
    """The pandas frame in the compressed Arrow file *source* (of *schema*), or None when
    it is not such a frame (any null, any other type or index). *release*, if given, is
    called after each batch: it drops the pages of *source* read so far."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc

    meta = schema.pandas_metadata
    if not meta or len(meta.get("column_indexes", [])) > 1 or not _frames.range_index(meta):
        return None
    kinds = [field.type for field in schema]
    held = [_frames.values_dtype(kind) for kind in kinds]
    if not kinds or any(h is None for h in held):
        return None
    reader = ipc.open_file(pa.BufferReader(source))
    columns: list[Any] = [None] * len(kinds)
    samples: list[Any] = []
    start = 0
    for k in range(reader.num_record_batches):
        batch = reader.get_batch(k)  # its buffers decompressed side by side by Arrow
        if any(c.null_count for c in batch.columns):
            return None
        if k == 0:
            rows = _rows(reader)
            if rows is None:
                return None
            columns = [np.empty(rows, h) for h in held]
            samples = [c.slice(0, 0) for c in batch.columns]
        end = start + batch.num_rows
        if end > len(columns[0]) or not _copy(batch, columns, start, samples):
            return None
        start = end
        del batch
        if release is not None:
            release()
    if start != len(columns[0]):
        return None
    template = pa.Table.from_arrays(samples, schema=schema).to_pandas()  # Arrow's labels and dtypes
    made = [_frames.as_column(k, v, d) for k, v, d in zip(kinds, columns, template.dtypes, strict=True)]
    if any(m is None for m in made):
        return None
    return _frames.assemble(start, meta, template, made)


def _rows(reader: Any) -> int | None:
    """All the rows of *reader*'s batches, as its pandas metadata's range index says (None
    when it does not: counting them would decompress every batch)."""
    index = (reader.schema.pandas_metadata or {}).get("index_columns") or []
    if not index or not isinstance(index[0], dict) or index[0].get("kind") != "range":
        return None
    r = index[0]
    return len(range(r["start"], r["stop"], r["step"]))


def _copy(batch: Any, columns: list[Any], start: int, samples: list[Any]) -> bool:
    """Copy *batch*'s columns into *columns* from row *start*, side by side on the codec
    threads; False when a dictionary differs from the first batch's (*samples*)."""
    def one(j: int) -> bool:
        chunk = batch.column(j)
        if hasattr(chunk, "dictionary"):
            if not chunk.dictionary.equals(samples[j].dictionary):
                return False  # other categories for the same codes
            chunk = chunk.indices
        columns[j][start : start + len(chunk)] = chunk.to_numpy(zero_copy_only=True)
        return True

    tasks = [_workers.pool().submit(one, j) for j in range(1, batch.num_columns)]
    first = one(0)
    return all([first] + [t.result() for t in tasks])

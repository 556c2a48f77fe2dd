"""Compressed frames assembled batch by batch into their final arrays.

A compressed Arrow file (a blob in PostgreSQL or in an object store) holds a frame in
record batches. Converted by Arrow, a group of columns is decompressed whole, then copied
into pandas' arrays: the restore holds both for a while, and one thread copies. A frame of
fixed-width columns without nulls, with a range index (the frames `_frames` restores over a
mapping when they are not compressed), is assembled here instead: one batch at a time, a
group of its columns at a time, is decompressed (its buffers side by side, by Arrow), and
its columns are copied straight into their places in the final arrays on the codec
threads. The restore then holds the frame and one group of one batch, and the copying and
the new memory's first touch are shared by the threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import _frames, _workers


def assembled(source: Any, schema: Any, release: Callable[[], None] | None,
              grouping: Callable[[], list[list[int]]]) -> Any:  # fmt: skip
    """The pandas frame in the compressed Arrow file *source* (of *schema*), or None when
    it is not such a frame (any null, any other type or index). Each batch is read a group
    of columns (*grouping()*: field numbers) at a time, so no more than that part of one batch
    is decompressed at once. *release*, if given, is called after each group of each batch:
    it drops the pages of *source* read so far."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.ipc as ipc

    meta = schema.pandas_metadata
    if not meta or len(meta.get("column_indexes", [])) > 1 or not _frames.range_index(meta):
        return None
    kinds = [field.type for field in schema]
    held = [_frames.values_dtype(kind) for kind in kinds]
    rows = _rows(meta)
    if not kinds or any(h is None for h in held) or rows is None:
        return None
    groups = grouping()
    if sorted(j for g in groups for j in g) != list(range(len(kinds))):
        return None
    readers = [ipc.open_file(pa.BufferReader(source), options=ipc.IpcReadOptions(included_fields=g))
               for g in groups]  # fmt: skip
    columns = [np.empty(rows, h) for h in held]
    samples: list[Any] = [None] * len(kinds)
    start = 0
    for k in range(readers[0].num_record_batches):
        end = None
        for group, reader in zip(groups, readers, strict=True):
            part = reader.get_batch(k)  # its buffers decompressed side by side by Arrow
            if end is None:
                end = start + part.num_rows
            if end > rows or start + part.num_rows != end or not _copy(part, group, columns, start, samples):
                return None
            del part
            pa.default_memory_pool().release_unused()  # its buffers, freed
            if release is not None:
                release()
        start = end or start
    if start != rows or any(sample is None for sample in samples):
        return None
    template = pa.Table.from_arrays(samples, schema=schema).to_pandas()  # Arrow's labels and dtypes
    made = [_frames.as_column(k, v, d) for k, v, d in zip(kinds, columns, template.dtypes, strict=True)]
    if any(m is None for m in made):
        return None
    return _frames.assemble(rows, meta, template, made)


def _rows(meta: dict[str, Any]) -> int | None:
    """The frame's rows, as its pandas metadata's range index says (None when it does not:
    counting the batches' rows would decompress them all)."""
    index = meta.get("index_columns") or []
    if not index or not isinstance(index[0], dict) or index[0].get("kind") != "range":
        return None
    r = index[0]
    return len(range(r["start"], r["stop"], r["step"]))


def _copy(part: Any, group: list[int], columns: list[Any], start: int, samples: list[Any]) -> bool:
    """Copy the columns of *part* (fields *group* of one batch) into *columns* from row
    *start*, side by side on the codec threads; False when one has nulls, or a dictionary
    other than the first batch's (kept in *samples*, emptied, as a sample of each type)."""

    def one(i: int) -> bool:
        j, chunk = group[i], part.column(i)
        if chunk.null_count:
            return False
        if samples[j] is None:
            samples[j] = chunk.slice(0, 0)
        if hasattr(chunk, "dictionary"):
            if not chunk.dictionary.equals(samples[j].dictionary):
                return False  # other categories for the same codes
            chunk = chunk.indices
        columns[j][start : start + len(chunk)] = chunk.to_numpy(zero_copy_only=True)
        return True

    tasks = [_workers.pool().submit(one, i) for i in range(1, part.num_columns)]
    first = one(0)
    return all([first] + [t.result() for t in tasks])

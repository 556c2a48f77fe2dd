"""Columnar codecs: Arrow IPC for pandas, pyarrow and polars; npy for numpy arrays.

A frame goes to Arrow only when Arrow brings it back exactly: string column names, no
object columns holding anything but strings, no sparse or multi-level columns, and
JSON-able ``attrs``. Anything else is pickled, which always round-trips.
"""

from __future__ import annotations

import io
import json
import mmap
from collections.abc import Callable
from typing import Any

from . import _assembled, _frames, _workers

KIND = b"durablenb.kind"
ATTRS = b"durablenb.attrs"
SERIES_NAME = b"durablenb.series_name"
SERIES_COLUMN = "__durablenb_series__"
#: Schema metadata of an Arrow file whose buffers are compressed: the codec's name.
COMPRESSION = b"durablenb.compression"
#: zstd's level for Arrow buffers: a fast level, which leaves incompressible buffers (random
#: floats) as they are instead of spending a third of the time to save a few per cent.
ZSTD_LEVEL = -1


def _json_ok(v: Any) -> bool:
    try:
        return json.loads(json.dumps(v)) == v
    except (TypeError, ValueError):
        return False


def _frame_ok(df: Any) -> bool:
    import numpy as np
    import pandas as pd

    cols = df.columns
    if len(df) == 0:  # tiny anyway, and Arrow drops the categories of empty categoricals
        return False
    if isinstance(cols, pd.MultiIndex) or not all(isinstance(c, str) for c in cols):
        return False
    if not cols.is_unique or SERIES_COLUMN in cols:
        return False
    if df.attrs and not _json_ok(df.attrs):
        return False
    indexes = [df.index.get_level_values(i) for i in range(df.index.nlevels)]
    for arr in [df[c] for c in cols] + indexes:
        dtype = arr.dtype
        if isinstance(dtype, pd.SparseDtype) or isinstance(dtype, pd.IntervalDtype):
            return False
        if isinstance(dtype, np.dtype) and dtype.hasobject:
            if pd.api.types.infer_dtype(arr, skipna=True) not in ("string", "empty"):
                return False
    names = [n for n in df.index.names if n is not None]
    return all(isinstance(n, str) for n in names) and len(set(names)) == len(names)


def choose(value: Any) -> str | None:
    """``arrow`` or ``npy`` when *value* has an exact columnar encoding, else None."""
    mod = type(value).__module__.split(".", 1)[0]
    if mod == "pandas":
        import pandas as pd

        if isinstance(value, pd.DataFrame):
            return "arrow" if _frame_ok(value) else None
        if isinstance(value, pd.Series):
            ok = _json_ok(value.name) and _frame_ok(value.to_frame(SERIES_COLUMN + "x"))
            return "arrow" if ok else None
        return None
    if mod == "pyarrow":
        import pyarrow as pa

        return "arrow" if isinstance(value, (pa.Table, pa.RecordBatch)) else None
    if mod == "polars":
        return "arrow" if type(value).__name__ == "DataFrame" else None
    if mod == "numpy":
        import numpy as np

        # Exactly an ndarray: a subclass (a masked array, a recarray, a matrix) would come
        # back as a plain array, its mask or type lost; pickle keeps them.
        if type(value) is np.ndarray and not value.dtype.hasobject:
            return "npy"
    return None


def estimate_size(value: Any) -> int | None:
    """Bytes the value occupies in memory (no deep scan of Python objects)."""
    try:
        mod = type(value).__module__.split(".", 1)[0]
        if mod == "pandas":
            import pandas as pd

            if isinstance(value, pd.DataFrame):
                return int(value.memory_usage(index=True, deep=False).sum())
            if isinstance(value, pd.Series):
                return int(value.memory_usage(index=True, deep=False))
        if mod == "pyarrow" or mod == "polars":
            return int(value.nbytes if mod == "pyarrow" else value.estimated_size())
        if mod == "numpy":
            return int(value.nbytes)
    except Exception:
        return None
    return None


def _to_table(value: Any) -> Any:
    import pyarrow as pa

    mod = type(value).__module__.split(".", 1)[0]
    extra: dict[bytes, bytes] = {}
    if mod == "pandas":
        import pandas as pd

        if isinstance(value, pd.Series):
            extra[KIND] = b"series"
            extra[SERIES_NAME] = json.dumps(value.name).encode()
            frame = value.to_frame(SERIES_COLUMN)
            frame.attrs = dict(value.attrs)
            value = frame
        else:
            extra[KIND] = b"pandas"
        if value.attrs:
            extra[ATTRS] = json.dumps(value.attrs).encode()
        table = pa.Table.from_pandas(value, preserve_index=None)
    elif mod == "polars":
        extra[KIND] = b"polars"
        table = value.to_arrow()
    elif isinstance(value, pa.RecordBatch):
        extra[KIND] = b"recordbatch"
        table = pa.Table.from_batches([value])
    else:
        extra[KIND] = b"table"
        table = value
    meta = dict(table.schema.metadata or {})
    meta.update(extra)
    return table.replace_schema_metadata(meta)


class _Count:
    """A write-only file that forwards to *sink* (pyarrow wants ``closed`` and ``tell``)."""

    def __init__(self, sink: Any) -> None:
        self.sink = sink
        self.n = 0
        self.closed = False

    def write(self, data: Any) -> int:
        self.sink.write(data)
        n = memoryview(data).nbytes
        self.n += n
        return n

    def tell(self) -> int:
        return self.n

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def write(value: Any, codec: str, sink: Any, compression: str | None = None) -> str:
    """Stream *value* into *sink* with *codec*; returns the codec name to record."""
    import pyarrow as pa

    from . import EncodingError, pickled

    if codec == "arrow":
        import pyarrow.ipc as ipc

        try:
            table = _to_table(value)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise EncodingError(f"cannot convert {type(value).__qualname__} to Arrow: {exc}") from exc
        if compression:  # a reader decompresses only the columns it converts
            meta = {**table.schema.metadata, COMPRESSION: compression.encode()}
            table = table.replace_schema_metadata(meta)
        level = ZSTD_LEVEL if compression == "zstd" else None
        options = ipc.IpcWriteOptions(compression=pa.Codec(compression, level) if compression else None,
                                      use_threads=True)  # fmt: skip
        with ipc.new_file(pa.PythonFile(_Count(sink), mode="w"), table.schema, options=options) as w:
            # Uncompressed, one batch: each column is one buffer, which a restore can use
            # where it lies (`_frames`); compressed, batches of at most BATCH_ROWS.
            for batch in _batches(table, compression):
                w.write_table(batch, max_chunksize=BATCH_ROWS if compression else None)
        return "arrow"
    stream: Any = sink
    out: Any = None
    if compression:
        out = pa.CompressedOutputStream(pa.PythonFile(_Count(sink), mode="w"), compression)
        stream = out
    try:
        if codec == "npy":
            import numpy as np

            np.lib.format.write_array(stream, value, allow_pickle=False)
            used = "npy"
        else:
            used, data = pickled(value)
            stream.write(data)
    finally:
        if out is not None:
            out.close()
    return f"{used}+{compression}" if compression else used


#: Rows of each Arrow record batch, at most.
BATCH_ROWS = 1 << 20
#: Bytes (in memory) of the first batch of a compressed stream; each next one is twice as large.
FIRST_BATCH = 4 << 20


def _batches(table: Any, compression: str | None) -> list[Any]:
    """*table* in the slices to write as record batches. A batch is compressed whole before
    any of it is written: compressed, the first ones are small, so the stream's first bytes
    leave soon, and then they double (fewer, larger batches decompress and convert faster)."""
    if not compression or not table.num_rows or table.nbytes <= FIRST_BATCH:
        return [table]
    row_bytes = max(1, table.nbytes // table.num_rows)
    slices, start, size = [], 0, FIRST_BATCH
    while start < table.num_rows:
        rows = max(1, min(BATCH_ROWS, size // row_bytes))
        slices.append(table.slice(start, rows))
        start, size = start + rows, size * 2
    return slices


def decompress(data: Any, compression: str) -> Any:
    """The bytes of a compressed stream written by `write`."""
    import pyarrow as pa

    with pa.CompressedInputStream(pa.BufferReader(pa.py_buffer(data)), compression) as src:
        return src.read_buffer()


def decode(codec: str, data: Any) -> Any:
    """The value *data* (bytes or any buffer) holds."""
    import pyarrow as pa

    if codec == "npy":
        return _npy(data)
    import pyarrow.ipc as ipc

    source = pa.py_buffer(data)
    reader = ipc.open_file(pa.BufferReader(source))
    meta = reader.schema.metadata or {}
    kind = meta.get(KIND, b"table")
    if kind in (b"pandas", b"series"):
        if COMPRESSION in meta:  # fixed-width columns: assembled batch by batch
            schema = reader.schema
            every = list(range(len(schema)))
            df = _assembled.assembled(source, schema, _releaser(data), lambda: _groups(schema, every))
        else:  # fixed-width columns over writable memory: left where they lie
            df = _frames.over_mapping(reader.read_all(), data)
        if df is None:  # converted by Arrow
            df = _to_pandas(source, reader, _releaser(data))
        if ATTRS in meta:
            df.attrs = json.loads(meta[ATTRS])
        if kind == b"series":
            s = df[SERIES_COLUMN]
            s.name = json.loads(meta[SERIES_NAME])
            s.attrs = dict(df.attrs)
            return s
        return df
    table = reader.read_all()
    clean = {k: v for k, v in meta.items() if not k.startswith(b"durablenb.")}
    table = table.replace_schema_metadata(clean or None)
    if kind == b"polars":
        import polars

        return polars.from_arrow(table)
    if kind == b"recordbatch":
        return table.combine_chunks().to_batches()[0]
    return table


def _npy(data: Any) -> Any:
    """The array of the ``.npy`` bytes *data*: over *data* itself when it is writable memory
    (a private mapping of a blob file, whose pages are then read on first touch and copied
    on first write), else copied once."""
    import numpy as np

    view = memoryview(data)
    head = io.BytesIO(view[: min(len(view), HEADER_MAX)])
    version = np.lib.format.read_magic(head)
    if version not in ((1, 0), (2, 0)):  # 3.0: a UTF-8 header, rare; read the usual way
        return np.lib.format.read_array(io.BytesIO(view), allow_pickle=False)
    fmt = np.lib.format
    read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read_header(head)
    if dtype.hasobject:
        raise ValueError("an npy array of Python objects is not recorded as npy")
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(view, dtype=dtype, count=count, offset=head.tell())
    if view.readonly or not _frames.may_keep(data):
        flat = flat.copy()
    return flat.reshape(shape, order="F" if fortran else "C")


#: An ``.npy`` header is read from at most this many first bytes.
HEADER_MAX = 1 << 16


#: A frame's columns are converted in groups of about 1/GROUPS of its bytes (see `_to_pandas`).
GROUPS = 8
#: Encodings smaller than this are converted in one go.
GROUPED_FROM = 16 << 20


def _releaser(data: Any) -> Callable[[], None] | None:
    """What drops the pages of *data* mapped so far, if it is a mapped file: their pages
    are counted in the process's memory, though the kernel keeps them cached (re-read on
    the next touch)."""
    if isinstance(data, mmap.mmap) and hasattr(data, "madvise") and len(data):
        return lambda: data.madvise(mmap.MADV_DONTNEED)
    return None


def _to_pandas(source: Any, reader: Any, release: Callable[[], None] | None) -> Any:
    """The pandas frame of the Arrow file *source*.

    A large frame in a mapped file is converted a group of columns at a time, with *release*
    called after each: a restore then holds the new frame and one group's pages (and, when
    the file is compressed, that group's buffers decompressed alone), not the frame and all
    of its source. Any other is converted at once.
    """
    import pandas as pd
    import pyarrow as pa

    schema = reader.schema
    index = {c for c in (schema.pandas_metadata or {}).get("index_columns", []) if isinstance(c, str)}
    fields = [i for i, f in enumerate(schema) if f.name not in index]
    groups = _groups(schema, fields) if release is not None and source.size >= GROUPED_FROM else [fields]
    if release is None or len(groups) <= 1:
        return _writable(reader.read_all().to_pandas())
    # Compressed: each group read alone (only its buffers decompressed). Else the whole
    # table at once, whose columns are slices of the mapping (a read of some fields copies).
    table = None if COMPRESSION in (schema.metadata or {}) else reader.read_all()
    indexes = [i for i, f in enumerate(schema) if f.name in index]
    parts: list[Any] = []
    for k, group in enumerate(groups):
        chosen = sorted(group + indexes if k == 0 else group)
        if table is None:
            part = _read(source, chosen)
            release()  # the group's compressed pages, decompressed
            part = _writable(part.to_pandas())
            pa.default_memory_pool().release_unused()  # its decompressed buffers, freed
        else:
            part = _writable(table.select(chosen).to_pandas())
        if parts:
            part.index = parts[0].index  # the same object: no realignment
        parts.append(part)
        release()
    return pd.concat(parts, axis=1)


def _read(source: Any, fields: list[int]) -> Any:
    """The table of the compressed Arrow file *source* with only its top-level *fields*,
    their buffers decompressed: its record batches side by side, on the codec threads
    (each with a reader of its own; Arrow lets go of the GIL while it decompresses)."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    options = ipc.IpcReadOptions(included_fields=fields)

    def reader() -> Any:
        return ipc.open_file(pa.BufferReader(source), options=options)

    first = reader()
    count = first.num_record_batches
    if count < 2:
        return first.read_all()
    later = [_workers.pool().submit(lambda i: reader().get_batch(i), i) for i in range(1, count)]
    batches = [first.get_batch(0)] + [f.result() for f in later]
    return pa.Table.from_batches(batches, schema=first.schema)


def _groups(schema: Any, fields: list[int]) -> list[list[int]]:
    """*fields* in consecutive groups of at most 1/`GROUPS` of the frame's bytes each (a
    larger column alone), so fewer than 2 × `GROUPS` groups."""
    weights = [_width(schema.field(i).type) for i in fields]
    target = sum(weights) / GROUPS
    groups: list[list[int]] = []
    size = 0.0
    for i, w in zip(fields, weights, strict=True):
        if not groups or size + w > target:
            groups.append([])
            size = 0.0
        groups[-1].append(i)
        size += w
    return groups


def _width(t: Any) -> float:
    """Bytes a value of Arrow type *t* takes (a guess for variable widths)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.index_type
    try:
        return float(t.bit_width) / 8
    except ValueError:  # strings, lists, structs: no fixed width
        return 16.0


def _writable(df: Any) -> Any:
    """*df* with every column writable: Arrow hands categorical codes over without a copy,
    as read-only views of the source (a mapped file), where pandas refuses in-place writes."""
    for j in range(df.shape[1]):
        values = getattr(df.iloc[:, j].array, "_ndarray", None)
        if values is not None and not values.flags.writeable:
            df.isetitem(j, df.iloc[:, j].copy())
    return df

"""Large values: frames restored a group of columns at a time come back equal and writable,
and blobs are named and checked by what was written, however it was hashed."""

from __future__ import annotations

import hashlib
import io
import mmap
import threading
import zlib

import numpy as np
import pandas as pd
import pytest

from durablenb import codecs
from durablenb.codecs import _columnar, _digest
from durablenb.errors import CorruptRecordError, StorageError
from durablenb.store.blobs import FolderBlobs, HashingWriter


def wide_frame(n=2000):
    rng = np.random.default_rng(5)
    return pd.DataFrame({
        "seq": np.arange(n),
        "x": np.where(np.arange(n) % 3 == 0, np.nan, rng.random(n)),
        "f32": rng.random(n).astype(np.float32),
        "carrier": pd.Categorical(rng.choice(["AA", "DL", "UA"], n), categories=["UA", "DL", "AA"],
                                  ordered=True),
        "when": pd.date_range("2013-01-01", periods=n, freq="h", tz="America/New_York"),
        "naive": pd.date_range("2013-01-01", periods=n, freq="D"),
        "delay": pd.array([None if i % 7 == 0 else i for i in range(n)], dtype="Int64"),
        "flag": pd.array([None if i % 5 == 0 else i % 2 == 0 for i in range(n)], dtype="boolean"),
        "name": [f"n{i}" for i in range(n)],
        "gap": pd.to_timedelta(np.arange(n), unit="s"),
        "b": np.arange(n) % 2 == 0,
        "p": pd.period_range("2020", periods=n, freq="D"),
    })  # fmt: skip


FRAMES = [
    wide_frame,
    lambda: wide_frame().set_index(pd.Index([f"k{i}" for i in range(2000)], name="key")),
    lambda: wide_frame().set_index(["carrier", "seq"]),
    lambda: wide_frame().set_index("naive"),
    lambda: wide_frame()[["x", "seq"]],
    lambda: wide_frame()["carrier"],
    lambda: wide_frame().rename_axis(columns="cols"),
    lambda: pd.DataFrame({f"c{i}": np.arange(3000) * i for i in range(300)}),
]


def _encoded(value, compression=None):
    sink = io.BytesIO()
    used = codecs.write(value, codecs.ARROW, sink, compression)
    return used, sink.getvalue()


def _mapped(data, tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


@pytest.fixture
def grouped(monkeypatch):
    monkeypatch.setattr(_columnar, "GROUPED_FROM", 0)  # every mapped frame by groups of columns


@pytest.mark.parametrize("make", FRAMES)
@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("source", ["mapped", "bytes"])
def test_frames_converted_by_groups_of_columns_come_back_equal(grouped, make, compression, source,
                                                               tmp_path, monkeypatch):  # fmt: skip
    from durablenb.codecs import _assembled

    calls, assembled = [], []
    real = _columnar._groups
    monkeypatch.setattr(_columnar, "_groups", lambda *a: calls.append(a) or real(*a))
    whole = _assembled.assembled
    monkeypatch.setattr(_assembled, "assembled", lambda *a: assembled.append(r := whole(*a)) or r)
    value = make()
    value.attrs = {"source": "test"}
    used, data = _encoded(value, compression)
    back = codecs.decode(used, _mapped(data, tmp_path) if source == "mapped" else data)
    by_batches = any(a is not None for a in assembled)
    assert by_batches == (compression is not None and make in (FRAMES[5], FRAMES[7]))  # fixed-width only
    if source == "mapped" or by_batches:  # converted by groups, or its batches read by groups
        assert calls
    if isinstance(value, pd.Series):
        pd.testing.assert_series_equal(back, value, check_exact=True)
    else:
        pd.testing.assert_frame_equal(back, value, check_exact=True)
        assert back.columns.name == value.columns.name
    assert back.attrs == value.attrs


@pytest.mark.parametrize("grouping", [0, 1 << 40])
def test_restored_columns_are_writable_in_place(tmp_path, monkeypatch, grouping):
    """Arrow hands categorical codes over as read-only views of the mapped blob; a restored
    frame must take in-place writes like any other."""
    monkeypatch.setattr(_columnar, "GROUPED_FROM", grouping)
    value = wide_frame()
    used, data = _encoded(value)
    back = codecs.decode(used, _mapped(data, tmp_path))
    back.loc[0, "carrier"] = "UA"
    back.loc[1, "x"] = 7.0
    back.loc[2, "seq"] = -1
    back.iloc[3, back.columns.get_loc("when")] = pd.Timestamp("2020-01-01", tz="America/New_York")
    assert back.loc[0, "carrier"] == "UA" and back.loc[1, "x"] == 7.0 and back.loc[2, "seq"] == -1
    expected = value.copy()
    expected.loc[0, "carrier"] = "UA"
    expected.loc[1, "x"] = 7.0
    expected.loc[2, "seq"] = -1
    expected.iloc[3, expected.columns.get_loc("when")] = back.iloc[3]["when"]
    pd.testing.assert_frame_equal(back, expected)


def test_a_folder_blob_restores_by_groups(tmp_path, grouped):
    blobs = FolderBlobs(tmp_path / "blobs")
    value = wide_frame()
    used: list[str] = []
    ref, size, crc = blobs.put(lambda f: used.append(codecs.write(value, codecs.ARROW, f, None)))
    data = blobs.get(ref, crc=crc)
    assert size == len(data) and ref == hashlib.sha256(data).hexdigest() and crc == zlib.crc32(data)
    pd.testing.assert_frame_equal(codecs.decode(used[0], data), value, check_exact=True)


@pytest.mark.parametrize("order", ["C", "F"])
def test_a_folder_blob_array_restores_over_its_file_and_writes_stay_in_the_process(tmp_path, order):
    """An array is decoded over the blob's private mapping (no copy): a plain, writable
    ndarray whose writes never reach the blob."""
    blobs = FolderBlobs(tmp_path / "blobs")
    value = np.asarray(np.arange(600_000, dtype=np.float64).reshape(1000, 600), order=order)
    ref, _, crc = blobs.put(lambda f: codecs.write(value, codecs.NPY, f, None))
    back = codecs.decode(codecs.NPY, blobs.get(ref, crc=crc))
    assert type(back) is np.ndarray and back.flags.writeable and not back.flags.owndata
    assert back.flags.f_contiguous == (order == "F") and np.array_equal(back, value)
    back[0, 0] = -1.0
    back[-1] *= 2
    again = codecs.decode(codecs.NPY, blobs.get(ref, crc=crc))  # the blob is unchanged
    assert np.array_equal(again, value) and back[0, 0] == -1.0 and back[-1, 1] == 2 * value[-1, 1]
    for frame in (wide_frame(),):  # a frame over the same kind of mapping takes writes too
        ref, _, crc = blobs.put(lambda f, v=frame: codecs.write(v, codecs.ARROW, f, None))
        restored = codecs.decode(codecs.ARROW, blobs.get(ref, crc=crc))
        restored.loc[0, "carrier"] = "UA"
        restored.loc[2, "seq"] = -1
        pd.testing.assert_frame_equal(codecs.decode(codecs.ARROW, blobs.get(ref, crc=crc)), frame)


def _without_marker(value):
    """*value* in a zstd-compressed Arrow file as written before files were marked compressed."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    table = _columnar._to_table(value)
    sink = pa.BufferOutputStream()
    with ipc.new_file(sink, table.schema, options=ipc.IpcWriteOptions(compression="zstd")) as w:
        w.write_table(table, max_chunksize=500)
    return sink.getvalue().to_pybytes()


def test_a_mapped_compressed_frame_decompresses_one_group_at_a_time(grouped, tmp_path, monkeypatch):
    read = []
    real = _columnar._read
    monkeypatch.setattr(_columnar, "_read", lambda src, chosen: read.append(chosen) or real(src, chosen))
    value = wide_frame()
    used, data = _encoded(value, "zstd")
    pd.testing.assert_frame_equal(codecs.decode(used, _mapped(data, tmp_path)), value, check_exact=True)
    assert len(read) > 1 and sorted(i for fields in read for i in fields) == list(range(value.shape[1]))
    read.clear()  # a file written before the marker: decompressed at once, still by groups
    back = codecs.decode(codecs.ARROW, _mapped(_without_marker(value), tmp_path))
    pd.testing.assert_frame_equal(back, value, check_exact=True)
    assert not read


def test_zstd_frames_are_written_at_the_level_chosen(monkeypatch):
    value = pd.DataFrame({"n": np.random.default_rng(1).integers(0, 1000, 200_000)})
    default, sizes = _columnar.ZSTD_LEVEL, {}
    for level in (default, 9):
        monkeypatch.setattr(_columnar, "ZSTD_LEVEL", level)
        used, data = _encoded(value, "zstd")
        pd.testing.assert_frame_equal(codecs.decode(used, data), value, check_exact=True)
        sizes[level] = len(data)
    assert sizes[9] < sizes[default] < value["n"].nbytes


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_compressed_streams_start_with_small_batches_that_double(monkeypatch, tmp_path, compression):
    import pyarrow.ipc as ipc

    monkeypatch.setattr(_columnar, "FIRST_BATCH", 64 << 10)
    monkeypatch.setattr(_columnar, "BATCH_ROWS", 12_000)
    value = wide_frame(40_000)
    used, data = _encoded(value, compression)
    reader = ipc.open_file(data)
    rows = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    assert sum(rows) == len(value)
    if compression:  # small first, then twice as many rows each time, up to BATCH_ROWS
        assert rows[0] < rows[1] < rows[2] and max(rows) == 12_000
        assert all(abs(b - min(2 * a, 12_000)) <= 1 for a, b in zip(rows[:-2], rows[1:-1], strict=True))
    else:
        assert rows == [40_000]  # one buffer per column, usable where it lies
    pd.testing.assert_frame_equal(codecs.decode(used, _mapped(data, tmp_path)), value, check_exact=True)


def test_a_compressed_group_of_many_batches_is_decompressed_on_threads_and_comes_back_equal(
        monkeypatch, tmp_path, grouped):  # fmt: skip
    import threading

    import pyarrow.ipc as ipc

    monkeypatch.setattr(_columnar, "FIRST_BATCH", 64 << 10)
    monkeypatch.setattr(_columnar, "BATCH_ROWS", 12_000)
    value = wide_frame(40_000)
    used, data = _encoded(value, "zstd")
    threads: set[str] = set()
    real = ipc.RecordBatchFileReader.get_batch

    def get_batch(self, i):
        threads.add(threading.current_thread().name)
        return real(self, i)

    monkeypatch.setattr(ipc.RecordBatchFileReader, "get_batch", get_batch)
    pd.testing.assert_frame_equal(codecs.decode(used, _mapped(data, tmp_path)), value, check_exact=True)
    assert len(threads) > 1 and any(t.startswith("durablenb-codec") for t in threads)


def _fixed_width(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(11)
    return pd.DataFrame({
        "seq": np.arange(n), "v": rng.random(n), "f": rng.random(n).astype(np.float32),
        "c": pd.Categorical.from_codes(rng.integers(0, 3, n), ["lo", "mid", "hi"], ordered=True),
        "at": pd.date_range("2013-01-01", periods=n, freq="s", tz="Europe/Paris"),
        "naive": pd.date_range("2013-01-01", periods=n, freq="ms"),
    })  # fmt: skip


@pytest.mark.parametrize("source", ["mapped", "bytes"])
def test_a_compressed_fixed_width_frame_is_assembled_batch_by_batch(monkeypatch, tmp_path, source):
    """Each batch of each column goes straight into the column's final array: equal,
    writable, and no group is converted by Arrow."""
    from durablenb.codecs import _assembled

    monkeypatch.setattr(_columnar, "FIRST_BATCH", 64 << 10)
    monkeypatch.setattr(_columnar, "BATCH_ROWS", 12_000)
    value = _fixed_width(40_000)
    used, data = _encoded(value, "zstd")
    made = []
    whole = _assembled.assembled
    monkeypatch.setattr(_assembled, "assembled", lambda *a: made.append(r := whole(*a)) or r)
    monkeypatch.setattr(_columnar, "_to_pandas", lambda *a: pytest.fail("converted by Arrow"))
    back = codecs.decode(used, _mapped(data, tmp_path) if source == "mapped" else data)
    assert made and made[0] is not None
    pd.testing.assert_frame_equal(back, value, check_exact=True)
    back.loc[5, ["seq", "c", "at"]] = [-1, "hi", pd.Timestamp("2000-01-01", tz="Europe/Paris")]
    assert back.loc[5, "seq"] == -1 and back.loc[5, "c"] == "hi"


@pytest.mark.parametrize("column", ["v", "c", "at"])
def test_a_null_in_a_later_batch_sends_the_frame_to_arrows_conversion(monkeypatch, tmp_path, column):
    monkeypatch.setattr(_columnar, "FIRST_BATCH", 64 << 10)
    monkeypatch.setattr(_columnar, "BATCH_ROWS", 12_000)
    value = _fixed_width(40_000)
    value.loc[39_000, column] = None
    used, data = _encoded(value, "zstd")
    pd.testing.assert_frame_equal(codecs.decode(used, _mapped(data, tmp_path)), value, check_exact=True)


def test_groups_split_columns_by_their_bytes():
    value = pd.DataFrame({f"c{i}": np.arange(10, dtype=np.int64) for i in range(20)})
    value["small"] = np.arange(10, dtype=np.int8)
    schema = _columnar._to_table(value).schema
    fields = list(range(21))
    groups = _columnar._groups(schema, fields)
    assert [i for g in groups for i in g] == fields
    assert len(groups) <= 2 * _columnar.GROUPS


@pytest.mark.parametrize("sizes", [[], [10], [_digest.STEP], [_digest.STEP + 1],
                                   [3, _digest.STEP - 3, 5 << 20, 7, 1 << 20, 2 * _digest.STEP]])
def test_hashes_that_follow_a_file_match_its_bytes(tmp_path, sizes):
    rng = np.random.default_rng(len(sizes))
    with open(tmp_path / "f", "w+b", buffering=0) as raw:
        w = HashingWriter(raw, follow=raw.fileno())
        chunks = [rng.bytes(n) for n in sizes]
        for chunk in chunks:
            assert w.write(chunk) == len(chunk)
        w.finish()
    payload = b"".join(chunks)
    assert w.size == len(payload) == (tmp_path / "f").stat().st_size
    assert w.ref == hashlib.sha256(payload).hexdigest() and w.crc == zlib.crc32(payload)


def test_a_failed_write_stops_its_hashes(tmp_path):
    blobs = FolderBlobs(tmp_path / "blobs")
    before = threading.active_count()

    def produce(f):
        f.write(b"x" * (9 << 20))
        raise ValueError("the encoder failed")

    with pytest.raises(ValueError, match="encoder failed"):
        blobs.put(produce)
    assert threading.active_count() == before
    assert not list((tmp_path / "blobs" / "tmp").iterdir())


def test_a_hash_that_fails_fails_the_write(tmp_path, monkeypatch):
    def broken(self, data):
        raise OSError(5, "input/output error")

    monkeypatch.setattr(_digest.FileDigest, "_fold_crc", broken)
    blobs = FolderBlobs(tmp_path / "blobs")
    with pytest.raises(StorageError, match="input/output error"):
        blobs.put_bytes(b"y" * (5 << 20))


def test_a_failed_hash_leaves_no_thread_behind(tmp_path, monkeypatch):
    monkeypatch.setattr(_digest.FileDigest, "_fold_crc", lambda self, data: 1 / 0)
    before = threading.active_count()
    with open(tmp_path / "f", "w+b", buffering=0) as raw:
        w = HashingWriter(raw, follow=raw.fileno())
        w.write(b"z" * (_digest.STEP + 3))
        with pytest.raises(ZeroDivisionError):
            w.finish()
    assert threading.active_count() == before


def test_postgres_blobs_are_sent_while_written_and_stored_once(schema, sql):
    from durablenb.engine import runtime
    from durablenb.store.blobs import ROW, PostgresBlobs

    blobs = PostgresBlobs(runtime.store())  # whatever the backend's default place
    payload = np.random.default_rng(9).bytes(2 * _digest.STEP + 12345)

    def chunks():
        query = f'SELECT ref, seq, length(data) FROM "{schema}".blob_chunks ORDER BY ref, seq'
        return sql.execute(query).fetchall()

    ref, size, crc = blobs.put_bytes(payload)
    assert (ref, size, crc) == (hashlib.sha256(payload).hexdigest(), len(payload), zlib.crc32(payload))
    stored = chunks()
    rows = 2 * _digest.STEP // ROW  # each piece sent as rows of ROW bytes, the last shorter
    assert stored == [(ref, i, ROW) for i in range(rows)] + [(ref, rows, 12345)]
    assert blobs.put_bytes(payload) == (ref, size, crc)  # identical: stored once
    assert chunks() == stored
    assert bytes(blobs.get(ref, crc=crc)) == payload

    def failing(f):
        f.write(payload)
        raise ValueError("the encoder failed")

    with pytest.raises(ValueError, match="encoder failed"):
        blobs.put(failing)
    assert chunks() == stored
    objects = sql.execute(f'SELECT ref, size, chunks FROM "{schema}".blob_objects').fetchall()
    assert objects == [(ref, size, rows + 1)]

    sql.execute(f"UPDATE \"{schema}\".blob_chunks SET data = overlay(data placing '\\xff'::bytea "
                "from 7) WHERE seq = 1")  # fmt: skip
    with pytest.raises(CorruptRecordError, match="fails its checksum"):
        blobs.get(ref, crc=crc)
    sql.execute(f'DELETE FROM "{schema}".blob_chunks WHERE seq = 2')
    with pytest.raises(CorruptRecordError, match="truncated"):
        blobs.get(ref, crc=crc)


def test_a_folder_blob_flushed_while_written_is_whole(tmp_path):
    blobs = FolderBlobs(tmp_path / "blobs")
    payload = np.random.default_rng(4).bytes(3 * _digest.FLUSH_STEP + 5)
    step = _digest.STEP
    ref, size, crc = blobs.put(lambda f: [f.write(payload[i:i + step]) for i in range(0, len(payload), step)])
    assert bytes(blobs.get(ref, crc=crc)) == payload and size == len(payload)



@pytest.mark.parametrize("compression", [None, "zstd"])
def test_a_postgres_blob_restores_from_a_private_mapping_equal_and_writable(schema, grouped, compression):
    from durablenb.engine import runtime
    from durablenb.store.blobs import PostgresBlobs

    blobs = PostgresBlobs(runtime.store(), compression)
    value = wide_frame()
    used: list[str] = []
    ref, size, crc = blobs.put(lambda f: used.append(codecs.write(value, codecs.ARROW, f, compression)))
    data = blobs.get(ref, crc=crc)
    assert isinstance(data, mmap.mmap) and len(data) == size and zlib.crc32(data) == crc
    back = codecs.decode(used[0], data)
    pd.testing.assert_frame_equal(back, value, check_exact=True)
    back.loc[0, "carrier"] = "UA"
    back.loc[2, "seq"] = -1
    assert back.loc[0, "carrier"] == "UA" and back.loc[2, "seq"] == -1
    again = blobs.get(ref)  # checked against its SHA-256 when no CRC is given
    pd.testing.assert_frame_equal(codecs.decode(used[0], again), value, check_exact=True)

    array = np.arange(300_000, dtype=np.float64)
    ref, _, crc = blobs.put(lambda f: codecs.write(array, codecs.NPY, f, None))
    restored = codecs.decode(codecs.NPY, blobs.get(ref, crc=crc))
    assert restored.flags.writeable and np.array_equal(restored, array)
    restored[0] = -1.0  # stays in this process: the stored blob is unchanged
    assert np.array_equal(codecs.decode(codecs.NPY, blobs.get(ref, crc=crc)), array)
    ref, size, crc = blobs.put_bytes(b"")
    assert size == 0 and bytes(blobs.get(ref, crc=crc)) == b""


def test_a_postgres_blob_that_fails_its_sha256_or_cannot_be_spooled_is_an_error(schema, sql, monkeypatch):
    from durablenb.engine import runtime
    from durablenb.store import blobs as blob_module

    blobs = blob_module.PostgresBlobs(runtime.store())
    payload = np.random.default_rng(2).bytes(_digest.STEP + 99)
    ref, _, crc = blobs.put_bytes(payload)
    assert bytes(blobs.get(ref)) == payload

    class Full(io.BytesIO):
        def fileno(self):
            raise AssertionError("never mapped")

        def write(self, data):
            raise OSError(28, "no space left on device")

    monkeypatch.setattr(blob_module.tempfile, "TemporaryFile", lambda *a, **k: Full())
    with pytest.raises(StorageError, match="no space left"):
        blobs.get(ref, crc=crc)

    def denied(*a, **k):
        raise OSError(13, "permission denied")

    monkeypatch.setattr(blob_module.tempfile, "TemporaryFile", denied)
    with pytest.raises(StorageError, match="permission denied"):
        blobs.get(ref, crc=crc)
    monkeypatch.undo()
    sql.execute(f'UPDATE "{schema}".blob_chunks SET data = set_byte(data, 2, 255 - get_byte(data, 2)) '
                "WHERE seq = 1")
    with pytest.raises(CorruptRecordError, match="fails its checksum"):
        blobs.get(ref)


def test_postgres_blob_rows_are_stored_without_compression(schema, sql):
    """The rows hold compressed or incompressible encodings: PostgreSQL must not try pglz
    on each of them (STORAGE EXTERNAL, set when the table is made)."""
    row = sql.execute(
        "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'data'",
        [f'"{schema}".blob_chunks'],
    ).fetchone()
    assert row == ("e",)


def test_an_object_store_blob_restores_from_a_private_mapping(grouped):
    fsspec = pytest.importorskip("fsspec")
    from durablenb.store.blobs import FsspecBlobs

    blobs = FsspecBlobs(f"memory://durablenb-{np.random.default_rng().integers(1 << 40)}/blobs")
    value = wide_frame()
    used: list[str] = []
    ref, size, crc = blobs.put(lambda f: used.append(codecs.write(value, codecs.ARROW, f, "zstd")))
    data = blobs.get(ref, crc=crc)
    assert isinstance(data, mmap.mmap) and len(data) == size and zlib.crc32(data) == crc
    back = codecs.decode(used[0], data)
    pd.testing.assert_frame_equal(back, value, check_exact=True)
    back.loc[2, "seq"] = -1
    pd.testing.assert_frame_equal(codecs.decode(used[0], blobs.get(ref)), value, check_exact=True)

    fs = fsspec.filesystem("memory")
    path = blobs._path(ref)
    damaged = bytearray(fs.cat_file(path))
    damaged[100] ^= 0xFF
    fs.pipe_file(path, bytes(damaged))
    with pytest.raises(CorruptRecordError, match="fails its checksum"):
        blobs.get(ref, crc=crc)
    fs.rm(path)
    with pytest.raises(CorruptRecordError, match="missing"):
        blobs.get(ref, crc=crc)

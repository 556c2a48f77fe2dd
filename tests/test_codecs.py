"""Codecs: every value comes back equal, in memory and through both stores' blob paths."""

from __future__ import annotations

import datetime as dt
import io
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from hypothesis.extra import pandas as hpd

import durablenb as dnb
from durablenb import codecs
from durablenb.engine import runtime

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def roundtrip(value, compression=None):
    codec = codecs.choose(value)
    enc = codecs.encode(value, codec)
    back = codecs.decode(enc.codec, enc.data, enc.checksum)
    if codec in (codecs.ARROW, codecs.NPY) and compression:
        sink = io.BytesIO()
        used = codecs.write(value, codec, sink, compression)
        back2 = codecs.decode(used, sink.getvalue())
        return codec, back, back2
    return codec, back, back


def same(a, b):
    if isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
        assert a.attrs == b.attrs
    elif isinstance(a, pd.Series):
        pd.testing.assert_series_equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype and a.shape == b.shape
    elif isinstance(a, (pa.Table, pa.RecordBatch)):
        assert a.equals(b)
    else:
        assert a == b and type(a) is type(b)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=5), kids, max_size=5),
    max_leaves=30,
)  # fmt: skip


@SETTINGS
@given(json_values)
def test_plain_values_round_trip(value):
    codec, back, _ = roundtrip(value)
    assert codec == "json"
    assert back == value


@SETTINGS
@given(st.tuples(st.integers(), st.text()) | st.sets(st.integers()) | st.binary()
       | st.complex_numbers(allow_nan=False) | st.dates() | st.datetimes())  # fmt: skip
def test_other_python_values_pickle(value):
    codec, back, _ = roundtrip(value)
    assert codec == "pickle"
    same(value, back)


@SETTINGS
@given(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(max_dims=3, max_side=6)))
def test_numpy_arrays_round_trip(arr):
    codec, back, back2 = roundtrip(arr, "zstd")
    assert codec == "npy"
    for b in (back, back2):
        np.testing.assert_array_equal(arr, b)
        assert b.dtype == arr.dtype


frames = hpd.data_frames(
    columns=[
        hpd.column("i", dtype=np.int64),
        hpd.column("f", dtype=np.float64),
        hpd.column("b", dtype=bool),
        hpd.column("s", elements=st.text(max_size=8)),
        hpd.column("t", dtype="datetime64[ns]"),
    ],
    index=hpd.range_indexes(max_size=30),
)


@SETTINGS
@given(frames)
def test_hypothesis_frames_round_trip(df):
    codec, back, back2 = roundtrip(df, "lz4")
    assert codec == ("arrow" if len(df) else "pickle")
    same(df, back)
    same(df, back2)


def mixed_frame(n=50):
    rng = np.random.default_rng(1)
    df = pd.DataFrame({
        "id": np.arange(n),
        "x": rng.random(n),
        "carrier": pd.Categorical(rng.choice(["AA", "DL", "UA"], n), categories=["UA", "DL", "AA"],
                                  ordered=True),
        "when": pd.date_range("2013-01-01", periods=n, freq="h", tz="America/New_York"),
        "naive": pd.date_range("2013-01-01", periods=n, freq="D"),
        "delay": pd.array([None if i % 7 == 0 else i for i in range(n)], dtype="Int64"),
        "flag": pd.array([None if i % 5 == 0 else i % 2 == 0 for i in range(n)], dtype="boolean"),
        "name": pd.array([None if i % 9 == 0 else f"n{i}" for i in range(n)], dtype="string"),
        "gap": pd.to_timedelta(np.arange(n), unit="s"),
    }, index=pd.Index([f"k{i}" for i in range(n)], name="key"))  # fmt: skip
    df.attrs = {"source": "nycflights13", "rows": n}
    return df


@pytest.mark.parametrize("make", [
    mixed_frame,
    lambda: mixed_frame().set_index(["carrier", "id"]),
    lambda: mixed_frame().iloc[:0],
    lambda: mixed_frame()["carrier"],
    lambda: mixed_frame()["when"].rename(None),
    lambda: mixed_frame()["delay"].rename(7),
    lambda: pd.DataFrame({1: [1, 2], 2: ["a", "b"]}),                # int column names: pickle
    lambda: pd.DataFrame({"o": [1, "a", None]}, dtype=object),        # mixed objects: pickle
    lambda: pd.DataFrame({("a", "b"): [1]}),                          # multi-level columns: pickle
    lambda: pd.DataFrame({"p": pd.period_range("2020", periods=3, freq="M")}),
    lambda: pa.table({"a": [1, 2, None], "b": ["x", None, "z"]}),
    lambda: pa.record_batch({"a": [1.5, 2.5]}),
    lambda: np.array(["a", "bc"]),
    lambda: np.arange(12, dtype=np.int16).reshape(3, 4).T,
    lambda: np.array(["2020-01-01", "2021-06-30"], dtype="datetime64[D]"),
])  # fmt: skip
def test_columnar_values_round_trip_exactly(make):
    value = make()
    for compression in (None, "lz4", "zstd"):
        _, back, back2 = roundtrip(value, compression)
        same(value, back)
        same(value, back2)


def test_frames_that_arrow_would_change_are_pickled():
    assert codecs.choose(pd.DataFrame({1: [1]})) == "pickle"
    assert codecs.choose(pd.DataFrame({"o": [1, "a"]}, dtype=object)) == "pickle"
    df = pd.DataFrame({"a": [1]})
    df.attrs = {"fn": len}
    assert codecs.choose(df) == "pickle"
    assert codecs.choose(mixed_frame()) == "arrow"


def test_checksum_catches_damage():
    enc = codecs.encode(mixed_frame())
    damaged = bytearray(enc.data)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(dnb.CorruptRecordError, match="checksum"):
        codecs.decode(enc.codec, bytes(damaged), enc.checksum)


# -- through the store: inline records and blobs, on both backends ---------------------


@pytest.fixture
def small_threshold(schema, monkeypatch):
    monkeypatch.setenv("DURABLENB_BLOB_THRESHOLD", "10000")
    dnb.connect(schema=schema)  # settings are read when connecting


def big_frame(n=20_000, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "i": np.arange(n), "x": rng.random(n),
        "cat": pd.Categorical(rng.choice([f"c{k}" for k in range(20)], n)),
        "t": pd.date_range("2013-01-01", periods=n, freq="min", tz="UTC"),
    })  # fmt: skip


def test_large_outputs_live_in_blobs_and_are_stored_once(schema, small_threshold, sql, backend):
    frame = big_frame()
    arr = np.random.default_rng(3).random(5000)

    @dnb.step
    def make(k):
        return frame if k < 2 else arr

    @dnb.step
    def plain():
        return {"rows": list(range(5000))}  # pickled, then a blob

    @dnb.workflow
    def wf():
        return [make(0), make(1), make(2), plain()]

    wf()
    out = wf()
    same(frame, out[0])
    same(frame, out[1])
    same(arr, out[2])
    assert out[3] == {"rows": list(range(5000))}
    steps = sql.execute(
        f'SELECT codec, blob, output IS NULL FROM "{schema}".steps ORDER BY position'
    ).fetchall()
    assert [s[0].split("+")[0] for s in steps] == ["arrow", "arrow", "npy", "pickle"]
    assert all(s[1] and s[2] for s in steps)
    assert steps[0][1] == steps[1][1]  # the same frame twice: one blob
    store = runtime.store()
    kind = type(store.blobs).__name__
    assert kind == ("FolderBlobs" if backend == "embedded" else "PostgresBlobs")
    if kind == "PostgresBlobs":
        n = sql.execute(f'SELECT count(*) FROM "{schema}".blob_objects').fetchone()[0]
        assert n == 4  # frame (once), array, dict, and the workflow's output list


def test_damaged_or_missing_blob_is_a_clear_error(schema, small_threshold, sql):
    frame = big_frame()

    @dnb.step
    def make():
        return frame

    @dnb.workflow
    def wf():
        return make()

    wf()
    ref = sql.execute(f'SELECT blob FROM "{schema}".steps').fetchone()[0]
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")
    blobs = runtime.store().blobs
    if type(blobs).__name__ == "FolderBlobs":
        path = blobs._path(ref)
        data = bytearray(path.read_bytes())
        data[100] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        sql.execute(
            f"UPDATE \"{schema}\".blob_chunks SET data = overlay(data placing '\\xff'::bytea from 101)"
        )
    with pytest.raises(dnb.CorruptRecordError, match="fails its checksum") as info:
        wf()
    assert "make" in str(info.value)
    blobs.delete([ref])
    with pytest.raises(dnb.CorruptRecordError, match="missing"):
        wf()
    assert dnb.workflows().loc[0, "status"] == "interrupted"


def test_large_workflow_inputs_and_outputs_use_blobs(schema, small_threshold, sql):
    frame = big_frame()

    @dnb.workflow
    def echo(df):
        return df.assign(y=df.x * 2)

    out = echo(frame)
    row = sql.execute(f'SELECT inputs_blob, output_blob FROM "{schema}".workflows').fetchone()
    assert row[0] and row[1]
    same(out, echo(frame))  # the recorded output, read back from its blob
    assert dnb.fork(echo.id_for(frame)).result(timeout=30).equals(out)  # inputs from their blob


def test_blob_folder_can_be_chosen(schema, tmp_path, monkeypatch, small_threshold):
    monkeypatch.setenv("DURABLENB_BLOB_URL", str(tmp_path / "shared-blobs"))
    monkeypatch.setenv("DURABLENB_COMPRESSION", "zstd")
    dnb.connect(schema=schema)
    store = runtime.store()
    assert type(store.blobs).__name__ == "FolderBlobs" and store.blobs.compression == "zstd"

    @dnb.step
    def make():
        return big_frame()

    @dnb.workflow
    def wf():
        return make()

    wf()
    same(big_frame(), wf())
    files = [p for p in (tmp_path / "shared-blobs").rglob("*") if p.is_file()]
    assert len(files) >= 1 and os.path.getsize(files[0]) > 0
    assert dnb.steps(wf.id_for()).loc[0, "codec"] == "arrow"


def test_when_a_step_cannot_be_encoded_nothing_half_written_remains(schema, small_threshold):
    class Opaque:
        def __reduce__(self):
            raise TypeError("no")

    @dnb.step
    def bad():
        return [Opaque()] * 3

    @dnb.workflow
    def wf():
        return bad()

    with pytest.raises(dnb.UnserializableOutputError, match="bad"):
        wf()
    st_ = dnb.steps(wf.id_for())
    assert list(st_["status"]) == ["failed"]
    assert dt.datetime.now(dt.timezone.utc) > st_.loc[0, "started_at"]


def test_restored_frames_can_be_modified(schema, small_threshold):
    frame = big_frame()

    @dnb.step
    def make():
        return frame

    @dnb.workflow
    def wf():
        return make()

    wf()
    back = dnb.output(wf.id_for(), 0)
    back.loc[0, "x"] = -1.0
    back["i"] += 1
    back["cat"] = back["cat"].cat.add_categories(["new"])
    back.loc[1, "cat"] = "new"
    assert back.loc[0, "x"] == -1.0 and back.loc[0, "i"] == 1 and back.loc[1, "cat"] == "new"
    same(frame, dnb.output(wf.id_for(), 0))  # the blob is intact


POLARS = """
import datetime as dt
import json
import polars as pl

def frame(n):
    return pl.DataFrame({
        "i": list(range(n)), "s": [f"x{i % 7}" for i in range(n)], "f": [i / 3 for i in range(n)],
        "t": [dt.datetime(2024, 1, 1) + dt.timedelta(minutes=i) for i in range(n)],
        "c": pl.Series([f"c{i % 3}" for i in range(n)], dtype=pl.Categorical),
        "n": [None if i % 5 == 0 else i for i in range(n)],
    })

@dnb.step
def make(n):
    hit("make")
    return frame(n)

@dnb.workflow
def wf():
    return [make(20), make(60_000)]  # one inline, one a blob

with dnb.workflow_id("polars"):
    small, big = wf()
ok = [small.equals(frame(20)), big.equals(frame(60_000)), big.schema == frame(60_000).schema,
      type(big).__module__.split(".")[0]]
print(json.dumps(ok))
"""


def test_polars_frames_round_trip_through_arrow(run_child, effects, sql, schema):
    pytest.importorskip("polars")  # an optional extra, installed by `make test`
    env = {"DURABLENB_BLOB_THRESHOLD": "100000"}
    first = run_child(POLARS, env=env)
    assert json.loads(first.stdout) == [True, True, True, "polars"], first.stderr[-2000:]
    sql.execute(f"UPDATE \"{schema}\".workflows SET status = 'running'")  # replay from records
    again = run_child(POLARS, env=env)
    assert json.loads(again.stdout) == [True, True, True, "polars"], again.stderr[-2000:]
    assert effects.count("make") == 2
    codecs_used = [r[0] for r in sql.execute(f'SELECT codec FROM "{schema}".steps ORDER BY position')]
    assert all(c.startswith("arrow") for c in codecs_used)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("big", [False, True])
def test_ndarray_subclasses_keep_their_type_and_mask(schema, big):
    import numpy as np

    import durablenb as dnb

    n = 300_000 if big else 5  # large ones go to the blob store
    masked = np.ma.masked_array(np.arange(n, dtype=float), mask=np.arange(n) % 3 == 0)
    rec = np.rec.fromarrays([np.arange(n), np.arange(n) * 0.5], names="seq,half")
    values_ = {"masked": masked, "rec": rec, "matrix": np.asmatrix(np.eye(3))}

    @dnb.step
    def emit(name):
        return values_[name]

    @dnb.workflow
    def wf(tag):
        return [len(emit(k)) for k in values_]

    wf(big)
    back = {k: dnb.output(wf.id_for(big), i) for i, k in enumerate(values_)}  # step records
    assert type(back["masked"]) is np.ma.MaskedArray
    assert (back["masked"].mask == masked.mask).all() and back["masked"].sum() == masked.sum()
    assert type(back["rec"]) is np.recarray and back["rec"].half[-1] == rec.half[-1]
    assert type(back["matrix"]) is np.matrix

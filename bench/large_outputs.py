"""Checkpointing large DataFrames: write and restore MB/s and peak extra memory.

    python bench/large_outputs.py [--sizes 10,80,400] [--dsn URL] [--skip dbos,joblib]

Frames of mixed columns (an int sequence, random floats, a 20-value string category,
timestamps), sized by their memory. For each size, every method runs in a fresh process:

- durablenb, blobs in a folder (the embedded default) and blobs in PostgreSQL (the
  default with a server URL): write = a one-step workflow whose step returns the frame
  (encode, blob write and fsync, record commit); restore = the replay of that step;
- pickle + one bytea INSERT / SELECT, on the same database;
- DBOS (``dbos`` from PyPI), the same one-step workflow on the same database; restore =
  reading the step's recorded output back (``DBOS.list_workflow_steps``);
- joblib.Memory on local disk: first call (write) and cached call (restore);
- the disk: the frame's size in random bytes (made before the timing) written to a new file
  with fdatasync, then read back, in the same order and number as the others.

The disk is also timed *alongside* the folder blobs: in their process, a new file of the
frame's size written with fdatasync just before or just after each timed write (in turns).
A write's speed here depends on the memory the system finds for the new file's pages: on a
virtual machine, memory freed moments ago is reused many times faster than memory the host
has reclaimed, so a separate process can see a disk several times faster or slower than
the one the blobs met. The target "75 % of the disk" is checked against this figure.

Times are medians of 3 runs (1 at 400 MB), printed with the load average before and after
(they move with the machine's other work); peak memory is from the first run: the highest
RSS above the process's RSS just before the operation, sampled every 2 ms. Every method
first checkpoints a 2 MB frame (imports and first-call costs); each timed write has new
content, so none is a deduplicated no-op. Without --dsn the embedded server is used (a
temporary DURABLENB_HOME).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

METHODS = ["durablenb-folder", "durablenb-postgres", "pickle+bytea", "dbos", "joblib", "disk"]


def make_frame(mb: int):
    import numpy as np
    import pandas as pd

    n = int(mb * 1e6 / 25)  # 8 + 8 + 1 + 8 bytes a row
    rng = np.random.default_rng(42)
    cats = [f"carrier-{k:02d}" for k in range(20)]
    return pd.DataFrame({
        "seq": np.arange(n, dtype=np.int64),
        "value": rng.random(n),
        "carrier": pd.Categorical.from_codes(rng.integers(0, 20, n, dtype=np.int8), cats),
        "at": pd.date_range("2013-01-01", periods=n, freq="s", tz="UTC"),
    })  # fmt: skip


class Peak:
    """Highest RSS above the starting RSS while the block runs."""

    def __init__(self) -> None:
        import psutil

        self.proc = psutil.Process()

    def __enter__(self) -> Peak:
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = False
        self.t = threading.Thread(target=self._sample, daemon=True)
        self.t.start()
        return self

    def _sample(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 1e6


def timed(fn):
    with Peak() as p:
        t = time.perf_counter()
        out = fn()
        el = time.perf_counter() - t
    return el, p.extra_mb, out


def checkpointer():
    """``write(frame) -> workflow id``: a new run of a one-step workflow whose step returns
    the frame, on the connection made before."""
    import durablenb as dnb

    holder = {}

    @dnb.step
    def produce():
        return holder["df"]

    @dnb.workflow
    def checkpoint(t):
        return len(produce())

    def write(df):
        holder["df"] = df
        t = uuid.uuid4().hex
        checkpoint(t)
        return checkpoint.id_for(t)

    return write


def setup(method: str, dsn: str, home: str):
    """``(write(frame) -> token, read(token) -> frame, describe(token) -> str, close())``."""
    tag = uuid.uuid4().hex[:8]
    if method.startswith("durablenb"):
        import durablenb as dnb
        from durablenb.engine import runtime

        if method == "durablenb-folder":
            os.environ["DURABLENB_BLOB_URL"] = str(Path(home) / "blobs")
        schema = f"bench_{tag}"
        dnb.connect(dsn, schema=schema)
        write = checkpointer()

        def read(wid):
            return dnb.output(wid, 0)

        def describe(wid):
            rec = runtime.store().get_step(wid, 0)
            return f"{rec.codec}, {rec.output_bytes / 1e6:.0f} MB stored"

        def close():
            runtime.disconnect()
            import psycopg

            with psycopg.connect(dsn, autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')

        return write, read, describe, close
    if method == "pickle+bytea":
        import psycopg

        c = psycopg.connect(dsn, autocommit=True)
        c.execute(f"CREATE TABLE bench_{tag} (id int PRIMARY KEY, v bytea)")
        ids = iter(range(10**6))

        def write(df):
            k = next(ids)
            c.execute(f"INSERT INTO bench_{tag} VALUES (%s, %b)", [k, pickle.dumps(df, protocol=5)])
            return k

        def read(k):
            row = c.execute(f"SELECT v FROM bench_{tag} WHERE id = %s", [k], binary=True).fetchone()
            return pickle.loads(row[0])

        def close():
            c.execute(f"DROP TABLE bench_{tag}")
            c.close()

        return write, read, lambda k: "pickle 5 in bytea", close
    if method == "dbos":
        import logging

        from dbos import DBOS, SetWorkflowID

        url = "postgresql+psycopg://" + dsn.split("://", 1)[1]
        holder = {}

        @DBOS.step()
        def produce():
            return holder["df"]

        @DBOS.workflow()
        def checkpoint():
            return len(produce())

        DBOS(config={"name": "durablenb_bench_large", "system_database_url": url,
                     "run_admin_server": False, "log_level": "WARNING"})  # fmt: skip
        DBOS.launch()
        logging.getLogger("dbos").setLevel(logging.WARNING)

        def write(df):
            holder["df"] = df
            wid = f"bench-{uuid.uuid4().hex}"
            with SetWorkflowID(wid):
                checkpoint()
            return wid

        def read(wid):
            return DBOS.list_workflow_steps(wid)[0]["output"]

        return write, read, lambda w: "base64 pickle in TEXT", lambda: DBOS.destroy(destroy_registry=True)
    if method == "joblib":
        import joblib

        cache = joblib.Memory(Path(home) / f"joblib-{tag}", verbose=0)
        holder = {}

        @cache.cache
        def produce(t):
            return holder["df"]

        def write(df):
            holder["df"] = df
            t = uuid.uuid4().hex
            produce(t)
            return t

        return write, produce, lambda t: "joblib pickle + raw arrays (no fsync)", lambda: None
    if method == "disk":
        made: dict[int, bytes] = {}

        def data_for(df) -> bytes:  # made before the timed write: only the disk is timed
            size = int(df.memory_usage(index=True, deep=True).sum())
            return made.setdefault(size, os.urandom(1 << 20) * max(1, size >> 20))

        def write(df):
            data = made[int(df.memory_usage(index=True, deep=True).sum())]
            path = Path(home) / f"disk-{uuid.uuid4().hex}.bin"
            with open(path, "wb") as f:
                f.write(data)
                f.flush()
                os.fdatasync(f.fileno())
            return path

        write.prepare = data_for  # type: ignore[attr-defined]
        return write, lambda path: path.read_bytes(), lambda p: "fdatasync / page cache", lambda: None
    raise SystemExit(f"unknown method {method}")


def worker(method: str, mb: int, dsn: str, home: str) -> dict:
    write, read, describe, close = setup(method, dsn, home)
    try:
        small = make_frame(2)  # warm up: imports and first-call costs, same path
        prepare = getattr(write, "prepare", lambda df: None)
        prepare(small)
        read(write(small))
        df = make_frame(mb)
        size = df.memory_usage(index=True, deep=True).sum() / 1e6
        prepare(df)  # the disk's bytes: random, the frame's size, nothing to encode
        repeats = 3 if mb <= 100 else 1
        disk = _Alongside(df, home) if method == "durablenb-folder" else None
        first = (lambda: timed(lambda: write(df)))  # noqa: E731
        w, wmem, token = disk.around(0, first) if disk else first()
        info = describe(token)
        r, rmem, back = timed(lambda: read(token))
        ok = len(back) > 0 if method == "disk" else back.equals(df)
        del back
        ws, rs = [w], [r]
        for k in range(repeats - 1):  # medians: these machines are shared and noisy
            df.loc[0, "value"] = -1.0 - k  # new content: no write is a deduplicated no-op
            step = (lambda: timed(lambda: write(df))[0])  # noqa: E731
            ws.append(disk.around(k + 1, step) if disk else step())
            rs.append(timed(lambda: read(token))[0])
        w, r = statistics.median(ws), statistics.median(rs)
    finally:
        close()
    return {"method": method, "mb": mb, "frame_mb": size, "write_s": w, "read_s": r,
            "write_mb": wmem, "read_mb": rmem, "ok": bool(ok), "info": info,
            "disk_s": statistics.median(disk.times) if disk else None,
            "pairs": list(zip(ws, disk.times, strict=True)) if disk else None}  # fmt: skip


class _Alongside:
    """The disk's write speed in this process, timed next to each write being measured."""

    def __init__(self, df, home: str) -> None:
        size = int(df.memory_usage(index=True, deep=True).sum())
        self.data = os.urandom(1 << 20) * max(1, size >> 20)
        self.home = home
        self.times: list[float] = []

    def _write(self) -> None:
        path = Path(self.home) / f"alongside-{uuid.uuid4().hex}.bin"
        t = time.perf_counter()
        with open(path, "wb") as f:
            f.write(self.data)
            f.flush()
            os.fdatasync(f.fileno())
        self.times.append(time.perf_counter() - t)

    def around(self, k: int, measured):
        """*measured()*, with a disk write before it (even *k*) or after it (odd)."""
        if k % 2 == 0:
            self._write()
        out = measured()
        if k % 2:
            self._write()
        return out


def _load(avg: tuple[float, float, float]) -> str:
    """A load average as uptime shows it (1, 5 and 15 minutes): the machine's other work."""
    return ", ".join(f"{x:.2f}" for x in avg)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,80,400")
    ap.add_argument("--dsn", default=None)
    ap.add_argument("--skip", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", nargs=4, metavar=("METHOD", "MB", "DSN", "HOME"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        method, mb, dsn, home = args.worker
        print(json.dumps(worker(method, int(mb), dsn, home)))
        return 0

    home = tempfile.mkdtemp(prefix="durablenb-large-", dir=str(HERE.parent))
    dsn = args.dsn
    started = None
    load_before = os.getloadavg()
    if dsn is None:
        from durablenb import server

        started = Path(home)
        dsn = server.start(started)
    skip = {s for s in args.skip.split(",") if s}
    results = []
    try:
        for mb in [int(s) for s in args.sizes.split(",")]:
            for method in METHODS:
                if method in skip:
                    continue
                out = subprocess.run([sys.executable, __file__, "--worker", method, str(mb), dsn, home],
                                     capture_output=True, text=True)  # fmt: skip
                if out.returncode != 0:
                    print(f"{method} {mb} MB failed:\n{out.stderr[-2000:]}", file=sys.stderr)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                results.append(res)
                print(f"  {method:<20} {mb:>4} MB  write {res['frame_mb'] / res['write_s']:8.0f} MB/s"
                      f"  restore {res['frame_mb'] / res['read_s']:8.0f} MB/s", file=sys.stderr)  # fmt: skip
    finally:
        if started is not None:
            from durablenb import server

            server.stop(started)
        import shutil

        shutil.rmtree(home, ignore_errors=True)

    print(f"\nlarge outputs — {'embedded' if args.dsn is None else 'server'} PostgreSQL; "
          "MB/s of the frame's in-memory size; extra MB = peak RSS above the start; load average "
          f"{_load(load_before)} before, {_load(os.getloadavg())} after\n")  # fmt: skip
    print("| frame | method | write MB/s | restore MB/s | write extra MB | restore extra MB | ok "
          "| stored as |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['mb']} MB | {r['method']} | {r['frame_mb'] / r['write_s']:.0f} | "
              f"{r['frame_mb'] / r['read_s']:.0f} | {r['write_mb']:.0f} | {r['read_mb']:.0f} | "
              f"{'yes' if r['ok'] else 'NO'} | {r['info']} |")  # fmt: skip
    for r in results:
        if r.get("disk_s"):
            disk, blobs = r["frame_mb"] / r["disk_s"], r["frame_mb"] / r["write_s"]
            mb = r["frame_mb"]
            pairs = ", ".join(f"{mb / w:.0f}/{mb / d:.0f}" for w, d in r["pairs"])
            print(f"\n{r['mb']} MB: the disk alongside the folder blobs' writes: {disk:.0f} MB/s "
                  f"(they wrote at {blobs / disk:.0%} of it)")
            print(f"  each write, blob/disk MB/s: {pairs}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

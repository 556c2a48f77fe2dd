"""How to write a batch of step records: µs per record of the ways PostgreSQL offers, in one run.

    python bench/batch_writes.py [--dsn URL] [--batches 15]

Each way writes batches of tiny step records (a small JSON output, a label, the columns a
`dnb.map` item fills) into a fresh durablenb schema's ``steps`` table, under synchronous
commit (``full`` durability) and asynchronous commit (``kernel``), in rounds that interleave
the ways; figures are medians per record of wall time and of this process's CPU time:

- *unnest*: the store's own statement (`durablenb.store._batch`): ``INSERT … SELECT FROM
  unnest(arrays)``, one value per column that is the same in every record, one statement;
- *unnest, ON CONFLICT*: the same with ``ON CONFLICT DO NOTHING RETURNING position`` (what
  the store sends only after a unique violation);
- *VALUES*: one multi-row ``INSERT … VALUES (…), (…) ON CONFLICT DO NOTHING``;
- *COPY*: binary COPY straight into ``steps`` (a transaction of its own under ``kernel``,
  to turn synchronous commit off);
- *COPY + INSERT*: binary COPY into a temporary table, then ``INSERT … SELECT … ON CONFLICT
  DO NOTHING``, in one transaction;
- *unnest* again with 50 and 2,000 records a batch.

Without --dsn the embedded PostgreSQL is used (DURABLENB_HOME, default a temporary folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from durablenb import server  # noqa: E402
from durablenb.store import StepRecord, Store  # noqa: E402
from durablenb.store._batch import STEP_TYPES  # noqa: E402

COLUMNS = ["workflow_id", "position", "name", "kind", "status", "output", "codec", "checksum",
           "output_bytes", "attempts", "code_hash", "started_at", "finished_at", "label"]  # fmt: skip


class Batches:
    """Makes batches of fresh records, each at new positions of one workflow id."""

    def __init__(self) -> None:
        self.next = 0
        self.wid = "bench:" + uuid.uuid4().hex[:16]

    def __call__(self, n: int) -> list[StepRecord]:
        out = []
        for p in range(self.next, self.next + n):
            now, text = time.time(), str(p).encode()
            out.append(StepRecord(workflow_id=self.wid, position=p, name="__main__.tiny", kind="step",
                                  status="succeeded", output=text, codec="json", checksum=12345,
                                  output_bytes=len(text), attempts=1, code_hash="0123456789abcdef",
                                  started_at=now, finished_at=now, label=str(p)))  # fmt: skip
        self.next += n
        return out


def _rows(recs: list[StepRecord], times: Callable[[float], Any]) -> list[list[Any]]:
    return [[times(v) if c.endswith("_at") else v for c in COLUMNS for v in [getattr(r, c)]] for r in recs]


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def ways(store: Store, conn: psycopg.Connection) -> dict[str, Callable[[list[StepRecord], bool], None]]:
    q = store.qschema
    cur = conn.cursor()
    cur.execute(f"CREATE TEMP TABLE batch_tmp (LIKE {q}.steps)")

    def unnest(recs: list[StepRecord], asynchronous: bool, skip_held: bool = False) -> None:
        cur.execute(*store._q.insert_steps(recs, asynchronous, skip_held), prepare=True)

    def values(recs: list[StepRecord], asynchronous: bool) -> None:
        row = "(" + ", ".join("to_timestamp(%s)" if c.endswith("_at") else "%s" for c in COLUMNS) + ")"
        cfg = "(SELECT set_config('synchronous_commit', 'off', true)) cfg, " if asynchronous else ""
        sql = (f"INSERT INTO {q}.steps ({', '.join(COLUMNS)}) SELECT v.* FROM {cfg}(VALUES "
               + ", ".join([row] * len(recs)) + ") AS v ON CONFLICT DO NOTHING")  # fmt: skip
        cur.execute(sql, [v for r in _rows(recs, float) for v in r], prepare=True)

    def copy_into(table: str, recs: list[StepRecord]) -> None:
        types = ["timestamptz" if c.endswith("_at") else STEP_TYPES[c] for c in COLUMNS]
        with cur.copy(f"COPY {table} ({', '.join(COLUMNS)}) FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(types)
            for row in _rows(recs, _utc):
                cp.write_row(row)

    def copy(recs: list[StepRecord], asynchronous: bool) -> None:
        if not asynchronous:
            copy_into(f"{q}.steps", recs)
            return
        with conn.transaction():
            cur.execute("SELECT set_config('synchronous_commit', 'off', true)")
            copy_into(f"{q}.steps", recs)

    def copy_insert(recs: list[StepRecord], asynchronous: bool) -> None:
        with conn.transaction():
            if asynchronous:
                cur.execute("SELECT set_config('synchronous_commit', 'off', true)")
            copy_into("batch_tmp", recs)
            cur.execute(f"INSERT INTO {q}.steps SELECT * FROM batch_tmp ON CONFLICT DO NOTHING")
            cur.execute("TRUNCATE batch_tmp")

    return {"unnest": unnest, "unnest, ON CONFLICT": lambda r, a: unnest(r, a, True), "VALUES": values,
            "COPY": copy, "COPY + INSERT": copy_insert}  # fmt: skip


def measure(dsn: str, batches: int) -> dict[tuple[str, int, str], tuple[float, float]]:
    schema = "bench_" + uuid.uuid4().hex[:8]
    store = Store(dsn, schema=schema)
    results: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            chosen = ways(store, conn)
            plan = [(name, 500) for name in chosen] + [("unnest", 50), ("unnest", 2000)]
            make = Batches()
            for r in range(batches + 1):  # the first round warms up (prepared statements)
                for name, size in plan:
                    for mode in ("full", "kernel"):
                        recs = make(size)
                        t, cpu = time.perf_counter(), time.process_time()
                        chosen[name](recs, mode == "kernel")
                        wall, used = time.perf_counter() - t, time.process_time() - cpu
                        if r:
                            results.setdefault((name, size, mode), []).append((wall / size, used / size))
    finally:
        store.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return {key: (statistics.median(w for w, _ in got), statistics.median(c for _, c in got))
            for key, got in results.items()}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: embedded server)")
    ap.add_argument("--batches", type=int, default=15)
    args = ap.parse_args()
    home = None
    dsn = args.dsn
    if dsn is None:
        home = os.environ.get("DURABLENB_HOME") or tempfile.mkdtemp(prefix="durablenb-bench-")
        dsn = server.start(pathlib.Path(home))
    try:
        res = measure(dsn, args.batches)
    finally:
        if home is not None and not os.environ.get("DURABLENB_HOME"):
            server.stop(pathlib.Path(home))
            shutil.rmtree(home, ignore_errors=True)
    backend = "embedded" if args.dsn is None else "server"
    print(f"\nwriting a batch of step records — {backend} PostgreSQL, µs per record, medians of "
          f"{args.batches} batches\n")  # fmt: skip
    print(f"| {'way':<20} | {'batch':>5} | {'full: wall':>10} | {'kernel: wall':>12} | {'client CPU':>10} |")
    print(f"|{'-' * 22}|{'-' * 7}|{'-' * 12}|{'-' * 14}|{'-' * 12}|")
    for (name, size, mode), (wall, cpu) in res.items():
        if mode == "full":
            kernel = res[(name, size, "kernel")]
            print(f"| {name:<20} | {size:>5} | {wall * 1e6:10.1f} | {kernel[0] * 1e6:12.1f} | "
                  f"{(cpu + kernel[1]) / 2 * 1e6:10.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The figures behind the 10-million-item plan in docs/scaling.md, measured in one run.

    python bench/scale_plan.py [--dsn URL] [--records 200000]

- *bytes per record*: the growth of the ``steps`` table (heap, indexes, TOAST) per tiny
  `dnb.map` item record, after writing --records of them into one workflow;
- *records/s written*: batches of 500 records (the group commit's statement) from 1 and from
  4 connections at once, each its own workflow, under asynchronous commit (``kernel``) and
  synchronous commit (``full``);
- *commits/s*: single-record synchronous commits from 1 and from 8 connections at once
  (PostgreSQL flushes the log once for the commits that wait together);
- *records/s loaded*: how fast a resume reads the --records records of one workflow
  (`Lease.load`), and the memory they take in the kernel.

Without --dsn the embedded PostgreSQL is used (a temporary DURABLENB_HOME).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from durablenb import server  # noqa: E402
from durablenb.store import NewWorkflow, StepRecord, Store  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--dsn", help="PostgreSQL URL (default: embedded server)")
ap.add_argument("--records", type=int, default=200_000)
ARGS = ap.parse_args()
BATCH = 500


def records(wid: str, first: int, n: int) -> list[StepRecord]:
    now = time.time()
    return [StepRecord(workflow_id=wid, position=p, name="item", kind="step", status="succeeded",
                       output=b"%d" % p, codec="json", checksum=p, output_bytes=6, attempts=1,
                       code_hash="v2:0123456789abcdef", started_at=now, finished_at=now,
                       label=str(p)) for p in range(first, first + n)]  # fmt: skip


def begin(store: Store, wid: str) -> None:
    lease = store.lease(wid)
    lease.begin(NewWorkflow(id=wid, name="bench", args_digest=None, inputs=None, inputs_codec="none",
                            inputs_checksum=None, code_hash=None, executor="bench"))  # fmt: skip
    lease.close()


def write(store: Store, wid: str, n: int, asynchronous: bool) -> None:
    with store.connection() as conn:
        cur = conn.cursor()
        for first in range(0, n, BATCH):
            store.insert_steps_in(conn, records(wid, first, min(BATCH, n - first)), cur, asynchronous)


def parallel(k: int, fn: Callable[[int], None]) -> float:
    threads = [threading.Thread(target=fn, args=(i,)) for i in range(k)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def table_bytes(conn: psycopg.Connection, schema: str) -> int:
    row = conn.execute("SELECT pg_total_relation_size(%s)", [f'"{schema}".steps']).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    home = None
    dsn = ARGS.dsn
    if dsn is None:
        home = Path(tempfile.mkdtemp(prefix="durablenb-scale-"))
        dsn = server.start(home)
    schema = "scale_" + uuid.uuid4().hex[:8]
    store = Store(dsn, schema=schema)
    rows: list[tuple[str, str]] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as sql:
            n = ARGS.records
            wid = "big"
            begin(store, wid)
            before = table_bytes(sql, schema)
            t = parallel(1, lambda i: write(store, wid, n, True))
            sql.execute(f'VACUUM ANALYZE "{schema}".steps')
            per = (table_bytes(sql, schema) - before) / n
            rows.append(("bytes per record in PostgreSQL (heap + indexes)", f"{per:,.0f}"))
            rows.append(("records/s written, 1 connection, kernel", f"{n / t:,.0f}"))
            for k, asynchronous in ((4, True), (1, False), (4, False)):
                m = min(n, 100_000)
                ids = [f"w{k}-{asynchronous}-{i}" for i in range(k)]
                for w in ids:
                    begin(store, w)
                t = parallel(k, lambda i, ids=ids, m=m, a=asynchronous: write(store, ids[i], m, a))
                what = f"{k} connection{'s' * (k > 1)}, {'kernel' if asynchronous else 'full'}"
                rows.append((f"records/s written, {what}", f"{k * m / t:,.0f}"))
            for k in (1, 8):
                m = 2000
                ids = [f"c{k}-{i}" for i in range(k)]
                for w in ids:
                    begin(store, w)

                def commits(i: int, ids: list[str] = ids, m: int = m) -> None:
                    with store.connection() as conn:
                        for rec in records(ids[i], 0, m):
                            store.insert_step_in(conn, rec)

                t = parallel(k, commits)
                rows.append((f"synchronous commits/s, {k} connection{'s' * (k > 1)}", f"{k * m / t:,.0f}"))
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            lease = store.lease(wid)
            t0 = time.perf_counter()
            _, loaded = lease.load()
            t = time.perf_counter() - t0
            rss = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) * 1024
            lease.close()
            rows.append(("records/s loaded by a resume", f"{len(loaded) / t:,.0f}"))
            rows.append(("kernel memory per loaded record (bytes, peak RSS growth)",
                         f"{rss / len(loaded):,.0f}"))  # fmt: skip
            sql.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        store.close()
        if home is not None:
            server.stop(home)
            shutil.rmtree(home, ignore_errors=True)
    where = "embedded PostgreSQL" if ARGS.dsn is None else "server"
    print(f"\nscale figures — {where}, {ARGS.records:,} records of tiny map items, batches of {BATCH}\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |\n|{'-' * (width + 2)}|------:|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")


if __name__ == "__main__":
    main()

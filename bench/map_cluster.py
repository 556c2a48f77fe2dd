"""Items per second of a map of tiny items on a Dask cluster: plain Dask against
``dnb.map(executor=client)`` inside a workflow (every item recorded), on a LocalCluster of
two worker processes (one thread each) over TCP.

    python bench/map_cluster.py [--dsn URL] [--items 500] [--rounds 5]

Each round times, one after the other on the same cluster: *dask*, ``client.submit(tiny,
i, pure=False)`` for every item and ``distributed.as_completed(futures, with_results=True)``
to fetch each result as it ends (what a Dask user writes by hand); *dnb.map*, the same items
through ``dnb.map(tiny, items, executor=client)`` in a fresh workflow, which also pickles
each item with the function, records every outcome in PostgreSQL and returns the results in
input order. Figures are medians of --rounds; the ratio is the median of the per-round
ratios. Without --dsn the embedded PostgreSQL is used (DURABLENB_HOME, default a temporary
folder).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import uuid

import psycopg

import durablenb as dnb
from durablenb import server


def tiny(x: int) -> int:
    return x + 1


def time_dask(client, n: int) -> float:
    from distributed import as_completed

    t0 = time.perf_counter()
    futures = [client.submit(tiny, i, pure=False) for i in range(n)]
    got = [result for _, result in as_completed(futures, with_results=True)]
    took = time.perf_counter() - t0
    assert sorted(got) == [i + 1 for i in range(n)]
    return took


def time_dnb(client, n: int, wid: str) -> float:
    @dnb.workflow
    def mapped(n):
        return dnb.map(tiny, range(n), executor=client)

    t0 = time.perf_counter()
    with dnb.workflow_id(wid):
        got = mapped(n)
    took = time.perf_counter() - t0
    assert got == [i + 1 for i in range(n)]
    return took


def run(dsn: str, n: int, rounds: int) -> dict[str, list[float]]:
    from distributed import Client, LocalCluster

    schema = "bench_" + uuid.uuid4().hex[:8]
    dnb.connect(dsn, schema=schema)
    out: dict[str, list[float]] = {"dask": [], "dnb.map": []}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \
            Client(cl) as client:  # fmt: skip
        time_dask(client, 50)  # warm-up: workers import durablenb and cloudpickle once
        time_dnb(client, 50, "warm")
        for r in range(rounds):
            out["dask"].append(n / time_dask(client, n))
            out["dnb.map"].append(n / time_dnb(client, n, f"round-{r}"))
    from durablenb.engine import runtime

    runtime.disconnect()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: embedded server)")
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    home = None
    dsn = args.dsn
    if dsn is None:
        home = os.environ.get("DURABLENB_HOME") or tempfile.mkdtemp(prefix="durablenb-bench-")
        dsn = server.start(pathlib.Path(home))
    res = run(dsn, args.items, args.rounds)
    ratio = statistics.median(d / m for d, m in zip(res["dask"], res["dnb.map"], strict=True))
    backend = "embedded" if args.dsn is None else "server"
    print(f"\nmap of {args.items} tiny items on a LocalCluster (2 worker processes x 1 thread), "
          f"{backend} PostgreSQL, {args.rounds} rounds (medians)\n")  # fmt: skip
    print(f"| {'':<10} | {'items/s':>8} |")
    print(f"|{'-' * 12}|{'-' * 10}|")
    for name, values in res.items():
        print(f"| {name:<10} | {statistics.median(values):8.0f} |")
    print(f"\ndask / dnb.map: {ratio:.2f}x")
    if home is not None and not os.environ.get("DURABLENB_HOME"):
        server.stop(pathlib.Path(home))
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

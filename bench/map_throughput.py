"""Items per second of a map of tiny items: dnb.map (every item recorded) against DBOS's own
fan-out and joblib (nothing recorded), all in one run, on one database.

    python bench/map_throughput.py [--dsn URL] [--items 20000] [--rounds 3]

Systems, each timed from the call to the last result, in rounds that interleave them (so
that drift on a shared machine hits all of them alike); figures are medians of the rounds:

- dnb.map, threads: a workflow mapping a ``@dnb.step`` that returns its input over --items
  items on dnb.map's own 4 threads, under ``full`` and ``kernel`` durability; and the same
  with group commit off (a batch of one record: a commit per item, as before group commit);
- dnb.map, processes: ``processes=True`` (2 worker processes), --process-items items;
- dnb.map on Dask: ``executor=client`` on a LocalCluster of 2 worker processes, one thread
  each (when ``distributed`` is installed), --dask-items items;
- DBOS (``dbos`` from PyPI, its system database on the same server): a Queue on which each
  item is a workflow running one ``@DBOS.step`` (enqueued, then every result awaited), and
  one workflow calling a ``@DBOS.step`` per item in a loop, --dbos-items items each;
- joblib.Parallel: 4 threads and 2 loky processes, --items items, nothing recorded.

How a batch of records is written is compared by bench/batch_writes.py.

--repo DIR imports durablenb from DIR instead (an export of an earlier commit, to measure
"before"); systems that DIR cannot run are skipped. Without --dsn the embedded PostgreSQL is
used (DURABLENB_HOME, default a temporary folder). --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
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

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: embedded server)")
ap.add_argument("--items", type=int, default=20000)
ap.add_argument("--process-items", type=int, default=5000)
ap.add_argument("--dask-items", type=int, default=2000)
ap.add_argument("--dbos-items", type=int, default=1000)
ap.add_argument("--rounds", type=int, default=3)
ap.add_argument("--no-dbos", action="store_true")
ap.add_argument("--no-dask", action="store_true")
ap.add_argument("--only", default=None, help="comma-separated system names to run")
ap.add_argument("--repo", default=os.path.join(os.path.dirname(__file__), ".."))
ap.add_argument("--json", default=None, help="write the results to this file")
ARGS = ap.parse_args()
sys.path.insert(0, os.path.abspath(ARGS.repo))

import durablenb as dnb  # noqa: E402
from durablenb import server  # noqa: E402


def tiny_plain(x: int) -> int:
    return x


tiny = dnb.step(tiny_plain)


def dnb_map(durability: str, **kw: Any) -> Callable[[int, str], float]:
    @dnb.workflow(durability=durability)
    def mapped(n: int, tag: str) -> list[int]:
        return dnb.map(tiny, range(n), **kw)

    def run(n: int, tag: str) -> float:
        t0 = time.perf_counter()
        out = mapped(n, tag)
        took = time.perf_counter() - t0
        assert out == list(range(n))
        return took

    return run


def one_commit_per_item(run: Callable[[int, str], float]) -> Callable[[int, str], float] | None:
    """*run* with batches of one record (None when this durablenb has no group commit)."""
    try:
        from durablenb.engine import _groupcommit
    except ImportError:
        return None

    def single(n: int, tag: str) -> float:
        before = _groupcommit.BATCH_MAX
        _groupcommit.BATCH_MAX = 1
        try:
            return run(n, tag)
        finally:
            _groupcommit.BATCH_MAX = before

    return single


Systems = dict[str, tuple[int, Callable[[int, str], float]]]


def dask_systems(closing: list[Callable[[], None]]) -> Systems:
    if ARGS.no_dask:
        return {}
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return {}
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=":0")  # fmt: skip
    client = Client(cluster)
    closing += [client.close, cluster.close]
    try:
        dnb_map("full", executor=client)
    except Exception:  # a durablenb without executor=
        return {}
    return {f"dnb.map Dask 2 workers ({mode})": (ARGS.dask_items, dnb_map(mode, executor=client))
            for mode in ("full", "kernel")}  # fmt: skip


def dbos_systems(dsn: str, closing: list[Callable[[], None]]) -> Systems:
    if ARGS.no_dbos:
        return {}
    try:
        from dbos import DBOS
    except ImportError:
        return {}
    import logging

    url = "postgresql+psycopg://" + dsn[len("postgresql://"):] if dsn.startswith("postgresql://") else dsn

    @DBOS.step()
    def dbos_tiny(x: int) -> int:
        return x

    @DBOS.workflow()
    def one_item(x: int) -> int:
        return dbos_tiny(x)

    @DBOS.workflow()
    def loop(n: int, tag: str) -> list[int]:
        return [dbos_tiny(i) for i in range(n)]

    DBOS(config={"name": "durablenb_bench_map", "system_database_url": url,
                 "run_admin_server": False, "log_level": "WARNING"})  # fmt: skip
    DBOS.launch()
    queue = DBOS.register_queue("durablenb_bench_map")  # DBOS's defaults
    logging.getLogger("dbos").setLevel(logging.WARNING)
    closing.append(lambda: DBOS.destroy(destroy_registry=True))

    def queued(n: int, tag: str) -> float:
        t0 = time.perf_counter()
        handles = [queue.enqueue(one_item, i) for i in range(n)]
        out = [h.get_result() for h in handles]
        took = time.perf_counter() - t0
        assert out == list(range(n))
        return took

    def looped(n: int, tag: str) -> float:
        t0 = time.perf_counter()
        out = loop(n, tag)
        took = time.perf_counter() - t0
        assert out == list(range(n))
        return took

    return {"DBOS Queue, a workflow per item": (ARGS.dbos_items, queued),
            "DBOS steps in one workflow": (ARGS.dbos_items, looped)}  # fmt: skip


def joblib_systems() -> Systems:
    from joblib import Parallel, delayed

    def threads(n: int, tag: str) -> float:
        t0 = time.perf_counter()
        out = Parallel(n_jobs=4, prefer="threads")(delayed(tiny_plain)(i) for i in range(n))
        return time.perf_counter() - t0 if out == list(range(n)) else float("nan")

    def loky(n: int, tag: str) -> float:
        t0 = time.perf_counter()
        out = Parallel(n_jobs=2)(delayed(tiny_plain)(i) for i in range(n))
        return time.perf_counter() - t0 if out == list(range(n)) else float("nan")

    return {"joblib.Parallel, 4 threads": (ARGS.items, threads),
            "joblib.Parallel, 2 loky processes": (ARGS.items, loky)}  # fmt: skip


def systems(dsn: str, closing: list[Callable[[], None]]) -> Systems:
    out: Systems = {}
    for mode in ("full", "kernel"):
        out[f"dnb.map threads ({mode})"] = (ARGS.items, dnb_map(mode))
        single = one_commit_per_item(dnb_map(mode))
        if single is not None:
            out[f"dnb.map threads, a commit per item ({mode})"] = (ARGS.items, single)
    for mode in ("full", "kernel"):
        out[f"dnb.map 2 processes ({mode})"] = (ARGS.process_items, dnb_map(mode, processes=True, workers=2))
    out.update(dask_systems(closing))
    out.update(dbos_systems(dsn, closing))
    out.update(joblib_systems())
    if ARGS.only:
        wanted = ARGS.only.split(",")
        out = {k: v for k, v in out.items() if any(w in k for w in wanted)}
    return out


def run_rounds(dsn: str) -> tuple[dict[str, list[float]], dict[str, int]]:
    closing: list[Callable[[], None]] = []
    schema = "bench_" + uuid.uuid4().hex[:8]
    dnb.connect(dsn, schema=schema)
    rates: dict[str, list[float]] = {}
    try:
        chosen = systems(dsn, closing)
        sizes = {name: n for name, (n, _) in chosen.items()}
        for n, fn in chosen.values():  # warm-up: pools, imports, prepared statements
            fn(min(n, 200), f"warm-{uuid.uuid4().hex[:6]}")
        for r in range(ARGS.rounds):
            for name, (n, fn) in chosen.items():
                took = fn(n, f"r{r}-{uuid.uuid4().hex[:6]}")
                rates.setdefault(name, []).append(n / took)
                print(f"round {r + 1}: {name}: {n / took:,.0f} items/s", file=sys.stderr, flush=True)
    finally:
        for close in reversed(closing):
            close()
        from durablenb.engine import runtime

        runtime.disconnect()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    return rates, sizes


def main() -> int:
    home = None
    dsn = ARGS.dsn
    if dsn is None:
        home = os.environ.get("DURABLENB_HOME") or tempfile.mkdtemp(prefix="durablenb-bench-")
        dsn = server.start(pathlib.Path(home))
    backend = "embedded" if ARGS.dsn is None else "server"
    try:
        rates, sizes = run_rounds(dsn)
        print(f"\ndnb.map throughput — {backend} PostgreSQL, medians of {ARGS.rounds} interleaved "
              "rounds\n")  # fmt: skip
        print(f"| {'system':<46} | {'items':>6} | {'items/s':>8} |")
        print(f"|{'-' * 48}|{'-' * 8}|{'-' * 10}|")
        for name, values in rates.items():
            print(f"| {name:<46} | {sizes[name]:>6} | {statistics.median(values):8,.0f} |")
        if ARGS.json:
            with open(ARGS.json, "w") as f:
                json.dump({"backend": backend, "rates": rates, "sizes": sizes}, f, indent=2)
    finally:
        if home is not None and not os.environ.get("DURABLENB_HOME"):
            server.stop(pathlib.Path(home))
            shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of a checkpointed step and of a one-step workflow, against baselines in the same run.

    python bench/step_overhead.py [--dsn URL] [--steps 300] [--workflows 300] [--rounds 5]

Baselines, on the same database in the same process:
- the floor: one autocommitted single-row INSERT through psycopg (what any durable record
  costs: a round trip and a WAL flush);
- DBOS (``dbos`` from PyPI) running the same workflows, when it is installed.

Without --dsn the embedded PostgreSQL is used (DURABLENB_HOME, default a temporary folder).
Prints a table; --json writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

import psycopg

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import durablenb as dnb  # noqa: E402
from durablenb import server  # noqa: E402


def median_us(samples: list[float], per: int) -> float:
    return statistics.median(samples) / per * 1e6


def time_workflows(many, one, n_steps: int, n_wf: int, rounds: int) -> tuple[float, float]:
    """µs per step of *many* (an n-step workflow) and per call of *one* (a one-step workflow),
    medians over *rounds*, after a warm-up; the same loop for every system."""
    many(10, "warm")
    for i in range(20):
        one(-i - 1)
    step_samples, wf_samples = [], []
    for r in range(rounds):
        t = time.perf_counter()
        many(n_steps, r)
        step_samples.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(n_wf):
            one(r * n_wf + i)
        wf_samples.append(time.perf_counter() - t)
    return median_us(step_samples, n_steps), median_us(wf_samples, n_wf)


def bench_floor(dsn: str, n: int, rounds: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_floor")
        conn.execute("CREATE TABLE bench_floor (id bigint PRIMARY KEY, v bytea)")
        samples = []
        k = 0
        for _ in range(rounds):
            t = time.perf_counter()
            for _ in range(n):
                k += 1
                conn.execute("INSERT INTO bench_floor VALUES (%s, %s)", [k, b"1"], prepare=True)
            samples.append(time.perf_counter() - t)
        conn.execute("DROP TABLE bench_floor")
    return median_us(samples, n)


def bench_durablenb(dsn: str, n_steps: int, n_wf: int, rounds: int) -> tuple[float, float]:
    schema = "bench_" + uuid.uuid4().hex[:8]
    dnb.connect(dsn, schema=schema)

    @dnb.step
    def tiny(i):
        return i

    @dnb.workflow
    def many(n, tag):
        total = 0
        for i in range(n):
            total += tiny(i)
        return total

    @dnb.workflow
    def one(tag):
        return tiny(tag)

    result = time_workflows(many, one, n_steps, n_wf, rounds)
    from durablenb.engine import runtime

    runtime.disconnect()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return result


def bench_dbos(dsn: str, n_steps: int, n_wf: int, rounds: int) -> tuple[float, float] | None:
    try:
        from dbos import DBOS
    except ImportError:
        return None
    import logging

    url = dsn
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]

    @DBOS.step()
    def tiny(i):
        return i

    @DBOS.workflow()
    def many(n, tag):
        total = 0
        for i in range(n):
            total += tiny(i)
        return total

    @DBOS.workflow()
    def one(tag):
        return tiny(tag)

    DBOS(config={"name": "durablenb_bench", "system_database_url": url,
                 "run_admin_server": False, "log_level": "WARNING"})  # fmt: skip
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    result = time_workflows(many, one, n_steps, n_wf, rounds)
    DBOS.destroy(destroy_registry=True)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: embedded server)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workflows", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-dbos", action="store_true")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()

    home = None
    dsn = args.dsn
    if dsn is None:
        home = os.environ.get("DURABLENB_HOME") or tempfile.mkdtemp(prefix="durablenb-bench-")
        dsn = server.start(__import__("pathlib").Path(home))
    backend = "embedded" if args.dsn is None else "server"

    floor = bench_floor(dsn, args.steps, args.rounds)
    ours_step, ours_wf = bench_durablenb(dsn, args.steps, args.workflows, args.rounds)
    dbos = None if args.no_dbos else bench_dbos(dsn, args.steps, args.workflows, args.rounds)

    print(f"\nstep overhead — {backend} PostgreSQL, {args.steps}-step workflow, "
          f"{args.workflows} one-step workflows, median of {args.rounds} rounds\n")  # fmt: skip
    print(f"| {'measure':<28} | {'durablenb':>10} | {'INSERT floor':>12} | {'DBOS':>10} "
          f"| {'vs floor':>8} | {'DBOS / ours':>11} |")  # fmt: skip
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 14}|{'-' * 12}|{'-' * 10}|{'-' * 13}|")
    rows = [("µs per step", ours_step, floor, dbos[0] if dbos else None),
            ("µs per one-step workflow", ours_wf, floor, dbos[1] if dbos else None)]  # fmt: skip
    for label, ours, fl, other in rows:
        o = f"{other:10.0f}" if other else f"{'n/a':>10}"
        ratio = f"{other / ours:10.1f}x" if other else f"{'n/a':>11}"
        print(f"| {label:<28} | {ours:10.0f} | {fl:12.0f} | {o} | {ours / fl:7.2f}x | {ratio} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": backend, "floor_us": floor, "step_us": ours_step,
                       "workflow_us": ours_wf, "dbos_step_us": dbos and dbos[0],
                       "dbos_workflow_us": dbos and dbos[1]}, f, indent=2)  # fmt: skip
    if home is not None and not os.environ.get("DURABLENB_HOME"):
        server.stop(__import__("pathlib").Path(home))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of a checkpointed step and of a one-step workflow, against baselines in the same run.

    python bench/step_overhead.py [--dsn URL] [--steps 300] [--workflows 300] [--rounds 7]

durablenb runs each workflow twice: with ``durability="full"`` (every record flushed before
its step returns) and ``"kernel"`` (records commit without waiting for the flush; the end of
the workflow still waits). Baselines, on the same database in the same process, interleaved
round by round so that drift on a shared machine hits all of them alike:
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
import pathlib
import shutil
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


class Floor:
    """The floor: one autocommitted single-row INSERT through psycopg, prepared."""

    def __init__(self, dsn: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.conn.execute("DROP TABLE IF EXISTS bench_floor")
        self.conn.execute("CREATE TABLE bench_floor (id bigint PRIMARY KEY, v bytea)")
        self.k = 0

    def batch(self, n: int) -> float:
        """Seconds for *n* inserts."""
        t = time.perf_counter()
        for _ in range(n):
            self.k += 1
            self.conn.execute("INSERT INTO bench_floor VALUES (%s, %s)", [self.k, b"1"], prepare=True)
        return time.perf_counter() - t

    def close(self) -> None:
        self.conn.execute("DROP TABLE bench_floor")
        self.conn.close()


def workflows_of(decorate_step, decorate_workflow):
    """The two workflows every system runs: *many* (n steps) and *one* (one step)."""

    @decorate_step
    def tiny(i):
        return i

    @decorate_workflow
    def many(n, tag):
        total = 0
        for i in range(n):
            total += tiny(i)
        return total

    @decorate_workflow
    def one(tag):
        return tiny(tag)

    return many, one


def time_round(many, one, n_steps: int, n_wf: int, tag: str) -> tuple[float, float]:
    """Seconds for an *n_steps* workflow and for *n_wf* one-step workflows, all new (their
    arguments include *tag*)."""
    t = time.perf_counter()
    many(n_steps, tag)
    steps = time.perf_counter() - t
    t = time.perf_counter()
    for i in range(n_wf):
        one(f"{tag}-{i}")
    return steps, time.perf_counter() - t


def run(dsn: str, n_steps: int, n_wf: int, rounds: int, with_dbos: bool) -> dict[str, list[float]]:
    """Rounds that interleave the floor, durablenb and DBOS, so drift on a shared machine
    hits all of them alike; per-round figures in µs."""
    floor = Floor(dsn)
    schema = "bench_" + uuid.uuid4().hex[:8]
    dnb.connect(dsn, schema=schema)
    full = workflows_of(dnb.step, dnb.workflow(durability="full"))
    kernel = workflows_of(dnb.step, dnb.workflow(durability="kernel"))
    dbos = setup_dbos(dsn) if with_dbos else None
    systems = [("full", full), ("kernel", kernel)] + ([("DBOS", dbos)] if dbos else [])
    for name, (many, one) in systems:  # warm-up
        many(10, f"{name}-warm")
        for i in range(20):
            one(f"{name}-warm-{i}")
    out: dict[str, list[float]] = {"floor": []}
    for r in range(rounds):
        out["floor"].append(floor.batch(n_steps) / n_steps * 1e6)
        for name, (many, one) in systems:
            steps, wfs = time_round(many, one, n_steps, n_wf, f"{name}-{r}")
            out.setdefault(f"{name} step", []).append(steps / n_steps * 1e6)
            out.setdefault(f"{name} workflow", []).append(wfs / n_wf * 1e6)
    floor.close()
    if dbos:
        from dbos import DBOS

        DBOS.destroy(destroy_registry=True)
    from durablenb.engine import runtime

    runtime.disconnect()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    return out


def setup_dbos(dsn: str):
    try:
        from dbos import DBOS
    except ImportError:
        return None
    import logging

    url = dsn
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    pair = workflows_of(DBOS.step(), DBOS.workflow())
    DBOS(config={"name": "durablenb_bench", "system_database_url": url,
                 "run_admin_server": False, "log_level": "WARNING"})  # fmt: skip
    DBOS.launch()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    return pair


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", default=None, help="PostgreSQL URL (default: embedded server)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--workflows", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-dbos", action="store_true")
    ap.add_argument("--json", default=None, help="write the results to this file")
    args = ap.parse_args()

    home = None
    dsn = args.dsn
    if dsn is None:
        home = os.environ.get("DURABLENB_HOME") or tempfile.mkdtemp(prefix="durablenb-bench-")
        dsn = server.start(pathlib.Path(home))
    backend = "embedded" if args.dsn is None else "server"
    res = run(dsn, args.steps, args.workflows, args.rounds, not args.no_dbos)
    med = {k: statistics.median(v) for k, v in res.items()}
    # Ratios per round (each against the floor measured in that round), then their median.
    ratio = {k: statistics.median(x / f for x, f in zip(v, res["floor"], strict=True))
             for k, v in res.items()}
    print(f"\nstep overhead — {backend} PostgreSQL, {args.steps}-step workflow, "
          f"{args.workflows} one-step workflows, {args.rounds} interleaved rounds (medians)\n")  # fmt: skip
    print(f"| {'measure':<28} | {'durability':<10} | {'durablenb':>9} | {'INSERT floor':>12} "
          f"| {'DBOS':>8} | {'vs floor':>8} | {'DBOS / ours':>11} |")  # fmt: skip
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 11}|{'-' * 14}|{'-' * 10}|{'-' * 10}|{'-' * 13}|")
    for label, key in (("µs per step", "step"), ("µs per one-step workflow", "workflow")):
        for mode in ("full", "kernel"):
            ours, other = med[f"{mode} {key}"], med.get(f"DBOS {key}")
            o = f"{other:8.0f}" if other else f"{'n/a':>8}"
            pairs = zip(res.get(f"DBOS {key}", []), res[f"{mode} {key}"], strict=False)
            faster = f"{statistics.median(d / u for d, u in pairs):10.1f}x" if other else f"{'n/a':>11}"
            print(f"| {label:<28} | {mode:<10} | {ours:9.0f} | {med['floor']:12.0f} | {o} | "
                  f"{ratio[f'{mode} {key}']:7.2f}x | {faster} |")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"backend": backend, "rounds": res, "medians": med, "ratios": ratio}, f, indent=2)
    if home is not None and not os.environ.get("DURABLENB_HOME"):
        server.stop(pathlib.Path(home))
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

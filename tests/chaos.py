"""Kill matrix: SIGKILL a workflow at random points in every phase, resume, check invariants.

Each trial runs the MATRIX workflow in child processes. Every run but the last is killed
(SIGKILL, through DURABLENB_FAULT) at a point drawn from those the workflow reaches:
before and after step bodies, after a record is written, inside a transaction before and
after its commit, half-way through a large value's blob, before the blob is committed,
before and after the workflow's end is recorded. Then it runs until it finishes.

Invariants, checked from files and tables, never from the process's own report:
- a step whose record existed when a run was killed never runs again;
- every transaction's effect happens exactly once;
- the workflow finishes with the right result.

    python -m tests.chaos --trials 80 --seed 1        # `make chaos` (both backends)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parent.parent

MATRIX = r'''
import json, os, sys
from pathlib import Path
import numpy as np
import pandas as pd
import durablenb as dnb

EFFECTS = Path(os.environ["EFFECTS_DIR"])
SCHEMA = os.environ["DURABLENB_SCHEMA"]

def hit(label):
    with open(EFFECTS / "runs.log", "a") as f:
        f.write(f"{label}\n"); f.flush(); os.fsync(f.fileno())

@dnb.step
def s(i):
    hit(f"s{i}")
    return f"s{i}"

@dnb.transaction
def t(i):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".chaos_effects (key) VALUES (%s)', [i])
    return f"t{i}"

@dnb.step
def big():
    hit("big")
    rng = np.random.default_rng(7)
    return pd.DataFrame({"v": rng.integers(0, 100, 400_000), "w": rng.random(400_000)})

@dnb.workflow
def child(x):
    return [s(100 + x), t(100 + x)]

@dnb.workflow
def matrix():
    a = s(0)
    b = t(1)
    c = int(big()["v"].sum())
    d = s(2)
    e = child(3)
    f = dnb.map(s, [10, 11, 12, 13], workers=2)
    g = t(4)
    return [a, b, c, d, e, f, g]

with dnb.workflow_id(os.environ["CHAOS_ID"]):
    print(json.dumps(matrix()))
'''

EXPECTED_BIG = int(__import__("numpy").random.default_rng(7).integers(0, 100, 400_000).sum())
EXPECTED = ["s0", "t1", EXPECTED_BIG, "s2", ["s103", "t103"], ["s10", "s11", "s12", "s13"], "t4"]
TXN_KEYS = [1, 4, 103]
STEP_LABELS = ["s0", "big", "s2", "s103", "s10", "s11", "s12", "s13"]


@dataclass
class Trial:
    seed: int
    kills: list[str] = field(default_factory=list)
    runs: int = 0
    violations: list[str] = field(default_factory=list)


def _env(base: dict[str, str], effects: Path, wid: str, fault: str | None) -> dict[str, str]:
    env = dict(base)
    env["EFFECTS_DIR"] = str(effects)
    env["CHAOS_ID"] = wid
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["DURABLENB_BLOB_THRESHOLD"] = str(1 << 20)
    env.pop("DURABLENB_FAULT", None)
    env.pop("DURABLENB_FAULT_COUNT", None)
    if fault:
        env["DURABLENB_FAULT"] = fault
    return env


def kill_points(base_env: dict[str, str], dsn: str, schema: str) -> Counter:
    """How often the MATRIX workflow reaches each phase in a run without faults."""
    with tempfile.TemporaryDirectory() as d:
        effects = Path(d)
        counts_file = effects / "counts.log"
        env = _env(base_env, effects, f"count-{uuid.uuid4().hex[:8]}", None)
        env["DURABLENB_FAULT_COUNT"] = str(counts_file)
        out = subprocess.run([sys.executable, "-c", MATRIX], env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return Counter(counts_file.read_text().split())


def _recorded_labels(conn: psycopg.Connection, schema: str, wid: str) -> set[str]:
    rows = conn.execute(
        f'SELECT name, convert_from(output, \'UTF8\'), codec FROM "{schema}".steps '
        "WHERE (workflow_id = %s OR workflow_id LIKE %s) AND status = 'succeeded'",
        [wid, wid + "/%"],
    ).fetchall()
    labels = set()
    for name, text, codec in rows:
        if name.endswith("big"):
            labels.add("big")
        elif codec == "json" and text:
            value = json.loads(text)
            if isinstance(value, str):
                labels.add(value)
    return labels


def run_trial(seed: int, points: Counter, base_env: dict[str, str], dsn: str, schema: str,
              kills_per_trial: int = 2) -> Trial:  # fmt: skip
    rng = random.Random(seed)
    trial = Trial(seed)
    wid = f"chaos-{seed}-{uuid.uuid4().hex[:6]}"
    choices = [(p, n) for p, c in sorted(points.items()) for n in range(1, c + 1)]
    with tempfile.TemporaryDirectory() as d, psycopg.connect(dsn, autocommit=True) as conn:
        effects = Path(d)
        conn.execute(f'DELETE FROM "{schema}".chaos_effects WHERE key = ANY(%s)', [TXN_KEYS])
        recorded_at_kill: list[tuple[set[str], Counter]] = []
        result = None
        for attempt in range(kills_per_trial + 6):
            fault = None
            if attempt < kills_per_trial:
                phase, n = rng.choice(choices)
                fault = f"{phase}@{n}"
            proc = subprocess.run([sys.executable, "-c", MATRIX],
                                  env=_env(base_env, effects, wid, fault),
                                  capture_output=True, text=True, timeout=180)  # fmt: skip
            trial.runs += 1
            if proc.returncode == -9 or proc.returncode == 137:
                trial.kills.append(fault or "?")
                log = effects / "runs.log"
                runs = Counter(log.read_text().split()) if log.exists() else Counter()
                recorded_at_kill.append((_recorded_labels(conn, schema, wid), runs))
                continue
            if proc.returncode != 0:
                trial.violations.append(f"run failed ({fault}): {proc.stderr[-500:]}")
                break
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            if fault:  # the kill point was not reached in this run
                trial.kills.append(f"{fault} (not reached)")
            break
        final = Counter((effects / "runs.log").read_text().split())
        if result != EXPECTED:
            trial.violations.append(f"wrong result {result!r}")
        for labels, runs_then in recorded_at_kill:
            for label in labels:
                if final[label] != runs_then[label]:
                    trial.violations.append(
                        f"{label} was recorded before a kill but ran again "
                        f"({runs_then[label]} -> {final[label]})"
                    )
        for label in STEP_LABELS:
            if final[label] < 1:
                trial.violations.append(f"{label} never ran")
        effects_rows = Counter(
            k for (k,) in conn.execute(f'SELECT key FROM "{schema}".chaos_effects WHERE key = ANY(%s)',
                                       [TXN_KEYS]).fetchall()  # fmt: skip
        )
        for key in TXN_KEYS:
            if effects_rows[key] != 1:
                trial.violations.append(f"transaction t{key} took effect {effects_rows[key]} times")
    return trial


def prepare(dsn: str, schema: str) -> None:
    """Create the store's schema and the table the transactions write to."""
    from durablenb.store import Store

    Store(dsn, schema=schema).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".chaos_effects (id serial PRIMARY KEY, key int)'
        )


def run_matrix(trials: int, seed: int, base_env: dict[str, str], dsn: str, schema: str,
               kills_per_trial: int = 2, log=print) -> dict:  # fmt: skip
    prepare(dsn, schema)
    points = kill_points(base_env, dsn, schema)
    t0 = time.time()
    results = [run_trial(seed + k, points, base_env, dsn, schema, kills_per_trial)
               for k in range(trials)]  # fmt: skip
    kills = [k for r in results for k in r.kills if "not reached" not in k]
    summary = {
        "trials": trials,
        "kill_points_offered": sum(points.values()),
        "phases": dict(points),
        "kills": len(kills),
        "kills_by_phase": dict(Counter(k.split("@")[0] for k in kills)),
        "workflows_resumed": sum(1 for r in results if r.kills),
        "workflows_finished_right": sum(1 for r in results if not r.violations),
        "violations": [v for r in results for v in r.violations],
        "seconds": round(time.time() - t0, 1),
    }
    log(json.dumps(summary, indent=2))
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trials", type=int, default=80)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kills", type=int, default=3, help="kills per trial before it may finish")
    ap.add_argument("--dsn", default=os.environ.get("DURABLENB_TEST_DSN"))
    args = ap.parse_args()
    base_env = dict(os.environ)
    home = None
    if args.dsn:
        dsn = args.dsn
        base_env["DURABLENB_DATABASE_URL"] = dsn
        base_env.pop("DURABLENB_HOME", None)
    else:
        from durablenb import server

        home = Path(tempfile.mkdtemp(prefix="durablenb-chaos-"))
        dsn = server.start(home)
        base_env["DURABLENB_HOME"] = str(home)
        base_env.pop("DURABLENB_DATABASE_URL", None)
    schema = "chaos_" + uuid.uuid4().hex[:8]
    base_env["DURABLENB_SCHEMA"] = schema
    try:
        summary = run_matrix(args.trials, args.seed, base_env, dsn, schema, args.kills)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        if home is not None:
            from durablenb import server

            server.stop(home)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

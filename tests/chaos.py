"""Kill matrix: SIGKILL a workflow at random points in every phase, resume, check invariants.

Each trial runs the MATRIX workflow in child processes. Every run but the last is killed
(SIGKILL, through DURABLENB_FAULT) at a point drawn from those the workflow reaches:
before and after step bodies, after a record is written, before and after a batch of
dnb.map records commits, inside a transaction before and after its commit (one of them
returns an output that cannot be recorded), half-way through a large value's blob, before
the blob is committed, before and after the workflow's end is recorded, and right after the
call returned to its caller. Then it runs until it finishes.
Two more phases come from outside: another process cancels the workflow at a random moment
(then resumes it), or forgets and garbage-collects workflows whose ids look like its own
while it runs.

Trials alternate between the two durabilities, ``full`` and ``kernel`` (records commit
without waiting for their log flush): a SIGKILL of the Python process must find both alike.

Invariants, checked from files and tables, never from the process's own report:
- a step whose record existed when a run was killed never runs again;
- every transaction's effect happens exactly once (the unrecordable one: never);
- a caller that got the result finds the workflow recorded as finished with it, and a
  caller told "cancelled" finds it recorded cancelled;
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
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parent.parent

MATRIX = r'''
import json, os, sys, threading
from pathlib import Path
import numpy as np
import pandas as pd
import durablenb as dnb
from durablenb import _faults

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

@dnb.transaction
def t_bad(i):
    dnb.connection().execute(f'INSERT INTO "{SCHEMA}".chaos_effects (key) VALUES (%s)', [i])
    return threading.Lock()  # cannot be recorded: the insert must roll back

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
    try:
        t_bad(5)
    except dnb.UnserializableOutputError:
        pass
    g = t(4)
    return [a, b, c, d, e, f, g]

try:
    if sys.argv[1:] == ["resume"]:
        result = dnb.resume(os.environ["CHAOS_ID"]).result()
    else:
        with dnb.workflow_id(os.environ["CHAOS_ID"]):
            result = matrix()
except dnb.WorkflowCancelledError:
    print(json.dumps("cancelled"))
    sys.exit(3)
with open(EFFECTS / "returned.log", "a") as f:
    f.write(json.dumps(result) + "\n"); f.flush(); os.fsync(f.fileno())
if _faults.ACTIVE:
    _faults.point("return.after")
print(json.dumps(result))
'''

EXPECTED_BIG = int(__import__("numpy").random.default_rng(7).integers(0, 100, 400_000).sum())
EXPECTED = ["s0", "t1", EXPECTED_BIG, "s2", ["s103", "t103"], ["s10", "s11", "s12", "s13"], "t4"]
TXN_KEYS = [1, 4, 103]
NEVER_KEYS = [5]  # the transaction whose output cannot be recorded
STEP_LABELS = ["s0", "big", "s2", "s103", "s10", "s11", "s12", "s13"]


@dataclass
class Trial:
    seed: int
    durability: str = "full"
    kills: list[str] = field(default_factory=list)
    runs: int = 0
    violations: list[str] = field(default_factory=list)


#: The durabilities trials take turns with (a block of four trials each: every mode in both).
DURABILITIES = ("full", "kernel")


def durability_of(seed: int) -> str:
    """The durability trial *seed* runs with."""
    return DURABILITIES[(seed // 4) % len(DURABILITIES)]


def _env(base: dict[str, str], effects: Path, wid: str, fault: str | None,
         durability: str | None = None) -> dict[str, str]:  # fmt: skip
    env = dict(base)
    if durability:
        env["DURABLENB_DURABILITY"] = durability
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
        f'SELECT name, convert_from(output, \'UTF8\'), codec FROM "{schema}".steps WHERE workflow_id IN '
        f'(SELECT id FROM "{schema}".workflows WHERE id = %s OR parent_id = %s) AND status = \'succeeded\'',
        [wid, wid],
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


def _status(conn: psycopg.Connection, schema: str, wid: str) -> str | None:
    row = conn.execute(f'SELECT status FROM "{schema}".workflows WHERE id = %s', [wid]).fetchone()
    return row[0] if row else None


class _Outside:
    """What another process does to a trial's workflow while it runs."""

    def __init__(self, rng: random.Random, store: Any, conn: psycopg.Connection, schema: str,
                 wid: str, lookalike: str | None) -> None:  # fmt: skip
        self.rng, self.store, self.conn, self.schema = rng, store, conn, schema
        self.wid, self.lookalike = wid, lookalike

    def cancel(self, proc: subprocess.Popen) -> str:
        """Cancel at a random moment after the workflow started."""
        while _status(self.conn, self.schema, self.wid) is None:
            if proc.poll() is not None:
                return "cancel (not reached)"
            time.sleep(0.01)
        time.sleep(self.rng.uniform(0.0, 0.04))  # the workflow takes about 0.05-0.2 s
        return "cancel" if self.store.cancel(self.wid) else "cancel (too late)"

    def forget_lookalike(self, proc: subprocess.Popen) -> str:
        """Forget and gc a finished workflow whose id is a prefix of the running one's."""
        assert self.lookalike is not None
        self.conn.execute(
            f'INSERT INTO "{self.schema}".workflows (id, name, status, run_started_at, updated_at) '
            "VALUES (%s, 'lookalike', 'succeeded', now(), now() - interval '1 day') "
            "ON CONFLICT (id) DO NOTHING",
            [self.lookalike],
        )
        delay = self.rng.uniform(0.0, 0.2)
        while _status(self.conn, self.schema, self.wid) is None:  # not started yet
            if proc.poll() is not None:
                return "gc.lookalike (not reached)"
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is not None:
            return "gc.lookalike (not reached)"
        self.store.forget(self.lookalike)
        # Older than ten minutes: the look-alike (a day old), never this trial's workflow,
        # which a gc may rightly remove once it has finished.
        self.store.forget_older_than(600)
        return "gc.lookalike"


def _run(env: dict[str, str], args: list[str], act: Any) -> tuple[int, str, str, str | None]:
    proc = subprocess.Popen([sys.executable, "-c", MATRIX, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    done = act(proc) if act is not None else None
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err, done


def run_trial(seed: int, points: Counter, base_env: dict[str, str], dsn: str, schema: str,
              kills_per_trial: int = 2, store: Any = None) -> Trial:  # fmt: skip
    rng = random.Random(seed)
    trial = Trial(seed, durability=durability_of(seed))
    mode = ["kills", "cancel", "kills", "lookalike"][seed % 4] if store else "kills"
    base = f"chaos-{seed}-{uuid.uuid4().hex[:6]}"
    wid = base + rng.choice(["/3", "~7"]) if mode == "lookalike" else base
    choices = [(p, n) for p, c in sorted(points.items()) for n in range(1, c + 1)]
    with tempfile.TemporaryDirectory() as d, psycopg.connect(dsn, autocommit=True) as conn:
        effects = Path(d)
        outside = _Outside(rng, store, conn, schema, wid, base if mode == "lookalike" else None)
        conn.execute(f'DELETE FROM "{schema}".chaos_effects WHERE key = ANY(%s)', [TXN_KEYS + NEVER_KEYS])
        recorded_at_kill: list[tuple[set[str], Counter]] = []
        result = None
        for attempt in range(kills_per_trial + 6):
            fault, act = None, None
            if mode == "cancel" and attempt == 0:
                act = outside.cancel
            elif attempt < kills_per_trial:
                phase, n = rng.choice(choices)
                fault = f"{phase}@{n}"
                if mode == "lookalike" and rng.random() < 0.7:
                    act = outside.forget_lookalike
            args = ["resume"] if _status(conn, schema, wid) == "cancelled" else []
            returned_before = _lines(effects / "returned.log")
            code, out, err, done = _run(_env(base_env, effects, wid, fault, trial.durability), args, act)
            trial.runs += 1
            if done:
                trial.kills.append(done)
            status = _status(conn, schema, wid)
            if _lines(effects / "returned.log") > returned_before and status != "succeeded":
                trial.violations.append(f"the caller got the result but the record says {status!r}")
            if code in (-9, 137):
                trial.kills.append(fault or "?")
                log = effects / "runs.log"
                runs = Counter(log.read_text().split()) if log.exists() else Counter()
                recorded_at_kill.append((_recorded_labels(conn, schema, wid), runs))
                continue
            if code == 3:
                if _status(conn, schema, wid) != "cancelled":
                    trial.violations.append(f"the caller was told cancelled but the record says "
                                            f"{_status(conn, schema, wid)!r}")  # fmt: skip
                continue
            if code != 0:
                trial.violations.append(f"run failed ({fault}): {err[-500:]}")
                break
            result = json.loads(out.strip().splitlines()[-1])
            if fault:  # the kill point was not reached in this run
                trial.kills.append(f"{fault} (not reached)")
            break
        _check(trial, conn, schema, effects, result, recorded_at_kill)
    return trial


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _check(trial: Trial, conn: psycopg.Connection, schema: str, effects: Path, result: Any,
           recorded_at_kill: list[tuple[set[str], Counter]]) -> None:  # fmt: skip
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
                                   [TXN_KEYS + NEVER_KEYS]).fetchall()  # fmt: skip
    )
    for key in TXN_KEYS:
        if effects_rows[key] != 1:
            trial.violations.append(f"transaction t{key} took effect {effects_rows[key]} times")
    for key in NEVER_KEYS:
        if effects_rows[key] != 0:
            trial.violations.append(f"unrecordable transaction t{key} committed {effects_rows[key]} times")


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
    from durablenb.settings import Settings
    from durablenb.store import Store

    prepare(dsn, schema)
    points = kill_points(base_env, dsn, schema)
    t0 = time.time()
    store = Store(dsn, settings=Settings.from_env({}, schema=schema))
    try:
        results = [run_trial(seed + k, points, base_env, dsn, schema, kills_per_trial, store)
                   for k in range(trials)]  # fmt: skip
    finally:
        store.close()
    faults = [k for r in results for k in r.kills if "not reached" not in k and "too late" not in k]
    kills = [k for k in faults if "@" in k]
    summary = {
        "trials": trials,
        "kill_points_offered": sum(points.values()),
        "phases": dict(points),
        "kills": len(kills),
        "kills_by_phase": dict(Counter(k.split("@")[0] for k in kills)),
        "faults_from_outside": dict(Counter(k for r in results for k in r.kills if "@" not in k)),
        "workflows_resumed": sum(1 for r in results if r.kills),
        "workflows_finished_right": sum(1 for r in results if not r.violations),
        "trials_by_durability": dict(Counter(r.durability for r in results)),
        "kills_by_durability": dict(Counter(r.durability for r in results for k in r.kills if "@" in k
                                            and "(" not in k)),
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
            import shutil

            shutil.rmtree(home, ignore_errors=True)
    return 1 if summary["violations"] else 0


if __name__ == "__main__":
    sys.exit(main())

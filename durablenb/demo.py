"""Crash-and-resume demo: ``python -m durablenb.demo``.

Runs a six-step analysis in a child process on the embedded PostgreSQL, kills that process
(SIGKILL) in the middle, reruns the same analysis in a new process and shows which steps
were replayed from their checkpoints and which executed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

ANALYSIS = r'''
import sys, time
import numpy as np
import pandas as pd
import durablenb as dnb

def say(msg):
    print(f"    [pid {__import__('os').getpid()}] {msg}", flush=True)

@dnb.step
def load(n_rows):
    say("load: generating flights"); time.sleep(0.6)
    rng = np.random.default_rng(7)
    return pd.DataFrame({
        "carrier": rng.choice(list("ABCDEFGH"), n_rows),
        "month": rng.integers(1, 13, n_rows),
        "distance": rng.gamma(2.0, 400.0, n_rows).round(),
        "delay": rng.normal(8.0, 25.0, n_rows).round(1),
    })

@dnb.step
def clean(df):
    say("clean: dropping impossible delays"); time.sleep(0.6)
    return df[df.delay.between(-60, 600)].reset_index(drop=True)

@dnb.step
def by_carrier(df):
    say("by_carrier: mean delay per carrier"); time.sleep(0.6)
    return df.groupby("carrier").delay.mean().round(2)

@dnb.step
def by_month(df):
    say("by_month: mean delay per month"); time.sleep(0.6)
    return df.groupby("month").delay.mean().round(2)

@dnb.step
def fit(df):
    say("fit: delay ~ distance"); time.sleep(0.6)
    slope, intercept = np.polyfit(df.distance, df.delay, 1)
    return {"slope_per_1000km": round(float(slope) * 1000, 3), "intercept": round(float(intercept), 2)}

@dnb.step
def report(carriers, months, model):
    say("report: assembling"); time.sleep(0.6)
    worst = carriers.idxmax()
    return (f"worst carrier {worst} ({carriers[worst]} min), worst month "
            f"{months.idxmax()}, model {model}")

@dnb.workflow
def analysis(n_rows):
    df = clean(load(n_rows))
    return report(by_carrier(df), by_month(df), fit(df))

with dnb.workflow_id("demo-analysis"):
    print("    result:", analysis(200_000), flush=True)
'''


def _run_child(script: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script], text=True)


def main() -> int:
    import durablenb as dnb

    print(f"durablenb demo — embedded PostgreSQL under {os.environ.get('DURABLENB_HOME', '')}")
    dnb.connect(schema="durablenb_demo")
    if _exists(dnb):
        dnb.forget("demo-analysis", force=True)
    env_schema = "import os; os.environ['DURABLENB_SCHEMA'] = 'durablenb_demo'\n"

    print("\n1. Run the six-step analysis; the process is killed after its third step.")
    first = _run_child(env_schema + ANALYSIS)
    while True:
        if first.poll() is not None:
            print("   the analysis finished before it could be killed")
            break
        if _recorded(dnb) >= 3:
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            print(f"   >>> SIGKILL sent to pid {first.pid} (exit status {first.returncode})")
            break
        time.sleep(0.05)
    print(f"   status now: {_status(dnb)} with {_recorded(dnb)} steps recorded")

    print("\n2. Rerun the same analysis in a new process: it resumes.")
    restarted_at = time.time()
    second = _run_child(env_schema + ANALYSIS)
    second.wait()
    if second.returncode != 0:
        print("   the rerun failed", file=sys.stderr)
        return 1

    print("\n3. What happened to each step:")
    steps = dnb.steps("demo-analysis")
    for _, s in steps.iterrows():
        how = "replayed from checkpoint" if s.finished_at.timestamp() < restarted_at else "executed"
        print(f"   {s.position}  {s['name']:<11} {how:<25} {s.duration.total_seconds():6.2f}s "
              f"{s.output_bytes:>9,} bytes ({s.codec})")
    print(f"\n   workflow status: {_status(dnb)}")
    return 0


def _exists(dnb) -> bool:
    return any(dnb.workflows(limit=None)["workflow_id"] == "demo-analysis")


def _recorded(dnb) -> int:
    return len(dnb.steps("demo-analysis"))


def _status(dnb) -> str:
    wf = dnb.workflows(limit=None)
    row = wf[wf.workflow_id == "demo-analysis"]
    return row.iloc[0]["status"] if len(row) else "not recorded"


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        from durablenb import server
        from durablenb.engine import runtime

        runtime.disconnect()
        if os.environ.get("DURABLENB_DEMO_KEEP_SERVER") != "1":
            server.stop()

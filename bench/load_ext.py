"""How long ``%load_ext durablenb`` takes in a fresh interpreter, embedded server.

    python bench/load_ext.py [--runs 7]

Each sample is a new Python process (as after a kernel restart) that creates an IPython
shell and runs ``%load_ext durablenb``; it reports the time of that line alone. The first
sample creates and starts the embedded server (cold); the others find it running (warm,
the restart case). Baseline in the same processes: ``import pandas``, which the extension
needs anyway.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

PROBE = r"""
import io, json, time, contextlib
t0 = time.perf_counter()
import pandas
t_pandas = time.perf_counter() - t0
from IPython.core.interactiveshell import InteractiveShell
ip = InteractiveShell.instance()
t1 = time.perf_counter()
with contextlib.redirect_stdout(io.StringIO()):
    ip.run_line_magic("load_ext", "durablenb")
t_load = time.perf_counter() - t1
print(json.dumps({"pandas": t_pandas, "load_ext": t_load}))
"""


def sample(env: dict[str, str]) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    home = tempfile.mkdtemp(prefix="durablenb-loadext-")
    env = dict(os.environ, DURABLENB_HOME=home)
    env.pop("DURABLENB_DATABASE_URL", None)
    try:
        cold = sample(env)
        warm = [sample(env) for _ in range(args.runs)]
    finally:
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from pathlib import Path

        from durablenb import server

        server.stop(Path(home))
    med = statistics.median(w["load_ext"] for w in warm)
    pandas_med = statistics.median(w["pandas"] for w in warm)
    print(f"\n%load_ext durablenb, embedded server, {args.runs} fresh processes\n")
    print("| case                                   | seconds |")
    print("|----------------------------------------|---------|")
    print(f"| cold: first use, server created        | {cold['load_ext']:7.2f} |")
    print(f"| warm: kernel restart, server running   | {med:7.2f} |")
    print(f"| baseline: import pandas (same process) | {pandas_med:7.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

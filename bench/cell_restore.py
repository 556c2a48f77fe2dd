"""Rerunning a notebook of ``%%durable`` cells after its kernel died at 90 %, against running
it from scratch, in real kernels (jupyter_client) on the embedded server.

    python bench/cell_restore.py [--light 30] [--rounds 3] [--send one-by-one|queued|both]

Two notebooks, every cell wrapped in ``%%durable``:
- *heavy*: a 2-million-row frame, a large groupby, a least-squares fit of 20 features, then
  light cells (small arithmetic and prints);
- *light*: only light cells.

For each: *scratch* runs the plain cells (no ``%%durable``) in a new kernel; *uninterrupted*
runs the wrapped cells once; *rerun* runs the first 90 % of the cells, kills the kernel
(SIGKILL) and times a new kernel running all the cells again. Times are of the cells only
(kernel start-up and ``%load_ext`` excluded), medians of --rounds; ratios are against
*uninterrupted* (the target: <= 10 % with heavy cells, <= 1.1x with light ones) and
against *scratch* in the same round.

Cells are sent *one-by-one* (each request once the previous cell is idle: running cell after
cell by hand, or nbclient and papermill) or *queued* (every request at once, the kernel
running them in order: what a notebook front end's Run All sends).
"""

from __future__ import annotations

import argparse
import itertools
import os
import pathlib
import queue
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid

HEAVY = [
    "import numpy as np, pandas as pd\nrng = np.random.default_rng(0)\nn = 2_000_000\n"
    "df = pd.DataFrame({'carrier': rng.integers(0, 16, n), 'month': rng.integers(1, 13, n), "
    "'delay': rng.normal(10, 30, n)})\n",
    "by = df.groupby(['carrier', 'month']).delay.agg(['mean', 'std', 'count', 'median'])\n",
    "X = rng.normal(size=(n // 2, 20))\nw = rng.normal(size=20)\ny = X @ w + rng.normal(size=n // 2)\n"
    "coef, *_ = np.linalg.lstsq(X, y, rcond=None)\nfit = float(np.abs(coef - w).max())\n",
]


def light(i: int) -> str:
    return f"v{i} = sum(range({100 + i}))\nprint('cell', {i}, v{i} % 97)\n"


class Kernel:
    """A kernel that runs cells and reports their wall time."""

    def __init__(self, env: dict[str, str]) -> None:
        from jupyter_client import KernelManager

        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    def run(self, code: str) -> None:
        self.wait({self.kc.execute(code)})

    def wait(self, pending: set[str]) -> None:
        """Until every request in *pending* has finished (its kernel went idle)."""
        while pending:
            try:
                msg = self.kc.get_iopub_msg(timeout=600)
            except queue.Empty:
                continue
            parent = msg["parent_header"].get("msg_id")
            if parent not in pending:
                continue
            if msg["msg_type"] == "error":
                raise RuntimeError("\n".join(msg["content"]["traceback"])[-2000:])
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                pending.discard(parent)

    def cells(self, cells: list[str], queued: bool = False) -> float:
        t = time.perf_counter()
        if queued:
            self.wait({self.kc.execute(c) for c in cells})
        else:
            for c in cells:
                self.run(c)
        return time.perf_counter() - t

    def kill(self) -> None:
        os.kill(self.km.provisioner.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        time.sleep(0.3)
        self.close()

    def close(self) -> None:
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)


def wrapped(cells: list[str], tag: str) -> list[str]:
    return [f"%%durable --id {tag}-{i}\n{c}" for i, c in enumerate(cells)]


def one_round(env: dict[str, str], cells: list[str], queued: bool) -> dict[str, float]:
    out = {}
    k = Kernel(env)
    out["scratch"] = k.cells(cells, queued)
    k.close()
    tag = uuid.uuid4().hex[:8]
    k = Kernel(env)
    k.run("%load_ext durablenb")
    out["uninterrupted"] = k.cells(wrapped(cells, "u" + tag), queued)
    k.close()
    durable = wrapped(cells, "r" + tag)
    k = Kernel(env)
    k.run("%load_ext durablenb")
    k.cells(durable[: int(len(durable) * 0.9)], queued)
    k.kill()
    k = Kernel(env)
    k.run("%load_ext durablenb")
    out["rerun"] = k.cells(durable, queued)
    k.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--light", type=int, default=30, help="light cells per notebook")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--send", choices=["one-by-one", "queued", "both"], default="one-by-one",
                    help="how cells are sent to the kernel (see above)")
    args = ap.parse_args()
    home = pathlib.Path(tempfile.mkdtemp(prefix="durablenb-cells-"))
    env = dict(os.environ, DURABLENB_HOME=str(home), DURABLENB_TIMELINE="0")
    env.pop("DURABLENB_DATABASE_URL", None)
    repo = str(pathlib.Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    notebooks = {"heavy": HEAVY + [light(i) for i in range(args.light)],
                 "light": [light(i) for i in range(args.light)]}  # fmt: skip
    try:
        print("\nrerun after a kill at 90 % vs running from scratch, real kernels, "
              f"medians of {args.rounds}\n")
        print("| notebook | cells sent | cells | scratch s | uninterrupted s | rerun s "
              "| rerun / uninterrupted | rerun / scratch |")
        print("|---|---|---|---|---|---|---|---|")
        sends = ["one-by-one", "queued"] if args.send == "both" else [args.send]
        for (name, cells), send in itertools.product(notebooks.items(), sends):
            rounds = [one_round(env, cells, send == "queued") for _ in range(args.rounds)]
            med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
            ratio = statistics.median(r["rerun"] / r["scratch"] for r in rounds)
            of_run = statistics.median(r["rerun"] / r["uninterrupted"] for r in rounds)
            print(f"| {name} | {send} | {len(cells)} | {med['scratch']:.2f} | {med['uninterrupted']:.2f} | "
                  f"{med['rerun']:.2f} | {of_run:.3f}× | {ratio:.3f}× |")  # fmt: skip
    finally:
        from durablenb import server

        server.stop(home)
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How fast a workflow's arguments are digested into its id, against hashing baselines.

    python bench/digest.py [--mb 80] [--rounds 5]

A call's id comes from a digest of its arguments, computed before anything else (the inputs
are encoded and written only when a new run starts), so a rerun with a large DataFrame costs
one digest. Measured on the same frames, in the same process, medians of --rounds:

- durablenb: `args_digest` of the frame (joblib's NumpyHasher over BLAKE2b, dicts and sets
  in canonical order);
- joblib.hash (MD5), the same traversal with joblib's defaults;
- pickle.dumps + BLAKE2b of the bytes (a copy of the whole frame first);
- BLAKE2b of the raw buffer (arrays only): the hash function's own speed, the ceiling.

Frames: the mixed frame of bench/large_outputs.py (int, float, 20-value category, UTC
timestamps), a frame of strings (object column), and a float64 array.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from large_outputs import make_frame  # noqa: E402

from durablenb.engine.identity import args_digest  # noqa: E402


def timed(fn, value, rounds: int) -> float:
    """Median seconds of ``fn(value)``."""
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn(value)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    import joblib
    import numpy as np
    import pandas as pd

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    n = args.mb * 1_000_000 // 25
    values = {
        "mixed frame": make_frame(args.mb),
        "string frame": pd.DataFrame({"s": rng.choice(["JFK", "LGA", "EWR", "BOS"], n // 2)}),
        "float64 array": rng.random(args.mb * 1_000_000 // 8),
    }
    methods = {
        "durablenb": lambda v: args_digest("wf", (v,), {}),
        "joblib.hash": lambda v: joblib.hash(v),
        "pickle + BLAKE2b": lambda v: hashlib.blake2b(pickle.dumps(v, protocol=5)).digest(),
        "BLAKE2b of the buffer": lambda v: hashlib.blake2b(memoryview(v).cast("B")).digest(),
    }
    print(f"\nargument digest, MB/s of in-memory size (medians of {args.rounds})\n")
    print(f"| {'value':<14} | {'MB':>5} | " + " | ".join(f"{m:>21}" for m in methods) + " |")
    print("|" + "-" * 16 + "|" + "-" * 7 + "|" + "|".join("-" * 23 for _ in methods) + "|")
    for label, value in values.items():
        mb = (value.nbytes if isinstance(value, np.ndarray)
              else value.memory_usage(deep=True).sum()) / 1e6  # fmt: skip
        cells = []
        for name, fn in methods.items():
            if name.startswith("BLAKE2b of") and not isinstance(value, np.ndarray):
                cells.append(f"{'n/a':>21}")
                continue
            fn(value)  # warm-up
            cells.append(f"{mb / timed(fn, value, args.rounds):21.0f}")
        print(f"| {label:<14} | {mb:5.0f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

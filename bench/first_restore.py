"""The first restore in a new process: speed and peak memory of resuming after a restart.

    python bench/first_restore.py [--mb 80] [--processes 3] [--dsn URL] [--folder]

One process checkpoints a frame (the mixed frame of `large_outputs.py`); then each of
--processes new processes restores it as the first thing it does (imports done before the
timing), once cold and once after restoring a 2 MB frame, and prints MB/s and the peak RSS
above the RSS just before the restore. `large_outputs.py` restores in the process that has
just written the frame, whose freed memory the allocators reuse; a resume after a kernel
restart is this case. Blobs in PostgreSQL unless --folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))


def write(dsn: str, schema: str, mb: int) -> list[str]:
    """The workflow ids of a 2 MB and an *mb* MB frame checkpointed in *schema*."""
    from large_outputs import checkpointer, make_frame

    import durablenb as dnb

    dnb.connect(dsn, schema=schema)
    checkpoint = checkpointer()
    return [checkpoint(make_frame(size)) for size in (2, mb)]


def restore(dsn: str, schema: str, large: str, small: str, warm: bool, mb: int) -> dict:
    import pandas  # noqa: F401  (imports are not the restore)
    import pyarrow.ipc  # noqa: F401
    from large_outputs import Peak

    import durablenb as dnb

    dnb.connect(dsn, schema=schema)
    if warm:
        dnb.output(small, 0)
    with Peak() as p:
        t = time.perf_counter()
        dnb.output(large, 0)
        took = time.perf_counter() - t
    return {"mbps": mb / took, "extra_mb": p.extra_mb}


def _child(env: dict[str, str], *argv: str) -> str:
    """The last line *argv* (this script's child mode) printed."""
    done = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, env=env,
                          check=True)  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=80)
    ap.add_argument("--processes", type=int, default=3)
    ap.add_argument("--dsn", default=None)
    ap.add_argument("--folder", action="store_true", help="blobs in a folder, not in PostgreSQL")
    ap.add_argument("--write", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--restore", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write:
        print(*write(args.write[0], args.write[1], args.mb))
        return 0
    if args.restore:
        dsn, schema, large, small, warm = args.restore
        print(json.dumps(restore(dsn, schema, large, small, warm == "1", args.mb)))
        return 0
    home = Path(tempfile.mkdtemp(prefix="durablenb-first-"))
    env = dict(os.environ)
    env.pop("DURABLENB_BLOB_URL", None)
    if args.folder:
        env["DURABLENB_BLOB_URL"] = str(home / "blobs")
    from durablenb import server

    dsn = args.dsn or server.start(home)
    schema = f"first_{uuid.uuid4().hex[:8]}"
    mb = str(args.mb)
    try:
        small, large = _child(env, "--mb", mb, "--write", dsn, schema).split()
        where = "folder" if args.folder else "PostgreSQL"
        print(f"first restore of a {mb} MB frame in a new process ({where} blobs; "
              f"load {os.getloadavg()[0]:.2f})\n")
        print("| process | case | MB/s | extra MB | extra / N |")
        print("|---|---|---|---|---|")
        for k in range(args.processes):
            for warm in ("0", "1"):
                r = json.loads(_child(env, "--mb", mb, "--restore", dsn, schema, large, small, warm))
                case = "after a 2 MB restore" if warm == "1" else "cold"
                extra = r["extra_mb"]
                print(f"| {k + 1} | {case} | {r['mbps']:.0f} | {extra:.0f} | {extra / args.mb:.2f} |")
    finally:
        if args.dsn is None:
            server.stop(home)
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

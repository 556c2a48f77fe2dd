"""``durablenb`` / ``python -m durablenb``: the management verbs from a terminal."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import pandas as pd

from . import __version__, api, history, verbs, widgets
from ._durations import parse_duration
from .engine import runtime
from .errors import DurableError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="durablenb",
        description="Inspect and manage durable workflows. The store is $DURABLENB_DATABASE_URL, "
        "else the embedded server under $DURABLENB_HOME; --dsn overrides.",
    )
    p.add_argument("--version", action="version", version=f"durablenb {__version__}")
    p.add_argument("--dsn", help="a PostgreSQL URL")
    p.add_argument("--schema", help="the schema holding the records (default: durablenb_ROLE on a "
                   "server, durablenb on the embedded one)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="workflows, newest first")
    ls.add_argument("--status", help="statuses, comma-separated")
    ls.add_argument("--name")
    ls.add_argument("--limit", type=int, default=50)
    for verb, text in [("steps", "the steps of a workflow"), ("timeline", "a workflow's timeline"),
                       ("resume", "run a workflow again from its records and wait for it"),
                       ("cancel", "cancel a running workflow"),
                       ("forget", "delete a workflow's records")]:  # fmt: skip
        sub.add_parser(verb, help=text).add_argument("workflow_id")
    out = sub.add_parser("output", help="the recorded output of a step (a position or a name)")
    out.add_argument("workflow_id")
    out.add_argument("step")
    out.add_argument("--to", help="write it to a file: .parquet, .csv, .feather, .npy, .json, .pkl")
    fk = sub.add_parser("fork", help="run a copy that reuses the records before a step")
    fk.add_argument("workflow_id")
    fk.add_argument("--from-step", type=int, required=True)
    sub.add_parser("recover", help="resume every interrupted workflow defined in this process")
    sub.add_parser("info", help="where the records are, whose they are, and how many")
    gr = sub.add_parser("grant", help="share this schema's records with another role (run by its owner)")
    gr.add_argument("role")
    level = gr.add_mutually_exclusive_group()
    level.add_argument("--read", action="store_true",
                       help="list and read workflows, steps and outputs (the default)")
    level.add_argument("--write", action="store_true",
                       help="also run, resume, cancel and forget workflows")
    sub.add_parser("revoke", help="take back what grant gave a role").add_argument("role")
    gc = sub.add_parser("gc", help="delete finished workflows older than an age")
    gc.add_argument("--older-than", required=True, help="90s, 30m, 12h, 7d, 2w")
    run = sub.add_parser("run", help="execute a notebook headless, each cell checkpointed; the same "
                         "command again resumes it after a crash")  # fmt: skip
    run.add_argument("notebook")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter (as papermill: True/False/None, numbers, else text)")
    run.add_argument("-r", "--raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="a parameter kept as text")
    run.add_argument("--output", "-o", help="the executed notebook (default: NAME-run.ipynb beside it)")
    run.add_argument("--id", dest="run_id", help="the run's id (default: from the notebook's path and "
                     "the parameters)")  # fmt: skip
    run.add_argument("--kernel", help="the kernel's name (default: the notebook's)")
    sub.add_parser("runs", help="notebook runs, newest first").add_argument("--limit", type=int, default=50)
    return p


def _run(args: argparse.Namespace) -> int:
    """``durablenb run``: 0 when every cell ran, 1 when a cell failed, 3 when the kernel died."""
    import os
    from pathlib import Path

    from .runs import RunError, parse_value, run_notebook

    if args.dsn:
        os.environ["DURABLENB_DATABASE_URL"] = args.dsn  # the kernel connects, not this process
    if args.schema:
        os.environ["DURABLENB_SCHEMA"] = args.schema
    params = {name: parse_value(value) for name, value in args.parameter}
    params.update({name: value for name, value in args.raw})
    try:
        result = run_notebook(Path(args.notebook), Path(args.output) if args.output else None, params,
                              args.run_id, args.kernel)  # fmt: skip
    except (RunError, OSError, ValueError) as exc:
        print(f"durablenb: {exc}", file=sys.stderr)
        return 2
    done = f"{len(result.executed)} cells ran, {len(result.restored)} restored"
    print(f"{result.run_id}: {done}; wrote {result.output}")
    if result.kernel_died:
        print(f"durablenb: {result.error}; run the same command again to resume", file=sys.stderr)
        return 3
    if result.error:
        print(f"durablenb: a cell failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def _show(df: pd.DataFrame) -> None:
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_colwidth", 60):
        print(df.to_string(index=False) if len(df) else "(none)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one verb; returns the exit status (1 with a clear message on a durablenb error)."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    try:
        if args.dsn or args.schema:
            api.connect(args.dsn, schema=args.schema)
        cmd = args.command
        if cmd == "list":
            status = args.status.split(",") if args.status else None
            _show(verbs.workflow_table(history.workflows(status=status, name=args.name,
                                                         limit=args.limit), notebook=True))  # fmt: skip
        elif cmd == "steps":
            _show(verbs.step_table(args.workflow_id))
        elif cmd == "output":
            value = verbs.output(args.workflow_id, args.step, args.to)
            print(f"wrote {args.to}" if args.to else value)
        elif cmd == "timeline":
            print(widgets.timeline_text(args.workflow_id))
        elif cmd == "resume":
            print(api.resume(args.workflow_id).result())
        elif cmd == "cancel":
            print("cancelled" if api.cancel(args.workflow_id) else "not running")
        elif cmd == "forget":
            print(f"{api.forget(args.workflow_id)} workflow record(s) removed")
        elif cmd == "fork":
            h = api.fork(args.workflow_id, from_step=args.from_step)
            print(h.workflow_id, h.result())
        elif cmd == "recover":
            handles = api.recover()
            for h in handles:
                print(h.workflow_id, h.result())
            if not handles:
                print("nothing to recover in this process")
        elif cmd == "info":
            store = runtime.store()
            print(f"store:   {store.masked_dsn}\nschema:  {store.schema} (version {store.schema_version})")
            access = store.access()
            whose = "" if access.role == access.owner else f"; the schema belongs to {access.owner}"
            print(f"role:    {access.role} ({access.level}{whose})")
            if access.level == "owner":
                shared = ", ".join(f"{r} ({level})" for r, level in store.shared_with())
                print(f"shared:  {shared or 'with no other role'}")
            counts = store.status_counts()
            print("records: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))
        elif cmd == "grant":
            store = runtime.store()
            given = store.grant(args.role, write=args.write)
            what = "read and write (run, resume, cancel, forget)" if given == "write" else "read"
            print(f"role {args.role} may now {what} the workflows of schema {store.schema}")
        elif cmd == "revoke":
            store = runtime.store()
            store.revoke(args.role)
            print(f"role {args.role} has no access to schema {store.schema} any more")
        elif cmd == "runs":
            from .runs import runs_table

            _show(runs_table(args.limit))
        elif cmd == "gc":
            print(f"{api.gc(parse_duration(args.older_than))} workflow record(s) removed")
    except (DurableError, ValueError, TypeError, LookupError) as exc:
        print(f"durablenb: {exc}", file=sys.stderr)
        return 1
    return 0

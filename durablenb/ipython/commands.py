"""The ``%durable`` subcommands, one small function each."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import pandas as pd
from IPython.core.error import UsageError

from .. import __version__, _durations, api, history, server, verbs
from ..engine import planner, replay, runtime
from ..errors import CodeChangedError, WorkflowCancelledError, WorkflowNotFoundError


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``12h``, ``7d`` or ``2w``; `UsageError` otherwise."""
    try:
        return _durations.parse_duration(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _one_id(args: list[str], verb: str) -> str:
    if len(args) != 1:
        raise UsageError(f"%durable {verb} takes one workflow id")
    return args[0]


def _row(wid: str) -> Any:
    row = runtime.store().get_workflow(wid)
    if row is None:
        raise WorkflowNotFoundError(f"no workflow {wid!r} is recorded (see %durable list --all)")
    return row


def cmd_list(opts: Any, args: list[str]) -> pd.DataFrame:
    status = opts.status.split(",") if opts.status else None
    here = None if getattr(opts, "everyone", False) else runtime.notebook()
    df = history.workflows(status=status, name=args[0] if args else None, limit=opts.limit,
                           notebook=here)  # fmt: skip
    return verbs.workflow_table(df, notebook=here is None)


def cmd_steps(opts: Any, args: list[str]) -> pd.DataFrame:
    wid = _one_id(args, "steps")
    _row(wid)
    return verbs.step_table(wid)


def cmd_timeline(opts: Any, args: list[str]) -> Any:
    from .. import widgets

    wid = _one_id(args, "timeline")
    _row(wid)
    return widgets.timeline(wid)


def cmd_resume(opts: Any, args: list[str]) -> Any:
    wid = _one_id(args, "resume")
    return api.resume(wid).result()


def cmd_cancel(opts: Any, args: list[str]) -> None:
    wid = _one_id(args, "cancel")
    _row(wid)
    if api.cancel(wid):
        print(f"cancelled {wid}; it stops before its next step")
    else:
        print(f"{wid} is not running; nothing to cancel")


def cmd_fork(opts: Any, args: list[str]) -> Any:
    wid = _one_id(args, "fork")
    if opts.from_step is None:
        raise UsageError("%durable fork ID --from-step N")
    h = api.fork(wid, from_step=opts.from_step)
    print(f"forked {wid} from step {opts.from_step} as {h.workflow_id}")
    return h.result()


def cmd_forget(opts: Any, args: list[str]) -> None:
    wid = _one_id(args, "forget")
    n = api.forget(wid)
    print(f"forgot {wid} ({n} workflow record{'s' if n != 1 else ''} removed)")


def cmd_recover(opts: Any, args: list[str]) -> list[Any]:
    handles = api.recover()
    if not handles:
        print("no interrupted workflow defined in this kernel to recover")
        return []
    print("resuming: " + ", ".join(h.workflow_id for h in handles))
    results = []
    for h in handles:
        try:
            results.append(h.result())
            print(f"  {h.workflow_id}: finished")
        except Exception as exc:
            print(f"  {h.workflow_id}: {type(exc).__name__}: {exc}")
    return results


def cmd_connect(opts: Any, args: list[str]) -> None:
    dsn = args[0] if args else None
    store = api.connect(dsn)
    print(f"durablenb connected to {store.masked_dsn} (schema {store.schema})")


def cmd_info(opts: Any, args: list[str]) -> None:
    store = runtime.store()
    counts = store.status_counts()
    print(f"durablenb {__version__}")
    print(f"store:    {store.masked_dsn}")
    print(f"schema:   {store.schema} (version {store.schema_version})")
    print(f"server:   PostgreSQL {store.server_version // 10000}.{store.server_version % 10000}")
    if runtime.embedded_home() is not None:
        print(f"embedded: data in {server.data_dir(runtime.embedded_home())}")
    print("records:  " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))


def cmd_gc(opts: Any, args: list[str]) -> None:
    if not opts.older_than:
        raise UsageError("%durable gc --older-than 7d")
    seconds = parse_duration(opts.older_than)
    n = api.gc(seconds)
    print(f"removed {n} workflow records finished more than {_dt.timedelta(seconds=seconds)} ago")


def _positions(wid: str, step: str) -> list[int]:
    steps = history.steps(wid)
    if step.isdigit():
        pos = [int(step)] if int(step) in set(steps["position"]) else []
    else:
        pos = [int(p) for p in steps.loc[steps["name"] == step, "position"]]
    if not pos:
        raise UsageError(f"workflow {wid!r} has no recorded step {step!r} (see %durable steps)")
    return pos


def diff_frame(wid: str) -> pd.DataFrame:
    """What a rerun of *wid* would do with each recorded step, given this kernel's code: the
    engine's own plan (`durablenb.engine.planner`), step by step."""
    row = _row(wid)
    store = runtime.store()
    records = store.get_steps(wid)
    wf = runtime.registered(row.name)
    defs = replay.definitions(wf, own_call=row.parent_id is None) if wf is not None else planner.Definitions(
        None, "fork", lambda name: getattr(runtime.registered_step(name), "code_hash", None))
    try:
        plan = planner.plan(row, records, defs)
    except CodeChangedError as exc:
        raise UsageError(f"{exc} (on_change='error': a rerun raises CodeChangedError)") from None
    except WorkflowCancelledError as exc:
        raise UsageError(str(exc)) from None
    positions = sorted(records)
    verdicts, reasons = [], []
    for pos in positions:
        rec = records[pos]
        if plan.fork_at is not None and pos >= plan.fork_at:
            verdicts.append("re-run")
            first = pos == plan.fork_at
            reasons.append(plan.why if first else f"after the change at position {plan.fork_at}")
        else:
            verdicts.append("reuse")
            known = runtime.registered_step(rec.name) is not None
            reasons.append("unchanged" if known and rec.code_hash else
                           "recorded value" if not rec.code_hash else "not defined in this kernel")
    steps = history.steps(wid).set_index("position")
    out = pd.DataFrame({"position": positions, "name": [records[p].name for p in positions],
                        "status": [steps["status"].get(p) for p in positions],
                        "on rerun": verdicts, "why": reasons})  # fmt: skip
    out.attrs["body_changed"] = plan.body_changed
    out.attrs["action"] = plan.action
    return out


def cmd_diff(opts: Any, args: list[str]) -> pd.DataFrame:
    wid = _one_id(args, "diff")
    out = diff_frame(wid)
    if out.attrs.get("body_changed"):
        print("the workflow body changed: recorded steps replay while the new body calls the same "
              "steps in the same order; from the first different call on, steps run anew")  # fmt: skip
    n = int((out["on rerun"] == "re-run").sum())
    print(f"{wid}: {len(out) - n} recorded steps would be reused, {n} would run again")
    return out


def cmd_keep(opts: Any, args: list[str]) -> None:
    if len(args) != 2:
        raise UsageError("%durable keep ID STEP (STEP: a position or a step name)")
    wid, step = args
    positions = _positions(wid, step)
    name = history.steps(wid).set_index("position").loc[positions[0], "name"]
    current = runtime.registered_step(name)
    if current is None:
        raise UsageError(f"step {name!r} is not defined in this kernel; run its cell first")
    runtime.store().set_step_code_hash(wid, positions, current.code_hash)
    print(f"kept the record of {name!r} at position(s) {positions}: the current code counts as "
          "unchanged")  # fmt: skip


def cmd_refresh(opts: Any, args: list[str]) -> None:
    if len(args) != 2:
        raise UsageError("%durable refresh ID STEP (STEP: a position or a step name)")
    wid, step = args
    positions = _positions(wid, step)
    runtime.store().set_step_code_hash(wid, positions[:1], planner.REFRESH)
    print(f"the next run of {wid} re-runs from position {positions[0]} on")


def cmd_output(opts: Any, args: list[str]) -> Any:
    if len(args) != 2:
        raise UsageError("%durable output ID STEP [--to FILE] (STEP: a position or a step name)")
    value = verbs.output(args[0], args[1], opts.to)
    if opts.to:
        print(f"wrote the output of {args[1]!r} to {opts.to}")
    return value


#: One line of usage and what it does, per command (``%durable help CMD``).
USAGE = {
    "list": "%durable list [NAME] [--status S,S] [--limit N] [--all]: this notebook's workflows "
            "(--all: every notebook's), newest first",
    "steps": "%durable steps ID: the recorded steps of a workflow",
    "timeline": "%durable timeline ID: a workflow's timeline",
    "output": "%durable output ID STEP [--to FILE]: the recorded output of a step (a position or "
              "a name); --to writes it to .parquet, .csv, .feather, .npy, .json or .pkl",
    "resume": "%durable resume ID: run a workflow again from its records and wait for it",
    "cancel": "%durable cancel ID: stop a running workflow before its next step",
    "fork": "%durable fork ID --from-step N: a copy that reuses the records before position N",
    "forget": "%durable forget ID: delete a workflow's records (children, archives, blobs)",
    "recover": "%durable recover: resume every interrupted workflow defined in this kernel",
    "connect": "%durable connect [DSN]: connect to another store",
    "info": "%durable info: where the records are, and how many",
    "gc": "%durable gc --older-than 7d: delete finished workflows older than an age",
    "diff": "%durable diff ID: what a rerun would reuse and re-run, step by step",
    "keep": "%durable keep ID STEP: reuse a step's record although its code changed",
    "refresh": "%durable refresh ID STEP: run a step (and the ones after it) again at the next run",
    "help": "%durable help [CMD]: this help",
}  # fmt: skip


def cmd_help(opts: Any, args: list[str]) -> None:
    if args and args[0] in USAGE:
        print(USAGE[args[0]])
        return
    if args:
        raise UsageError(f"unknown command {args[0]!r}; one of: {', '.join(USAGE)}")
    print("%durable COMMAND ...   (as a cell magic, %%durable [--id ID] runs the cell as a workflow)\n")
    print("\n".join("  " + USAGE[c] for c in USAGE))


COMMANDS = {
    "list": cmd_list,
    "output": cmd_output,
    "help": cmd_help,
    "steps": cmd_steps,
    "timeline": cmd_timeline,
    "resume": cmd_resume,
    "cancel": cmd_cancel,
    "fork": cmd_fork,
    "forget": cmd_forget,
    "recover": cmd_recover,
    "connect": cmd_connect,
    "info": cmd_info,
    "gc": cmd_gc,
    "diff": cmd_diff,
    "keep": cmd_keep,
    "refresh": cmd_refresh,
}

"""IPython integration: ``%load_ext durablenb``, the ``%durable`` and ``%%durable`` magics."""

from __future__ import annotations

import ast
import logging
import re
import sys
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from ..engine import hashing, runtime
from ..errors import DurableError, StoreUnavailableError

logger = logging.getLogger("durablenb")

__all__ = ["DurableMagics", "load_ipython_extension", "unload_ipython_extension"]


#: A ``%%durable`` line with at most ``--id ID`` (anything else goes through argparse).
_CELL_LINE = re.compile(r"\s*(?:--id[ =]([^\s'\"]+))?\s*")


@magics_class
class DurableMagics(Magics):
    """``%durable CMD …`` manages recorded workflows; ``%%durable`` runs a cell durably."""

    @magic_arguments()
    @argument(
        "command",
        nargs="?",
        help="list | steps ID | timeline ID | output ID STEP | diff ID | keep ID STEP | "
        "refresh ID STEP | resume ID | cancel ID | fork ID --from-step N | forget ID | recover | "
        "connect DSN | info | gc --older-than 7d | help [CMD]. As a cell magic: no command, the "
        "cell runs as a workflow.",
    )
    @argument("args", nargs="*", help="the command's workflow id and other arguments")
    @argument("--id", dest="workflow_id", default=None, help="%%durable: the cell's workflow id")
    @argument("--runner", action="store_true",
              help="%%durable, in `durablenb run`: no messages; a cell whose names cannot all be "
                   "recorded runs again on resume; how it went is reported to the runner")
    @argument("--no-recompute", dest="recompute", action="store_false",
              help="%%durable: once finished, the cell is always restored, never run again "
                   "(by default a cell that touched nothing outside the kernel runs again when "
                   "that is faster than restoring it)")
    @argument("--from-step", type=int, default=None, help="fork: first position to run anew")
    @argument("--older-than", default=None, help="gc: age such as 90s, 30m, 12h, 7d, 2w")
    @argument("--status", default=None, help="list: statuses, comma-separated")
    @argument("--to", default=None, help="output: write the output to this file")
    @argument("--limit", type=int, default=100, help="list: the most rows")
    @argument("--all", dest="everyone", action="store_true",
              help="list: the workflows of every notebook, not only this one's")
    @line_cell_magic
    def durable(self, line: str = "", cell: str | None = None) -> Any:
        """Manage durable workflows, or run the cell as one."""
        __tracebackhide__ = True
        if cell is None and line.split()[:1] in (["--help"], ["-h"]):
            line = "help"
        if cell is not None and (plain := _CELL_LINE.fullmatch(line)):  # the usual line, parsed fast
            return self._run_cell(cell, plain.group(1))
        opts = parse_argstring(self.durable, line)
        if cell is not None:
            if opts.command:
                raise UsageError("%%durable takes no command; only --id ID")
            return self._run_cell(cell, opts.workflow_id, opts.runner, opts.recompute)
        from .commands import COMMANDS

        command = opts.command or "list"
        if command not in COMMANDS:
            raise UsageError(f"unknown command {command!r}; one of: {', '.join(COMMANDS)}")
        try:
            return COMMANDS[command](opts, list(opts.args))
        except StoreUnavailableError as exc:
            raise UsageError(str(exc)) from None

    def _run_cell(self, cell: str, workflow_id: str | None, runner: bool = False,
                  recompute: bool = True) -> Any:  # fmt: skip
        __tracebackhide__ = True
        from .cell import RUNNER_MIME, run_cell

        value, report = run_cell(self.shell, cell, workflow_id, rerun_unrecorded=runner, recompute=recompute)
        if runner:
            from IPython.display import publish_display_data

            if report["rerun_because"]:
                print("durablenb: ran the cell again: " + "; ".join(report["rerun_because"]))
            publish_display_data({RUNNER_MIME: {k: report[k] for k in ("workflow_id", "executed",
                                                                         "skipped", "rerun_because")}})
            return value
        if report["rerun_because"]:
            print("durablenb: ran the cell again: could not restore " + "; ".join(report["rerun_because"]))
        names = ", ".join(report["names"]) or "nothing"
        if report["recomputed"]:
            print(f"durablenb: cell {report['workflow_id']} already finished; recomputed {names} "
                  "(faster than restoring them; equal to the record)")  # fmt: skip
        elif not report["executed"]:
            if report["recomputed"] is False:
                print("durablenb: running the cell again gave other values than its record; "
                      "restoring the recorded ones")  # fmt: skip
            print(f"durablenb: cell {report['workflow_id']} already finished; restored {names} "
                  "without running it")  # fmt: skip
        if report["skipped"]:
            print("durablenb: not recorded (cannot be encoded): " + ", ".join(report["skipped"]))
        return value


def _complete(shell: Any, event: Any) -> list[str]:
    from .commands import COMMANDS

    words = event.line.split()
    typing_new = event.line.endswith(" ")
    if len(words) <= 1 or (len(words) == 2 and not typing_new):
        return sorted(COMMANDS)
    prefix = "" if typing_new else words[-1]
    store = runtime.current_store()
    if store is None:
        return []
    try:
        return store.recent_ids(prefix)
    except DurableError:
        return []


def _source_from_history(fn: Any) -> str | None:
    """The cell that defined *fn*, from the input history, when getsource has none."""
    from IPython import get_ipython

    shell = get_ipython()
    name = getattr(fn, "__name__", None)
    if shell is None or not name:
        return None
    for cell in reversed(shell.user_ns.get("_ih", [])):
        if f"def {name}" not in cell:
            continue
        try:
            tree = ast.parse(shell.transform_cell(cell))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return ast.unparse(node)
    return None


def _startup_report() -> str:
    from .. import history

    store = runtime.store()
    lines = [f"durablenb: connected to {store.masked_dsn} (schema {store.schema})"]
    left = history.workflows(status="interrupted", limit=50, notebook=runtime.notebook())
    left = left[left["parent_id"].isna()]
    if left.empty:
        return lines[0]
    lines.append(f"{len(left)} workflow{'s' if len(left) != 1 else ''} left unfinished by an "
                 "earlier kernel:")  # fmt: skip
    for _, w in left.iterrows():
        what = "the %%durable cell" if str(w["name"]).startswith("%%durable:") else \
            f"the cell that calls {w['name']}(...)"  # fmt: skip
        lines.append(f"  {w['workflow_id']}  ({w['steps']} steps recorded, last update "
                     f"{w['updated_at']:%Y-%m-%d %H:%M}): rerun {what} or "
                     f"%durable resume {w['workflow_id']}")  # fmt: skip
    lines.append("  %durable recover resumes every one whose code is defined in this kernel")
    return "\n".join(lines)


class _NotebookNotes(logging.Handler):
    """Shows durablenb's warnings (a forked run, a lost record) under the running cell."""

    def emit(self, record: logging.LogRecord) -> None:
        from ..widgets import live

        wid, note = getattr(record, "durablenb_workflow", None), getattr(record, "durablenb_note", None)
        if wid is not None and live.note_shown(wid, note or ""):
            return  # its timeline shows it
        try:
            print(f"durablenb: {record.getMessage()}", file=sys.stderr)
        except Exception:  # pragma: no cover - never let a note break a cell
            pass


_notes = _NotebookNotes(level=logging.WARNING)


def load_ipython_extension(ipython: Any) -> None:
    """Register the magics, connect (embedded server by default) and report unfinished work."""
    if _notes not in logger.handlers:
        logger.addHandler(_notes)
    from ..widgets import live

    live.enable()
    from . import cell  # noqa: F401  (what %%durable runs on: imported once, here, not in a cell)

    ipython.register_magics(DurableMagics)
    ipython.set_hook("complete_command", _complete, str_key="%durable")
    ipython.set_hook("complete_command", _complete, str_key="%%durable")
    if _source_from_history not in hashing.source_finders:
        hashing.source_finders.append(_source_from_history)
    try:
        print(_startup_report())
    except DurableError as exc:
        print(f"durablenb: {exc}\n  %durable connect DSN picks another database")


def unload_ipython_extension(ipython: Any) -> None:
    """Forget the source finder; the magics stay until the kernel restarts."""
    if _source_from_history in hashing.source_finders:
        hashing.source_finders.remove(_source_from_history)
    if _notes in logger.handlers:
        logger.removeHandler(_notes)


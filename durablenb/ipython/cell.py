"""``%%durable`` cells: the cell body runs as a workflow and the names it assigns are recorded."""

from __future__ import annotations

import ast
import functools
import hashlib
import io
import time
import tokenize
import types
from typing import Any

from .. import codecs
from ..engine import Workflow, _canonical, hashing, runtime, values
from ..engine.context import _explicit_id, enclosing
from ..engine.replay import call_workflow
from . import _effects, _outputs, _recompute, _views

# A cell's recorded output: {"names": {name: (codec, data, checksum)}, "skipped": [names
# whose values cannot be encoded], "value": the last expression's value or None}.


def assigned_names(tree: ast.Module) -> list[str]:
    """Names the cell binds in its own namespace, in order (not those inside functions)."""
    names: list[str] = []

    def add(n: str) -> None:
        if n not in names:
            names.append(n)

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
            return  # their bodies bind their own locals
        if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                if alias.name != "*":
                    add(alias.asname or alias.name.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in tree.body:
        visit(stmt)
    return names


def read_names(tree: ast.Module) -> list[str]:
    """Names the cell reads at its own level (comprehensions included, function and class
    bodies not): the objects an in-place change (``x[0] = 1``, ``df["e"] = 1``,
    ``rng.random()``) can reach."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            return
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in names:
            names.append(node.id)
        for child in ast.iter_child_nodes(node):
            visit(child)

    for stmt in tree.body:
        visit(stmt)
    return names


#: Objects larger than this are not fingerprinted for in-place changes (twice per cell).
MAX_FINGERPRINTED = 1 << 30


def fingerprint(value: Any) -> str | None:
    """A digest of *value*'s content, or None when it has none that can be trusted (or is
    too large to take twice per cell)."""
    if isinstance(value, (types.ModuleType, types.FunctionType, type)) or callable(value) and \
            not hasattr(value, "__dict__"):  # fmt: skip
        return None
    size = codecs.estimate_size(value)
    if size is not None and size > MAX_FINGERPRINTED:
        return None
    try:
        return _canonical.digest((value,), {})
    except Exception:  # noqa: BLE001  (no stable digest: a lock, a connection, a generator…)
        return None


def cell_hash(cell: str) -> str:
    """Digest of the cell's code, blind to comments and formatting (equal on every Python)."""
    return hashing.source_digest(cell)


class CellWorkflow(Workflow):
    """A workflow whose body is a notebook cell (the workflows it calls are top-level ones)."""

    transparent = True
    finished_first = True

    def __init__(self, fn: Any, *, name: str, code: str) -> None:
        super().__init__(fn, name=name)
        self._code_hash = code


def default_cell_id(digest: str) -> str:
    """``cell-…``: the cell's digest, mixed with this notebook's path when it is known, so
    that the same cell in two notebooks is two workflows."""
    where = runtime.notebook()
    if where:
        digest = hashlib.blake2b(f"{where}\0{digest}".encode(), digest_size=8).hexdigest()
    return f"cell-{digest[:16]}"


def run_cell(shell: Any, cell: str, workflow_id: str | None = None, rerun_unrecorded: bool = False,
             recompute: bool = True) -> tuple[Any, dict[str, Any]]:  # fmt: skip
    """Run *cell* durably in *shell*'s namespace: ``(display value, report)``.

    A finished, unchanged cell is not executed: what it printed is shown again, its
    ``def``/``class``/``import`` statements run again and its other recorded names are
    restored. A name that cannot be restored makes the cell run again (it says so); with
    *rerun_unrecorded*, so does a name that could not be recorded (a connection, a model
    holding a thread), so that later cells find it. With *recompute* (and the setting), a
    cell that may run again and does so faster than it restores is run again instead, its
    values checked against the record (`_recompute`).
    """
    __tracebackhide__ = True
    digest = cell_hash(cell)
    wid = workflow_id or default_cell_id(digest)
    parts = _Parts(shell, cell, wid)
    ran = {"executed": False}

    def body() -> dict[str, Any]:
        __tracebackhide__ = True
        ran["executed"] = True
        started = time.perf_counter()
        with _outputs.Tee() as printed, _outputs.Displays(shell, printed) as shown, _effects.watch() as seen:
            value = parts.execute()
            shown.flush_figures()
        run_s = time.perf_counter() - started
        if (run := enclosing()) is not None and run.position:
            seen.note("durablenb.step", ())  # steps recorded in the cell: never run it again
        out = parts.record()
        out["value"] = None if parts.quiet else _recordable(value)
        out["stdout"], out["stderr"] = printed.text("stdout"), printed.text("stderr")
        out["displays"] = shown.kept
        out["run_s"], out["effects"] = run_s, seen.seen
        out["recompute"] = _recompute.plan(parts, out, run_s, seen.seen)
        return out

    wf = CellWorkflow(body, name=f"%%durable:{wid}", code=digest)
    runtime.store().read_ahead("%%durable:", runtime.notebook())  # one query for the next cells
    out = _call(wf, wid)
    report = {"workflow_id": wid, "executed": ran["executed"], "skipped": out["skipped"],
              "names": [n for n in out["names"] if n != GROUP] + out.get("grouped", []),
              "rerun_because": None, "recomputed": None}  # fmt: skip
    if not ran["executed"]:
        if recompute and runtime.store().settings.recompute and _recompute.worth_it(out):
            report["recomputed"] = _recompute.run_again(parts, out)
            if report["recomputed"]:
                return (None if parts.quiet else out["value"]), report
        failed = [f"{n} could not be recorded" for n in out["skipped"]] if rerun_unrecorded else []
        failed = failed or parts.restore(out)
        if failed:  # never an error: run the cell again, recording it anew
            runtime.store().forget(wid)
            value, again = run_cell(shell, cell, workflow_id, rerun_unrecorded, recompute)
            again["rerun_because"] = failed
            return value, again
    return (None if parts.quiet else out["value"]), report


def _call(wf: CellWorkflow, wid: str) -> Any:
    __tracebackhide__ = True
    token = _explicit_id.set(wid)
    try:
        return call_workflow(wf, (), {})
    finally:
        _explicit_id.reset(token)


def _recordable(value: Any) -> Any:
    try:
        codecs.encode(value)
    except codecs.EncodingError:
        return None
    return value


class _Parts:
    """A cell split into what it executes, what it records and what re-runs on restore."""

    def __init__(self, shell: Any, cell: str, wid: str) -> None:
        self.shell, self.wid = shell, wid
        # IPython syntax (%magics, !shell, a?) becomes Python first, as in any cell; Python
        # stays as it is (parsed first: what is valid Python, IPython leaves alone).
        try:
            source, tree = cell, ast.parse(cell)
        except SyntaxError:
            source = shell.transform_cell(cell) if hasattr(shell, "transform_cell") else cell
            tree = ast.parse(source)
        self._tree = tree
        #: Re-run on restore instead of decoded: imports, and the notebook's own functions
        #: and classes (they pickle by reference to a __main__ a new kernel does not have).
        self.rerun = [n for n in tree.body if isinstance(n, _RERUN)]
        self.defined = {n.name for n in self.rerun if isinstance(n, _DEFS)}
        self.last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        self.body = tree.body[:-1] if self.last is not None else tree.body
        self.quiet = _ends_with_semicolon(cell)
        self.filename = shell.compile.cache(source) if hasattr(shell, "compile") else "<durable-cell>"
        self.ns = shell.user_ns

    @functools.cached_property
    def names(self) -> list[str]:
        """The names the cell assigns (then those it changed in place, once it ran)."""
        return assigned_names(self._tree)

    @functools.cached_property
    def reads(self) -> list[str]:
        """The names the cell only reads."""
        return [n for n in read_names(self._tree) if n not in self.names]

    def run(self) -> Any:
        """Execute the cell's statements in its namespace; the value of its last expression."""
        __tracebackhide__ = True
        exec(compile(ast.Module(body=self.body, type_ignores=[]), self.filename, "exec"), self.ns)
        if self.last is None:
            return None
        return eval(compile(ast.Expression(self.last.value), self.filename, "eval"), self.ns)

    def execute(self) -> Any:
        """Run the cell; names it only read but changed in place join the recorded ones."""
        __tracebackhide__ = True
        before = {n: fp for n in self.reads if n in self.ns and (fp := fingerprint(self.ns[n]))}
        state = _outputs.global_state()
        value = self.run()
        self.in_place = [n for n, fp in before.items() if n in self.ns and fingerprint(self.ns[n]) != fp]
        self.names += self.in_place
        self.changed_state = {
            k: v
            for k, v in _outputs.global_state().items()
            if _outputs.dumped(v) != _outputs.dumped(state.get(k))
        }
        return value

    def record(self) -> dict[str, Any]:
        """The cell's names, encoded. Those that pickle are encoded together, under the key
        ``*``, so that objects they share (``fig`` and ``ax``, a list and its items) are still
        shared once restored; frames, arrays and plain data are encoded one by one, and the
        pickle refers to those among them it holds (``pair = [df, 1]``) by name."""
        store = runtime.store()
        recorded: dict[str, tuple[str, bytes | None, int | None, str | None]] = {}
        skipped: list[str] = []
        in_place = getattr(self, "in_place", [])
        wanted = [n for n in self.names if n in self.ns and n not in self.defined
                  and not isinstance(self.ns[n], types.ModuleType)]  # fmt: skip
        try:  # kept as views of other names; at worst they are recorded as copies
            views = _views.find(self.ns, wanted, exclude=in_place)
        except Exception:  # noqa: BLE001
            views = {}
        wanted = [n for n in wanted if n not in views]
        chosen = {n: codecs.choose(self.ns[n]) for n in wanted}
        together = {n: self.ns[n] for n in wanted if chosen[n] == codecs.PICKLE}
        refs = {
            id(self.ns[n]): n for n in wanted if chosen[n] in (codecs.ARROW, codecs.NPY) and n not in in_place
        }
        if len(together) > 1 or (together and refs):
            try:
                enc = values.encode_value(store, together, (self.wid, f"var:{GROUP}"), self.wid, refs or None)
            except codecs.EncodingError:
                together = {}  # one of them cannot be recorded: each on its own, below
            else:
                recorded[GROUP] = (enc.codec, enc.data, enc.checksum, enc.blob)
        for n in wanted:
            if n in together and GROUP in recorded:
                continue
            try:
                enc = values.encode_value(store, self.ns[n], (self.wid, f"var:{n}"), self.wid)
            except codecs.EncodingError:
                skipped.append(n)
                continue
            recorded[n] = (enc.codec, enc.data, enc.checksum, enc.blob)
        grouped = list(together) if GROUP in recorded else []
        refers = sorted(n for n in refs.values() if n in recorded) if grouped else []
        return {"names": recorded, "skipped": skipped, "grouped": grouped, "views": views, "refers": refers,
                "in_place": in_place, "state": getattr(self, "changed_state", {})}  # fmt: skip

    def restore(self, out: dict[str, Any]) -> list[str]:
        """Show what the cell printed, re-run its definitions, restore its names; the names
        that could not be restored (then nothing is half-restored: the cell runs again)."""
        for node in self.rerun:
            exec(compile(ast.Module(body=[node], type_ignores=[]), self.filename, "exec"), self.ns)
        figures = _outputs.figure_numbers()
        decoded, failed = decode_names(out, self.wid)
        if failed:
            return failed
        restored = {**decoded.pop(GROUP, {}), **decoded}
        in_place, specs = out.get("in_place", []), out.get("views", {})
        views, failed = (
            ({}, []) if not specs else _views.rebuild(specs, _views.bound(self.ns, restored, in_place))
        )
        if failed:
            return failed
        _outputs.close_new_figures(figures)  # unpickled figures would be drawn again
        _views.assign(self.ns, restored, in_place)  # in place where the cell changed it in place
        self.ns.update(views)
        _outputs.set_global_state(out.get("state", {}))
        _outputs.replay_outputs(out)
        return []


def decode_names(out: dict[str, Any], wid: str) -> tuple[dict[str, Any], list[str]]:
    """The values of a cell's record by name (the pickled group under `GROUP`, decoded last:
    it refers to the others), and what failed to decode."""
    store = runtime.store()
    decoded: dict[str, Any] = {}
    failed: list[str] = []
    for n in sorted(out["names"], key=lambda n: n == GROUP):
        codec, data, checksum, blob = out["names"][n]
        refs = {r: decoded[r] for r in out.get("refers", []) if r in decoded} if n == GROUP else {}
        what, place = f"value of {n!r} in cell {wid!r}", (wid, f"var:{n}")
        try:
            if refs:
                decoded[n] = values.decode_value(store, codec, data, checksum, blob, what, place, refs)
            else:
                decoded[n] = values.decode_value(store, codec, data, checksum, blob, what, place)
        except Exception as exc:  # noqa: BLE001  (any failure: the cell runs again)
            label = ", ".join(out.get("grouped", [])) if n == GROUP else n
            failed.append(f"{label} ({type(exc).__name__}: {str(exc)[:120]})")
    return decoded, failed


#: The mime type of the report a cell run by `durablenb run` sends its runner (which removes it).
RUNNER_MIME = "application/vnd.durablenb.cell+json"

#: The key of the names a cell's record holds together in one pickle.
GROUP = "*"
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_RERUN = (ast.Import, ast.ImportFrom, *_DEFS)


def _ends_with_semicolon(cell: str) -> bool:
    """Whether the cell's last code token is ``;`` (IPython then shows no result)."""
    if ";" not in cell:
        return False
    last = ""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(cell).readline):
            if tok.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                tokenize.DEDENT, tokenize.ENDMARKER):  # fmt: skip
                last = tok.string
    except (tokenize.TokenError, SyntaxError):
        return cell.rstrip().endswith(";")
    return last == ";"

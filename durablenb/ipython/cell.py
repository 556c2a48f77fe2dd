"""``%%durable`` cells: the cell body runs as a workflow and the names it assigns are recorded."""

from __future__ import annotations

import ast
import hashlib
import types
from typing import Any

from .. import codecs
from ..engine import Workflow, hashing, runtime, values
from ..engine.context import _explicit_id
from ..engine.replay import call_workflow

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


def cell_hash(cell: str) -> str:
    """Digest of the cell's code, blind to comments and formatting (equal on every Python)."""
    return hashing.source_digest(cell)


class CellWorkflow(Workflow):
    """A workflow whose body is a notebook cell."""

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


def run_cell(shell: Any, cell: str, workflow_id: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Run *cell* durably in *shell*'s namespace: ``(display value, report)``.

    A finished, unchanged cell is not executed: its recorded names are restored.
    """
    __tracebackhide__ = True
    tree = ast.parse(cell)
    digest = cell_hash(cell)
    wid = workflow_id or default_cell_id(digest)
    names = assigned_names(tree)
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    last = tree.body[-1] if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    body_nodes = tree.body[:-1] if last is not None else tree.body
    filename = shell.compile.cache(cell) if hasattr(shell, "compile") else "<durable-cell>"
    ns = shell.user_ns
    ran = {"executed": False}

    def body() -> dict[str, Any]:
        __tracebackhide__ = True
        ran["executed"] = True
        exec(compile(ast.Module(body=body_nodes, type_ignores=[]), filename, "exec"), ns)
        value = None
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"), ns)
        store = runtime.store()
        recorded: dict[str, tuple[str, bytes | None, int | None, str | None]] = {}
        skipped: list[str] = []
        for n in names:
            if n not in ns or isinstance(ns[n], types.ModuleType):
                continue
            try:
                enc = values.encode_value(store, ns[n], (wid, f"var:{n}"), wid)
            except codecs.EncodingError:
                skipped.append(n)
                continue
            recorded[n] = (enc.codec, enc.data, enc.checksum, enc.blob)
        try:
            codecs.encode(value)
        except codecs.EncodingError:
            value = None
        return {"names": recorded, "skipped": skipped, "value": value}

    wf = CellWorkflow(body, name=f"%%durable:{wid}", code=digest)
    token = _explicit_id.set(wid)
    try:
        out = call_workflow(wf, (), {})
    finally:
        _explicit_id.reset(token)
    report = {"workflow_id": wid, "executed": ran["executed"], "skipped": out["skipped"],
              "names": list(out["names"])}  # fmt: skip
    if not ran["executed"]:
        for node in imports:
            exec(compile(ast.Module(body=[node], type_ignores=[]), filename, "exec"), ns)
        store = runtime.store()
        for n, (codec, data, checksum, blob) in out["names"].items():
            ns[n] = values.decode_value(store, codec, data, checksum, blob,
                                        f"value of {n!r} in cell {wid!r}", (wid, f"var:{n}"))  # fmt: skip
    return out["value"], report

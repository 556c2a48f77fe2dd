"""Digests of code that are equal in every process, under any hash seed, on every Python 3.10+.

`function_digest` and `source_digest` identify normalized source tokens: comments, blank
lines, line breaks inside brackets, indentation width, decorators, docstrings, the quote
style of string literals and the function's own name do not count.  `code_fingerprint` is
the fallback for functions without source.

Standard library only: this module is also loaded by file path under other interpreters.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import inspect
import io
import struct
import sys
import tokenize
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["function_digest", "source_digest", "code_fingerprint"]

_TAG = b"durablenb-code-v2"
_Pos = tuple[int, int]
_Span = tuple[_Pos, _Pos]
_DefNode = (ast.FunctionDef, ast.AsyncFunctionDef)
_Scope = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")
_len = struct.Struct(">I").pack
_DROPPED = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}
_FIXED = {tokenize.INDENT: "INDENT", tokenize.DEDENT: "DEDENT", tokenize.NEWLINE: "NEWLINE"}
# Python 3.12+ splits f-strings (3.14+ also t-strings) into START / MIDDLE / END tokens.
_SPLIT_START = {getattr(tokenize, n) for n in ("FSTRING_START", "TSTRING_START") if hasattr(tokenize, n)}
_SPLIT_END = {getattr(tokenize, n) for n in ("FSTRING_END", "TSTRING_END") if hasattr(tokenize, n)}
_UNPARSABLE = (SyntaxError, tokenize.TokenError, ValueError, RecursionError)


class _Source:
    """A source text with its lines, parse tree and tokens."""

    def __init__(self, text: str) -> None:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        code_lines = (line for line in text.split("\n") if line.strip()[:1] not in ("", "#"))
        self.first = 2 if next(code_lines, "")[:1] in (" ", "\t") else 1
        if self.first == 2:  # an indented snippet (a method, a nested function)
            text = "if 1:\n" + text
        self.lines = text.split("\n")
        self.tree = ast.parse(text)
        self.top = self.tree.body[0].body if self.first == 2 else self.tree.body  # type: ignore[attr-defined]
        self.tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
        self.starts = [t.start for t in self.tokens]

    def from_(self, pos: _Pos) -> list[tokenize.TokenInfo]:
        """The tokens that start at or after *pos*."""
        return self.tokens[bisect.bisect_left(self.starts, pos):]

    def start(self, node: Any) -> _Pos:
        """Where *node* starts, as a (line, character column) token position."""
        return node.lineno, self._column(node.lineno, node.col_offset)

    def end(self, node: Any) -> _Pos:
        """Where *node* ends, as a (line, character column) token position."""
        return node.end_lineno, self._column(node.end_lineno, node.end_col_offset)

    def _column(self, line: int, byte_col: int) -> int:  # ast columns count UTF-8 bytes
        return len(self.lines[line - 1].encode("utf-8")[:byte_col].decode("utf-8", "replace"))

    def slice(self, start: _Pos, end: _Pos) -> str:
        """The exact text between two token positions."""
        (sr, sc), (er, ec) = start, end
        if sr == er:
            return self.lines[sr - 1][sc:ec]
        return "\n".join([self.lines[sr - 1][sc:], *self.lines[sr: er - 1], self.lines[er - 1][:ec]])


def _string_text(text: str) -> str:
    """A plain string or bytes literal as the repr of its value; f-strings unchanged."""
    quote = min(i for i in (text.find("'"), text.find('"'), len(text)) if i >= 0)
    prefix = text[:quote].lower()
    if "f" in prefix or "t" in prefix:
        return text
    if "\\" not in text:  # the value is the text between the quotes
        body = text[quote + 3: -3] if text[quote: quote + 3] in ('"""', "'''") else text[quote + 1: -1]
        return repr(body.encode("ascii")) if "b" in prefix else repr(body)
    try:
        with warnings.catch_warnings():  # invalid escapes warn on 3.12+
            warnings.simplefilter("ignore")
            return repr(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return text


def _pairs(src: _Source, span: _Span, drop: list[_Span], own_name: _Pos | None) -> Iterator[tuple[str, str]]:
    """Normalized (token type name, text) pairs of the tokens that start inside *span*."""
    depth = 0
    split_start: _Pos = (0, 0)
    for tok in src.from_(span[0]):
        if tok.start >= span[1]:
            break
        if tok.type in _DROPPED or (drop and any(a <= tok.start < b for a, b in drop)):
            continue
        if depth or tok.type in _SPLIT_START:  # one token for each outermost f-string, as on 3.11
            if tok.type in _SPLIT_START:
                depth += 1
                split_start = tok.start if depth == 1 else split_start
            elif tok.type in _SPLIT_END:
                depth -= 1
                if depth == 0:
                    yield "STRING", src.slice(split_start, tok.end)
        elif tok.type in _FIXED:
            yield _FIXED[tok.type], ""
        elif tok.type == tokenize.STRING:
            yield "STRING", _string_text(tok.string)
        else:
            yield tokenize.tok_name[tok.type], "_" if tok.start == own_name else tok.string


def _scopes(nodes: list[Any]) -> Iterator[Any]:
    """Every def and class among the statements *nodes* and in the blocks nested in them."""
    for node in nodes:
        if isinstance(node, _Scope):
            yield node
        for field in _BLOCKS:
            block = getattr(node, field, None)
            if isinstance(block, list):
                yield from _scopes(block)


def _docstring_spans(src: _Source, roots: list[Any]) -> list[_Span]:
    """Spans of the docstrings of the defs and classes in *roots* (nested ones included),
    each with the NEWLINE or ``;`` that ends it."""
    spans = []
    for node in _scopes(roots):
        first = node.body[0]
        if not (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):  # fmt: skip
            continue
        end = src.end(first)
        after = next((t for t in src.from_(end) if t.type not in _DROPPED), None)
        if after is not None and (after.type == tokenize.NEWLINE or after.string == ";"):
            end = after.end
        spans.append((src.start(first), end))
    return spans


def _hex(out: list[bytes], pairs: Iterable[tuple[str, str]] = ()) -> str:
    """The digest of *out* followed by the length-prefixed *pairs*."""
    for kind, text in pairs:
        data = text.encode("utf-8", "surrogatepass")
        out.append(_len(len(kind)) + kind.encode() + _len(len(data)) + data)
    return hashlib.blake2b(b"".join(out), digest_size=16).hexdigest()


def _def_digest(src: _Source, node: Any) -> str:
    start = src.start(node)
    tokens = iter(src.from_(start))
    next(t for t in tokens if t.string == "def")
    own_name = next(t.start for t in tokens if t.type == tokenize.NAME)
    return _hex([_TAG, b"F"], _pairs(src, (start, src.end(node)), _docstring_spans(src, [node]), own_name))


def _find_def(src: _Source, name: str | None, line: int | None) -> Any:
    """The def named *name* starting at source *line* (or at top level when the line is
    unknown), else the only such def; None if there is none."""
    every = [n for n in _scopes(src.tree.body) if isinstance(n, _DefNode)]
    if line is not None:
        candidates = [n for n in every if (n.decorator_list[0] if n.decorator_list else n).lineno == line]
    else:
        candidates = [n for n in src.top if isinstance(n, _DefNode)]
    named = [n for n in candidates if n.name == name]
    if not named and line is None:
        named = [n for n in every if n.name == name]
    if named:
        return min(named, key=lambda n: (n.lineno, n.col_offset))
    return candidates[0] if len(candidates) == 1 else None


def _lambda_matches(src: _Source, node: ast.Lambda, code: Any, strict: bool) -> bool:
    """Whether the lambda at *node* compiles to *code*; not *strict*: blind to the scope of
    its names (free variables of the original compile as globals here)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            compiled = compile("(" + src.slice(src.start(node), src.end(node)) + ")", "<lambda>", "eval")
    except (SyntaxError, ValueError):
        return False
    new = next((c for c in compiled.co_consts if inspect.iscode(c) and c.co_name == "<lambda>"), None)
    if new is None or strict:
        return new is not None and (code.co_code, code.co_names) == (new.co_code, new.co_names)

    def key(c: Any) -> tuple[Any, ...]:
        consts = tuple(k for k in c.co_consts if not inspect.iscode(k))
        return c.co_argcount, c.co_kwonlyargcount, c.co_varnames, {*c.co_names, *c.co_freevars}, consts

    return key(code) == key(new)


def _lambda_digest(src: _Source, code: Any, line: int | None) -> str | None:
    nodes = [n for n in ast.walk(src.tree) if isinstance(n, ast.Lambda) and line in (None, n.lineno)]
    nodes.sort(key=lambda n: (n.lineno, n.col_offset))
    if len(nodes) > 1 and code is not None:
        for strict in (True, False):
            found = [n for n in nodes if _lambda_matches(src, n, code, strict)]
            if len(found) == 1:
                nodes = found
                break
    if not nodes:
        return None
    spans = [(src.start(n), src.end(n)) for n in nodes]
    return _hex([_TAG, b"L", _len(len(nodes))], (p for s in spans for p in _pairs(src, s, [], None)))


def _digest_in(text: str, fn: Any, line: int | None) -> str | None:
    """The digest of *fn* found in *text*, whose first line is source line *line* (if known)."""
    try:
        src = _Source(text)
    except _UNPARSABLE:
        return None
    code = getattr(fn, "__code__", None)
    first = None if line is None or code is None else code.co_firstlineno - line + src.first
    name = getattr(fn, "__name__", None)
    if name == "<lambda>":
        return _lambda_digest(src, code, first)
    node = _find_def(src, name, first)
    return None if node is None else _def_digest(src, node)


def function_digest(fn: Callable[..., Any], source: str | None = None) -> str | None:
    """32 hex characters identifying *fn*'s source code, or None when no source is found.

    *source*: the function's source text when `inspect.getsource` cannot find it.
    """
    fn = inspect.unwrap(fn)
    if source is not None:
        return _digest_in(source, fn, None)
    try:
        lines, line = inspect.getsourcelines(fn)
        found = _digest_in("".join(lines), fn, line or 1)
        if found is None:  # a snippet that does not parse alone (a lambda inside a call)
            found = _digest_in("".join(inspect.findsource(fn)[0]), fn, 1)
    except (OSError, TypeError):
        return None
    return found


def source_digest(source: str) -> str:
    """32 hex characters identifying a module's or a notebook cell's source code.

    Cells must already be plain Python (IPython syntax transformed); text that does not
    parse is identified by its lines with trailing whitespace removed.
    """
    try:
        src = _Source(source)
    except _UNPARSABLE:
        lines = source.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        text = "\n".join(line.rstrip() for line in lines).strip("\n")
        return _hex([_TAG, b"T", text.encode("utf-8", "surrogatepass")])
    everything = ((src.first, 0), (len(src.lines) + 2, 0))
    return _hex([_TAG, b"C"], _pairs(src, everything, _docstring_spans(src, src.tree.body), None))


# -- bytecode fallback ----------------------------------------------------------------------


def _const(value: Any, out: list[bytes]) -> None:
    """A canonical encoding of one code constant: sets in sorted order, code recursed."""
    if inspect.iscode(value):
        out.append(b"C")
        _code(value, out)
    elif isinstance(value, (frozenset, set, tuple)):
        parts = []
        for item in value:
            sub: list[bytes] = []
            _const(item, sub)
            parts.append(b"".join(sub))
        if not isinstance(value, tuple):
            parts.sort()
        out.append((b"T" if isinstance(value, tuple) else b"S") + _len(len(parts)))
        out.extend(_len(len(p)) + p for p in parts)
    else:
        data = f"{type(value).__name__}:{value!r}".encode("utf-8", "surrogatepass")
        out.append(b"R" + _len(len(data)) + data)


def _code(code: Any, out: list[bytes]) -> None:
    names = repr((code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)).encode()
    for part in (code.co_code, names):
        out.append(_len(len(part)) + part)
    out.append(struct.pack(">III", code.co_argcount, code.co_kwonlyargcount, len(code.co_consts)))
    for value in code.co_consts:
        _const(value, out)


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """32 hex characters identifying *fn*'s bytecode, for functions without source.

    Equal across processes and hash seeds, but not across Python versions: bytecode differs
    between versions, so the version (major.minor) is part of the digest.  A callable without
    bytecode is identified by its module and qualified name.
    """
    fn = inspect.unwrap(fn)
    out = [_TAG, b"B", f"py{sys.version_info[0]}.{sys.version_info[1]}".encode()]
    code = getattr(fn, "__code__", None)
    if code is None:
        name = f"{getattr(fn, '__module__', None)}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"
        out.append(b"N" + name.encode("utf-8", "surrogatepass"))
    else:
        _code(code, out)
    return _hex(out)

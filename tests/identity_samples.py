"""Functions whose code digests must be equal on every Python 3.10+ and under any hash seed.

Standard library only, valid Python 3.10 syntax: `tests/test_identity.py` imports this file
by path under every installed interpreter.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any


def tag(label: str, *, retries: int = 0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator with arguments that wraps the function."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fn(*args, **kwargs)

        wrapper.label = label  # type: ignore[attr-defined]
        wrapper.retries = retries  # type: ignore[attr-defined]
        return wrapper

    return wrap


def keep(fn: Callable[..., Any], *_: Any) -> Callable[..., Any]:
    return fn


@tag(
    "load",  # a comment inside the decorator
    retries=3,
)
def decorated(path: str, limit: int = 10) -> list[str]:
    """Read the first lines of a file.

    A multi-line docstring.
    """
    # a comment on its own line
    rows: list[str] = []  # a trailing comment
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if len(rows) >= limit:
                break
            rows.append(line.rstrip("\n"))
    return rows


def fstrings(name: str, value: float, width: int = 8) -> str:
    inner = f"{name!r:>{width}}"
    nested = f"{'<' + f'{value:.3f}' + '>'} and {inner}"
    specs = f"{value:{width}.{2}f}|{value=}|{name.upper()!s:^12}|{{literal}}"
    multi = f"""first line {name}
    second line {value:,.2f} café ✓
    third {nested!r}"""
    joined = (
        f"part one {name} "
        f'part two {width:#x}'
        "plain part"
    )
    return "\n".join([inner, nested, specs, multi, joined])


def set_literals(word: str) -> bool:
    vowels = {"a", "e", "i", "o", "u"}
    if word in {"yes", "no", "maybe"}:
        return True
    return bool(vowels & set(word)) or word in frozenset({b"x".decode(), "z"})


def matcher(command: Any) -> str:
    match command:
        case {"action": "move", "to": (x, y)}:
            return f"move {x} {y}"
        case [first, *rest] if rest:
            return f"list {first} +{len(rest)}"
        case str() as text if (n := len(text)) > 3:
            return f"long text {n}"
        case int(value) | float(value):
            return f"number {value}"
        case _:
            return "unknown"


def walrus(values: list[int]) -> list[int]:
    out: list[int] = []
    while (n := len(out)) < 3 and values:
        if (v := values.pop()) % 2:
            out.append(v * n)
    return [y for x in values if (y := x * 2) > 4] + out


def typed(
    rows: list[dict[str, int]],
    key: str | None = None,
    *args: tuple[int, ...],
    strict: bool = False,
    **extra: Callable[[int], str],
) -> dict[str, list[int]] | None:
    result: dict[str, list[int]] = {}
    for row in rows:
        result.setdefault(key or "all", []).append(row.get(key or "", 0))
    return result or None


async def fetch(urls: list[str], delay: float = 0.0) -> dict[str, int]:
    """An async function."""
    sizes = {}
    async with asyncio.timeout(5) if hasattr(asyncio, "timeout") else asyncio.Lock():
        for url in urls:
            await asyncio.sleep(delay)
            sizes[url] = len(url)
    return sizes


def outer(scale: int) -> Callable[[int], int]:
    offset = {"small": 1, "large": 10}

    def inner(x: int) -> int:
        """A nested function's docstring."""
        return x * scale + offset["small"]

    return inner


inner = outer(2)


class Thing:
    """A class whose methods are hashed."""

    factor = 3

    def method(self, items: set[str]) -> list[str]:
        """Sorted items, repeated."""
        return sorted(items | {"base"}) * self.factor

    @staticmethod
    @functools.cache
    def helper(n: int) -> int:
        return n ** 2 if n > 0 else -n


single_lambda = lambda x: x + 1  # noqa: E731
in_set = lambda s: s in {"a", "b"}  # noqa: E731
double, member = (lambda x: x * 2), (lambda y: y in {"red", "green", "blue"})
adder = lambda a: lambda b: a + b  # noqa: E731
add_one = adder(1)
spanning = keep(
    lambda v: {v, "w"} - {"w"},
    1,
)

SAMPLES: dict[str, Callable[..., Any]] = {
    "decorated": decorated,
    "fstrings": fstrings,
    "set_literals": set_literals,
    "matcher": matcher,
    "walrus": walrus,
    "typed": typed,
    "fetch": fetch,
    "outer": outer,
    "inner": inner,
    "method": Thing.method,
    "bound_method": Thing().method,
    "helper": Thing.helper,
    "single_lambda": single_lambda,
    "in_set": in_set,
    "double": double,
    "member": member,
    "adder": adder,
    "add_one": add_one,
    "spanning": spanning,
}

"""Malformed connection strings never show their password: not when masked, not in errors."""

from __future__ import annotations

import logging
import re
import traceback
from urllib.parse import unquote

import pytest

from durablenb.errors import StoreUnavailableError
from durablenb.store import Store, mask_dsn

# Every host below is 127.0.0.1 (ports 1 and 2: nothing listens) or ::1, or a name libpq
# makes up from a malformed URL that no resolver knows, so connecting fails at once.
CASES = [
    # -- URLs with characters that should have been percent-encoded in the password --
    pytest.param("postgresql://u:p@ss@127.0.0.1:1/db", ["p@ss"], id="at-short"),
    pytest.param("postgresql://ann:tiger@lily42@127.0.0.1:1/db", ["tiger@lily42"], id="at"),
    pytest.param("postgresql://ann:a@tiger@lily42@127.0.0.1:1/db", ["a@tiger@lily42"], id="two-ats"),
    pytest.param("postgresql://ann:corn flakes99@127.0.0.1:1/db", ["corn flakes99"], id="space"),
    pytest.param("postgresql://ann:tiger/lily42@127.0.0.1:1/db", ["tiger/lily42"], id="slash"),
    pytest.param("postgresql://ann:tiger?lily42@127.0.0.1:1/db", ["tiger?lily42"], id="question-mark"),
    pytest.param("postgresql://ann:tiger#lily42@127.0.0.1:1/db", ["tiger#lily42"], id="hash"),
    pytest.param("postgresql://ann:tiger:lily42@127.0.0.1:1/db", ["tiger:lily42"], id="colon"),
    pytest.param("postgresql://ann:it's\"lily42@127.0.0.1:1/db", ["it's\"lily42"], id="quotes"),
    # -- IPv6 hosts --
    pytest.param("postgresql://ann:tigerlily42@[::1]:1/db", ["tigerlily42"], id="ipv6"),
    pytest.param("postgresql://u:secret@[::1", ["secret"], id="ipv6-no-bracket"),
    pytest.param("postgresql://ann:tiger@lily42@[::1", ["tiger@lily42"], id="ipv6-no-bracket-at"),
    # -- percent-encoding --
    pytest.param(
        "postgresql://ann:tiger%40lily%3A42@127.0.0.1:1/db",
        ["tiger%40lily%3A42", "tiger@lily:42"],
        id="percent-encoded",
    ),
    pytest.param("postgresql://ann:tiger%zzlily42@127.0.0.1:1/db", ["tiger%zzlily42"], id="bad-percent"),
    pytest.param("postgresql://ann:tigerlily42%@127.0.0.1:1/db", ["tigerlily42%"], id="bad-percent-end"),
    # -- password in the query string --
    pytest.param("postgresql://127.0.0.1:1/db?user=ann&password=tigerlily42", ["tigerlily42"], id="query"),
    pytest.param(
        "postgresql://127.0.0.1:1/db?user=ann&password=corn flakes99", ["corn flakes99"], id="query-space"
    ),
    pytest.param(
        "postgresql://127.0.0.1:1/db?password=tiger&lily42&user=ann", ["tiger&lily42"], id="query-ampersand"
    ),
    pytest.param(
        "postgresql://127.0.0.1:1/db?user=ann&pass%77ord=tigerlily42", ["tigerlily42"], id="query-encoded-key"
    ),
    pytest.param(
        "postgresql://127.0.0.1:1/db?user=ann&PASSWORD=tigerlily42", ["tigerlily42"], id="query-uppercase-key"
    ),
    # -- key=value conninfo --
    pytest.param(
        "host=127.0.0.1 port=1 user=ann password='corn \\'flakes99\\' tiger'",
        ["corn 'flakes99' tiger", "corn \\'flakes99\\' tiger"],
        id="kv-quoted",
    ),
    pytest.param("host=127.0.0.1 port=1 password='corn flakes99", ["corn flakes99"], id="kv-unterminated"),
    pytest.param("host=127.0.0.1 port=1 password=tiger lily42xx", ["tiger lily42xx"], id="kv-unquoted-space"),
    pytest.param(
        "host=127.0.0.1 port=1 password=corn\\ flakes99",
        ["corn flakes99", "corn\\ flakes99"],
        id="kv-escaped",
    ),
    pytest.param("host=127.0.0.1 port=1 password = tigerlily42", ["tigerlily42"], id="kv-spaced-equals"),
    # -- schemes, host lists --
    pytest.param("postgres://ann:tigerlily42@127.0.0.1:1/db", ["tigerlily42"], id="postgres-scheme"),
    pytest.param(
        "postgresql+psycopg://ann:tigerlily42@127.0.0.1:1/db", ["tigerlily42"], id="sqlalchemy-scheme"
    ),
    pytest.param("postgresql://ann:tigerlily42@127.0.0.1:1,127.0.0.1:2/db", ["tigerlily42"], id="multi-host"),
    pytest.param(
        "postgresql://ann:tiger@lily42@127.0.0.1:1,127.0.0.1:2/db", ["tiger@lily42"], id="multi-host-at"
    ),
    pytest.param("postgresql://ann:@127.0.0.1:1/db", [], id="empty-password"),
]

# Only masked, never connected: libpq would look up a real-looking host name ("corp").
MASK_ONLY = [
    pytest.param("postgresql://ann@corp:tigerlily42@127.0.0.1:1/db", ["tigerlily42"], id="at-in-user"),
    pytest.param(
        "see postgresql://ann:corn flakes99@db/x for details", ["corn flakes99"], id="in-a-sentence"
    ),
    pytest.param(
        'missing "=" after "postgresql+psycopg://ann:tiger@lily42@db/x" in connection info string',
        ["tiger@lily42"],
        id="in-a-libpq-message",
    ),
]

_DELIMITERS = r"[\s@/:?&=,\[\]'\"\\]+"


def _fragments(secrets: list[str]) -> list[str]:
    """*secrets*, decoded, and their pieces between URL and conninfo delimiters: 4+ chars."""
    forms = {f for s in secrets for f in (s, unquote(s))}
    pieces = {p for f in forms for p in re.split(_DELIMITERS, f)}
    return sorted(f for f in forms | pieces if len(f) >= 4)


def _chain(exc: BaseException) -> list[BaseException]:
    """*exc* and every exception chained to it (``__cause__``/``__context__``), once each."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _texts(exc: BaseException) -> dict[str, str]:
    """Everything a log, a traceback or a debugger shows of *exc* and its chain."""
    out = {"traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}
    for i, e in enumerate(_chain(exc)):
        name = f"chain[{i}] {type(e).__name__}"
        out[f"{name} str"] = str(e)
        out[f"{name} repr"] = repr(e)
        out[f"{name} args"] = repr(e.args)
        out[f"{name} attributes"] = repr(vars(e))  # e.g. psycopg's pgconn, our .dsn
    return out


def _leaks(texts: dict[str, str], secrets: list[str]) -> list[str]:
    """Where a fragment of *secrets* shows in *texts*, with a little of the text around it."""
    out = []
    for frag in _fragments(secrets):
        for where, text in texts.items():
            at = text.find(frag)
            if at >= 0:
                out.append(f"{frag!r} in {where}: ...{text[max(at - 60, 0) : at + len(frag) + 60]!r}...")
    return out


@pytest.mark.parametrize("dsn,secrets", CASES + MASK_ONLY)
def test_mask_dsn_hides_every_part_of_the_password(dsn, secrets):
    masked = mask_dsn(dsn)
    assert not _leaks({"mask_dsn": masked}, secrets)
    assert mask_dsn(masked) == masked  # masking twice changes nothing more


@pytest.mark.parametrize(
    "dsn,masked",
    [
        ("postgresql://u:p@ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:pa ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:pa/ss@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:secret@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db"),
        ("postgresql://u:secret@[::1", "postgresql://u:***@[::1"),
        ("postgresql://u:pw@h1:5432,h2:5433/db", "postgresql://u:***@h1:5432,h2:5433/db"),
        ("postgresql://u:p:w@host/db", "postgresql://u:***@host/db"),
        ("postgresql://u:@host/db", "postgresql://u:@host/db"),
        ("postgresql://u@host/db", "postgresql://u@host/db"),
        ("postgresql://h1:5432,h2:5433/db", "postgresql://h1:5432,h2:5433/db"),
        ("postgresql://[::1]:5432/db?sslmode=require", "postgresql://[::1]:5432/db?sslmode=require"),
        ("postgresql+psycopg://u:pw@host/db", "postgresql+psycopg://u:***@host/db"),
        ("postgres://u:pw@host/db?password=x&user=u", "postgres://u:***@host/db?password=***&user=u"),
        ("postgresql://host/db?pass%77ord=pw&user=u", "postgresql://host/db?pass%77ord=***&user=u"),
        ("host=h password='a b\\'c' dbname=x", "host=h password=*** dbname=x"),
        ("host=h password=a b dbname=x", "host=h password=*** dbname=x"),
        ("host=h password = pw", "host=h password = ***"),
    ],
)
def test_mask_dsn_exactly(dsn, masked):
    assert mask_dsn(dsn) == masked


def _connect_error(dsn: str) -> BaseException:
    try:
        Store(dsn, connect_timeout=2)
    except Exception as exc:
        return exc
    pytest.fail(f"connected to {mask_dsn(dsn)!r}")


@pytest.mark.parametrize("dsn,secrets", CASES)
def test_connecting_never_shows_the_password(dsn, secrets, caplog):
    with caplog.at_level(logging.DEBUG):
        exc = _connect_error(dsn)
    texts = _texts(exc)
    texts["log"] = caplog.text
    assert not _leaks(texts, secrets)


@pytest.mark.parametrize("dsn,secrets", CASES)
def test_connecting_raises_store_unavailable(dsn, secrets):
    exc = _connect_error(dsn)
    assert isinstance(exc, StoreUnavailableError), f"{type(exc).__module__}.{type(exc).__name__}: {exc}"
    assert str(exc).startswith("cannot reach the durablenb store at ")
    assert exc.dsn == mask_dsn(dsn)


def test_password_fragments():
    from durablenb.store._dsn import password_fragments

    assert password_fragments("postgresql://ann:s3cretpw@db/x") == ["s3cretpw"]
    assert password_fragments("postgresql://ann:abc@db/x") == []  # too short to look for
    assert password_fragments("postgresql://ann@db/x") == []
    assert password_fragments(None) == []
    found = password_fragments("postgresql://ann:tiger%40lily%3A42@db/x")
    assert {"tiger%40lily%3A42", "tiger@lily:42", "tiger", "lily"} <= set(found)
    assert "a 'quoted' pw" in password_fragments("host=db password='a \\'quoted\\' pw'")


def test_scrub_removes_what_libpq_echoes():
    from durablenb.store._dsn import scrub

    dsn = "postgresql://ann:tiger@lily42@127.0.0.1:1/db"
    assert scrub("failed to resolve host 'lily42@127.0.0.1'", dsn) == "failed to resolve host '***@127.0.0.1'"
    assert scrub(f'bad URI: "{dsn}"', dsn) == 'bad URI: "postgresql://ann:***@127.0.0.1:1/db"'
    assert scrub('unexpected spaces found in "corn flakes99"', "postgresql://a:corn flakes99@h/x") == (
        'unexpected spaces found in "***"'
    )
    assert scrub("nothing to hide", None) == "nothing to hide"

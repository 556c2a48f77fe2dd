"""Connection strings: masking passwords for messages and logs.

`mask_dsn` hides the passwords of libpq URLs and key=value strings inside any text;
`scrub` also hides the pieces of one connection string's password that libpq and psycopg
echo in their error messages. Both would rather hide too much than too little: text
around a malformed password (an unencoded ``@``, ``/``, ``?`` or space, a missing ``]``,
a bad ``%`` escape, an unquoted value with spaces) may be masked along with it.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

MASK = "***"

#: Pieces of a password shorter than this are not looked for in messages: too many false hits.
MIN_FRAGMENT = 4

# scheme://user:password@host: the password runs from the first ":" after "scheme://" to
# the LAST "@" on the line. libpq ends the userinfo at the first "@" (or "/"); whoever
# wrote an unencoded "@", "/", "?" or space into the password meant the last "@".
_URL_PASSWORD = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:\n]*:(?P<pw>[^\n]*)(?=@)")
# ?password=… / &password=… (the name perhaps %-encoded or in capitals): the value ends
# where the next name=value parameter or the line ends, "&" and spaces included.
_QUERY_NAME = re.compile(r"[?&](?P<name>[^=&?#\s]*)=")
_QUERY_END = re.compile(r"&[^&=\s]*=|\n|$")
# password=value: 'quoted, with \' escapes' (perhaps unterminated) or unquoted\ with
# escapes, then any stray words before the next key=value.
_KV_PASSWORD = re.compile(
    r"(?<![\w?&])(?:ssl)?password\s*=\s*(?P<pw>'(?:\\.|[^'\\])*(?:'|\\?\Z)"
    r"|(?:\\.|[^\s\\])+(?:\s+(?![\w.-]+\s*=)(?:\\.|[^\s\\])+)*)",
    re.IGNORECASE | re.DOTALL,
)
_PASSWORD_NAMES = ("password", "sslpassword")
# Where libpq may cut a malformed password in two and show one of the pieces.
_DELIMITERS = re.compile(r"[\s@/:?&=,\[\]'\"\\]+")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _password_spans(text: str) -> list[tuple[int, int]]:
    """The ``(start, end)`` of every password value in *text*, unsorted, maybe overlapping."""
    spans = [m.span("pw") for m in _URL_PASSWORD.finditer(text)]
    spans += [m.span("pw") for m in _KV_PASSWORD.finditer(text)]
    for m in _QUERY_NAME.finditer(text):
        if unquote(m["name"]).lower() in _PASSWORD_NAMES:
            end = _QUERY_END.search(text, m.end())
            spans.append((m.end(), end.start() if end else len(text)))
    return [(start, end) for start, end in spans if start < end]


def mask_dsn(dsn: str | None) -> str:
    """*dsn* (or any text holding connection strings) with every password replaced by ``***``.

    An empty password stays empty.
    """
    if not dsn:
        return ""
    out: list[str] = []
    pos = 0
    for start, end in sorted(_password_spans(dsn)):
        if end <= pos:
            continue  # inside the span just masked
        if start > pos or not out:
            out += [dsn[pos:start], MASK]
        pos = end
    return "".join(out) + dsn[pos:]


def password_fragments(dsn: str | None) -> list[str]:
    """The passwords in *dsn* as libpq or psycopg may print them: raw, %-decoded, unquoted
    and unescaped, and their pieces between the delimiters where libpq cuts a malformed
    string; only those of at least `MIN_FRAGMENT` characters, longest first."""
    text = dsn or ""
    found: set[str] = set()
    for start, end in _password_spans(text):
        raw = text[start:end]
        inner = raw.strip("'")
        forms = {raw, unquote(raw), inner, unquote(inner), _ESCAPE.sub(r"\1", inner)}
        found |= forms
        found.update(piece for form in forms for piece in _DELIMITERS.split(form))
    return sorted((f for f in found if len(f) >= MIN_FRAGMENT), key=lambda f: (-len(f), f))


def scrub(text: str, dsn: str | None) -> str:
    """*text* (an error message, say) with its passwords masked (`mask_dsn`) and every
    `password_fragments` of *dsn* replaced by ``***``."""
    out = mask_dsn(text)
    for fragment in password_fragments(dsn):
        out = out.replace(fragment, MASK)
    return out

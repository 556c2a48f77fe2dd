"""Connection strings: masking passwords for messages and logs."""

from __future__ import annotations

import re

_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|\S+)", re.I)
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<pw>[^&\s]*)", re.I)


def mask_dsn(dsn: str | None) -> str:
    """*dsn* with any password replaced by ``***``."""
    if not dsn:
        return ""
    out = _URL_PASSWORD.sub(lambda m: m["head"] + ("***" if m["pw"] else "") + m["at"], dsn)
    out = _KV_PASSWORD.sub(lambda m: m["head"] + "***", out)
    out = _QUERY_PASSWORD.sub(lambda m: m["head"] + "***", out)
    return out

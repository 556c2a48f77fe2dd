"""Settings: every environment variable durablenb reads, resolved once by `connect()`.

=============================  ==================================  =================================
variable                       `Settings` field                    meaning (default)
=============================  ==================================  =================================
``DURABLENB_DATABASE_URL``     ``database_url``                    a PostgreSQL server (embedded)
``DURABLENB_HOME``             ``home``                            embedded server's and blobs' folder
``DURABLENB_SCHEMA``           ``schema``                          schema of the records (per role)
``DURABLENB_BLOB_URL``         ``blob_url``                        folder or fsspec URL of blobs
``DURABLENB_BLOB_THRESHOLD``   ``blob_threshold``                  bytes from which values are blobs
``DURABLENB_COMPRESSION``      ``compression``                     none, lz4 or zstd (per blob store)
``DURABLENB_SECRET``           ``secret``                          HMAC key signing pickled records
``DURABLENB_RETRY_SECONDS``    ``retry_seconds``                   how long writes ride out an outage
``DURABLENB_SYNC_STATUS``      ``sync_status``                     start rows commit synchronously too
``DURABLENB_DURABILITY``       ``durability``                      full or kernel (per backend)
``DURABLENB_TIMELINE``         ``timeline``                        live timelines in kernels (1)
``DURABLENB_RECOMPUTE``        ``recompute``                       rerun cheap pure cells (1)
``DURABLENB_FAULT``            ``fault``                           test kill point ``phase@n``
``DURABLENB_FAULT_COUNT``      ``fault_count``                     test file listing kill points
=============================  ==================================  =================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Settings", "ENV", "DURABILITIES", "check_durability"]

#: Environment variable of each field.
ENV = {
    "database_url": "DURABLENB_DATABASE_URL",
    "home": "DURABLENB_HOME",
    "schema": "DURABLENB_SCHEMA",
    "blob_url": "DURABLENB_BLOB_URL",
    "blob_threshold": "DURABLENB_BLOB_THRESHOLD",
    "compression": "DURABLENB_COMPRESSION",
    "secret": "DURABLENB_SECRET",
    "retry_seconds": "DURABLENB_RETRY_SECONDS",
    "sync_status": "DURABLENB_SYNC_STATUS",
    "durability": "DURABLENB_DURABILITY",
    "timeline": "DURABLENB_TIMELINE",
    "recompute": "DURABLENB_RECOMPUTE",
    "fault": "DURABLENB_FAULT",
    "fault_count": "DURABLENB_FAULT_COUNT",
}

_COMPRESSIONS = ("none", "lz4", "zstd")

#: What a step record survives once its step returns: ``full``, any crash (each record waits
#: for its log flush); ``kernel``, any death of the Python process (the flush comes later).
DURABILITIES = ("full", "kernel")


def check_durability(value: str | None, what: str = "durability") -> str | None:
    """*value* if it is a durability (or None); else `ValueError`."""
    if value is not None and value not in DURABILITIES:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, DURABILITIES))}, not {value!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one connection (see the module table)."""

    database_url: str | None = None
    home: Path | None = None
    #: None: ``durablenb`` on the embedded server, ``durablenb_<role>`` on a server URL,
    #: created by and owned by the connecting role (see `durablenb.store.role_schema`).
    schema: str | None = None
    blob_url: str | None = None
    blob_threshold: int = 1 << 20
    #: None: each blob store's default; "none", "lz4" or "zstd" to override it.
    compression: str | None = None
    secret: bytes | None = dataclasses.field(default=None, repr=False)
    retry_seconds: float = 30.0
    sync_status: bool = False
    #: None: ``kernel`` on the embedded server, ``full`` on a server URL (see docs/design.md).
    durability: str | None = None
    timeline: bool = True
    #: A finished ``%%durable`` cell that touched nothing outside its kernel and runs faster
    #: than its values decode is run again (its values checked) instead of restored.
    recompute: bool = True
    fault: str = ""
    fault_count: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from *environ* (default `os.environ`), then *overrides* that are not None.

        A malformed value raises `ValueError` naming the variable.
        """
        env = os.environ if environ is None else environ
        raw = {field: env.get(var) or None for field, var in ENV.items()}
        values: dict[str, Any] = {}
        for field, text in raw.items():
            if text is not None:
                values[field] = _parse(field, text)
        values.update({k: v for k, v in overrides.items() if v is not None})
        check_durability(values.get("durability"))
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with *changes*."""
        return dataclasses.replace(self, **changes)


def _parse(field: str, text: str) -> Any:
    var = ENV[field]
    try:
        if field == "home":
            return Path(text).expanduser()
        if field == "blob_threshold":
            value = int(text)
            if value < 0:
                raise ValueError("must be >= 0")
            return value
        if field == "retry_seconds":
            seconds = float(text)
            if seconds < 0:
                raise ValueError("must be >= 0")
            return seconds
        if field in ("sync_status", "timeline", "recompute"):
            return text.strip().lower() not in ("", "0", "false", "no", "off")
        if field == "compression":
            if text not in _COMPRESSIONS:
                raise ValueError(f"one of {', '.join(_COMPRESSIONS)}")
            return text
        if field == "secret":
            return text.encode()
        if field == "durability":
            return check_durability(text.strip().lower())
    except ValueError as exc:
        raise ValueError(f"{var}={text!r} is not valid: {exc}") from None
    return text

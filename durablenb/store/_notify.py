"""Hearing cancels as they commit: a thread on its own connection, LISTENing.

A notification reaches an ordinary connection only when it next runs a statement, one step
late; this listener hears it within milliseconds, so a workflow checks for a cancel before
each step (and each `dnb.map` item) without a round trip. Record writes also read the
workflow's status, which covers the time the listener is reconnecting.

Every role on a server may LISTEN and NOTIFY on any channel, so a notification names neither
schema nor workflow: it carries a digest of the schema and the workflow's lock key (itself a
digest of schema and id: the same id in two schemas never collides), and it is never
believed on its own: `Store.is_cancelled` reads the workflow's status before a running
workflow stops.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable

import psycopg

logger = logging.getLogger("durablenb")

CANCEL_CHANNEL = "durablenb_cancel"

_KEY = re.compile(r"([0-9a-f]{16}):(-?\d{1,20})")


def schema_tag(schema: str) -> str:
    """16 hex digits naming *schema* in notifications without showing its name."""
    return hashlib.blake2b(f"durablenb-schema\0{schema}".encode(), digest_size=8).hexdigest()


def cancel_payload(schema: str, key: int) -> str:
    """The payload notifying a cancel of the workflow of *schema* whose lock key is *key*."""
    return f"{schema_tag(schema)}:{key}"


def payload_key(payload: str, schema: str, lock_key: Callable[[str], int]) -> int | None:
    """The lock key of the workflow of *schema* a cancel notification names: ``TAG:KEY``
    (`cancel_payload`), or ``schema|id`` as earlier versions send it; None for another
    schema's or anything else."""
    m = _KEY.fullmatch(payload)
    if m:
        return int(m.group(2)) if m.group(1) == schema_tag(schema) else None
    name, sep, wid = payload.partition("|")
    return lock_key(wid) if sep and name == schema else None


class CancelListener:
    """Calls *on_cancel(key)* with the lock key of every workflow of *schema* a cancel is
    notified for (*lock_key* maps an id to its key)."""

    def __init__(self, dsn: str, schema: str, lock_key: Callable[[str], int],
                 on_cancel: Callable[[int], None]) -> None:  # fmt: skip
        self.dsn = dsn
        self.schema = schema
        self.lock_key = lock_key
        self.on_cancel = on_cancel
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"durablenb-listener-{schema}",
                                        daemon=True)  # fmt: skip

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop listening (the thread ends within half a second, on its own)."""
        self._stop.set()

    def _loop(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CANCEL_CHANNEL}")
                    delay = 0.1
                    while not self._stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            key = payload_key(note.payload, self.schema, self.lock_key)
                            if key is not None:
                                self.on_cancel(key)
            except psycopg.Error as exc:
                logger.debug("cancel listener reconnecting after %s", type(exc).__name__)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

"""Hearing cancels as they commit: a thread on its own connection, LISTENing.

A notification reaches an ordinary connection only when it next runs a statement, one step
late; this listener hears it within milliseconds, so a workflow checks for a cancel before
each step (and each `dnb.map` item) without a round trip. Record writes also read the
workflow's status, which covers the time the listener is reconnecting.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg

logger = logging.getLogger("durablenb")

CANCEL_CHANNEL = "durablenb_cancel"


class CancelListener:
    """Calls *on_cancel(workflow_id)* for every cancel notified in *schema*."""

    def __init__(self, dsn: str, schema: str, on_cancel: Callable[[str], None]) -> None:
        self.dsn = dsn
        self.schema = schema
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
                            schema, _, wid = note.payload.partition("|")
                            if schema == self.schema:
                                self.on_cancel(wid)
            except psycopg.Error as exc:
                logger.debug("cancel listener reconnecting after %s", type(exc).__name__)
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

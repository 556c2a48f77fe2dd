"""Reading a notebook's finished cells ahead (mixed into `Store`).

A notebook rerun after a restart asks, cell after cell, whether each one finished. Each
question is a round trip made at the worst moment: when a kernel starts a cell, its other
threads are busy announcing it, and the answer waits for them (about 1 ms, ten times the
query). So the finished records of the notebook's cells are read in one query and handed
out by `finished` for a short while, each once. Within that while a cell another process
forgets or reruns is seen as it was when read — the same as a slower rerun that read it
first; this process's own changes to a workflow drop what was read of it.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from .records import WorkflowRow, columns

#: Seconds records read ahead are handed out for.
AHEAD_SECONDS = 2.0
#: The most records read ahead, and the largest inline output among them (larger ones are
#: read when asked for).
AHEAD_ROWS = 1000
AHEAD_OUTPUT_BYTES = 64 << 10


class ReadAheadMixin:
    """`read_ahead` and what `finished` hands out of it; needs the attributes `Store` sets."""

    qschema: str

    if TYPE_CHECKING:  # provided by Store

        def connection(self) -> Any: ...

    #: id -> its row, or None when it must be read when asked for (steps, a large output).
    _ahead: dict[str, WorkflowRow | None] | None = None
    _ahead_prefix = ""
    _ahead_key: tuple[str, str | None] | None = None
    _ahead_until = 0.0
    _ahead_lock = threading.Lock()

    def read_ahead(self, name_prefix: str, notebook: str | None) -> None:
        """Read the finished records of the workflows named *name_prefix*… started from
        *notebook*, unless read in the last `AHEAD_SECONDS`: `finished(…, ahead=True)`
        hands them out until then, and says without a query that any other workflow of
        that name prefix had not finished."""
        key = (name_prefix, notebook)
        if self._ahead_key == key and time.monotonic() < self._ahead_until:
            return
        s = self.qschema
        big = (f"octet_length(w.output) > %(bytes)s OR EXISTS (SELECT 1 FROM {s}.steps st "
               "WHERE st.workflow_id = w.id)")  # fmt: skip
        cols = ", ".join(f"CASE WHEN {big} THEN NULL ELSE w.output END" if c == "output" else f"w.{c}"
                         for c in _NAMES)  # fmt: skip
        query = (f"SELECT {cols}, {big} FROM {s}.workflows w WHERE left(w.name, %(n)s) = %(prefix)s "
                 "AND w.status IN ('succeeded', 'failed') AND w.notebook IS NOT DISTINCT FROM %(notebook)s "
                 "ORDER BY w.updated_at DESC LIMIT %(rows)s")  # fmt: skip
        params = {"n": len(name_prefix), "prefix": name_prefix, "notebook": notebook,
                  "bytes": AHEAD_OUTPUT_BYTES, "rows": AHEAD_ROWS}  # fmt: skip
        with self.connection() as conn:
            rows = conn.cursor(binary=True).execute(query, params).fetchall()
        ahead = {r[0]: None if r[-1] else WorkflowRow(**dict(zip(_NAMES, r[:-1], strict=True)))
                 for r in rows}  # fmt: skip
        with self._ahead_lock:
            # Complete unless the limit cut it: then only the rows read are known.
            self._ahead, self._ahead_prefix = ahead, name_prefix if len(rows) < AHEAD_ROWS else "\0"
            self._ahead_key, self._ahead_until = key, time.monotonic() + AHEAD_SECONDS

    def _read_early(self, workflow_id: str, name: str) -> tuple[bool, WorkflowRow | None]:
        """``(known, row)``: whether what was read ahead answers for *workflow_id* (named
        *name*), and its row — handed out once — or None when it had not finished."""
        with self._ahead_lock:
            if self._ahead is None or time.monotonic() >= self._ahead_until:
                return False, None
            if workflow_id in self._ahead:
                row, self._ahead[workflow_id] = self._ahead[workflow_id], None  # handed out once
                return row is not None, row  # None: it must be read now
            return name.startswith(self._ahead_prefix), None

    def drop_ahead(self, workflow_id: str | None = None) -> None:
        """Forget what was read ahead of *workflow_id* (of every workflow when None): this
        process is about to change it."""
        with self._ahead_lock:
            if workflow_id is None:
                self._ahead, self._ahead_key = None, None
            elif self._ahead is not None:
                self._ahead[workflow_id] = None  # read it when asked for


_NAMES = columns(WorkflowRow)

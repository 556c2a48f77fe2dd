"""Store methods that keep the blob store in step with the records: holding a blob for a
workflow, and removing blobs that no workflow holds (mixed into `Store`).

A writer holds a blob — a `blob_refs` row, under an advisory lock on the blob — after its
bytes are written and before the file is published or an identical one reused. A collector
takes the same lock, checks that no row holds the blob, and deletes it while still holding
the lock. So a blob is never deleted while a workflow holds it or is about to, and a crash
anywhere leaves at worst a blob nobody holds, which the next sweep removes.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .. import _faults

if TYPE_CHECKING:
    from .blobs import BlobStore

logger = logging.getLogger("durablenb")

#: A hold whose workflow row never appeared (a crash between the inputs' blob and the
#: workflow's start) is dropped after this long.
ORPHAN_HOLD_SECONDS = 3600.0


class BlobGcMixin:
    """Blob holds and collection; needs the attributes `Store` sets."""

    qschema: str
    blobs: BlobStore

    if TYPE_CHECKING:

        def connection(self) -> Any: ...

        def lock_key(self, workflow_id: str) -> int: ...

    def blob_lock_key(self, ref: str) -> int:
        """The advisory lock key writers and collectors of blob *ref* take."""
        return self.lock_key("blob:" + ref)

    def hold_blob_in(self, conn: Any, owner: str, ref: str) -> None:
        """Record, in *conn*'s transaction, that workflow *owner* holds blob *ref*."""
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.blob_lock_key(ref)])
        conn.execute(
            f"INSERT INTO {self.qschema}.blob_refs (workflow_id, ref) VALUES (%s, %s) "
            "ON CONFLICT DO NOTHING",
            [owner, ref],
        )

    def hold_blob(self, owner: str, ref: str) -> None:
        """Record that workflow *owner* holds blob *ref* (committed when this returns)."""
        with self.connection() as conn, conn.transaction():
            self.hold_blob_in(conn, owner, ref)

    def collect_blobs(self, refs: Iterable[str]) -> int:
        """Delete those of *refs* that no workflow holds; returns how many went."""
        n = 0
        for ref in sorted(set(refs)):
            with self.connection() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.blob_lock_key(ref)])
                held = conn.execute(
                    f"SELECT 1 FROM {self.qschema}.blob_refs WHERE ref = %s LIMIT 1", [ref]
                ).fetchone()
                if held:
                    continue
                if _faults.ACTIVE:
                    _faults.point("blob.collect")
                n += self.blobs.delete([ref])
        return n

    def sweep_blobs(self) -> int:
        """Delete every blob no workflow holds (left by a collection that died, or by holds
        of workflows that never started); blobs older than the blob_refs table, which
        earlier versions could hold unseen, are kept. Returns how many went."""
        with self.connection() as conn:
            conn.execute(
                f"DELETE FROM {self.qschema}.blob_refs r WHERE r.created_at < clock_timestamp() "
                "- make_interval(secs => %s) AND NOT EXISTS (SELECT 1 FROM "
                f"{self.qschema}.workflows w WHERE w.id = r.workflow_id)",
                [ORPHAN_HOLD_SECONDS],
            )
            row = conn.execute(
                f"SELECT applied_at FROM {self.qschema}.schema_version WHERE version = 6"
            ).fetchone()
            held = {r[0] for r in conn.execute(f"SELECT DISTINCT ref FROM {self.qschema}.blob_refs")}
        since: _dt.datetime | None = row[0] if row else None
        cutoff = since.timestamp() if since is not None else float("inf")
        loose = [ref for ref, made in self.blobs.listing()
                 if ref not in held and made is not None and made >= cutoff]  # fmt: skip
        return self.collect_blobs(loose)

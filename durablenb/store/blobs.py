"""Blob stores: large values as content-addressed, checksummed objects beside the records.

A blob is named by the SHA-256 of its bytes, so identical outputs are stored once and a
read checks the bytes against the name. It is made durable (fsync'd, or committed) before
the record that refers to it is written.
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _faults
from ..codecs import _crc
from ..codecs._digest import HashingWriter, written
from ..errors import CorruptRecordError, StorageError, StoreUnavailableError

if TYPE_CHECKING:
    from . import Store

__all__ = ["BlobStore", "FolderBlobs", "PostgresBlobs", "FsspecBlobs", "HashingWriter", "open_blobs"]

CHUNK = 4 << 20  # bytes per read
#: Bytes per PostgreSQL row: a reader's buffers (libpq's, and each row's bytes) hold one.
ROW = 1 << 20


class BlobStore:
    """Where large values live. *compression*: how streams are compressed for this store.

    Each schema has blobs of its own (a subfolder, or its own tables), so that removing the
    blobs one schema's workflows no longer hold never touches another's.
    """

    url = ""
    compression: str | None = None
    #: The store whose workflows hold these blobs (set by `open_blobs`).
    store: Store | None = None

    def put(self, produce: Callable[[Any], None], owner: str | None = None) -> tuple[str, int, int]:
        """Store what *produce(file)* writes; returns ``(sha256 hex, size, crc32)`` once durable.

        *owner*: the workflow that holds the blob, recorded before the blob is published or
        an identical one reused, so that no collection can remove it in between.
        """
        try:
            return self._put(produce, owner)
        except OSError as exc:  # a full disk, missing permissions, an unreachable store
            raise _storage_error("write", self.url, exc) from exc

    def _put(self, produce: Callable[[Any], None], owner: str | None) -> tuple[str, int, int]:
        """`put` for this kind of store; an `OSError` means the store failed the write."""
        raise NotImplementedError

    def _hold(self, owner: str | None, ref: str) -> None:
        if owner is not None and self.store is not None:
            self.store.hold_blob(owner, ref)

    def listing(self) -> Iterable[tuple[str, float | None]]:
        """Every blob of this schema, with when it was last written or reused (epoch
        seconds; None when the store cannot tell)."""
        raise NotImplementedError

    def get(self, ref: str, what: str = "value", crc: int | None = None) -> Any:
        """The verified bytes (a buffer) of blob *ref*; `CorruptRecordError` if missing or bad.

        With *crc* (recorded when the blob was written) the bytes are checked against it,
        four times faster than against the SHA-256 that names them.
        """
        raise NotImplementedError

    def delete(self, refs: Iterable[str]) -> int:
        """Delete these blobs; returns how many went."""
        raise NotImplementedError

    def put_bytes(self, data: Any, owner: str | None = None) -> tuple[str, int, int]:
        return self.put(lambda f: f.write(data), owner)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"


def _missing(ref: str, what: str, where: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"the recorded {what} is stored as blob {ref[:16]}… in {where}, and that blob is "
        "missing; it was deleted or the blob store moved (DURABLENB_BLOB_URL)"
    )


#: Packages whose exceptions mean an object store (or the way to it) failed.
_REMOTE_CLIENTS = ("botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "google", "adlfs", "azure")


def _remote_failure(exc: BaseException) -> bool:
    """Whether *exc* is an object store's failure (unreachable, refused, throttled)."""
    return isinstance(exc, OSError) or type(exc).__module__.split(".", 1)[0] in _REMOTE_CLIENTS


def _storage_error(verb: str, where: str, exc: BaseException) -> StorageError:
    return StorageError(
        f"cannot {verb} a large value in the blob store {where}: {exc}. Nothing was recorded "
        "from it; free space or fix access, then rerun (the workflow resumes)."
    )


def mapped(fd: int) -> mmap.mmap:
    """File *fd* mapped privately (copy on write), so that what is decoded over it is
    writable and its writes stay in this process; read-only where the system will not
    reserve memory for a writable mapping of that size (strict overcommit), when decoders
    copy out of it instead."""
    try:
        return mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
    except OSError as exc:
        if exc.errno != errno.ENOMEM:
            raise
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def _check(data: Any, ref: str, what: str, where: str, crc: int | None = None) -> None:
    bad = _crc.crc32(data) != crc if crc is not None else hashlib.sha256(data).hexdigest() != ref
    if bad:
        raise _damaged(ref, what, where)


def _damaged(ref: str, what: str, where: str) -> CorruptRecordError:
    return CorruptRecordError(
        f"the recorded {what} (blob {ref[:16]}… in {where}) fails its checksum; the blob "
        "was altered or damaged"
    )


#: A ``.part`` file untouched for this long belongs to a write that died: it is removed.
STALE_PART_SECONDS = 3600.0


class FolderBlobs(BlobStore):
    """Blobs as files ``ab/abcdef…`` under a local folder, fsync'd before use.

    An identical blob already there is reused only once its size and CRC-32 are checked;
    a damaged one is replaced by the new copy, so recomputing a value heals its blob.
    """

    def __init__(self, base: str | Path, compression: str | None = None, namespace: str = "") -> None:
        self.base = Path(base).expanduser()
        self.root = self.base / namespace if namespace else self.base
        self.url = str(self.root)
        self.compression = compression
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _storage_error("create", self.url, exc) from exc
        self.sweep_parts()

    def sweep_parts(self, older_than: float = STALE_PART_SECONDS) -> int:
        """Remove ``.part`` files of writes that died (untouched for *older_than* seconds)."""
        limit, n = time.time() - older_than, 0
        for part in (self.root / "tmp").glob("*.part"):
            try:
                if part.stat().st_mtime < limit:
                    part.unlink()
                    n += 1
            except OSError:  # gone meanwhile, or not ours to remove: leave it
                continue
        return n

    def _path(self, ref: str) -> Path:
        return self.root / ref[:2] / ref

    def _put(self, produce: Callable[[Any], None], owner: str | None) -> tuple[str, int, int]:
        tmp = self.root / "tmp" / f"{uuid.uuid4().hex}.part"
        try:
            with open(tmp, "w+b", buffering=0) as raw:
                w = written(raw, produce, durable=True)
            ref = w.ref
            self._hold(owner, ref)
            final = self._path(ref)
            if final.exists() and _intact(final, w.size, w.crc):
                tmp.unlink()
                os.utime(final)  # reused now: a garbage collection keeps young blobs
                return ref, w.size, w.crc
            if not final.parent.exists():
                final.parent.mkdir(exist_ok=True)
                _fsync_dir(self.root)  # the new subfolder's name is durable too
            os.replace(tmp, final)  # new, or replacing a damaged copy atomically
            _fsync_dir(final.parent)
            return ref, w.size, w.crc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def get(self, ref: str, what: str = "value", crc: int | None = None) -> Any:
        path = self._path(ref)
        if self.root != self.base and not path.exists():
            path = self.base / ref[:2] / ref  # written before blobs had a folder per schema
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise _missing(ref, what, self.url) from None
        except OSError as exc:
            raise _storage_error("read", self.url, exc) from exc
        with f:
            size = os.fstat(f.fileno()).st_size
            # A private mapping: an array decoded over it is writable, its writes stay in
            # this process (copied on write), and its unwritten pages stay the file's.
            data: Any = mapped(f.fileno()) if size else b""
        advise = size and hasattr(data, "madvise")
        if advise:
            data.madvise(mmap.MADV_WILLNEED)
        _check(data, ref, what, self.url, crc)
        if advise:  # unmap the pages the check touched: the decoder maps what it reads
            data.madvise(mmap.MADV_DONTNEED)
        return data

    def listing(self) -> Iterable[tuple[str, float | None]]:
        for sub in self.root.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                for f in sub.iterdir():
                    try:
                        yield f.name, f.stat().st_mtime
                    except FileNotFoundError:
                        continue

    def delete(self, refs: Iterable[str]) -> int:
        n = 0
        for ref in refs:
            try:
                self._path(ref).unlink()
                n += 1
            except FileNotFoundError:
                pass
        return n


def _intact(path: Path, size: int, crc: int) -> bool:
    """Whether the file at *path* holds *size* bytes with CRC-32 *crc*."""
    try:
        if path.stat().st_size != size:
            return False
        found = 0
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                found = _crc.update(chunk, found)
        return found == crc
    except OSError:
        return False


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Rows:
    """Inserts each piece it is called with as the next rows (of `ROW` bytes) of blob *ref*,
    in *conn*'s transaction: a row at a time, so that the server stores each while the next
    is made (a binary COPY would keep up to a thousand rows in memory and store them at its
    end)."""

    def __init__(self, conn: Any, table: str, ref: str) -> None:
        self.conn = conn
        self.query = f"INSERT INTO {table} (ref, seq, data) VALUES (%s, %s, %b)"
        self.ref = ref
        self.seq = 0

    def __call__(self, piece: Any) -> None:
        view = memoryview(piece)
        for start in range(0, len(view), ROW):
            self.conn.execute(self.query, [self.ref, self.seq, view[start : start + ROW]])
            self.seq += 1


class PostgresBlobs(BlobStore):
    """Blobs in the store's own database, in 1 MB rows inserted while the value is encoded."""

    store: Store

    def __init__(self, store: Store, compression: str | None = "zstd") -> None:
        self.store = store
        self.url = f"{store.masked_dsn} (schema {store.schema})"
        self.compression = compression
        self.s = store.qschema

    def _put(self, produce: Callable[[Any], None], owner: str | None) -> tuple[str, int, int]:
        # The rows go to the server while the value is encoded, under a provisional name
        # (the SHA-256 is known only at the end); renaming them moves no TOASTed bytes.
        provisional = f"part:{uuid.uuid4().hex}"
        with tempfile.TemporaryFile(buffering=0) as tmp, self.store.connection() as conn, \
                conn.transaction():  # fmt: skip
            rows = _Rows(conn, f"{self.s}.blob_chunks", provisional)
            w = written(tmp, produce, also=rows)
            ref, size, crc = w.ref, w.size, w.crc
            if owner is not None:  # the same transaction: held exactly when stored
                self.store.hold_blob_in(conn, owner, ref)
            else:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", [self.store.blob_lock_key(ref)])
            if conn.execute(f"SELECT 1 FROM {self.s}.blob_objects WHERE ref = %s", [ref]).fetchone():
                if self._intact(conn, ref, size, crc):
                    conn.execute(f"DELETE FROM {self.s}.blob_chunks WHERE ref = %s", [provisional])
                    return ref, size, crc
                # Damaged: replace it, in this transaction, with the copy just made.
                conn.execute(f"DELETE FROM {self.s}.blob_chunks WHERE ref = %s", [ref])
                conn.execute(f"DELETE FROM {self.s}.blob_objects WHERE ref = %s", [ref])
            conn.execute(f"UPDATE {self.s}.blob_chunks SET ref = %s WHERE ref = %s", [ref, provisional])
            if _faults.ACTIVE:
                _faults.point("blob.before_commit")
            conn.execute(
                f"INSERT INTO {self.s}.blob_objects (ref, size, chunks) VALUES (%s, %s, %s)",
                [ref, size, rows.seq],
            )
        return ref, size, crc

    def _intact(self, conn: Any, ref: str, size: int, crc: int) -> bool:
        """Whether blob *ref*'s chunks hold *size* bytes with CRC-32 *crc*."""
        found, n = 0, 0
        for chunk in self._chunks(conn, ref):
            found = _crc.update(chunk, found)
            n += len(chunk)
        return n == size and found == crc

    def _chunks(self, conn: Any, ref: str) -> Iterator[bytes]:
        """Blob *ref*'s chunks in order, all of them (COPY: one copy fewer than a query)."""
        query = f"SELECT data FROM {self.s}.blob_chunks WHERE ref = %s ORDER BY seq"
        with conn.cursor().copy(f"COPY ({query}) TO STDOUT (FORMAT BINARY)", [ref]) as cp:
            cp.set_types(["bytea"])
            for (chunk,) in cp.rows():
                yield chunk

    def get(self, ref: str, what: str = "value", crc: int | None = None) -> Any:
        """The blob's bytes as a private mapping of a temporary file they were streamed into
        (checked as they came): a decoder reads it a part at a time, and the pages it drops
        stay in the page cache, not in the process."""
        try:
            with tempfile.TemporaryFile() as tmp:
                size = self._spool(ref, tmp, what, crc)
                # Private: an array decoded over it is writable and its writes stay here.
                return mapped(tmp.fileno()) if size else b""
        except OSError as exc:  # the temporary file: no space, no permission
            raise _storage_error("read", self.url, exc) from exc

    def _spool(self, ref: str, out: Any, what: str, crc: int | None) -> int:
        """Write blob *ref*'s chunks into file *out* as they come, checked against *crc*
        (else the SHA-256 *ref*); returns its size."""
        with self.store.connection() as conn:
            row = conn.execute(f"SELECT size FROM {self.s}.blob_objects WHERE ref = %s", [ref]).fetchone()
            if row is None:
                raise _missing(ref, what, self.url)
            size, pos, found = row[0], 0, 0
            sha = hashlib.sha256() if crc is None else None
            for chunk in self._chunks(conn, ref):  # checked as it comes, while in cache
                pos += len(chunk)
                if pos <= size:
                    out.write(chunk)
                    found = _crc.update(chunk, found)
                    if sha is not None:
                        sha.update(chunk)
            out.flush()
        if pos != size:
            how = "longer than recorded" if pos > size else "truncated"
            raise CorruptRecordError(f"the recorded {what} (blob {ref[:16]}…) is {how}")
        if (sha.hexdigest() != ref) if sha is not None else (found != crc):
            raise _damaged(ref, what, self.url)
        return int(size)

    def listing(self) -> Iterable[tuple[str, float | None]]:
        with self.store.connection() as conn:
            rows = conn.execute(
                f"SELECT ref, extract(epoch FROM created_at)::float8 FROM {self.s}.blob_objects"
            ).fetchall()
        return [(r[0], r[1]) for r in rows]

    def delete(self, refs: Iterable[str]) -> int:
        refs = list(refs)
        with self.store.connection() as conn, conn.transaction():
            conn.execute(f"DELETE FROM {self.s}.blob_chunks WHERE ref = ANY(%s)", [refs])
            return conn.execute(f"DELETE FROM {self.s}.blob_objects WHERE ref = ANY(%s)", [refs]).rowcount


class FsspecBlobs(BlobStore):
    """Blobs under an fsspec URL (``s3://bucket/prefix``, ``gcs://…``) that all users reach."""

    def __init__(self, url: str, compression: str | None = "zstd", namespace: str = "") -> None:
        try:
            import fsspec
        except ImportError:  # pragma: no cover - depends on the environment
            raise StoreUnavailableError(
                f"DURABLENB_BLOB_URL={url!r} needs fsspec (pip install fsspec and the "
                "filesystem's package, such as s3fs)"
            ) from None
        self.fs, base = fsspec.core.url_to_fs(url)
        self.legacy_base = base.rstrip("/")
        self.base = f"{self.legacy_base}/{namespace}" if namespace else self.legacy_base
        self.url = url
        self.compression = compression

    def _path(self, ref: str, base: str | None = None) -> str:
        return f"{base or self.base}/{ref[:2]}/{ref}"

    def put(self, produce: Callable[[Any], None], owner: str | None = None) -> tuple[str, int, int]:
        try:
            return super().put(produce, owner)
        except Exception as exc:
            if _remote_failure(exc):  # the object store's client failed, not the value
                raise _storage_error("write", self.url, exc) from exc
            raise

    def _put(self, produce: Callable[[Any], None], owner: str | None) -> tuple[str, int, int]:
        tmp = f"{self.base}/tmp/{uuid.uuid4().hex}.part"
        with self.fs.open(tmp, "wb") as raw:
            w = HashingWriter(raw)
            produce(w)
        self._hold(owner, w.ref)
        final = self._path(w.ref)
        if self.fs.exists(final) and self.fs.size(final) == w.size:
            self.fs.rm(tmp)
        else:  # new, or a damaged copy to replace
            self.fs.mv(tmp, final)
        return w.ref, w.size, w.crc

    def get(self, ref: str, what: str = "value", crc: int | None = None) -> Any:
        """The blob's bytes, downloaded into a temporary file and mapped privately like a
        folder blob's: a decoder reads it a part at a time, not from a copy in memory."""
        fd, local = tempfile.mkstemp(prefix="durablenb-blob-")
        os.close(fd)
        try:
            try:
                self._download(ref, local)
                with open(local, "rb") as f:  # private: writes to what is decoded stay here
                    size = os.fstat(f.fileno()).st_size
                    data: Any = mapped(f.fileno()) if size else b""
            finally:
                Path(local).unlink(missing_ok=True)
        except FileNotFoundError:
            raise _missing(ref, what, self.url) from None
        except Exception as exc:
            if not _remote_failure(exc):
                raise
            raise _storage_error("read", self.url, exc) from exc
        _check(data, ref, what, self.url, crc)
        if size and hasattr(data, "madvise"):  # the pages the check touched: the decoder maps its own
            data.madvise(mmap.MADV_DONTNEED)
        return data

    def _download(self, ref: str, local: str) -> None:
        try:
            self.fs.get_file(self._path(ref), local)
        except FileNotFoundError:  # written before blobs had a folder per schema?
            self.fs.get_file(self._path(ref, self.legacy_base), local)

    def listing(self) -> Iterable[tuple[str, float | None]]:
        for path, info in self.fs.find(self.base, detail=True).items():
            name = path.rsplit("/", 1)[-1]
            if "/tmp/" in path or len(name) != 64:
                continue
            made = info.get("mtime") or info.get("LastModified") or info.get("created")
            yield name, made.timestamp() if hasattr(made, "timestamp") else made

    def delete(self, refs: Iterable[str]) -> int:
        n = 0
        for ref in refs:
            try:
                self.fs.rm(self._path(ref))
                n += 1
            except FileNotFoundError:
                pass
        return n


def open_blobs(
    store: Store, url: str | None, embedded_home: Path | None, compression: str | None = None
) -> BlobStore:
    """The blob store for *store*: *url* (a folder or fsspec URL), else a folder beside the
    embedded server, else the database itself. *compression* (``none``, ``lz4``, ``zstd``;
    ``DURABLENB_COMPRESSION``) overrides each store's default."""
    comp: Any = ... if compression is None else (None if compression == "none" else compression)
    if url:
        if "://" in url and not url.startswith("file://"):
            blobs: BlobStore = FsspecBlobs(url, namespace=store.schema)
        else:
            blobs = FolderBlobs(url.removeprefix("file://"), namespace=store.schema)
    elif embedded_home is not None:
        blobs = FolderBlobs(Path(embedded_home) / "blobs", namespace=store.schema)
    else:
        blobs = PostgresBlobs(store)
    blobs.store = store
    if comp is not ...:
        blobs.compression = comp
    return blobs

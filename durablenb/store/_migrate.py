"""Versioned schema migrations: numbered SQL files, one transaction each."""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources

import psycopg
from psycopg import sql

from ..errors import SchemaVersionError
from ._roles import Access, check_open

logger = logging.getLogger("durablenb")

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations() -> list[tuple[int, str, str]]:
    """The packaged migrations as ``(version, file name, sql)``, in order."""
    out = []
    for entry in resources.files("durablenb.store").joinpath("migrations").iterdir():
        m = _NAME.match(entry.name)
        if m:
            out.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    out.sort()
    return out


def latest_version() -> int:
    """The schema version this code writes."""
    return migrations()[-1][0]


def _lock_key(schema: str) -> int:
    digest = hashlib.blake2b(f"durablenb-migrate\0{schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def current_version(conn: psycopg.Connection, qschema: str, schema: str) -> int:
    """The version recorded in the database, 0 when the schema does not exist yet."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [f"{qschema}.schema_version"]
    ).fetchone()
    if not row or not row[0]:
        return 0
    row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {qschema}.schema_version").fetchone()
    return int(row[0]) if row else 0


def migrate(conn: psycopg.Connection, qschema: str, schema: str, access: Access | None = None,
            dsn: str = "") -> int:  # fmt: skip
    """Bring *schema* up to `latest_version`; refuse a newer schema. Returns the version.

    *access*: what the connecting role may do there (`inspect_access`). A schema it cannot
    use, or cannot upgrade, is a `StorePermissionError`. A schema created here is its own,
    with every right taken from PUBLIC; a schema owned by a role it is a member of (a
    superuser preparing a role's schema) is migrated as that role, so every table belongs
    to the schema's owner.
    """
    known = migrations()
    latest = known[-1][0]
    if access is not None:
        check_open(access, dsn, latest)
    version = current_version(conn, qschema, schema)
    if version > latest:
        raise SchemaVersionError(
            f"the database schema {schema!r} is at version {version}, newer than the "
            f"version {latest} this durablenb writes; upgrade durablenb"
        )
    if version == latest:
        return version
    as_owner = None
    if access is not None:
        check_open(access, dsn, latest, version)
        if access.exists and access.member and access.owner and access.owner != access.role:
            as_owner = sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(access.owner))
    for number, name, text in known:
        with conn.transaction():
            if as_owner is not None:
                conn.execute(as_owner)
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [_lock_key(schema)])
            row = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s)", [schema])
            if row.fetchone() == (False,):
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {qschema}")
                # No other role may use it until its owner grants access (durablenb grant).
                conn.execute(f"REVOKE ALL ON SCHEMA {qschema} FROM PUBLIC")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {qschema}.schema_version ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
            now = current_version(conn, qschema, schema)
            if now > latest:
                raise SchemaVersionError(
                    f"the database schema {schema!r} is at version {now}, newer than {latest}"
                )
            if number <= now:
                continue
            logger.info("applying migration %s to schema %s", name, schema)
            conn.execute(text.replace("{schema}", qschema))
            conn.execute(
                f"INSERT INTO {qschema}.schema_version (version, name) VALUES (%s, %s)",
                [number, name],
            )
    return latest

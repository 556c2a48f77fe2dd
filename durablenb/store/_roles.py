"""Schemas and roles: the schema a role uses by default, what the connecting role may do in
a schema, and the GRANTs that share one schema's records with another role (mixed into
`Store`).

On a server each role keeps its records in a schema of its own, ``durablenb_<role>``
(`role_schema`), created on its first connection and owned by it; no other role gets any
right on it until its owner runs ``durablenb grant ROLE --read`` (or ``--write``). The
embedded server has one user and keeps the schema ``durablenb``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from ..errors import StorePermissionError

logger = logging.getLogger("durablenb")

#: The schema of the embedded server, and of every server before schemas per role.
DEFAULT_SCHEMA = "durablenb"
ROLE_PREFIX = "durablenb_"
_PLAIN_ROLE = re.compile(r"[a-z0-9_]{1,53}")
_OTHER = re.compile(r"[^a-z0-9_]+")

#: Access levels of a role in a schema, from least to most.
LEVELS = ("none", "read", "write", "owner")


def role_schema(role: str) -> str:
    """The default schema of *role* on a server.

    ``durablenb_`` + the role name when that name is lower-case ASCII letters, digits and
    ``_``, at most 53 of them (``alice`` → ``durablenb_alice``). Any other name is
    lower-cased, each run of other characters becomes one ``_``, the result is cut to 44
    characters and followed by ``_`` and 8 hex digits of the BLAKE2b digest of the exact
    name (``Alice`` → ``durablenb_alice_`` + 8 hex digits), so that two roles never share
    a schema by accident. The result is always a valid, unquoted-safe identifier of at most
    63 characters.
    """
    if _PLAIN_ROLE.fullmatch(role):
        return ROLE_PREFIX + role
    cleaned = _OTHER.sub("_", role.lower())[:44]
    digest = hashlib.blake2b(role.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{ROLE_PREFIX}{cleaned}_{digest}"


@dataclass(frozen=True)
class Access:
    """What the connecting role may do in one schema (read from the catalogs)."""

    schema: str
    #: The connecting role (``current_user``) and database.
    role: str
    database: str
    exists: bool
    owner: str | None
    #: The role owns the schema or is a member of its owner (a superuser is).
    member: bool
    usage: bool
    #: The role may create objects in the schema (migrations), and schemas in the database.
    create: bool
    create_schema: bool
    #: ``owner``, ``write``, ``read`` or ``none`` (see `LEVELS`).
    level: str


def inspect_access(conn: psycopg.Connection, schema: str) -> Access:
    """The connecting role's `Access` to *schema*, in one catalog query (no right needed)."""
    row = conn.execute(
        "SELECT current_user, current_database(), n.oid IS NOT NULL, pg_get_userbyid(n.nspowner), "
        "coalesce(pg_has_role(n.nspowner, 'MEMBER'), false), "
        "coalesce(has_schema_privilege(n.oid, 'USAGE'), false), "
        "coalesce(has_schema_privilege(n.oid, 'CREATE'), false), "
        "has_database_privilege(current_database(), 'CREATE'), "
        "coalesce(has_table_privilege(c.oid, 'INSERT') AND has_table_privilege(c.oid, 'UPDATE') "
        "AND has_table_privilege(c.oid, 'DELETE'), false), "
        "coalesce(has_table_privilege(c.oid, 'SELECT'), false) "
        "FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = %s "
        "LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = 'workflows'",
        [schema],
    ).fetchone()
    assert row is not None
    role, database, exists, owner, member, usage, create, create_schema, write, read = row
    if member:
        level = "owner"
    elif usage and write:
        level = "write"
    elif usage and read:
        level = "read"
    else:
        level = "none"
    return Access(schema, role, database, exists, owner, member, usage, create, create_schema, level)


def default_schema(conn: psycopg.Connection) -> tuple[str, bool]:
    """The schema the connecting role uses when none is set, and whether it is the shared
    ``durablenb`` schema of earlier versions (kept while the role owns it, it holds
    workflows, and the role has no schema of its own yet)."""
    row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    own = role_schema(row[0])
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
        "EXISTS (SELECT 1 FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
        "AND c.relname = 'workflows' WHERE n.nspname = %s "
        "AND n.nspowner = (SELECT oid FROM pg_roles WHERE rolname = current_user))",
        [own, DEFAULT_SCHEMA],
    ).fetchone()
    if row != (False, True):
        return own, False
    try:
        held = conn.execute(f'SELECT EXISTS (SELECT 1 FROM "{DEFAULT_SCHEMA}".workflows)').fetchone()
    except psycopg.errors.InsufficientPrivilege:  # a table the role does not own: not its
        return own, False
    return (DEFAULT_SCHEMA, True) if held == (True,) else (own, False)


def _cli(role: str, schema: str, owner: str | None, write: bool) -> str:
    """The command the owner runs to give *role* access."""
    where = "" if owner is not None and schema == role_schema(owner) else f" --schema {schema}"
    return f"durablenb{where} grant {shlex.quote(role)} --{'write' if write else 'read'}"


def denied(
    access: Access | None, detail: str, dsn: str, schema: str, role: str | None
) -> StorePermissionError:
    """The error for a statement PostgreSQL refused (SQLSTATE 42501) in *schema*, saying
    who owns it and how to get access; *detail* is the server's one-line message."""
    owner = access.owner if access is not None else None
    level = access.level if access is not None else "none"
    who = f"role {owner!r}" if owner else "its owner"
    head = (f"the durablenb schema {schema!r}" + (f" (owned by role {owner!r})" if owner else "")
            + f" at {dsn!r} refused role {role!r}: {detail}.")  # fmt: skip
    if role is None or level == "owner":
        how = " Check the privileges on that schema and its tables."
    elif level == "read":
        how = (f" Role {role!r} may only read it; to let it run and resume workflows there, "
               f"{who} runs `{_cli(role, schema, owner, True)}`.")  # fmt: skip
    else:
        how = (f" To share it, {who} runs `{_cli(role, schema, owner, False)}` (list and read its "
               f"workflows) or `{_cli(role, schema, owner, True)}` (also run and resume them).")  # fmt: skip
    return StorePermissionError(head + how, schema=schema, role=role, owner=owner, dsn=dsn)


def check_open(access: Access, dsn: str, latest: int, version: int | None = None) -> None:
    """Refuse, with a `StorePermissionError` that says what to do, a schema the role cannot
    use: another role's without a grant, or one it may not create; with *version*, one that
    needs a migration only its owner can apply."""
    if access.exists and not access.usage:
        raise denied(access, f"permission denied for schema {access.schema}", dsn, access.schema, access.role)
    if not access.exists and not access.create_schema:
        raise StorePermissionError(
            f"role {access.role!r} cannot create the durablenb schema {access.schema!r} in database "
            f"{access.database!r} at {dsn!r}: it may not create schemas there. An administrator "
            f"runs `GRANT CREATE ON DATABASE {access.database} TO {access.role}` or creates the "
            f"schema for it: `CREATE SCHEMA {access.schema} AUTHORIZATION {access.role}`; or set "
            "DURABLENB_SCHEMA to a schema it may use.",
            schema=access.schema, role=access.role, owner=None, dsn=dsn,
        )  # fmt: skip
    if version is not None and access.exists and version < latest and not (access.member or access.create):
        raise StorePermissionError(
            f"the durablenb schema {access.schema!r} (owned by role {access.owner!r}) at {dsn!r} is "
            f"at version {version} and this durablenb needs version {latest}; role {access.role!r} "
            f"may not upgrade it. Role {access.owner!r} upgrades it by connecting once with this "
            "version of durablenb (`durablenb info`).",
            schema=access.schema, role=access.role, owner=access.owner, dsn=dsn,
        )  # fmt: skip


_READ = (
    "GRANT USAGE ON SCHEMA {s} TO {r}",
    "GRANT SELECT ON ALL TABLES IN SCHEMA {s} TO {r}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} GRANT SELECT ON TABLES TO {r}",
)
_WRITE = (
    "GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {r}",
    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA {s} TO {r}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} GRANT INSERT, UPDATE, DELETE ON TABLES TO {r}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} GRANT USAGE, SELECT ON SEQUENCES TO {r}",
)
_REVOKE_WRITE = (
    "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON ALL TABLES IN SCHEMA {s} FROM {r}",
    "REVOKE ALL ON ALL SEQUENCES IN SCHEMA {s} FROM {r}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} "
    "REVOKE INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER ON TABLES FROM {r}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} REVOKE ALL ON SEQUENCES FROM {r}",
)
_REVOKE = _REVOKE_WRITE + (
    "REVOKE ALL ON ALL TABLES IN SCHEMA {s} FROM {r}",
    "ALTER DEFAULT PRIVILEGES FOR ROLE {o} IN SCHEMA {s} REVOKE ALL ON TABLES FROM {r}",
    "REVOKE ALL ON SCHEMA {s} FROM {r}",
)


class RolesMixin:
    """Who may use this schema; needs the attributes `Store` sets."""

    schema: str

    if TYPE_CHECKING:

        @property
        def masked_dsn(self) -> str: ...

        def connection(self) -> Any: ...

    def access(self) -> Access:
        """What the connected role may do in this schema now."""
        with self.connection() as conn:
            return inspect_access(conn, self.schema)

    def shared_with(self) -> list[tuple[str, str]]:
        """``(role, "read" or "write")`` for every other role given access to this schema
        (``public`` when everyone was)."""
        with self.connection() as conn:
            rows = conn.execute(
                "SELECT g.r, coalesce(has_table_privilege(g.r, c.oid, 'INSERT'), false) FROM "
                "(SELECT DISTINCT CASE WHEN a.grantee = 0 THEN 'public' "
                "ELSE pg_get_userbyid(a.grantee) END AS r, n.oid AS nsp "
                "FROM pg_namespace n, aclexplode(n.nspacl) a WHERE n.nspname = %s "
                "AND a.privilege_type = 'USAGE' AND a.grantee <> n.nspowner) g "
                "LEFT JOIN pg_class c ON c.relnamespace = g.nsp AND c.relname = 'workflows' "
                "ORDER BY 1",
                [self.schema],
            ).fetchall()
        return [(r, "write" if w else "read") for r, w in rows]

    def grant(self, role: str, write: bool = False) -> str:
        """Let *role* read this schema's records (list workflows and steps, read outputs and
        blobs) or, with *write*, also run, resume, cancel and forget workflows in it. Sets
        exactly that level (``grant(role)`` after ``grant(role, write=True)`` takes writing
        away) and covers tables later migrations create. Only the schema's owner (or a
        member of it, or a superuser) may. Returns the level given."""
        steps = _REVOKE_WRITE + _READ + (_WRITE if write else ())
        self._change_access(role, steps, "share")
        return "write" if write else "read"

    def revoke(self, role: str) -> None:
        """Take back every right `grant` gave *role* on this schema."""
        self._change_access(role, _REVOKE, "revoke access to")

    def _change_access(self, role: str, statements: tuple[str, ...], verb: str) -> None:
        with self.connection() as conn, conn.transaction():
            access = inspect_access(conn, self.schema)
            if not access.member or access.owner is None:
                raise StorePermissionError(
                    f"role {access.role!r} cannot {verb} the durablenb schema {self.schema!r} at "
                    f"{self.masked_dsn!r}: only its owner, role {access.owner!r}, can (or a superuser).",
                    schema=self.schema, role=access.role, owner=access.owner, dsn=self.masked_dsn,
                )  # fmt: skip
            if role == access.owner:
                raise ValueError(f"role {role!r} owns the schema {self.schema!r}: its access is not granted")
            if role in ("public", "PUBLIC"):
                grantee: sql.Composable = sql.SQL("PUBLIC")
            elif conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                grantee = sql.Identifier(role)
            else:
                raise ValueError(f"there is no role {role!r} on this server (role names are case-sensitive)")
            names = {"s": sql.Identifier(self.schema), "r": grantee, "o": sql.Identifier(access.owner)}
            for text in statements:
                conn.execute(sql.SQL(text).format(**names))

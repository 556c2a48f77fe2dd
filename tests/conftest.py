"""Test fixtures: one store per test in a fresh schema, on the embedded server or on
``$DURABLENB_TEST_DSN``; helpers to run workflows in real child processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest

import durablenb as dnb
from durablenb import server
from durablenb.engine import runtime
from durablenb.store import mask_dsn

REPO = Path(__file__).resolve().parent.parent


def _backend() -> tuple[str, str, Path | None]:
    """``(kind, dsn, embedded home)`` for this test run."""
    dsn = os.environ.get("DURABLENB_TEST_DSN")
    if dsn:
        return "server", dsn, None
    home = Path(tempfile.mkdtemp(prefix="durablenb-test-home-"))
    return "embedded", server.start(home), home


# Set in pytest_configure, which only pytest's own processes run: a process a test spawns
# that imports a test module (a process pool or a Dask worker unpickling a test's function)
# must not start an embedded server of its own that nothing would stop.
_KIND: str = "embedded"
_DSN: str = ""
_HOME: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _KIND, _DSN, _HOME
    controller = bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")
    if controller:  # it runs no test: its workers start their own servers
        dsn = os.environ.get("DURABLENB_TEST_DSN")
        _KIND, _DSN = ("server", dsn) if dsn else ("embedded", "")
        return
    _KIND, _DSN, _HOME = _backend()


def pytest_report_header(config: pytest.Config) -> str:
    where = mask_dsn(_DSN) if _DSN else "one embedded server per worker"
    return f"durablenb backend: {_KIND} ({where})"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    runtime.disconnect()
    if _HOME is not None:
        server.stop(_HOME)
        shutil.rmtree(_HOME, ignore_errors=True)  # the embedded server's data and blobs


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that stop, crash or reconfigure the database they run on are marked
    ``server_restart``: on a shared server they run alone (`make test-server`)."""
    for item in items:
        if "database" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server_restart)


@pytest.fixture(scope="session")
def backend() -> str:
    return _KIND


@pytest.fixture(scope="session")
def dsn() -> str:
    return _DSN


@pytest.fixture
def schema(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh schema connected as the process's store; the same for child processes."""
    name = "t_" + uuid.uuid4().hex[:12]
    if _HOME is not None:
        monkeypatch.setenv("DURABLENB_HOME", str(_HOME))
        monkeypatch.delenv("DURABLENB_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("DURABLENB_DATABASE_URL", _DSN)
    monkeypatch.setenv("DURABLENB_SCHEMA", name)
    dnb.connect(schema=name)  # as users do: DURABLENB_HOME (embedded) or DURABLENB_DATABASE_URL
    yield name
    runtime.disconnect()
    with psycopg.connect(_DSN, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def sql(dsn: str):
    """An autocommit connection for checks and set-up."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


class Counter:
    """Calls counted in this process, by name (thread-safe)."""

    def __init__(self) -> None:
        self.n: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, key: str) -> None:
        with self.lock:
            self.n[key] = self.n.get(key, 0) + 1

    def __getitem__(self, key: str) -> int:
        return self.n.get(key, 0)


@pytest.fixture
def calls() -> Counter:
    return Counter()


class Effects:
    """Side effects counted in files: ``hit(name)`` appends a line, ``count(name)`` reads."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> Path:
        return self.root / f"{name}.log"

    def count(self, name: str) -> int:
        p = self.path(name)
        return len(p.read_text().splitlines()) if p.exists() else 0


@pytest.fixture
def effects(tmp_path: Path) -> Effects:
    return Effects(tmp_path / "effects")


PRELUDE = """
import os, sys, json
from pathlib import Path
import durablenb as dnb

EFFECTS = Path(os.environ["EFFECTS_DIR"])

def hit(name, value=""):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write(f"{os.getpid()} {value}\\n")
        f.flush()
        os.fsync(f.fileno())

def crash_once(tag):
    # Hard-kill this process the first time it gets here: no cleanup, no atexit.
    marker = EFFECTS / f"crashed-{tag}"
    if not marker.exists():
        marker.write_text("1")
        os._exit(137)
"""


@pytest.fixture
def run_child(tmp_path: Path, effects: Effects, schema: str):
    """Run a Python script (prelude included) in a fresh interpreter; returns the process."""

    def run(body: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
            name: str = "child.py", background: bool = False):  # fmt: skip
        script = tmp_path / name
        script.write_text(PRELUDE + textwrap.dedent(body))
        full_env = dict(os.environ)
        full_env["EFFECTS_DIR"] = str(effects.root)
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        cmd = [sys.executable, str(script), *args]
        if background:
            return subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
        return subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)

    return run


class Shell:
    """An in-process IPython shell whose ``run`` raises the cell's error."""

    def __init__(self) -> None:
        from IPython.core.interactiveshell import InteractiveShell

        self.ip = InteractiveShell.instance()
        self.ip.reset()

    def run(self, cell: str):
        result = self.ip.run_cell(cell, store_history=True)
        if result.error_before_exec:
            raise result.error_before_exec
        if result.error_in_exec:
            raise result.error_in_exec
        return result.result

    @property
    def ns(self):
        return self.ip.user_ns


@pytest.fixture
def shell(schema, capsys):
    """A shell with ``%load_ext durablenb``, on this test's schema."""
    sh = Shell()
    sh.run("%load_ext durablenb")
    yield sh
    sh.run("%unload_ext durablenb")


class Database:
    """Stops and starts the database the tests run on (a real server restart)."""

    def __init__(self) -> None:
        self.kind = _KIND

    def _cluster(self, action: str, mode: str = "fast") -> None:
        version = sorted(os.listdir("/etc/postgresql"))[-1]
        subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
                       + (["-m", mode] if action == "stop" else []), check=True,
                       capture_output=True)  # fmt: skip

    def stop(self) -> None:
        if _HOME is not None:
            server.stop(_HOME)
        else:
            self._cluster("stop")

    def crash(self) -> None:
        """Stop the database as a crash does: ``pg_ctl stop -m immediate`` (every process
        quits at once; log not yet written out is lost; recovery runs at the next start)."""
        if _HOME is None:
            self._cluster("stop", mode="immediate")
            return
        pg = server._server(_HOME, start=False)
        subprocess.run([str(pg.bin_path / "pg_ctl"), "-D", str(server.data_dir(_HOME)), "-w",
                        "stop", "-m", "immediate"], user=pg.system_user, check=True,
                       capture_output=True)  # fmt: skip

    def start(self) -> None:
        if _HOME is not None:
            server.start(_HOME)
        else:
            try:
                psycopg.connect(_DSN, connect_timeout=2).close()
                return  # running already
            except psycopg.OperationalError:
                self._cluster("start")
        deadline = time.monotonic() + 60
        while True:
            try:
                psycopg.connect(_DSN, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "the database did not come back"
                time.sleep(0.2)


@pytest.fixture
def database():
    db = Database()
    yield db
    db.start()  # whatever a test did, leave the database running

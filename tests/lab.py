"""JupyterLab driven by Debian's Chromium (Playwright), for the browser tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
REPO = Path(__file__).resolve().parent.parent
#: Where pictures go: an ignored folder, or docs/ when asked for with
#: DURABLENB_UPDATE_SCREENSHOT=1 (a test run leaves the tree as it found it).
PICTURES = REPO / "docs" if os.environ.get("DURABLENB_UPDATE_SCREENSHOT") else REPO / ".artifacts"


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {},
                   "outputs": [], "source": src} for i, src in enumerate(cells)],  # fmt: skip
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                    "name": "python3"}},  # fmt: skip
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    path.write_text(json.dumps(nb, indent=1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on a folder; it can be stopped and started again (same port)."""

    def __init__(self, tmp: Path, theme: str | None = None) -> None:
        self.tmp = tmp
        self.root = tmp / "lab"
        self.root.mkdir(exist_ok=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "cfg"),
                        JUPYTER_RUNTIME_DIR=str(tmp / "rt"),
                        JUPYTERLAB_SETTINGS_DIR=str(tmp / "settings"))  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None
        self.set_theme(theme or "JupyterLab Light")
        # No "would you like news?" toast over the outputs.
        self._settings("@jupyterlab/apputils-extension", "notification",
                       {"fetchNews": "false", "checkForUpdates": False})  # fmt: skip

    def _settings(self, plugin: str, name: str, values: dict[str, Any]) -> None:
        folder = self.tmp / "settings" / plugin
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))

    def set_theme(self, theme: str) -> None:
        self._settings("@jupyterlab/apputils-extension", "themes", {"theme": theme})

    def start(self) -> None:
        self.log = open(self.tmp / "lab.log", "a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
             "--ip=127.0.0.1", "--allow-root", "--ServerApp.token=", "--ServerApp.password=",
             "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={self.root}",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/api/status", timeout=2)
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not start:\n" + self.log_text())
                time.sleep(0.3)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        self.log.close()

    def log_text(self) -> str:
        path = self.tmp / "lab.log"
        return path.read_text()[-4000:] if path.exists() else ""


def chromium(playwright: Any) -> Any:
    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), (
        "Debian's Chromium is missing: apt-get install -y chromium"
    )
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    )  # fmt: skip


def open_notebook(page: Any, lab: Lab, name: str) -> Any:
    """Open *name* and wait for an idle kernel; returns the cells' locator."""
    page.goto(f"{lab.url}/lab/tree/{name}", timeout=90_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=90_000)
    return page.locator(".jp-Notebook .jp-Cell")


def run_cell(page: Any, cell: Any) -> None:
    """Run one cell (Ctrl+Enter) and wait until it is queued or done; retry if the keystroke
    reached the notebook before its kernel session did."""
    prompt = cell.locator(".jp-InputPrompt")
    for _ in range(5):
        cell.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if prompt.inner_text().strip() not in ("[ ]:", ""):
                return
            time.sleep(0.1)
    raise AssertionError(f"the cell never ran: {cell.inner_text()[:200]}")


def save(page: Any, lab: Lab, name: str) -> dict[str, Any]:
    """Save the notebook (Ctrl+S) and return it as written."""
    path = lab.root / name
    before = path.stat().st_mtime_ns
    dialog = page.locator(".jp-Dialog .jp-mod-accept")
    if dialog.count() and dialog.first.is_visible():  # "the kernel appears to have died"
        dialog.first.click()
        page.locator(".jp-Dialog").first.wait_for(state="detached", timeout=10_000)
    page.locator(".jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + 20
    while path.stat().st_mtime_ns == before and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    return json.loads(path.read_text())


@contextlib.contextmanager
def browser_page(lab: Lab, picture: str = "/tmp/durablenb-browser-failure.png") -> Iterator[Any]:
    """A Chromium page on *lab*; a failure inside becomes an AssertionError carrying the
    page's text, the server's log and a screenshot at *picture*."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = chromium(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            yield page
        except Exception:
            raise AssertionError(failure_report(page, lab, picture)) from None
        finally:
            browser.close()


def failure_report(page: Any, lab: Lab, picture: str) -> str:
    page.screenshot(path=picture)
    text = page.locator(".jp-Notebook").inner_text() if page.locator(".jp-Notebook").count() else ""
    return (f"page text:\n{text[-3000:]}\n\nJupyterLab log:\n{lab.log_text()}\nscreenshot: {picture}")

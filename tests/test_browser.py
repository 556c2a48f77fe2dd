"""JupyterLab in Debian's Chromium: the live timeline widget as a person sees it."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
#: Where the screenshot goes: an ignored folder, or the README's picture when asked for with
#: DURABLENB_UPDATE_SCREENSHOT=1 (a test run leaves the tree as it found it).
SCREENSHOT = (REPO / "docs" / "timeline.png" if os.environ.get("DURABLENB_UPDATE_SCREENSHOT")
              else REPO / ".artifacts" / "timeline.png")  # fmt: skip

DEFS = r'''import os, json
import durablenb as dnb

attempts = {"flaky": 0}

@dnb.step
def load_flights():
    return list(range(336_776))

@dnb.step(retries=2, interval=0.2)
def fetch_weather(rows):
    attempts["flaky"] += 1
    if os.environ.get("DIE_IN_WEATHER"):
        os._exit(137)                     # the kernel dies here in the first run
    if attempts["flaky"] == 1:
        raise ConnectionError("weather service timed out")
    return {"rows": len(rows), "stations": 3}

@dnb.step
def check_schema(weather):
    raise ValueError("column 'dep_delay' has 8255 missing values")

@dnb.step
def report(weather):
    import time; time.sleep(0.3)
    return f"{weather['rows']} flights, {weather['stations']} stations"

@dnb.workflow
def flights():
    weather = fetch_weather(load_flights())
    try:
        check_schema(weather)
    except ValueError:
        pass
    return report(weather)
'''


def _notebook(path: Path) -> None:
    cells = ["%load_ext durablenb", DEFS, "flights()"]
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


@pytest.fixture
def jupyterlab(schema, tmp_path):
    port = _free_port()
    root = tmp_path / "lab"
    root.mkdir()
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"),
               JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))  # fmt: skip
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--allow-root", "--ServerApp.token=", "--ServerApp.password=",
         "--ServerApp.disable_check_xsrf=True", f"--ServerApp.root_dir={root}",
         "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                pytest.fail("JupyterLab did not start:\n" + (tmp_path / "lab.log").read_text())
            time.sleep(0.3)
    yield url, root
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _run_cell(page, cell) -> None:
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


def test_timeline_widget_in_jupyterlab(jupyterlab, tmp_path, run_child):
    from playwright.sync_api import sync_playwright

    assert shutil.which(CHROMIUM) or os.path.exists(CHROMIUM), (
        "Debian's Chromium is missing: apt-get install -y chromium"
    )
    url, root = jupyterlab
    # An earlier kernel got through the first step, then died inside the second.
    # (It ran as the notebook: JupyterLab names a kernel's notebook in JPY_SESSION_NAME.)
    died = run_child(DEFS + "\nflights()\n", name="seed.py",
                     env={"DIE_IN_WEATHER": "1", "JPY_SESSION_NAME": str(root / "flights.ipynb")})
    assert died.returncode == 137, died.stderr
    _notebook(root / "flights.ipynb")

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            page.goto(f"{url}/lab/tree/flights.ipynb", timeout=90_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=90_000)
            cells = page.locator(".jp-Notebook .jp-Cell")
            for i in range(3):
                _run_cell(page, cells.nth(i))
            widget = page.locator(".durablenb-timeline-widget")
            widget.locator("[data-workflow-status='succeeded']").wait_for(timeout=90_000)
            bars = widget.locator(".durablenb-bar")
            assert bars.count() == 4
            states = [bars.nth(i).get_attribute("data-state") for i in range(4)]
            assert states == ["replayed", "retried", "failed", "succeeded"]
            assert "weather service" not in widget.inner_text()  # retried: no error shown
            assert "ValueError" in widget.inner_text()
            tip = bars.nth(2).get_attribute("title")
            assert "column 'dep_delay' has 8255 missing values" in tip
            assert "2 attempts" in bars.nth(1).get_attribute("title")
            result = page.locator(".jp-Cell").nth(2).locator(".jp-OutputArea-output")
            assert "336776 flights, 3 stations" in result.last.inner_text()
            widget.scroll_into_view_if_needed()
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.locator(".jp-Cell").nth(2).screenshot(path=str(SCREENSHOT))
        except Exception:
            page.screenshot(path="/tmp/durablenb-browser-failure.png")
            text = page.locator(".jp-Notebook").inner_text() if page.locator(".jp-Notebook").count() else ""
            lab_log = (tmp_path / "lab.log").read_text()[-4000:]
            raise AssertionError(f"page text:\n{text[-3000:]}\n\nJupyterLab log:\n{lab_log}\n"
                                 "screenshot: /tmp/durablenb-browser-failure.png")  # fmt: skip
        finally:
            browser.close()

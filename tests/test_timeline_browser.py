"""The timeline in JupyterLab, in Debian's Chromium: live, saved, reopened after a server
restart or a dead kernel, at a thousand steps, and in the light and dark themes."""

from __future__ import annotations

import os
import re
import time

import pytest

from .lab import PICTURES, Lab, browser_page, open_notebook, run_cell, save, write_notebook

FLIGHTS = r'''import os, time
import durablenb as dnb

attempts = {"flaky": 0}

@dnb.step
def load_flights():
    time.sleep(0.2)
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
def fit_carrier(carrier):
    time.sleep(0.05)
    return carrier

@dnb.step
def report(weather, fits):
    time.sleep(float(os.environ.get("REPORT_SECONDS", "0.3")))
    return f"{weather['rows']} flights, {weather['stations']} stations, {len(fits)} fits"

@dnb.workflow
def flights():
    weather = fetch_weather(load_flights())
    try:
        check_schema(weather)
    except ValueError:
        pass
    fits = dnb.map(fit_carrier, ["AA", "UA", "DL", "B6", "EV", "MQ", "US", "WN"] * 2, workers=4)
    return report(weather, fits)
'''


@pytest.fixture
def lab(schema, tmp_path):
    lab = Lab(tmp_path)
    lab.start()
    yield lab
    lab.stop()


def _seed_crash(run_child, lab: Lab, name: str) -> None:
    """An earlier kernel got through the first step, then died inside the second (as the
    notebook: JupyterLab names a kernel's notebook in JPY_SESSION_NAME)."""
    died = run_child(FLIGHTS + "\nflights()\n", name="seed.py",
                     env={"DIE_IN_WEATHER": "1", "JPY_SESSION_NAME": str(lab.root / name)})  # fmt: skip
    assert died.returncode == 137, died.stderr


def _exported(path) -> str:
    """The notebook at *path* as nbconvert's HTML (what nbviewer shows)."""
    import nbconvert
    import nbformat

    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(str(path), as_version=4))
    return body


def _visible_text(page, text: str) -> bool:
    return any(el.is_visible() for el in page.get_by_text(text).all())


def test_timeline_live_saved_and_reopened_after_a_server_restart(lab, run_child, tmp_path):
    _seed_crash(run_child, lab, "flights.ipynb")
    write_notebook(lab.root / "flights.ipynb", ["%load_ext durablenb", FLIGHTS, "flights()"])
    with browser_page(lab) as page:
        cells = open_notebook(page, lab, "flights.ipynb")
        for i in range(3):
            run_cell(page, cells.nth(i))
        page.locator(".durablenb-live").wait_for(timeout=90_000)  # the live view
        assert not page.locator(".durablenb-standin").first.is_visible()
        done = page.locator(".durablenb-static [data-workflow-status='succeeded']")
        done.wait_for(timeout=90_000)  # the run ended: the final static copy replaced it
        tl = page.locator(".durablenb-static").first
        rows = tl.locator(".dnb-body > .dnb-step > .dnb-row .dnb-state")
        assert [rows.nth(i).inner_text() for i in range(rows.count())] == [
            "replayed", "retried", "failed", "succeeded"]  # fmt: skip
        assert tl.locator(".dnb-group > .dnb-row .dnb-name").inner_text() == "fit_carrier ×16"
        head = tl.locator(".dnb-head").inner_text()
        assert re.search(r"1 replayed \([\d.]+ s saved\) · 19 ran · [\d.]+ s", head), head
        # A click opens the failed step: its error, traceback and how to load it.
        failed = tl.locator(".dnb-step[data-position='2']")
        failed.locator(".dnb-row").click()
        detail = failed.locator(".dnb-detail")
        assert "column 'dep_delay' has 8255 missing values" in detail.inner_text()
        assert "check_schema" in detail.locator("pre").inner_text()
        assert "dnb.output(" in detail.inner_text()
        # Enter opens a step from the keyboard.
        tl.locator(".dnb-step[data-position='1'] .dnb-row").focus()
        page.keyboard.press("Enter")
        assert "2 attempts" in tl.locator(".dnb-step[data-position='1'] .dnb-detail").inner_text()
        result = cells.nth(2).locator(".jp-OutputArea-output")
        assert "336776 flights, 3 stations, 16 fits" in result.last.inner_text()
        PICTURES.mkdir(exist_ok=True)
        cells.nth(2).screenshot(path=str(PICTURES / "timeline.png"))
        saved = save(page, lab, "flights.ipynb")
        kinds = [list(o.get("data", {})) for o in saved["cells"][2]["outputs"]]
        assert not any("application/vnd.jupyter.widget-view+json" in k for k in kinds), kinds
        exported = _exported(lab.root / "flights.ipynb")
        assert "durablenb-static" in exported and "fit_carrier ×16" in exported
        lab.stop()
        lab.start()
        cells = open_notebook(page, lab, "flights.ipynb")
        tl = page.locator(".durablenb-static").first
        tl.wait_for(timeout=30_000)
        assert tl.locator("[data-workflow-status='succeeded']").is_visible()
        assert tl.locator(".dnb-bar").count() >= 5
        time.sleep(2)  # give a missing widget model time to be reported
        assert not _visible_text(page, "model not found")
        assert not _visible_text(page, "Error displaying widget")


KILLER = r'''import os, time
import durablenb as dnb

@dnb.step
def prepare(i):
    time.sleep(0.1)
    return i

@dnb.step
def die():
    if os.path.exists(os.environ["KILL_FLAG"]):
        os.remove(os.environ["KILL_FLAG"])
        os.kill(os.getpid(), 9)
    return "survived"

@dnb.workflow
def doomed():
    total = sum(prepare(i) for i in range(25))
    return die(), total
'''


def test_kernel_killed_mid_run_reopens_as_interrupted(lab, tmp_path):
    flag = tmp_path / "kill-the-kernel"
    flag.touch()
    lab.env["KILL_FLAG"] = str(flag)
    lab.stop()
    lab.start()
    write_notebook(lab.root / "doomed.ipynb", ["%load_ext durablenb", KILLER, "doomed()"])
    with browser_page(lab) as page:
        cells = open_notebook(page, lab, "doomed.ipynb")
        for i in range(3):
            run_cell(page, cells.nth(i))
        page.locator(".durablenb-live").wait_for(timeout=90_000)
        deadline = time.monotonic() + 60
        while flag.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not flag.exists(), "the kernel was never killed"
        # The live view stops saying "running" once the kernel is silent.
        page.locator(".durablenb-live [data-workflow-status='interrupted']").wait_for(timeout=30_000)
        assert "rerun the cell to resume" in page.locator(".durablenb-live .dnb-head").inner_text()
        time.sleep(1)
        saved = save(page, lab, "doomed.ipynb")
        html = "".join(o.get("data", {}).get("text/html", "") if isinstance(
            o.get("data", {}).get("text/html", ""), str) else "".join(o["data"]["text/html"])
            for o in saved["cells"][2]["outputs"])  # fmt: skip
        assert "durablenb-standin" in html
        exported = _exported(lab.root / "doomed.ipynb")
        assert "durablenb-standin" in exported and "rerun the cell to resume" in exported
        lab.stop()
        lab.start()
        open_notebook(page, lab, "doomed.ipynb")
        standin = page.locator(".durablenb-standin")
        standin.wait_for(timeout=30_000)
        time.sleep(2)  # give a missing widget model time to be reported
        assert standin.is_visible()
        status = standin.locator("[data-workflow-status='interrupted']").inner_text()
        assert "rerun the cell to resume" in status
        assert standin.locator(".dnb-group > .dnb-row .dnb-name").inner_text().startswith("prepare ×")
        assert not _visible_text(page, "model not found")
        assert not _visible_text(page, "Error displaying widget")
        assert "running" not in standin.locator(".dnb-body").inner_text()


MANY = r'''import time
import durablenb as dnb

@dnb.step
def tick(i):
    time.sleep(0.004)
    return i

@dnb.step
def fit_carrier(c):
    time.sleep(0.05)
    return c

@dnb.workflow
def thousand():
    return sum(tick(i) for i in range(1000))

@dnb.workflow
def fan_out():
    return len(dnb.map(fit_carrier, [f"C{i:03d}" for i in range(300)], workers=4))
'''

#: Kernel messages that carry a timeline: the widget's comm and the displays.
_TIMELINE_MESSAGE = re.compile(
    rb'"msg_type":\s*"(comm_open|comm_msg|comm_close|display_data|update_display_data)"')

_LONG_TASKS = """() => {
  window.__longTasks = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) window.__longTasks.push(e.duration);
  }).observe({ type: "longtask", buffered: false });
}"""


def test_a_thousand_steps_and_a_300_item_map_stay_light(lab):
    write_notebook(lab.root / "many.ipynb", ["%load_ext durablenb", MANY, "thousand()", "fan_out()"])
    frames: list[int] = []

    def on_socket(ws) -> None:
        def count(payload) -> None:
            data = payload.encode() if isinstance(payload, str) else payload
            if _TIMELINE_MESSAGE.search(data):
                frames.append(len(data))

        ws.on("framereceived", count)

    with browser_page(lab) as page:
        page.on("websocket", on_socket)
        cells = open_notebook(page, lab, "many.ipynb")
        run_cell(page, cells.nth(0))
        run_cell(page, cells.nth(1))
        page.get_by_text(re.compile(r"\| Idle")).first.wait_for(timeout=60_000)
        time.sleep(1)
        save(page, lab, "many.ipynb")
        before = (lab.root / "many.ipynb").stat().st_size
        frames.clear()
        page.evaluate(_LONG_TASKS)
        run_cell(page, cells.nth(2))
        finished = ".durablenb-static [data-workflow-status='succeeded']"
        cells.nth(2).locator(finished).wait_for(timeout=120_000)
        thousand_bytes = sum(frames)
        frames.clear()
        run_cell(page, cells.nth(3))
        progress = cells.nth(3).locator(".durablenb-live .dnb-progress")
        progress.wait_for(timeout=60_000)
        deadline = time.monotonic() + 30
        while float(progress.get_attribute("data-rate") or 0) <= 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert float(progress.get_attribute("data-rate")) > 0
        assert re.search(r"\d+ of 300 · [\d.]+ items/s", progress.inner_text()), progress.inner_text()
        PICTURES.mkdir(exist_ok=True)
        cells.nth(3).screenshot(path=str(PICTURES / "timeline-compact.png"))
        cells.nth(3).locator(finished).wait_for(timeout=120_000)
        map_bytes = sum(frames)
        tasks = page.evaluate("window.__longTasks")
        save(page, lab, "many.ipynb")
        after = (lab.root / "many.ipynb").stat().st_size
        group = cells.nth(3).locator(".durablenb-static .dnb-group > .dnb-row .dnb-name")
        assert group.inner_text() == "fit_carrier ×300"
        print(f"timeline traffic: {thousand_bytes} B for 1,000 steps, {map_bytes} B for a "
              f"300-item map; long tasks {tasks}; notebook grew {after - before} B")
        assert thousand_bytes <= 1_000_000 and map_bytes <= 1_000_000
        assert max(tasks, default=0) <= 200, tasks
        assert after - before <= 100_000


#: Each element's state, text colour and the first opaque background behind it.
_COLOURS = """(els) => els.map((e) => {
  let bg = "rgb(255, 255, 255)";
  for (let n = e; n; n = n.parentElement) {
    const b = getComputedStyle(n).backgroundColor;
    if (!/^rgba\\(.*, 0\\)$|transparent/.test(b)) { bg = b; break; }
  }
  return [e.getAttribute("data-state"), getComputedStyle(e).color, bg];
})"""


_STATES = ["running", "replayed", "retried", "failed", "succeeded", "cancelled", "interrupted",
           "queued"]  # fmt: skip
_SPANS = "".join(f"<span class='dnb-state' data-state='{s}'>{s}</span> " for s in _STATES)
#: Adds a row of every state to a timeline, to measure the ones a run does not reach.
_EVERY_STATE = ("(tl) => { const d = document.createElement('div'); d.className = 'dnb-every-state'; "
                f"d.innerHTML = {_SPANS!r}; tl.querySelector('.dnb-body').appendChild(d); }}")  # fmt: skip


def _rgba(text: str) -> list[float]:
    parts = [float(x) for x in re.findall(r"[\d.]+", text)]
    return parts[:3] + [parts[3] if len(parts) > 3 else 1.0]


def _contrast(colour: str, background: str) -> float:
    """WCAG contrast ratio of a (possibly translucent) text colour over an opaque background."""
    fg, bg = _rgba(colour), _rgba(background)
    text = [fg[i] * fg[3] + bg[i] * (1 - fg[3]) for i in range(3)]

    def luminance(rgb: list[float]) -> float:
        c = [(x / 255) / 12.92 if x / 255 <= 0.03928 else ((x / 255 + 0.055) / 1.055) ** 2.4 for x in rgb]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    hi, lo = sorted([luminance(text), luminance(bg[:3])], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


@pytest.mark.parametrize("theme", ["JupyterLab Light", "JupyterLab Dark"])
def test_state_text_contrast_in_both_themes(schema, tmp_path, run_child, theme):
    if os.environ.get("DURABLENB_TEST_DSN"):
        pytest.skip("colours do not depend on the database: checked on the embedded run")

    lab = Lab(tmp_path, theme=theme)
    lab.env["REPORT_SECONDS"] = "8"  # long enough to see it running on a busy machine
    lab.start()
    try:
        _seed_crash(run_child, lab, "flights.ipynb")
        write_notebook(lab.root / "flights.ipynb", ["%load_ext durablenb", FLIGHTS, "flights()"])
        with browser_page(lab) as page:
            cells = open_notebook(page, lab, "flights.ipynb")
            assert page.evaluate("document.body.dataset.jpThemeLight") == (
                "true" if theme.endswith("Light") else "false")  # fmt: skip
            for i in range(3):
                run_cell(page, cells.nth(i))
            running = page.locator(".durablenb-live .dnb-state[data-state='running']")
            running.first.wait_for(timeout=90_000)
            states = ".dnb-state, .dnb-status"
            measured = page.locator(".durablenb-live").locator(states).evaluate_all(_COLOURS)
            done = page.locator(".durablenb-static [data-workflow-status='succeeded']")
            done.wait_for(timeout=90_000)
            measured += page.locator(".durablenb-static").locator(states).evaluate_all(_COLOURS)
            # States this run does not reach, drawn the same way in the same output.
            page.locator(".durablenb-static").first.evaluate(_EVERY_STATE)
            measured += page.locator(".dnb-every-state .dnb-state").evaluate_all(_COLOURS)
            seen: dict[str, float] = {}
            for state, colour, background in measured:
                ratio = _contrast(colour, background)
                seen[state] = min(ratio, seen.get(state, ratio))
            assert set(_STATES) <= set(seen), seen
            low = {s: round(c, 2) for s, c in seen.items() if c < 4.5}
            assert not low, f"{theme}: contrast below 4.5:1 for {low}"
            PICTURES.mkdir(exist_ok=True)
            name = "timeline-dark.png" if theme.endswith("Dark") else "timeline-light.png"
            cells.nth(2).screenshot(path=str(PICTURES / name))
    finally:
        lab.stop()

"""Real Jupyter kernels (jupyter_client): SIGKILL and restart, interrupts, two kernels at once."""

from __future__ import annotations

import html
import os
import queue
import re
import signal
import time

import pytest
from jupyter_client import KernelManager

import durablenb as dnb

from .conftest import Effects


class Kernel:
    """One IPython kernel process; `run` executes a cell and collects what it shows."""

    def __init__(self, env: dict[str, str]) -> None:
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(env=env)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def send(self, code: str) -> str:
        return self.kc.execute(code)

    def collect(self, msg_id: str, timeout: float = 120) -> dict:
        out = {"stdout": "", "stderr": "", "errors": [], "results": [], "status": None, "html": ""}
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"cell did not finish: {out}")
            try:
                msg = self.kc.get_iopub_msg(timeout=remaining)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out[content["name"]] += content["text"]
            elif kind == "error":
                out["errors"].append(content)
            elif kind == "execute_result":
                out["results"].append(content["data"].get("text/plain"))
            elif kind == "display_data":
                out.setdefault("displays", []).append(sorted(content["data"]))
                out["html"] += content["data"].get("text/html", "")
            elif kind == "update_display_data":  # a timeline's final copy
                out["html"] += content["data"].get("text/html", "")
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def run(self, code: str, timeout: float = 120) -> dict:
        return self.collect(self.send(code), timeout)

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        for _ in range(100):
            if not self.km.is_alive():
                break
            time.sleep(0.05)
        self.close()

    def close(self) -> None:
        """Stop the kernel if alive, and close every socket of this manager's own context: a
        socket left open (a dead kernel's control socket) makes the context's collection
        wait forever, in whichever later test the garbage collector runs it."""
        self.kc.stop_channels()
        if self.km.is_alive():
            self.km.shutdown_kernel(now=True)
        else:
            self.km.cleanup_resources()
        self.km.context.destroy(linger=0)


@pytest.fixture
def kernels(schema, effects: Effects):
    started: list[Kernel] = []

    def start(notebook: str | None = None) -> Kernel:
        """A kernel; with *notebook*, started for that notebook (as JupyterLab does)."""
        env = dict(os.environ)
        env["EFFECTS_DIR"] = str(effects.root)
        if notebook:
            env["JPY_SESSION_NAME"] = notebook
        k = Kernel(env)
        started.append(k)
        return k

    yield start
    for k in started:
        try:
            k.close()
        except Exception:
            pass


SETUP = r"""
%load_ext durablenb
import os, time
from pathlib import Path
import durablenb as dnb
EFFECTS = Path(os.environ["EFFECTS_DIR"])

def hit(name):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write(f"{os.getpid()}\n"); f.flush(); os.fsync(f.fileno())

def wait_for(name, timeout=120):
    t = time.monotonic()
    while not (EFFECTS / name).exists():
        if time.monotonic() - t > timeout:
            raise TimeoutError(name)
        time.sleep(0.05)

@dnb.step
def stage(i, acc):
    hit(f"stage{i}")
    if i == 2:
        wait_for("release")        # the first kernel dies here
    return acc + i * i

@dnb.workflow
def six_steps(n):
    acc = 0
    for i in range(n):
        acc = stage(i, acc)
    return acc
"""


def _wait(effects: Effects, name: str, timeout: float = 60) -> None:
    t = time.monotonic()
    while effects.count(name) < 1:
        assert time.monotonic() - t < timeout, f"{name} never happened"
        time.sleep(0.05)


def _no_traceback(out: dict) -> None:
    assert out["errors"] == [], out["errors"]
    assert "Traceback" not in out["stderr"] and "Traceback" not in out["stdout"]


def test_sigkill_after_step_two_then_rerun_in_a_new_kernel(kernels, effects):
    k1 = kernels()
    _no_traceback(k1.run(SETUP))
    k1.send("result = six_steps(6)")
    _wait(effects, "stage2")  # steps 0 and 1 are recorded, step 2 is running
    k1.kill()

    k2 = kernels()
    setup = k2.run(SETUP)
    _no_traceback(setup)
    assert "1 workflow left unfinished" in setup["stdout"]
    assert "six_steps" in setup["stdout"]
    (effects.root / "release").write_text("go")
    out = k2.run("result = six_steps(6)\nprint('result', result)")
    _no_traceback(out)
    assert "result 55" in out["stdout"]
    # Steps 0-1 ran once; step 2 started in the killed kernel and ran again; 3-5 once.
    assert [effects.count(f"stage{i}") for i in range(6)] == [1, 1, 2, 1, 1, 1]
    wf = dnb.workflows()
    assert wf.loc[0, "status"] == "succeeded" and wf.loc[0, "runs"] == 2


CELL = r"""%%durable --id flights-report
import pandas as pd
frame = load_frame(5)
summary = summarise(frame)
n_rows = len(frame)
"""

CELL_SETUP = r"""
%load_ext durablenb
import os
import re
from pathlib import Path
import pandas as pd
import durablenb as dnb
EFFECTS = Path(os.environ["EFFECTS_DIR"])

def hit(name):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write("x\n"); f.flush(); os.fsync(f.fileno())

@dnb.step
def load_frame(n):
    hit("load_frame")
    return pd.DataFrame({"carrier": list("ABCAB")[:n], "delay": [1.5, 2.0, 3.0, 4.5, 0.5][:n]})

@dnb.step
def summarise(df):
    hit("summarise")
    return df.groupby("carrier").delay.mean().to_dict()
"""


def test_durable_cell_restores_its_variables_after_sigkill(kernels, effects):
    k1 = kernels()
    _no_traceback(k1.run(CELL_SETUP))
    _no_traceback(k1.run(CELL))
    assert effects.count("load_frame") == 1 and effects.count("summarise") == 1
    k1.kill()

    k2 = kernels()
    _no_traceback(k2.run(CELL_SETUP))
    out = k2.run(CELL)
    _no_traceback(out)
    assert "restored frame, summary, n_rows" in out["stdout"]
    check = k2.run("print(type(frame).__name__, frame.shape, summary, n_rows, pd.__name__)")
    _no_traceback(check)
    assert "DataFrame (5, 2) {'A': 3.0, 'B': 1.25, 'C': 3.0} 5 pandas" in check["stdout"]
    assert effects.count("load_frame") == 1 and effects.count("summarise") == 1


def test_two_kernels_on_one_workflow_never_run_a_step_twice(kernels, effects):
    a, b = kernels(), kernels()
    _no_traceback(a.run(SETUP))
    _no_traceback(b.run(SETUP))
    msg_a = a.send("result = six_steps(6)")
    _wait(effects, "stage2")
    out_b = b.run("result = six_steps(6)")
    assert [e["ename"] for e in out_b["errors"]] == ["WorkflowBusyError"]
    assert "is running" in out_b["errors"][0]["evalue"]
    (effects.root / "release").write_text("go")
    _no_traceback(a.collect(msg_a))
    out_b = b.run("print(six_steps(6))")  # finished now: the recorded result, nothing runs
    _no_traceback(out_b)
    assert out_b["stdout"].strip() == "55"
    assert [effects.count(f"stage{i}") for i in range(6)] == [1] * 6


def test_interrupt_mid_step_leaves_the_workflow_resumable(kernels, effects):
    k = kernels()
    _no_traceback(k.run(SETUP))
    msg = k.send("result = six_steps(6)")
    _wait(effects, "stage2")
    k.km.interrupt_kernel()
    out = k.collect(msg)
    assert [e["ename"] for e in out["errors"]] == ["KeyboardInterrupt"]
    wf = dnb.workflows()
    assert wf.loc[0, "status"] == "interrupted"
    (effects.root / "release").write_text("go")
    out = k.run("print(six_steps(6))")
    _no_traceback(out)
    assert out["stdout"].strip() == "55"
    assert [effects.count(f"stage{i}") for i in range(6)] == [1, 1, 2, 1, 1, 1]


def test_kernels_import_this_checkout(kernels):
    out = kernels().run("import durablenb; print(durablenb.__file__)")
    _no_traceback(out)
    assert out["stdout"].strip() == dnb.__file__


RETRY = r"""
%load_ext durablenb
import os
import re
from pathlib import Path
import durablenb as dnb
EFFECTS = Path(os.environ["EFFECTS_DIR"])

def hit(name):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write("x\n"); f.flush(); os.fsync(f.fileno())

@dnb.step
def prepare():
    hit("prepare")
    return str(EFFECTS / "flights.csv")

@dnb.step
def load(path):
    hit("load")
    return open(path).read().strip().split(",")

@dnb.workflow
def analysis():
    return len(load(prepare()))
"""


def test_a_failed_workflow_is_retried_after_the_fix_in_a_new_kernel(kernels, effects):
    k1 = kernels()
    _no_traceback(k1.run(RETRY))
    out = k1.run("analysis()")
    assert out["errors"] and out["errors"][0]["ename"] == "FileNotFoundError"
    k1.close()  # restart the kernel, then fix the cause

    (effects.root / "flights.csv").write_text("JFK,LGA,EWR")
    k2 = kernels()
    _no_traceback(k2.run(RETRY))
    out = k2.run("print('airports', analysis())")
    assert out["errors"] == [], out["errors"]
    assert "airports 3" in out["stdout"]
    shown = out["stdout"] + out["stderr"] + html.unescape(out["html"])
    assert "retrying from step 'load' (it failed with FileNotFoundError)" in shown, shown
    # The note shows in the workflow's timeline, not as a warning printed under it.
    assert "retrying from step" not in out["stderr"]
    assert (effects.count("prepare"), effects.count("load")) == (1, 2)


def test_a_replayed_error_shows_the_line_that_failed_in_a_new_kernel(kernels, effects):
    cell = RETRY.replace("@dnb.workflow\n", "@dnb.workflow(on_failure='replay')\n")
    k1 = kernels()
    _no_traceback(k1.run(cell))
    assert k1.run("analysis()")["errors"]
    k1.close()

    k2 = kernels()
    _no_traceback(k2.run(cell))
    out = k2.run("analysis()")
    assert effects.count("load") == 1  # replayed, not run
    (error,) = out["errors"]
    assert error["ename"] == "FileNotFoundError"
    text = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(error["traceback"]))
    assert "re-raised from the record of workflow" in text and "When it ran:" in text, text
    assert "return open(path).read().strip().split(\",\")" in text, text  # the original line
    assert "durablenb/engine" not in text, text


NOTEBOOK = r"""
%load_ext durablenb
import os
from pathlib import Path
import durablenb as dnb
EFFECTS = Path(os.environ["EFFECTS_DIR"])
WHO = os.environ["JPY_SESSION_NAME"].rsplit("/", 1)[-1]

def hit(name):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write("x\n"); f.flush(); os.fsync(f.fileno())

@dnb.step
def price(book):
    hit(f"price-{book}")
    return book

@dnb.workflow
def pricing():
    return price(WHO)
"""


def test_two_notebooks_calling_the_same_workflow_stay_apart(kernels, effects):
    a, b = "/home/ann/q3/pricing.ipynb", "/home/ann/q4/pricing.ipynb"
    ka, kb = kernels(a), kernels(b)
    for k in (ka, kb):
        _no_traceback(k.run(NOTEBOOK))
    assert "'pricing.ipynb'" in ka.run("pricing()")["results"][0]
    assert "'pricing.ipynb'" in kb.run("pricing()")["results"][0]
    ida = ka.run("print(pricing.id_for())")["stdout"].strip()
    idb = kb.run("print(pricing.id_for())")["stdout"].strip()
    assert ida != idb and ida.startswith("pricing:") and idb.startswith("pricing:")
    assert effects.count("price-pricing.ipynb") == 2  # each notebook ran its own
    listed = ka.run("%durable list")["results"][0]
    assert ida in listed and idb not in listed  # this notebook's workflows
    everyone = ka.run("%durable list --all")["results"][0]
    assert ida in everyone and idb in everyone and "q4/pricing.ipynb" in everyone
    ka.close()

    again = kernels(a)  # the same notebook after a restart finds its own run
    _no_traceback(again.run(NOTEBOOK))
    assert again.run("print(pricing.id_for())")["stdout"].strip() == ida
    again.run("pricing()")
    assert effects.count("price-pricing.ipynb") == 2  # replayed
    frame = dnb.workflows()
    assert set(frame["notebook"]) == {a, b}


ASYNC_SETUP = r"""
%load_ext durablenb
import asyncio, os, time
from pathlib import Path
import durablenb as dnb
EFFECTS = Path(os.environ["EFFECTS_DIR"])

def hit(name):
    with open(EFFECTS / f"{name}.log", "a") as f:
        f.write(f"{os.getpid()}\n"); f.flush(); os.fsync(f.fileno())

@dnb.step
async def ask(i):
    hit(f"ask{i}")
    while i == 2 and not (EFFECTS / "release").exists():  # the first kernel dies here
        await asyncio.sleep(0.05)
    return i * 10

@dnb.workflow
async def survey():
    first = await ask(0)
    rest = await asyncio.gather(ask(1), ask(2), ask(3))
    return [first, *rest]
"""


def test_an_async_workflow_killed_mid_run_resumes_with_top_level_await(kernels, effects):
    k1 = kernels()
    _no_traceback(k1.run(ASYNC_SETUP))
    k1.send("answers = await survey()")  # Jupyter's top-level await
    _wait(effects, "ask2")
    k1.kill()

    (effects.root / "release").write_text("go")
    k2 = kernels()
    _no_traceback(k2.run(ASYNC_SETUP))
    out = k2.run("answers = await survey()\nprint('answers', answers)")
    _no_traceback(out)
    assert "answers [0, 10, 20, 30]" in out["stdout"]
    # ask(0) and the finished gathered steps replayed; only ask(2), cut off, ran again.
    counts = [effects.count(f"ask{i}") for i in range(4)]
    assert counts[0] == 1 and counts[2] == 2 and counts[1] == 1, counts

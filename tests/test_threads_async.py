"""Positions are taken only where they are deterministic: steps from threads the workflow did
not create through `dnb.map` are refused; nesting is deep; async def workflows and steps
resume like the others. Child processes; effects counted in files."""

from __future__ import annotations

import json

FOREIGN_THREADS = """
import contextvars, threading
from concurrent.futures import ThreadPoolExecutor

@dnb.step
def fetch(i):
    hit("fetch", i)
    return i * 10

@dnb.workflow
def copied_context():
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(contextvars.copy_context().run, fetch, i) for i in range(4)]
        return [f.result() for f in futures]

@dnb.workflow
def plain_thread():
    errors = []
    def work():
        try:
            fetch(99)
        except dnb.DurableUsageError as exc:
            errors.append(str(exc))
    t = threading.Thread(target=work)
    t.start()
    t.join()
    if errors:
        raise dnb.DurableUsageError(errors[0])
    return "not refused"

@dnb.workflow
def mapped():
    return dnb.map(fetch, range(4), workers=2)

out = {}
for wf in (copied_context, plain_thread, mapped):
    try:
        out[wf.name] = wf()
    except dnb.DurableUsageError as exc:
        out[wf.name] = "refused: " + str(exc)
print(json.dumps(out))
"""


def test_steps_from_threads_the_workflow_did_not_create_are_refused(run_child, effects, sql, schema):
    out = run_child(FOREIGN_THREADS)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    assert got["copied_context"].startswith("refused: ") and "dnb.map" in got["copied_context"]
    assert got["plain_thread"].startswith("refused: ") and "would not be recorded" in got["plain_thread"]
    assert got["mapped"] == [0, 10, 20, 30]
    assert effects.count("fetch") == 4  # only the mapped ones ran
    status = dict(sql.execute(f'SELECT name, status FROM "{schema}".workflows').fetchall())
    assert status["copied_context"] == "running" and status["plain_thread"] == "running"


NESTED = """
DEPTH = 50

@dnb.step
def leaf(d):
    hit("leaf", d)
    if d == 30:
        crash_once("deep")
    return d

@dnb.workflow
def level(d):
    here = leaf(d)
    return here + (level(d + 1) if d + 1 < DEPTH else 0)

with dnb.workflow_id("nested"):
    print(json.dumps(level(0)))
"""


def test_nested_workflows_fifty_deep_resume(run_child, effects, sql, schema):
    assert run_child(NESTED).returncode == 137
    assert effects.count("leaf") == 31
    out = run_child(NESTED)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == sum(range(50))
    assert effects.count("leaf") == 31 + 20  # leaf 30 (cut off by the kill) and the 19 below it
    rows = sql.execute(f'SELECT status, count(*) FROM "{schema}".workflows GROUP BY status').fetchall()
    assert rows == [("succeeded", 50)]


ASYNC = """
import asyncio

@dnb.step
async def fetch(i):
    hit("fetch", i)
    await asyncio.sleep(0.01)
    if i == 3:
        crash_once("fetch3")
    return i * i

@dnb.step
def plain(x):
    hit("plain")
    return x + 1

@dnb.workflow
async def child(n):
    return sum(await asyncio.gather(*(fetch(i) for i in range(n))))

@dnb.workflow
async def analysis():
    first = await fetch(1)
    together = await child(4)
    return plain(first + together)

async def main():
    with dnb.workflow_id("async-analysis"):
        return await analysis()

print(json.dumps(asyncio.run(main())))
"""


def test_async_workflows_and_steps_resume_without_rerunning_recorded_steps(run_child, effects, sql, schema):
    assert run_child(ASYNC).returncode == 137
    ran = effects.count("fetch")
    assert ran == 5  # fetch(1), then the child's four, cut off inside fetch(3)
    out = run_child(ASYNC)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout) == 1 + (0 + 1 + 4 + 9) + 1
    assert effects.count("fetch") == ran + 1  # only fetch(3), which had no record
    assert effects.count("plain") == 1
    statuses = dict(sql.execute(f'SELECT id, status FROM "{schema}".workflows').fetchall())
    assert statuses == {"async-analysis": "succeeded", "async-analysis/1": "succeeded"}

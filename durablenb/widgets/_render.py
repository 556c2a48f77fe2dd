"""Drawing timelines without a kernel: compact HTML (saved in notebooks, shown by nbconvert
and nbviewer) and plain text (terminals).

Steps of the same name collapse into one group row (count, states, total and median time,
progress of a running `dnb.map`); a group or a step opens with a click or Enter (HTML
``<details>``, so no script is needed) to show its members, its error and traceback, and
the line that loads its output. The live widget draws the same structure in the browser.
"""

from __future__ import annotations

import html
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from .._durations import format_seconds
from .._style import css

#: A row: position, name, kind, label, state, started, finished (epoch s, None while
#: running), attempts, output_bytes, codec, error_type, error_message, error_traceback.
Row = dict[str, Any]

#: Gaps longer than this (a crash, a restart) are drawn as a short break, not to scale.
GAP_SECONDS = 2.0
#: Members listed under a group in the static copy; failures are always listed (up to this).
STATIC_MEMBERS = 25
#: Characters of a traceback kept in the static copy.
STATIC_TRACEBACK = 3000

STANDIN = ("interrupted: the kernel stopped before this run finished — rerun the cell to "
           "resume")  # fmt: skip


def state_of(row: Row, status: str) -> str:
    """The state to show: a step cut off by its workflow's end reads like the workflow."""
    state = str(row.get("state") or "")
    if state == "running" and status in ("cancelled", "interrupted", "failed"):
        return "cancelled" if status == "cancelled" else "interrupted"
    return state


def duration(row: Row, now: float) -> float:
    start = row.get("started")
    return 0.0 if start is None else (row.get("finished") or now) - start


def display_name(row: Row) -> str:
    label = row.get("label")
    return f"{row['name']}[{label}]" if label else str(row["name"])


# -- time axis ------------------------------------------------------------------------------


@dataclass
class Axis:
    """Real time mapped to percent of the track, idle gaps squeezed to a short break."""

    start: float
    total: float
    cuts: list[tuple[float, float]] = field(default_factory=list)  # (gap end, seconds removed)

    def drawn(self, t: float) -> float:
        off = 0.0
        for at, removed in self.cuts:
            if t >= at:
                off = removed
        return t - self.start - off

    def pct(self, t: float) -> float:
        return max(0.0, min(100.0, self.drawn(t) / self.total * 100))

    def breaks(self) -> list[float]:
        return [self.pct(at) for at, _ in self.cuts]

    def ticks(self) -> list[tuple[float, str]]:
        """A few round marks of drawn time (seconds since the first step)."""
        step = next((s for s in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120,
                                 300, 600, 1800, 3600) if self.total / s <= 5), 7200.0)  # fmt: skip
        out, t = [], 0.0
        while t <= self.total * 1.0001:
            out.append((t / self.total * 100, _tick(t)))
            t += step
        return out


def _tick(t: float) -> str:
    if t == 0:
        return "0"
    if t < 1:
        return f"{t * 1000:.0f} ms"
    if t < 120:
        return f"{t:g} s"
    return f"{t / 60:g} min"


def axis(rows: list[Row], now: float) -> Axis | None:
    spans = sorted((r["started"], r.get("finished") or now) for r in rows if r.get("started") is not None)
    if not spans:
        return None
    ax = Axis(spans[0][0], 1.0)
    removed, reach = 0.0, spans[0][0]
    for start, end in spans:
        if start - reach > GAP_SECONDS:
            removed += (start - reach) - GAP_SECONDS / 4
            ax.cuts.append((start, removed))
        reach = max(reach, end)
    ax.total = max(ax.drawn(max(e for _, e in spans)), 1e-3)
    return ax


# -- groups and the summary -----------------------------------------------------------------


@dataclass
class Group:
    """The steps of one name (and kind), in position order."""

    name: str
    kind: str
    rows: list[Row]

    def state(self, status: str) -> str:
        states = {state_of(r, status) for r in self.rows}
        for s in ("running", "failed", "interrupted", "cancelled", "retried", "queued"):
            if s in states:
                return s
        return "replayed" if states == {"replayed"} else "succeeded"

    def counts(self, status: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.rows:
            s = state_of(r, status)
            out[s] = out.get(s, 0) + 1
        return out


def groups(rows: list[Row]) -> list[Group]:
    """*rows* grouped by step name and kind, groups in order of their first position."""
    out: dict[tuple[str, str], Group] = {}
    for r in sorted(rows, key=lambda r: r["position"]):
        key = (str(r["name"]), str(r.get("kind") or ""))
        if key not in out:
            out[key] = Group(key[0], key[1], [])
        out[key].rows.append(r)
    return list(out.values())


def summary(rows: list[Row], now: float, status: str = "") -> str:
    """``3 replayed (13.2 s saved) · 18 ran · 6.6 s``."""
    rows = [{**r, "state": state_of(r, status)} for r in rows]
    replayed = [r for r in rows if r.get("state") == "replayed"]
    ran = [r for r in rows if r.get("state") not in ("replayed", "running", "queued")]
    running = [r for r in rows if r.get("state") == "running"]
    parts = []
    if replayed:
        saved = sum(duration(r, now) for r in replayed)
        parts.append(f"{len(replayed)} replayed ({format_seconds(saved)} saved)")
    parts.append(f"{len(ran)} ran")
    if running:
        parts.append(f"{len(running)} running")
    mine = [r for r in ran + running if r.get("started") is not None]
    if mine:
        first = min(r["started"] for r in mine)
        last = max((r.get("finished") or now) for r in mine)
        parts.append(format_seconds(last - first))
    return " · ".join(parts)


def progress_text(done: int, total: int, rate: float | None) -> str:
    """``12 of 60 · 3.4 items/s · about 14 s left``."""
    text = f"{done} of {total}"
    if rate:
        text += f" · {rate:.3g} items/s"
        if done < total:
            text += f" · about {format_seconds((total - done) / rate)} left"
    return text


# -- HTML -----------------------------------------------------------------------------------


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _size(n: Any) -> str:
    if n is None:
        return ""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


Span = tuple[float | None, float | None, str]


def bars(ax: Axis, spans: list[Span], now: float) -> list[tuple[float, float, str]]:
    """(left %, width %, state) of *spans*; neighbours of one state less than half a percent
    apart are drawn as one bar, so a group of a thousand steps stays a few bars."""
    out: list[list[Any]] = []
    for start, end, state in sorted((s for s in spans if s[0] is not None), key=lambda s: s[0] or 0):
        left, right = ax.pct(start or 0), ax.pct(end or now)
        last = out[-1] if out else None
        if last is not None and last[2] == state and left <= last[1] + 0.5:
            last[1] = max(last[1], right)
        else:
            out.append([left, right, state])
    return [(left, max(right - left, 0.4), state) for left, right, state in out]


def _track(ax: Axis | None, spans: list[Span], now: float) -> str:
    if ax is None:
        return "<div class='dnb-track'></div>"
    marks = "".join(f"<div class='dnb-break' style='left:{b:.1f}%'></div>" for b in ax.breaks())
    drawn = "".join(f"<div class='dnb-bar' data-state='{state}' style='left:{left:.1f}%;"
                    f"width:{width:.1f}%'></div>" for left, width, state in bars(ax, spans, now))  # fmt: skip
    return f"<div class='dnb-track'>{marks}{drawn}</div>"


def _step_detail(workflow_id: str, r: Row, static: bool) -> str:
    parts = []
    if r.get("error_type"):
        message = _e(r.get("error_message") or "")
        parts.append(f"<div class='dnb-err'><b>{_e(r['error_type'])}</b>: {message}</div>")
        tb = r.get("error_traceback")
        if tb:
            tb = str(tb)
            if static and len(tb) > STATIC_TRACEBACK:
                tb = "…\n" + tb[-STATIC_TRACEBACK:]
            parts.append(f"<pre>{_e(tb)}</pre>")
    facts = []
    if (r.get("attempts") or 1) > 1:
        facts.append(f"{r['attempts']} attempts")
    if r.get("output_bytes") is not None:
        facts.append(f"output {_size(r['output_bytes'])} ({_e(r.get('codec') or '')})")
    if facts:
        parts.append(f"<div>{' · '.join(facts)}</div>")
    if r.get("state") not in ("running", "queued"):
        parts.append(f"<div>Load it: <code>dnb.output({_e(repr(workflow_id))}, {r['position']})</code></div>")
    return f"<div class='dnb-detail'>{''.join(parts)}</div>"


def _step_html(workflow_id: str, r: Row, ax: Axis | None, status: str, now: float, static: bool) -> str:
    state = state_of(r, status)
    cells = (f"<span class='dnb-pos'>{r['position']}</span>"
             f"<span class='dnb-name' title='{_e(display_name(r))}'>{_e(display_name(r))}</span>"
             + _track(ax, [(r.get("started"), r.get("finished"), state)], now)
             + f"<span class='dnb-state' data-state='{state}'>{state}</span>"
             f"<span class='dnb-dur'>{format_seconds(duration(r, now))}</span>"
             f"<span class='dnb-size'>{_size(r.get('output_bytes'))}</span>")  # fmt: skip
    detail = _step_detail(workflow_id, r, static)
    return (f"<details class='dnb-step' data-position='{r['position']}'>"
            f"<summary class='dnb-row'>{cells}</summary>{detail}</details>")  # fmt: skip


def _members(g: Group, status: str) -> tuple[list[Row], int]:
    """The members listed in the static copy, and how many are left out."""
    if len(g.rows) <= STATIC_MEMBERS:
        return g.rows, 0
    failed = [r for r in g.rows if state_of(r, status) in ("failed", "interrupted", "cancelled")]
    keep = failed[:STATIC_MEMBERS] or g.rows[:5] + g.rows[-5:]
    return keep, len(g.rows) - len(keep)


def _group_html(workflow_id: str, g: Group, ax: Axis | None, status: str, now: float,
                maps: dict[str, Any]) -> str:  # fmt: skip
    state = g.state(status)
    durs = [duration(r, now) for r in g.rows if r.get("started") is not None]
    sizes = [r["output_bytes"] for r in g.rows if r.get("output_bytes") is not None]
    first, last = g.rows[0]["position"], g.rows[-1]["position"]
    spans = [(r.get("started"), r.get("finished"), state_of(r, status)) for r in g.rows]
    counts = " · ".join(f"{n} {s}" for s, n in g.counts(status).items())
    stats = f"{counts} · median {format_seconds(statistics.median(durs))}" if durs else counts
    prog = maps.get(g.name)
    bar = ""
    if prog and prog.get("total"):
        done, total = int(prog["done"]), int(prog["total"])
        rate = prog.get("rate")
        bar = (f"<div class='dnb-progress' data-done='{done}' data-total='{total}' "
               f"data-rate='{rate or 0:.3f}'><div class='dnb-track'><div class='dnb-fill' "
               f"style='width:{done / total * 100:.1f}%'></div></div>"
               f"<span>{_e(progress_text(done, total, rate))}</span></div>")  # fmt: skip
    head = (f"<summary class='dnb-row'><span class='dnb-pos'>{first}–{last}</span>"
            f"<span class='dnb-name'>{_e(g.name)} ×{len(g.rows)}</span>"
            + _track(ax, spans, now)
            + f"<span class='dnb-state' data-state='{state}'>{state}</span>"
            f"<span class='dnb-dur'>{format_seconds(sum(durs))}</span>"
            f"<span class='dnb-size'>{_size(sum(sizes)) if sizes else ''}</span></summary>")  # fmt: skip
    shown, left = _members(g, status)
    members = "".join(_step_html(workflow_id, r, ax, status, now, True) for r in shown)
    if left:
        members += (f"<div class='dnb-more'>… {left} more: <code>dnb.steps({_e(repr(workflow_id))})"
                    "</code></div>")  # fmt: skip
    return (f"<details class='dnb-group' data-name='{_e(g.name)}'>{head}"
            f"<div class='dnb-stats dnb-more'>{_e(stats)}</div>{bar}"
            f"<div class='dnb-members'>{members}</div></details>")  # fmt: skip


def render_html(title: str, rows: list[Row], *, status: str = "", notes: list[str] | None = None,
                maps: dict[str, Any] | None = None, now: float | None = None,
                standin: bool = False, workflow_id: str | None = None) -> str:  # fmt: skip
    """The timeline of *rows* as self-contained HTML (no script).

    *standin*: the copy kept under a live widget, shown only if the widget cannot be (its
    kernel died): it says the run was interrupted.
    """
    now = time.time() if now is None else now
    workflow_id = workflow_id or title
    shown_status = "interrupted" if standin else status
    rows = sorted(rows, key=lambda r: r["position"])
    ax = axis(rows, now)
    status_text = STANDIN if standin else status
    head = f"<span class='dnb-title'>{_e(title)}</span>"
    if status_text:
        head += (f" · <span class='dnb-status' data-state='{_e(shown_status)}' "
                 f"data-workflow-status='{_e(shown_status)}'>{_e(status_text)}</span>")  # fmt: skip
    said = _e(summary(rows, now, shown_status)) if rows else "no steps"
    head += f" · <span class='dnb-summary'>{said}</span>"
    notes_html = "".join(f"<div class='dnb-note'>{_e(n)}</div>" for n in notes or [])
    body = []
    if ax is not None:
        ticks = "".join(f"<span style='left:{p:.1f}%'>{_e(t)}</span>" for p, t in ax.ticks())
        body.append("<div class='dnb-row dnb-axis'><span class='dnb-pos'>#</span><span>step</span>"
                    f"<div class='dnb-ticks'>{ticks}</div><span>state</span><span class='dnb-dur'>"
                    "time</span><span class='dnb-size'>output</span></div>")  # fmt: skip
    for g in groups(rows):
        if len(g.rows) == 1:
            body.append(_step_html(workflow_id, g.rows[0], ax, shown_status, now, True))
        else:
            body.append(_group_html(workflow_id, g, ax, shown_status, now, maps or {}))
    kind = "durablenb-static durablenb-standin" if standin else "durablenb-static"
    return (f"<div class='durablenb-tl durablenb-timeline {kind}'><style>{css()}</style>"
            f"<div class='dnb-head'>{head}</div>{notes_html}"
            f"<div class='dnb-body'>{''.join(body)}</div></div>")  # fmt: skip


# -- text -------------------------------------------------------------------------------------


def render_text(title: str, rows: list[Row], *, status: str = "", width: int = 40,
                group_over: int = 5) -> str:  # fmt: skip
    """The timeline of *rows* as plain text, for terminals; steps of a name that ran more
    than *group_over* times are one line."""
    now = time.time()
    rows = sorted(rows, key=lambda r: r["position"])
    head = f"{title}" + (f" — {status}" if status else "") + f" — {len(rows)} steps"
    if rows:
        head += f" — {summary(rows, now, status)}"
    ax = axis(rows, now)
    if ax is None:
        return head
    out = [head]
    marks = {"failed": "x", "replayed": "=", "running": ">"}
    for g in groups(rows):
        members = [g.rows] if len(g.rows) > group_over else [[r] for r in g.rows]
        for part in members:
            first, last = part[0], part[-1]
            starts = [r["started"] for r in part if r.get("started") is not None]
            a = min(int(ax.pct(min(starts)) / 100 * width), width - 1) if starts else 0
            end = max((r.get("finished") or now) for r in part)
            b = max(a + 1, min(int(ax.pct(end) / 100 * width), width)) if starts else a + 1
            state = g.state(status) if len(part) > 1 else state_of(first, status)
            pos = str(first["position"]) if len(part) == 1 else f"{first['position']}-{last['position']}"
            name = display_name(first) if len(part) == 1 else f"{g.name} x{len(part)}"
            took = sum(duration(r, now) for r in part)
            out.append(f"{pos:>9} {name[:24]:<24} |{' ' * a}{marks.get(state, '#') * (b - a):<{width - a}}|"
                       f" {format_seconds(took):>8} {state}")  # fmt: skip
    return "\n".join(out)

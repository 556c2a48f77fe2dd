// The live timeline of a workflow, drawn in the browser (an anywidget ES module).
//
// The kernel sends changed steps only ({kind: "rows"}), plus small synced traits (status,
// notes, map progress); the view keeps every step here and redraws at most once a frame.
// Elapsed times tick here while the workflow runs. Steps of one name collapse into a group;
// a click or Enter opens a group or a step (its error, traceback and the line that loads
// its output, asked of the kernel when first opened).

const GAP_SECONDS = 2.0;
// Seconds without a word from a running workflow's kernel after which it may have died.
const SILENCE = 8;
const MEMBERS = 300;
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => (
  { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

function seconds(s) {
  if (s == null || isNaN(s)) return "";
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(1)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function size(n) {
  if (n == null) return "";
  for (const unit of ["B", "KB", "MB", "GB"]) {
    if (n < 1024 || unit === "GB") return unit === "B" ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${unit}`;
    n /= 1024;
  }
  return "";
}

function stateOf(r, status) {
  if (r.s === "running" && ["cancelled", "interrupted", "failed"].includes(status)) {
    return status === "cancelled" ? "cancelled" : "interrupted";
  }
  return r.s;
}

const dur = (r, now) => (r.t0 == null ? 0 : (r.t1 ?? now) - r.t0);
const label = (r) => (r.l ? `${r.n}[${r.l}]` : r.n);

function makeAxis(rows, now) {
  const spans = rows.filter((r) => r.t0 != null).map((r) => [r.t0, r.t1 ?? now]).sort((a, b) => a[0] - b[0]);
  if (!spans.length) return null;
  const start = spans[0][0];
  const cuts = [];
  let removed = 0, reach = start, end = start;
  for (const [s, e] of spans) {
    if (s - reach > GAP_SECONDS) { removed += (s - reach) - GAP_SECONDS / 4; cuts.push([s, removed]); }
    reach = Math.max(reach, e);
    end = Math.max(end, e);
  }
  const drawn = (t) => { let off = 0; for (const [at, rem] of cuts) if (t >= at) off = rem; return t - start - off; };
  const total = Math.max(drawn(end), 1e-3);
  const pct = (t) => Math.max(0, Math.min(100, (drawn(t) / total) * 100));
  const steps = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];
  const step = steps.find((s) => total / s <= 5) ?? 7200;
  const ticks = [];
  for (let t = 0; t <= total * 1.0001; t += step) {
    ticks.push([(t / total) * 100, t === 0 ? "0" : t < 1 ? `${(t * 1000).toFixed(0)} ms` : t < 120 ? `${+t.toFixed(2)} s` : `${+(t / 60).toFixed(2)} min`]);
  }
  return { pct, breaks: cuts.map(([at]) => pct(at)), ticks };
}

function groupsOf(rows) {
  const out = new Map();
  for (const r of rows) {
    const key = `${r.n}\u0000${r.k}`;
    if (!out.has(key)) out.set(key, { name: r.n, key, rows: [] });
    out.get(key).rows.push(r);
  }
  return [...out.values()];
}

function groupState(g, status) {
  const states = new Set(g.rows.map((r) => stateOf(r, status)));
  for (const s of ["running", "failed", "interrupted", "cancelled", "retried", "queued"]) if (states.has(s)) return s;
  return states.size === 1 && states.has("replayed") ? "replayed" : "succeeded";
}

function summary(rows, now, status) {
  rows = rows.map((r) => ({ ...r, s: stateOf(r, status) }));
  const replayed = rows.filter((r) => r.s === "replayed");
  const ran = rows.filter((r) => !["replayed", "running", "queued"].includes(r.s));
  const running = rows.filter((r) => r.s === "running");
  const parts = [];
  if (replayed.length) parts.push(`${replayed.length} replayed (${seconds(replayed.reduce((a, r) => a + dur(r, now), 0))} saved)`);
  parts.push(`${ran.length} ran`);
  if (running.length) parts.push(`${running.length} running`);
  const mine = ran.concat(running).filter((r) => r.t0 != null);
  if (mine.length) {
    const first = Math.min(...mine.map((r) => r.t0));
    const last = Math.max(...mine.map((r) => r.t1 ?? now));
    parts.push(seconds(last - first));
  }
  return parts.join(" · ");
}

function median(xs) {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

// (left %, width %, state) of spans; neighbours of one state less than half a percent apart
// are drawn as one bar, so a group of a thousand steps stays a few bars.
function bars(ax, spans, now) {
  const out = [];
  for (const [t0, t1, st] of spans.filter((s) => s[0] != null).sort((a, b) => a[0] - b[0])) {
    const left = ax.pct(t0), right = ax.pct(t1 ?? now);
    const last = out[out.length - 1];
    if (last && last[2] === st && left <= last[1] + 0.5) last[1] = Math.max(last[1], right);
    else out.push([left, right, st]);
  }
  return out.map(([l, r, st]) => [l, Math.max(r - l, 0.4), st]);
}

function track(ax, spans, now) {
  if (!ax) return "<div class='dnb-track'></div>";
  let html = "<div class='dnb-track'>";
  for (const b of ax.breaks) html += `<div class='dnb-break' style='left:${b.toFixed(1)}%'></div>`;
  for (const [left, width, st] of bars(ax, spans, now)) {
    html += `<div class='dnb-bar' data-state='${st}' style='left:${left.toFixed(1)}%;width:${width.toFixed(1)}%'></div>`;
  }
  return html + "</div>";
}

export default {
  render({ model, el }) {
    const rows = new Map();
    const details = new Map();
    const open = new Set();
    let pending = false;
    let heard = Date.now();

    el.classList.add("durablenb-tl", "durablenb-timeline", "durablenb-live");
    el.setAttribute("role", "region");
    el.innerHTML = "<div class='dnb-head'></div><div class='dnb-notes'></div><div class='dnb-body' role='tree'></div>";
    const head = el.querySelector(".dnb-head");
    const notesEl = el.querySelector(".dnb-notes");
    const body = el.querySelector(".dnb-body");

    const schedule = () => {
      if (!pending) { pending = true; requestAnimationFrame(draw); }
    };

    function stepDetail(r) {
      const d = details.get(r.p);
      if (!d) return "<div class='dnb-detail'>loading…</div>";
      let html = "";
      if (d.error_type) {
        html += `<div class='dnb-err'><b>${esc(d.error_type)}</b>: ${esc(d.error_message)}</div>`;
        if (d.traceback) html += `<pre>${esc(d.traceback)}</pre>`;
      }
      const facts = [];
      if ((r.a ?? 1) > 1) facts.push(`${r.a} attempts`);
      if (r.b != null) facts.push(`output ${size(r.b)}${d.codec ? ` (${esc(d.codec)})` : ""}`);
      if (facts.length) html += `<div>${facts.join(" · ")}</div>`;
      if (d.load) html += `<div>Load it: <code>${esc(d.load)}</code></div>`;
      return `<div class='dnb-detail'>${html}</div>`;
    }

    function stepHtml(r, ax, status, now) {
      const st = stateOf(r, status);
      const key = `s${r.p}`;
      const isOpen = open.has(key);
      return `<div class='dnb-step'${isOpen ? " open" : ""} data-position='${r.p}'>` +
        `<div class='dnb-row' role='treeitem' tabindex='0' aria-expanded='${isOpen}' data-key='${key}'>` +
        `<span class='dnb-pos'>${r.p}</span><span class='dnb-name' title='${esc(label(r))}'>${esc(label(r))}</span>` +
        track(ax, [[r.t0, r.t1, st]], now) +
        `<span class='dnb-state' data-state='${st}'>${st}</span>` +
        `<span class='dnb-dur'>${seconds(dur(r, now))}</span><span class='dnb-size'>${size(r.b)}</span></div>` +
        (isOpen ? stepDetail(r) : "") + "</div>";
    }

    function progressHtml(g) {
      const m = (model.get("maps") || {})[g.name];
      if (!m || !m.total) return "";
      const elapsed = (m.last ?? 0) - (m.first ?? 0);
      const rate = m.done > 1 && elapsed > 0 ? (m.done - 1) / elapsed : null;
      let text = `${m.done} of ${m.total}`;
      if (rate) {
        text += ` · ${rate.toPrecision(3)} items/s`;
        if (m.done < m.total) text += ` · about ${seconds((m.total - m.done) / rate)} left`;
      }
      return `<div class='dnb-progress' data-done='${m.done}' data-total='${m.total}' data-rate='${(rate ?? 0).toFixed(3)}'>` +
        `<div class='dnb-track'><div class='dnb-fill' style='width:${((m.done / m.total) * 100).toFixed(1)}%'></div></div>` +
        `<span>${text}</span></div>`;
    }

    function groupHtml(g, ax, status, now) {
      const st = groupState(g, status);
      const key = `g${g.key}`;
      const isOpen = open.has(key);
      const durs = g.rows.filter((r) => r.t0 != null).map((r) => dur(r, now));
      const sizes = g.rows.filter((r) => r.b != null).map((r) => r.b);
      const counts = {};
      for (const r of g.rows) { const s = stateOf(r, status); counts[s] = (counts[s] || 0) + 1; }
      let stats = Object.entries(counts).map(([s, n]) => `${n} ${s}`).join(" · ");
      if (durs.length) stats += ` · median ${seconds(median(durs))}`;
      let html = `<div class='dnb-group'${isOpen ? " open" : ""} data-name='${esc(g.name)}'>` +
        `<div class='dnb-row' role='treeitem' tabindex='0' aria-expanded='${isOpen}' data-key='${esc(key)}'>` +
        `<span class='dnb-pos'>${g.rows[0].p}–${g.rows[g.rows.length - 1].p}</span>` +
        `<span class='dnb-name'>${esc(g.name)} ×${g.rows.length}</span>` +
        track(ax, g.rows.map((r) => [r.t0, r.t1, stateOf(r, status)]), now) +
        `<span class='dnb-state' data-state='${st}'>${st}</span>` +
        `<span class='dnb-dur'>${seconds(durs.reduce((a, b) => a + b, 0))}</span>` +
        `<span class='dnb-size'>${sizes.length ? size(sizes.reduce((a, b) => a + b, 0)) : ""}</span></div>` +
        `<div class='dnb-stats dnb-more'>${esc(stats)}</div>` + progressHtml(g);
      if (isOpen) {
        html += "<div class='dnb-members'>";
        const shown = g.rows.length > MEMBERS ? g.rows.slice(-MEMBERS) : g.rows;
        if (shown.length < g.rows.length) html += `<div class='dnb-more'>… ${g.rows.length - shown.length} earlier: dnb.steps('${esc(model.get("workflow_id"))}')</div>`;
        for (const r of shown) html += stepHtml(r, ax, status, now);
        html += "</div>";
      }
      return html + "</div>";
    }

    function draw() {
      pending = false;
      const now = Date.now() / 1000;
      const silent = (Date.now() - heard) / 1000;
      const gone = model.get("status") === "running" && silent > SILENCE;
      const status = gone ? "interrupted" : model.get("status");
      const all = [...rows.values()].sort((a, b) => a.p - b.p);
      const ax = makeAxis(all, now);
      head.innerHTML = `<span class='dnb-title'>${esc(model.get("title"))}</span>` +
        (status ? ` · <span class='dnb-status' data-state='${esc(status)}' data-workflow-status='${esc(status)}'>${gone ?
          `no word from the kernel for ${silent.toFixed(0)} s: if it died, rerun the cell to resume` : esc(status)}</span>` : "") +
        ` · <span class='dnb-summary'>${all.length ? esc(summary(all, now, status)) : "no steps yet"}</span>`;
      notesEl.innerHTML = (model.get("notes") || []).map((n) => `<div class='dnb-note'>${esc(n)}</div>`).join("");
      const focused = el.contains(document.activeElement) ? document.activeElement.getAttribute("data-key") : null;
      let html = "";
      if (ax) {
        html += "<div class='dnb-row dnb-axis'><span class='dnb-pos'>#</span><span>step</span><div class='dnb-ticks'>" +
          ax.ticks.map(([p, t]) => `<span style='left:${p.toFixed(1)}%'>${t}</span>`).join("") +
          "</div><span>state</span><span class='dnb-dur'>time</span><span class='dnb-size'>output</span></div>";
      }
      for (const g of groupsOf(all)) html += g.rows.length === 1 ? stepHtml(g.rows[0], ax, status, now) : groupHtml(g, ax, status, now);
      body.innerHTML = html;
      if (focused) body.querySelector(`[data-key="${CSS.escape(focused)}"]`)?.focus();
    }

    function toggle(row) {
      const key = row.getAttribute("data-key");
      if (!key) return;
      if (open.has(key)) open.delete(key);
      else {
        open.add(key);
        if (key[0] === "s" && !details.has(+key.slice(1))) model.send({ kind: "detail", p: +key.slice(1) });
      }
      draw();
    }
    el.addEventListener("click", (ev) => {
      const row = ev.target.closest(".dnb-row[data-key]");
      if (row && !ev.target.closest(".dnb-detail")) toggle(row);
    });
    el.addEventListener("keydown", (ev) => {
      const row = ev.target.closest(".dnb-row[data-key]");
      if (row && (ev.key === "Enter" || ev.key === " ")) { ev.preventDefault(); toggle(row); }
    });

    const onMsg = (msg) => {
      heard = Date.now();
      if (msg.kind === "rows") { for (const r of msg.rows) rows.set(r.p, r); schedule(); }
      else if (msg.kind === "detail") { details.set(msg.p, msg); schedule(); }
      else if (msg.kind === "reset") { rows.clear(); details.clear(); schedule(); }
    };
    model.on("msg:custom", onMsg);
    const changed = () => { heard = Date.now(); schedule(); };
    for (const name of ["status", "notes", "maps", "title"]) model.on(`change:${name}`, changed);
    // Steps already sent before this view existed (a reload, a second view): ask for all.
    model.send({ kind: "sync" });
    const ticker = setInterval(() => { if (model.get("status") === "running") schedule(); }, 1000);
    schedule();
    return () => {
      clearInterval(ticker);
      model.off("msg:custom", onMsg);
    };
  },
};

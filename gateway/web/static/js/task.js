// One task: status, error (per attempt) and result up top; attempts with their durations;
// timeline; input payload; logs; destinations; the raw record. Updated in place from the
// task's event stream (GET /v1/tasks/{id}/events): only the parts that show the record are
// redrawn, so the reader's scroll position (page and panes) stays where it was.
"use strict";
import { api, request, streamEvents } from "./api.js";
import { PHASE_COLORS, TERMINAL, badge, between, duration, el, pretty, sourceText, taskLink, when } from "./dom.js";

// Each run of the task, from its timeline: a run starts at Running and ends at the next entry.
export function attempts(record) {
  const timeline = record.timeline || [];
  const failures = [...(record.errors || [])];
  const runs = [];
  timeline.forEach((entry, i) => {
    if (entry.status !== "Running") return;
    const end = timeline[i + 1];
    const outcome = end ? (end.status === "Stopping" ? "Stopped" : end.status) : "Running";
    const failed = ["Retrying", "Failed", "Expired"].includes(outcome) && failures.length ? failures.shift() : null;
    runs.push({ number: runs.length + 1, start: entry.at, end: end ? end.at : null, outcome, error: failed });
  });
  return runs;
}

function phases(record) {
  const timeline = record.timeline || [];
  const end = record.finished_at ? new Date(record.finished_at) : new Date();
  return timeline.map((entry, i) => {
    const stop = i + 1 < timeline.length ? new Date(timeline[i + 1].at) : end;
    return { status: entry.status, at: entry.at, ms: Math.max(0, stop - new Date(entry.at)) };
  });
}

function outcomeView(record) {
  const parts = [];
  if (record.error) {
    parts.push(el("div", { class: "panel error", id: "task-error" },
      el("div", { class: "type" }, record.error.type, record.condition && record.condition !== record.error.type
        ? el("span", { class: "muted" }, ` · ${record.condition}`) : null),
      el("div", { class: "message" }, record.error.message)));
  }
  if (record.status === "Succeeded") {
    const text = typeof record.result === "string" ? record.result : JSON.stringify(record.result, null, 2);
    parts.push(el("div", { class: "panel result", id: "task-result" }, el("div", { class: "muted" }, "result"),
      el("pre", {}, text === undefined ? "null" : text)));
  }
  return parts;
}

function attemptsView(record) {
  const runs = attempts(record);
  if (!runs.length) return el("div", { class: "muted" }, "not run yet");
  return el("table", { id: "attempts" },
    el("thead", {}, el("tr", {}, ["attempt", "started", "duration", "outcome", "error"].map((h) =>
      el("th", { class: h === "duration" || h === "attempt" ? "num" : "" }, h)))),
    el("tbody", {}, runs.map((run) => el("tr", { "data-attempt": run.number },
      el("td", { class: "num" }, run.number), el("td", { class: "time" }, when(run.start)),
      el("td", { class: "num", "data-duration": Math.round(between(run.start, run.end)) }, duration(between(run.start, run.end))),
      el("td", {}, badge(run.outcome)),
      el("td", { class: "attempt-error" }, run.error ? `${run.error.type}: ${run.error.message}` : "")))));
}

function timelineView(record) {
  const list = phases(record);
  const total = Math.max(1, list.reduce((sum, p) => sum + p.ms, 0));
  return list.map((p) => el("div", { class: "phase", "data-phase": p.status },
    badge(p.status),
    el("div", {}, el("div", { class: "bar", style: `width:${Math.max(0.5, (100 * p.ms) / total)}%;background:${PHASE_COLORS[p.status] || "#999"}` })),
    el("div", { class: "muted time" }, when(p.at)),
    el("div", { class: "num muted" }, duration(p.ms))));
}

function destinationsView(record) {
  const rows = (record.destinations || []).map((d) => el("tr", {},
    el("td", {}, d.on), el("td", {}, d.type), el("td", {}, d.target), el("td", {}, d.status),
    el("td", { class: "num" }, d.attempts), el("td", {}, d.error || "")));
  return rows.length ? el("table", {}, el("thead", {}, el("tr", {}, ["on", "type", "target", "status", "attempts", "error"]
    .map((h) => el("th", {}, h)))), el("tbody", {}, rows)) : el("div", { class: "muted" }, "none");
}

export function mount(view, params, ctx, id) {
  const path = "/v1/tasks/" + encodeURIComponent(id);
  const title = el("h2", { id: "task-title" }, "Task ", el("code", {}, id), " ", el("span", { id: "task-status" }));
  const meta = el("div", { class: "muted", id: "task-meta" });
  const outcome = el("div", { id: "task-outcome" });
  const runs = el("div", { id: "task-attempts" });
  const timeline = el("div", { class: "panel", id: "timeline" });
  const payload = el("pre", { id: "payload" }, "loading…");
  const logs = el("pre", { id: "logs" }, "loading…");
  const destinations = el("div", { id: "destinations" });
  const raw = el("pre", { id: "record" });
  let latest = null;

  const stop = el("button", { class: "danger", id: "stop", disabled: true, onclick: async () => {
    stop.disabled = true;
    try { await api(path + "/stop", { method: "POST" }); ctx.say("stop requested"); } catch (error) { ctx.say(error.message, true); }
  } }, "Stop");
  const rerun = el("button", { class: "secondary", id: "rerun", onclick: async () => {
    try { location.hash = "#/task/" + encodeURIComponent((await api(path + "/rerun", { method: "POST" })).task_id); }
    catch (error) { ctx.say(error.message, true); }
  } }, "Re-run");

  view.replaceChildren(title, meta, el("div", { class: "actions" }, stop, rerun), outcome,
    el("h2", {}, "Attempts"), runs, el("h2", {}, "Timeline"), timeline,
    el("div", { class: "detail" },
      el("div", {}, el("h2", {}, "Input payload"), payload),
      el("div", {}, el("h2", {}, "Logs"), logs)),
    el("h2", {}, "Destinations"), destinations,
    el("details", {}, el("summary", {}, "Raw record"), raw));

  // Keeps what the reader looks at where it is while parts above it change size: the first
  // section whose top is in view stays at the same height on the screen (the browser's own
  // scroll anchoring is off, as it may pick a node that the update replaces).
  function keepingPlace(update) {
    const anchor = window.scrollY > 0 ? [...view.children].find((node) => node.getBoundingClientRect().top >= 0) : null;
    const before = anchor ? anchor.getBoundingClientRect().top : 0;
    update();
    if (anchor) window.scrollBy(0, anchor.getBoundingClientRect().top - before);
  }

  function show(record) {
    if (!ctx.current() || (latest && (record.timeline || []).length < (latest.timeline || []).length)) return;
    latest = record;
    keepingPlace(() => draw(record));
    ctx.updated();
  }

  function draw(record) {
    document.getElementById("task-status").replaceChildren(badge(record.status));
    meta.replaceChildren(`${record.function} · attempts ${record.attempts} · source ${sourceText(record.source)}`,
      record.condition ? ` · ${record.condition}` : "",
      ` · submitted ${when(record.submitted_at)}`,
      record.finished_at ? ` · took ${duration(between(record.submitted_at, record.finished_at))}` : "",
      record.rerun_of ? el("span", {}, " · rerun of ", taskLink(record.rerun_of)) : "");
    outcome.replaceChildren(...outcomeView(record));
    runs.replaceChildren(attemptsView(record));
    timeline.replaceChildren(...timelineView(record));
    destinations.replaceChildren(destinationsView(record));
    raw.textContent = JSON.stringify(record, null, 2);
    stop.disabled = TERMINAL.includes(record.status);
  }

  const abort = new AbortController();
  async function follow() {
    // The stream starts with the current record and ends after the terminal one. It breaks
    // when the gateway or NATS goes away: read again after a pause, until the task ends.
    while (!abort.signal.aborted && !(latest && TERMINAL.includes(latest.status))) {
      try {
        await streamEvents(path + "/events", (type, data) => { if (type === "status") show(JSON.parse(data)); }, abort.signal);
      } catch (error) {
        if (abort.signal.aborted) return;
        if (error.status === 404) { ctx.say(error.message, true); return; }
      }
      if (!(latest && TERMINAL.includes(latest.status))) await new Promise((resolve) => setTimeout(resolve, 2000));
    }
  }

  async function followLogs() {
    const lines = [];
    const render = () => {
      const atEnd = logs.scrollTop + logs.clientHeight >= logs.scrollHeight - 4;
      logs.textContent = lines.length ? lines.join("\n") : "no log lines";
      if (atEnd && lines.length) logs.scrollTop = logs.scrollHeight;  // follow the tail, unless the reader scrolled up
    };
    const add = (line) => lines.push(`${line.at} ${line.level.toUpperCase()} ${line.message}`);
    try {
      const done = await streamEvents(path + "/logs", (type, data) => {
        if (type === "line") { add(JSON.parse(data)); render(); }
      }, abort.signal);
      if (done) render();
    } catch (error) {
      if (abort.signal.aborted) return;
      const body = await api(path + "/logs").catch(() => ({ lines: [] }));
      body.lines.forEach(add);
      render();
    }
  }

  async function loadPayload() {
    try {
      const response = await request(path + "/payload");
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok) { payload.textContent = "not available (" + response.status + ")"; return; }
      const bytes = new Uint8Array(await response.arrayBuffer());
      payload.dataset.contentType = type;
      const text = new TextDecoder("utf-8", { fatal: false }).decode(bytes);
      const binary = /[\x00-\x08\x0e-\x1f]/.test(text);
      payload.textContent = binary ? `${bytes.length} bytes of ${type || "binary data"}` : (bytes.length ? pretty(text, type) : "(empty)");
    } catch (error) {
      payload.textContent = "not available";
    }
  }

  follow();
  followLogs();
  loadPayload();
  return { close() { abort.abort(); } };
}

// The fngate dashboard: plain JavaScript over the gateway's own HTTP API.
"use strict";

const view = document.getElementById("view");
const statusLine = document.getElementById("status");
const PHASE_COLORS = {
  Enqueued: "#7a8396", Dequeued: "#2f5bd3", Running: "#2f5bd3", Retrying: "#c77c0e",
  Stopping: "#c77c0e", Succeeded: "#1f8a4c", Failed: "#c0392b", Expired: "#c0392b",
  Stopped: "#444", Invalid: "#c0392b",
};
const STATUSES = Object.keys(PHASE_COLORS);
let refreshTimer = null;
// Each route() bumps the generation; a render that finishes after the user moved on is dropped,
// and only the newest route keeps a refresh timer.
let routeGeneration = 0;
let logStream = null;

function token() { return sessionStorage.getItem("fngate-token") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (response.status === 401) { showLogin(); throw new Error("a token is needed"); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error((body.error && body.error.message) || response.statusText);
  return body;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function badge(status) { return el("span", { class: "badge s-" + status, "data-status": status }, status); }
function taskLink(id) { return el("a", { class: "task", href: "#/task/" + encodeURIComponent(id) }, id); }
function when(iso) { return iso ? new Date(iso).toLocaleTimeString() : "—"; }
function say(text, error = false) { statusLine.textContent = text; statusLine.className = error ? "error" : "muted"; }

function showLogin() {
  document.getElementById("login").hidden = false;
}

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("fngate-token", document.getElementById("token").value);
  document.getElementById("login").hidden = true;
  route();
});

// --- overview ------------------------------------------------------------------------
async function overview(current) {
  const body = await api("/v1/functions");
  const cards = body.functions.map((fn) => {
    const m = fn.counts.last_minute, t = fn.counts.totals;
    return el("div", { class: "card", "data-function": fn.name },
      el("h3", {}, el("a", { href: "#/tasks?function=" + encodeURIComponent(fn.name) }, fn.name),
        " ", el("span", { class: "muted" }, fn.runtime)),
      el("dl", {},
        el("dt", {}, ""), el("dd", { class: "muted" }, "last min"), el("dd", { class: "muted" }, "total"),
        el("dt", {}, "submitted"), el("dd", {}, m.submitted), el("dd", { "data-count": "submitted" }, t.submitted),
        el("dt", {}, "completed"), el("dd", {}, m.completed), el("dd", { "data-count": "completed" }, t.completed),
        el("dt", {}, "failed"), el("dd", {}, m.failed), el("dd", { "data-count": "failed" }, t.failed),
        el("dt", {}, "queued"), el("dd", {}, ""), el("dd", { "data-count": "queued" }, t.queued),
        el("dt", {}, "running"), el("dd", {}, ""), el("dd", { "data-count": "running" }, t.running)));
  });
  if (!current()) return;
  view.replaceChildren(el("h2", {}, "Functions"), el("div", { class: "cards" }, cards));
  say("updated " + new Date().toLocaleTimeString());
}

// --- task list -------------------------------------------------------------------------
async function taskList(params, current) {
  const query = new URLSearchParams(params);
  if (!query.get("limit")) query.set("limit", "25");
  for (const [key, value] of [...query.entries()]) if (!value) query.delete(key);
  const body = await api("/v1/tasks?" + query.toString());
  const functions = (await api("/v1/functions")).functions.map((f) => f.name);

  const fnSelect = el("select", { id: "filter-function" }, el("option", { value: "" }, "all"),
    functions.map((name) => el("option", { value: name }, name)));
  fnSelect.value = params.get("function") || "";
  const statusSelect = el("select", { id: "filter-status" }, el("option", { value: "" }, "all"),
    STATUSES.map((s) => el("option", { value: s }, s)));
  statusSelect.value = params.get("status") || "";
  const since = el("input", { id: "filter-since", type: "datetime-local" });
  if (params.get("since")) since.value = params.get("since").slice(0, 16);
  const apply = () => {
    const next = new URLSearchParams();
    if (fnSelect.value) next.set("function", fnSelect.value);
    if (statusSelect.value) next.set("status", statusSelect.value);
    if (since.value) next.set("since", new Date(since.value).toISOString());
    location.hash = "#/tasks?" + next.toString();
  };
  fnSelect.addEventListener("change", apply);
  statusSelect.addEventListener("change", apply);
  since.addEventListener("change", apply);

  const rows = body.tasks.map((t) => el("tr", { "data-task": t.task_id },
    el("td", {}, taskLink(t.task_id)), el("td", {}, t.function), el("td", {}, badge(t.status)),
    el("td", { class: "num" }, t.attempts), el("td", {}, when(t.submitted_at)), el("td", {}, when(t.finished_at)),
    el("td", {}, t.source ? t.source.type + (t.source.name ? ":" + t.source.name : "") : "")));
  const pager = el("div", { class: "pager" });
  if (params.get("cursor")) pager.append(el("button", { class: "secondary", onclick: () => history.back() }, "Newer"));
  if (body.next_cursor) {
    const next = new URLSearchParams(params);
    next.set("cursor", body.next_cursor);
    pager.append(el("button", { id: "next-page", onclick: () => { location.hash = "#/tasks?" + next.toString(); } }, "Older"));
  }
  if (!current()) return;
  view.replaceChildren(
    el("h2", {}, "Tasks"),
    el("div", { class: "filters" }, el("label", {}, "function", fnSelect), el("label", {}, "status", statusSelect),
      el("label", {}, "since", since)),
    el("table", { id: "tasks" },
      el("thead", {}, el("tr", {}, ["task", "function", "status", "attempts", "submitted", "finished", "source"]
        .map((h) => el("th", { class: h === "attempts" ? "num" : "" }, h)))),
      el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 7, class: "muted" }, "no tasks")))),
    pager);
  say(body.tasks.length + " tasks, updated " + new Date().toLocaleTimeString());
}

// --- task detail -----------------------------------------------------------------------
function phases(record) {
  const timeline = record.timeline || [];
  const end = record.finished_at ? new Date(record.finished_at) : new Date();
  return timeline.map((entry, i) => {
    const start = new Date(entry.at);
    const stop = i + 1 < timeline.length ? new Date(timeline[i + 1].at) : end;
    return { status: entry.status, at: entry.at, ms: Math.max(0, stop - start) };
  });
}

function timelineView(record) {
  const list = phases(record);
  const total = Math.max(1, list.reduce((sum, p) => sum + p.ms, 0));
  return el("div", { class: "timeline", id: "timeline" }, list.map((p) =>
    el("div", { class: "phase", "data-phase": p.status },
      badge(p.status),
      el("div", {}, el("div", { class: "bar", style: `width:${Math.max(0.5, (100 * p.ms) / total)}%;background:${PHASE_COLORS[p.status] || "#999"}` })),
      el("div", { class: "num muted" }, p.ms >= 1000 ? (p.ms / 1000).toFixed(2) + " s" : p.ms + " ms"))));
}

async function taskDetail(id, current = () => true) {
  const record = await api("/v1/tasks/" + encodeURIComponent(id));
  const stoppable = !["Succeeded", "Failed", "Stopped", "Expired", "Invalid"].includes(record.status);
  const stop = el("button", { class: "danger", id: "stop", onclick: async () => {
    stop.disabled = true;
    try { await api(`/v1/tasks/${encodeURIComponent(id)}/stop`, { method: "POST" }); say("stop requested"); }
    catch (error) { say(error.message, true); }
    taskDetail(id, current);
  } }, "Stop");
  stop.disabled = !stoppable;
  const rerun = el("button", { class: "secondary", id: "rerun", onclick: async () => {
    try {
      const body = await api(`/v1/tasks/${encodeURIComponent(id)}/rerun`, { method: "POST" });
      location.hash = "#/task/" + encodeURIComponent(body.task_id);
    } catch (error) { say(error.message, true); }
  } }, "Re-run");
  const destinations = (record.destinations || []).map((d) => el("tr", {},
    el("td", {}, d.on), el("td", {}, d.type), el("td", {}, d.target), el("td", {}, d.status),
    el("td", { class: "num" }, d.attempts), el("td", {}, d.error || "")));
  const logs = el("pre", { id: "logs" }, "loading…");
  if (!current()) return;
  view.replaceChildren(
    el("h2", {}, "Task ", el("code", {}, record.task_id), " ", badge(record.status)),
    el("div", { class: "muted" }, `${record.function} · attempts ${record.attempts} · source ${record.source.type}` +
      (record.condition ? ` · ${record.condition}` : "")),
    el("div", { class: "actions" }, stop, rerun),
    timelineView(record),
    el("div", { class: "detail" },
      el("div", {}, el("h2", {}, "Record"), el("pre", { id: "record" }, JSON.stringify(record, null, 2))),
      el("div", {}, el("h2", {}, "Logs"), logs,
        el("h2", {}, "Destinations"),
        destinations.length ? el("table", {}, el("thead", {}, el("tr", {}, ["on", "type", "target", "status", "attempts", "error"]
          .map((h) => el("th", {}, h)))), el("tbody", {}, destinations)) : el("div", { class: "muted" }, "none"))));
  const body = await api(`/v1/tasks/${encodeURIComponent(id)}/logs`).catch(() => ({ lines: [] }));
  logs.textContent = body.lines.length
    ? body.lines.map((l) => `${l.at} ${l.level.toUpperCase()} ${l.message}`).join("\n")
    : "no log lines";
  say("updated " + new Date().toLocaleTimeString());
}

// --- routing ----------------------------------------------------------------------------
async function route() {
  const generation = ++routeGeneration;
  const current = () => generation === routeGeneration;
  clearInterval(refreshTimer);
  refreshTimer = null;
  if (logStream) { logStream.close(); logStream = null; }
  const hash = location.hash || "#/";
  const [path, queryString] = hash.slice(1).split("?");
  document.getElementById("nav-overview").classList.toggle("active", path === "/");
  document.getElementById("nav-tasks").classList.toggle("active", path.startsWith("/task"));
  let render;
  if (path.startsWith("/task/")) {
    const id = decodeURIComponent(path.slice("/task/".length));
    render = () => taskDetail(id, current);
  } else if (path === "/tasks") {
    render = () => taskList(new URLSearchParams(queryString || ""), current);
  } else {
    render = () => overview(current);
  }
  const run = () => render().catch((error) => { if (current()) say(error.message, true); });
  await run();
  if (current()) refreshTimer = setInterval(run, 2000);
}

window.addEventListener("hashchange", route);
route();

// Bulk actions on the task list: pick rows (or the whole page), or "all matching" the
// current filter, and Rerun or Stop them. "All matching" is one bulk operation
// (POST /v1/tasks/rerun|stop), followed by polling GET /v1/operations/{id}; picked rows are
// one call per task. The picks survive the list's refreshes (a Set of task ids).
"use strict";
import { api } from "./api.js";
import { el } from "./dom.js";

const POLL_MS = 500;
const COUNT_LIMIT = 10000; // the dry-run count stops here ("10000+")
const BULK_FILTERS = ["function", "status", "condition", "source", "prefix", "since", "until"];

export function bulkState(params, ctx) {
  const filter = {};
  for (const name of BULK_FILTERS) if (params.get(name)) filter[name] = params.get(name);
  return { filter, selected: new Set(), all: false, ctx, matched: null,
           canMatch: Boolean(filter.function || filter.status) };
}

// The dry-run count of the current filter (null when the filter names no function or status).
export async function countMatching(state) {
  if (!state.canMatch) { state.matched = null; return null; }
  const body = await api("/v1/tasks/rerun", jsonPost({ filter: state.filter, dry_run: true, limit: COUNT_LIMIT }));
  state.matched = body.matched;
  return body.matched;
}

export function matchedText(state) {
  if (state.matched === null) return "";
  return state.matched >= COUNT_LIMIT ? `${COUNT_LIMIT}+` : String(state.matched);
}

// Adds a checkbox column to a table built by renderTable().
export function withSelection(table, state, onChange) {
  const rows = [...table.querySelectorAll("tbody tr[data-task]")];
  const pageBox = el("input", { type: "checkbox", id: "select-page", title: "select every task on this page" });
  pageBox.checked = rows.length > 0 && rows.every((r) => state.selected.has(r.dataset.task));
  pageBox.addEventListener("change", () => {
    for (const r of rows) pageBox.checked ? state.selected.add(r.dataset.task) : state.selected.delete(r.dataset.task);
    for (const box of table.querySelectorAll("input.pick")) box.checked = pageBox.checked;
    onChange();
  });
  table.querySelector("thead tr").prepend(el("th", {}, pageBox));
  for (const r of rows) {
    const box = el("input", { type: "checkbox", class: "pick", "data-pick": r.dataset.task });
    box.checked = state.selected.has(r.dataset.task);
    box.addEventListener("change", () => {
      box.checked ? state.selected.add(r.dataset.task) : state.selected.delete(r.dataset.task);
      onChange();
    });
    r.prepend(el("td", {}, box));
  }
  const empty = table.querySelector("tbody td[colspan]");
  if (empty) empty.colSpan += 1;
  return table;
}

// The bar above the table: what is picked, "all matching", Rerun, Stop, and the progress.
export function bulkBar(state) {
  const progress = el("span", { id: "bulk-progress", class: "muted" });
  const picked = el("span", { id: "bulk-picked", class: "muted" });
  const allBox = el("input", { type: "checkbox", id: "select-all-matching", disabled: !state.canMatch });
  const allLabel = el("label", { title: state.canMatch ? "" : "filter by a function or a status first" },
    allBox, " all matching ", el("span", { id: "bulk-matched" }, matchedText(state)));
  const rerun = el("button", { id: "bulk-rerun", type: "button" }, "Rerun");
  const stop = el("button", { id: "bulk-stop", type: "button", class: "danger" }, "Stop");
  const bar = el("div", { class: "actions", id: "bulk-bar" }, allLabel, picked, rerun, stop, progress);
  const refresh = () => {
    state.all = allBox.checked;
    const n = state.all ? matchedText(state) : String(state.selected.size);
    picked.textContent = state.all ? `(${n} tasks)` : `${n} picked`;
    rerun.disabled = stop.disabled = !state.all && state.selected.size === 0;
    bar.querySelector("#bulk-matched").textContent = matchedText(state);
  };
  allBox.addEventListener("change", refresh);
  rerun.addEventListener("click", () => act("rerun", state, progress));
  stop.addEventListener("click", () => act("stop", state, progress));
  bar.refresh = refresh;
  refresh();
  return bar;
}

async function act(kind, state, progress) {
  const what = state.all ? `all ${matchedText(state)} matching tasks` : `${state.selected.size} picked tasks`;
  if (!window.confirm(`${kind === "rerun" ? "Rerun" : "Stop"} ${what}?`)) return;
  try {
    if (state.all) {
      const started = await api(`/v1/tasks/${kind}`, jsonPost({ filter: state.filter, limit: 1000000 }));
      await follow(started.operation_id, progress);
    } else {
      const ids = [...state.selected];
      let done = 0, failed = 0;
      for (const id of ids) {
        try { await api(`/v1/tasks/${encodeURIComponent(id)}/${kind}`, { method: "POST" }); done += 1; }
        catch (error) { failed += 1; }
        progress.textContent = `${kind}: ${done}/${ids.length} done, ${failed} failed`;
      }
      progress.dataset.status = failed ? "Failed" : "Succeeded";
      state.selected.clear();
    }
  } catch (error) {
    state.ctx.say(error.message, true);
  }
}

// The operation's progress: a bar (done + failed of matched) and the figures beside it.
async function follow(opId, progress) {
  const bar = el("progress", { id: "bulk-progress-bar", max: 1, value: 0 });
  const text = el("span", { id: "bulk-progress-text" });
  progress.replaceChildren(bar, " ", text);
  for (;;) {
    const op = await api(`/v1/operations/${encodeURIComponent(opId)}`);
    progress.dataset.operation = opId;
    progress.dataset.status = op.status;
    bar.max = Math.max(op.matched, 1);
    bar.value = op.matched ? op.done + op.failed : 1;
    bar.className = "s-" + op.status;
    const percent = op.matched ? Math.floor((100 * (op.done + op.failed)) / op.matched) : 100;
    text.textContent = `${op.kind} ${opId}: ${op.done}/${op.matched} done, ${op.failed} failed — ${op.status} (${percent}%)`;
    if (op.status !== "Running") return op;
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

function jsonPost(body) {
  return { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
}

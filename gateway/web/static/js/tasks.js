// The task list: every CONTRACT filter (function, status, condition, source, since, until,
// id prefix), times in the browser's time zone, duration, paging.
//
// The filters live in the URL (#/tasks?…, times as UTC ISO), so a view can be shared and the
// back button works. Rows are built by `row()`, and the table by `renderTable()`: a later
// selection column (bulk rerun / stop) wraps these without touching the filters.
"use strict";
import { api } from "./api.js";
import { bulkBar, bulkState, countMatching, matchedText, withSelection } from "./bulk.js";
import {
  CONDITIONS, STATUSES, TIME_ZONE, badge, between, duration, el, fromLocalInput, sourceText, taskLink,
  toLocalInput, when,
} from "./dom.js";

export const FILTERS = ["function", "status", "condition", "source", "prefix", "since", "until"];
const COLUMNS = ["task", "function", "status", "attempts", "submitted", "finished", "duration", "source"];

export function row(t) {
  const ran = between(t.started_at, t.finished_at);
  return el("tr", { "data-task": t.task_id },
    el("td", {}, taskLink(t.task_id)), el("td", {}, t.function), el("td", {}, badge(t.status)),
    el("td", { class: "num" }, t.attempts),
    el("td", { class: "time", "data-at": t.submitted_at }, when(t.submitted_at)),
    el("td", { class: "time", "data-at": t.finished_at || "" }, when(t.finished_at)),
    el("td", { class: "num", "data-duration": ran === null ? "" : Math.round(ran),
               title: "running time, from the first start to the end" }, duration(ran)),
    el("td", {}, sourceText(t.source)));
}

export function renderTable(tasks) {
  return el("table", { id: "tasks" },
    el("thead", {}, el("tr", {}, COLUMNS.map((h) => el("th", {
      class: ["attempts", "duration"].includes(h) ? "num" : "",
      title: ["submitted", "finished"].includes(h) ? "in " + TIME_ZONE : null }, h)))),
    el("tbody", {}, tasks.length ? tasks.map(row) : el("tr", {}, el("td", { colspan: COLUMNS.length, class: "muted" }, "no tasks"))));
}

function filterBar(params, functions) {
  const select = (id, values, current) => {
    const node = el("select", { id }, el("option", { value: "" }, "all"), values.map((v) => el("option", { value: v }, v)));
    node.value = current || "";
    return node;
  };
  const fields = {
    function: select("filter-function", functions, params.get("function")),
    status: select("filter-status", STATUSES, params.get("status")),
    condition: select("filter-condition", CONDITIONS, params.get("condition")),
    source: el("input", { id: "filter-source", placeholder: "type or type:name", size: 16, value: params.get("source") || "" }),
    prefix: el("input", { id: "filter-prefix", placeholder: "task id prefix", size: 18, value: params.get("prefix") || "" }),
    since: el("input", { id: "filter-since", type: "datetime-local", step: 1, value: toLocalInput(params.get("since")) }),
    until: el("input", { id: "filter-until", type: "datetime-local", step: 1, value: toLocalInput(params.get("until")) }),
  };
  const apply = () => {
    const next = new URLSearchParams();
    for (const name of FILTERS) {
      const value = fields[name].value.trim();
      if (value) next.set(name, ["since", "until"].includes(name) ? fromLocalInput(value) : value);
    }
    location.hash = "#/tasks?" + next.toString();
  };
  for (const node of Object.values(fields)) node.addEventListener("change", apply);
  const clear = el("button", { class: "secondary", type: "button", id: "filter-clear",
    onclick: () => { location.hash = "#/tasks"; } }, "Clear");
  return el("div", { class: "filters" },
    Object.entries(fields).map(([name, node]) => el("label", {}, name + (["since", "until"].includes(name) ? ` (${TIME_ZONE})` : ""), node)),
    clear);
}

export function mount(view, params, ctx) {
  const body = el("div", { id: "tasks-body" });
  const summary = el("span", { id: "tasks-count", class: "muted" });
  const pager = el("div", { class: "pager" });
  const bulk = bulkState(params, ctx);
  const bar = bulkBar(bulk);
  view.replaceChildren(el("h2", {}, "Tasks"), el("div", { class: "filters muted" }, "loading…"), bar, body, pager);
  api("/v1/functions").then(({ functions }) => {
    if (ctx.current()) view.children[1].replaceWith(filterBar(params, functions.map((f) => f.name)));
  }).catch((error) => ctx.say(error.message, true));

  const query = new URLSearchParams();
  for (const name of [...FILTERS, "cursor", "limit"]) if (params.get(name)) query.set(name, params.get(name));
  if (!query.get("limit")) query.set("limit", "25");
  return {
    async refresh() {
      const [page] = await Promise.all([api("/v1/tasks?" + query.toString()), countMatching(bulk)]);
      if (!ctx.current()) return;
      bar.refresh();
      body.replaceChildren(withSelection(renderTable(page.tasks), bulk, () => bar.refresh()));
      const matched = bulk.matched === null ? undefined : matchedText(bulk);
      summary.textContent = `${page.tasks.length} shown` + (matched !== undefined ? ` of ${matched} matching` : "");
      const buttons = [summary];
      if (params.get("cursor")) buttons.push(el("button", { class: "secondary", onclick: () => history.back() }, "Newer"));
      if (page.next_cursor) {
        const next = new URLSearchParams(params);
        next.set("cursor", page.next_cursor);
        buttons.push(el("button", { id: "next-page", onclick: () => { location.hash = "#/tasks?" + next.toString(); } }, "Older"));
      }
      pager.replaceChildren(...buttons);
      ctx.updated();
    },
  };
}

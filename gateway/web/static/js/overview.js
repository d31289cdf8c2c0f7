// Overview: per function, the tasks by state (they add up to the total submitted).
"use strict";
import { api } from "./api.js";
import { el } from "./dom.js";

// The states a task can be in, as counted by GET /v1/functions (totals). `expired` is shown
// when the index counts it apart from `failed`.
const ROWS = [
  ["queued", (t) => t.queued], ["running", (t) => t.running], ["succeeded", (t) => t.completed],
  ["failed", (t) => t.failed], ["stopped", (t) => t.stopped], ["expired", (t) => t.expired],
];

function card(fn) {
  const t = fn.counts.totals, m = fn.counts.last_minute;
  const rows = ROWS.filter(([, get]) => get(t) !== undefined);
  const sum = rows.reduce((total, [, get]) => total + (get(t) || 0), 0);
  return el("div", { class: "card", "data-function": fn.name },
    el("h3", {}, el("a", { href: "#/tasks?function=" + encodeURIComponent(fn.name) }, fn.name),
      " ", el("span", { class: "muted" }, fn.runtime)),
    el("dl", {},
      rows.map(([name, get]) => [
        el("dt", {}, el("a", { href: `#/tasks?function=${encodeURIComponent(fn.name)}&status=${statusOf(name)}` }, name)),
        el("dd", { "data-count": name }, get(t))]),
      el("dt", { class: "total" }, "total"),
      el("dd", { class: "total", "data-count": "total", "data-sum": sum }, t.submitted)),
    el("div", { class: "recent muted" },
      `last minute: ${m.submitted} submitted, ${m.completed} succeeded, ${m.failed} failed`));
}

function statusOf(row) {
  return { queued: "Enqueued,Retrying,Dequeued", running: "Running,Stopping", succeeded: "Succeeded",
           failed: "Failed", stopped: "Stopped", expired: "Expired" }[row];
}

export function mount(view, params, ctx) {
  const cards = el("div", { class: "cards", id: "functions" });
  view.replaceChildren(el("h2", {}, "Functions"), cards);
  return {
    async refresh() {
      const body = await api("/v1/functions");
      if (!ctx.current()) return;
      cards.replaceChildren(...(body.functions.length ? body.functions.map(card)
        : [el("div", { class: "muted" }, "no functions configured")]));
      ctx.updated();
    },
  };
}

// Overview: per function, the tasks by state (they add up to the total submitted), and
// charts of the last hour from the task index (GET /v1/functions/{fn}/stats).
"use strict";
import { api } from "./api.js";
import { legend, lineChart } from "./charts.js";
import { duration, el, PHASE_COLORS } from "./dom.js";

const STATS_MS = 10_000;  // the charts move by the minute: no need to redraw them every 2 s
const COUNT_SERIES = [["submitted", "#7a8396"], ["succeeded", PHASE_COLORS.Succeeded], ["failed", PHASE_COLORS.Failed]];
const LATENCY_SERIES = [["p50", "#2f5bd3"], ["p95", "#c77c0e"], ["p99", "#c0392b"]];

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

const minuteLabel = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
const ms = (v) => (v >= 1000 ? duration(v) : v >= 10 ? `${Math.round(v)} ms` : `${+v.toFixed(1)} ms`);

function percentiles(latency) {
  return latency.count ? `p50 ${ms(latency.p50)} · p95 ${ms(latency.p95)} · p99 ${ms(latency.p99)} (${latency.count} tasks)`
    : "no task ended";
}

function charts(stats) {
  const labels = stats.minutes.map((p) => minuteLabel(p.at));
  const counts = COUNT_SERIES.map(([name, color]) => ({ name, color, values: stats.minutes.map((p) => p[name]) }));
  const latency = LATENCY_SERIES.map(([name, color]) => ({ name, color, values: stats.minutes.map((p) => p.end_to_end_ms[name]) }));
  const t = stats.totals, l = stats.latency_ms;
  return el("div", { class: "panel stats", "data-stats": stats.function },
    el("h3", {}, stats.function, " ", el("span", { class: "muted" }, "last hour, per minute")),
    el("div", { class: "charts" },
      el("figure", {},
        el("figcaption", {}, "tasks per minute ", el("span", { class: "muted" },
          `${t.submitted} submitted, ${t.succeeded} succeeded, ${t.failed} failed`)),
        lineChart({ kind: "counts", title: `${stats.function}: tasks per minute`, labels, series: counts }),
        legend(counts)),
      el("figure", {},
        el("figcaption", {}, "end-to-end latency ", el("span", { class: "muted", "data-latency": "end_to_end" },
          percentiles(l.end_to_end))),
        lineChart({ kind: "latency", title: `${stats.function}: end-to-end latency percentiles`, labels, series: latency, format: ms }),
        legend(latency),
        el("div", { class: "muted", "data-latency": "run" }, "run time (first start to end): ", percentiles(l.run)))));
}

export function mount(view, params, ctx) {
  const cards = el("div", { class: "cards", id: "functions" });
  const stats = el("div", { id: "stats" });
  view.replaceChildren(el("h2", {}, "Functions"), cards, el("h2", {}, "Last hour"), stats);
  let statsAt = 0;
  return {
    async refresh() {
      const body = await api("/v1/functions");
      if (!ctx.current()) return;
      cards.replaceChildren(...(body.functions.length ? body.functions.map(card)
        : [el("div", { class: "muted" }, "no functions configured")]));
      if (Date.now() - statsAt >= STATS_MS) {
        const all = await Promise.all(body.functions.map((fn) => api(`/v1/functions/${encodeURIComponent(fn.name)}/stats`)));
        if (!ctx.current()) return;
        stats.replaceChildren(...all.map(charts));
        statsAt = Date.now();
      }
      ctx.updated();
    },
  };
}

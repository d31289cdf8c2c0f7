// Triggers: every trigger's state and counters (GET /v1/triggers).
"use strict";
import { api } from "./api.js";
import { badge, el } from "./dom.js";

const FIXED = ["name", "type", "function", "state"];

export function mount(view, params, ctx) {
  const table = el("table", { id: "triggers" });
  view.replaceChildren(el("h2", {}, "Triggers"), table);
  return {
    async refresh() {
      const { triggers } = await api("/v1/triggers");
      if (!ctx.current()) return;
      const counters = [...new Set(triggers.flatMap((t) => Object.keys(t)))].filter((k) => !FIXED.includes(k));
      table.replaceChildren(
        el("thead", {}, el("tr", {}, [...FIXED, ...counters].map((h) => el("th", {}, h.replaceAll("_", " "))))),
        el("tbody", {}, triggers.length ? triggers.map((t) => el("tr", { "data-trigger": t.name },
          el("td", {}, t.name), el("td", {}, t.type),
          el("td", {}, el("a", { href: "#/tasks?function=" + encodeURIComponent(t.function) }, t.function)),
          el("td", {}, badge(t.state)),
          counters.map((k) => el("td", { class: typeof t[k] === "number" ? "num" : "", "data-counter": k }, show(t[k])))))
          : el("tr", {}, el("td", { colspan: 4, class: "muted" }, "no triggers configured"))));
      ctx.updated();
    },
  };
}

function show(value) {
  if (value === null || value === undefined) return "—";
  return typeof value === "object" ? JSON.stringify(value) : value;
}

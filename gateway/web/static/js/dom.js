// Small DOM and formatting helpers shared by the views.
"use strict";

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const TERMINAL = ["Succeeded", "Failed", "Stopped", "Expired", "Invalid"];
export const STATUSES = ["Enqueued", "Dequeued", "Running", "Retrying", "Stopping", ...TERMINAL];
export const CONDITIONS = ["Succeeded", "FunctionError", "Timeout", "RetriesExhausted", "Expired", "RecursiveLoopDetected"];
export const PHASE_COLORS = {
  Enqueued: "#7a8396", Dequeued: "#2f5bd3", Running: "#2f5bd3", Retrying: "#c77c0e",
  Stopping: "#c77c0e", Succeeded: "#1f8a4c", Failed: "#c0392b", Expired: "#c0392b",
  Stopped: "#444", Invalid: "#c0392b",
};

export function badge(status) { return el("span", { class: "badge s-" + status, "data-status": status }, status); }
export function taskLink(id) { return el("a", { class: "task", href: "#/task/" + encodeURIComponent(id) }, id); }
export function sourceText(source) { return source ? source.type + (source.name ? ":" + source.name : "") : ""; }

const pad = (n, width = 2) => String(n).padStart(width, "0");

// Times are shown, and typed, in the browser's time zone; the API speaks UTC (ISO 8601 "Z").
export const TIME_ZONE = Intl.DateTimeFormat().resolvedOptions().timeZone;

export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// An ISO instant as the value of an <input type="datetime-local"> (local wall time).
export function toLocalInput(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "";
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

// The local wall time of a datetime-local input as an ISO instant in UTC.
export function fromLocalInput(value) { return value ? new Date(value).toISOString() : ""; }

export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "—";
  if (ms < 1000) return Math.round(ms) + " ms";
  if (ms < 60_000) return (ms / 1000).toFixed(2) + " s";
  const s = Math.round(ms / 1000);
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

export function between(startIso, endIso) {
  if (!startIso) return null;
  return (endIso ? new Date(endIso) : new Date()) - new Date(startIso);
}

export function pretty(text, contentType = "application/json") {
  if ((contentType || "").split(";")[0].trim() === "application/json" || contentType === undefined) {
    try { return JSON.stringify(JSON.parse(text), null, 2); } catch (error) { /* not JSON after all */ }
  }
  return text;
}

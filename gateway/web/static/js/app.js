// The fngate console: plain JavaScript modules over the gateway's own HTTP API, no build step.
// This module routes (#/, #/tasks, #/task/ID, #/triggers, #/invoke), refreshes the current
// view, and shows a banner instead of stale data while the gateway cannot reach NATS (or
// the index, or is itself unreachable).
"use strict";
import { api, on, problems, setToken } from "./api.js";
import * as invoke from "./invoke.js";
import * as overview from "./overview.js";
import * as task from "./task.js";
import * as tasks from "./tasks.js";
import * as triggers from "./triggers.js";

const view = document.getElementById("view");
const statusLine = document.getElementById("status");
const banner = document.getElementById("banner");
const REFRESH_MS = 2000;
const ROUTES = [
  { match: (p) => p.startsWith("/task/"), nav: "nav-tasks", mount: (v, q, ctx, p) => task.mount(v, q, ctx, decodeURIComponent(p.slice(6))) },
  { match: (p) => p === "/tasks", nav: "nav-tasks", mount: tasks.mount },
  { match: (p) => p === "/triggers", nav: "nav-triggers", mount: triggers.mount },
  { match: (p) => p === "/invoke", nav: "nav-invoke", mount: invoke.mount },
  { match: () => true, nav: "nav-overview", mount: overview.mount },
];

let generation = 0;
let mounted = null;
let timer = null;
let lastUpdate = null;
let degraded = false;

function say(text, error = false) { statusLine.textContent = text; statusLine.className = error ? "error" : "muted"; }

// Shown when the gateway is not ready: the view is hidden, not left showing old figures.
async function checkHealth() {
  const wrong = await problems();
  const was = degraded;
  degraded = wrong.length > 0;
  banner.hidden = !degraded;
  view.hidden = degraded;
  if (degraded) {
    banner.textContent = "Live data unavailable: " + wrong.join("; ") +
      ". The console shows data again as soon as it is back" +
      (lastUpdate ? ` (last update ${lastUpdate.toLocaleTimeString()}).` : ".");
    say("not updated", true);
  } else if (was) {
    route();  // back: draw everything afresh
  }
  return !degraded;
}

function context(current) {
  return { current, say, updated: () => { lastUpdate = new Date(); if (!degraded) say("updated " + lastUpdate.toLocaleTimeString()); } };
}

async function route() {
  const mine = ++generation;
  const current = () => mine === generation;
  clearTimeout(timer);
  if (mounted && mounted.close) mounted.close();
  mounted = null;
  const [path, queryString] = (location.hash || "#/").slice(1).split("?");
  const target = ROUTES.find((r) => r.match(path));
  for (const r of ROUTES) document.getElementById(r.nav).classList.toggle("active", r.nav === target.nav);
  if (!(await checkHealth()) || !current()) { schedule(current); return; }
  mounted = target.mount(view, new URLSearchParams(queryString || ""), context(current), path);
  await tick(current);
}

async function tick(current) {
  if (!current()) return;
  if (await checkHealth() && mounted && mounted.refresh) {
    try { await mounted.refresh(); } catch (error) { if (current()) { say(error.message, true); await checkHealth(); } }
  }
  schedule(current);
}

function schedule(current) {
  if (current()) timer = setTimeout(() => tick(current), REFRESH_MS);
}

on("unauthorized", () => { document.getElementById("login").hidden = false; });
on("unreachable", () => { checkHealth(); });

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value);
  document.getElementById("login").hidden = true;
  route();
});

// Search by task id: the task itself when the id is known, else the tasks whose id starts so.
document.getElementById("search").addEventListener("submit", async (event) => {
  event.preventDefault();
  const id = document.getElementById("search-id").value.trim();
  if (!id) return;
  try {
    await api("/v1/tasks/" + encodeURIComponent(id));
    location.hash = "#/task/" + encodeURIComponent(id);
  } catch (error) {
    if (error.status === 404 || error.status === 400) location.hash = "#/tasks?prefix=" + encodeURIComponent(id);
    else say(error.message, true);
  }
});

window.addEventListener("hashchange", route);
route();

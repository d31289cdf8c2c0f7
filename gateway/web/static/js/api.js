// Talking to the gateway: the token, JSON calls, raw calls and Server-Sent Events over fetch
// (fetch, not EventSource: it can send the Authorization header, so no token in URLs).
"use strict";

export class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

const listeners = { unauthorized: [], unreachable: [] };
export function on(kind, callback) { listeners[kind].push(callback); }
function tell(kind, detail) { for (const callback of listeners[kind]) callback(detail); }

export function token() { return sessionStorage.getItem("fngate-token") || ""; }
export function setToken(value) { sessionStorage.setItem("fngate-token", value); }

function withAuth(headers = {}) {
  const all = Object.assign({}, headers);
  if (token()) all["Authorization"] = "Bearer " + token();
  return all;
}

// fetch, with the outcomes every caller handles alike: 401 asks for a token; no answer or a
// 503 means the gateway (or what it depends on) is away, which the banner shows.
export async function request(path, options = {}) {
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers: withAuth(options.headers) }));
  } catch (error) {
    if (error.name === "AbortError") throw error;
    tell("unreachable", "cannot reach the gateway");
    throw new ApiError("cannot reach the gateway", 0);
  }
  if (response.status === 401) { tell("unauthorized"); throw new ApiError("a token is needed", 401); }
  if (response.status === 503) tell("unreachable", null);
  return response;
}

export async function api(path, options = {}) {
  const response = await request(path, options);
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new ApiError((body.error && body.error.message) || response.statusText, response.status);
  return body;
}

// Calls onEvent(type, data) for every event of an SSE response until the server ends the
// stream (resolves true) or `signal` aborts it.
export async function streamEvents(path, onEvent, signal) {
  const response = await request(path, { headers: { Accept: "text/event-stream" }, signal });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new ApiError((body.error && body.error.message) || response.statusText, response.status);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return true;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      const data = [];
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event:")) type = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(type, data.join("\n"));
    }
  }
}

// What /readyz says is wrong, in words; [] when the gateway is ready.
export async function problems() {
  let body;
  try {
    const response = await fetch("/readyz", { cache: "no-store" });
    body = await response.json();
  } catch (error) {
    return ["cannot reach the gateway"];
  }
  if (body.ready) return [];
  const checks = body.checks || {};
  const names = { nats: "the gateway cannot reach NATS", streams: "the task streams are not ready",
                  index: "the gateway cannot reach the task index" };
  const failing = Object.entries(checks).filter(([, value]) => value === false ||
    (value && typeof value === "object" && (value.ok === false || value.ready === false)));
  const words = failing.map(([name]) => names[name] || `${name} is not ready`);
  return words.length ? words : ["the gateway is not ready"];
}

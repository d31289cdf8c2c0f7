// Invoke a function: async (then follow the task) or sync (show the result).
"use strict";
import { api, request } from "./api.js";
import { el, pretty } from "./dom.js";

export function mount(view, params, ctx) {
  const fn = el("select", { id: "invoke-function", required: true });
  const mode = el("select", { id: "invoke-mode" }, el("option", { value: "async" }, "async (a task)"),
    el("option", { value: "sync" }, "sync (wait for the result)"));
  const taskId = el("input", { id: "invoke-task-id", placeholder: "generated", pattern: "[A-Za-z0-9._\\-]{1,128}" });
  const delay = el("input", { id: "invoke-delay", type: "number", min: 0, max: 86400, step: "any", placeholder: "0" });
  const contentType = el("input", { id: "invoke-content-type", value: "application/json" });
  const payload = el("textarea", { id: "invoke-payload", spellcheck: "false" }, params.get("payload") || "{}");
  const result = el("pre", { id: "invoke-result", hidden: true });
  const send = el("button", { type: "submit", id: "invoke-send" }, "Invoke");
  const syncOnly = () => { const sync = mode.value === "sync"; taskId.disabled = sync; delay.disabled = sync; };
  mode.addEventListener("change", syncOnly);

  const form = el("form", { class: "invoke", id: "invoke-form", onsubmit: async (event) => {
    event.preventDefault();
    const headers = { "Content-Type": contentType.value || "application/octet-stream", "X-Invocation-Type": mode.value };
    if (mode.value === "async" && taskId.value) headers["X-Task-Id"] = taskId.value;
    if (mode.value === "async" && delay.value) headers["X-Delay"] = delay.value;
    send.disabled = true;
    try {
      const response = await request(`/v1/functions/${encodeURIComponent(fn.value)}/invocations`,
        { method: "POST", headers, body: payload.value });
      const text = await response.text();
      if (response.status === 202) { location.hash = "#/task/" + encodeURIComponent(JSON.parse(text).task_id); return; }
      result.hidden = false;
      result.dataset.status = response.status;
      result.textContent = `${response.status} ${response.statusText}\n\n` + pretty(text, response.headers.get("Content-Type"));
    } catch (error) {
      ctx.say(error.message, true);
    } finally {
      send.disabled = false;
    }
  } },
    el("label", {}, "function", fn), el("label", {}, "mode", mode),
    el("label", {}, "task id", taskId), el("label", {}, "delay (s)", delay),
    el("label", { class: "wide" }, "content type", contentType),
    el("label", { class: "wide" }, "payload", payload),
    el("div", { class: "wide" }, send));
  view.replaceChildren(el("h2", {}, "Invoke a function"), form, el("h2", {}, "Result"), result);

  api("/v1/functions").then((body) => {
    fn.replaceChildren(...body.functions.map((f) => el("option", { value: f.name }, f.name)));
    if (params.get("function")) fn.value = params.get("function");
  }).catch((error) => ctx.say(error.message, true));
  return {};
}

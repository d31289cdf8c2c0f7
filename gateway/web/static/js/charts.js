// Line charts as plain SVG (no chart library): one polyline per series over shared x labels.
"use strict";

const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  for (const child of children) node.append(child);
  return node;
}

// A y axis top that reads well: 1, 2 or 5 times a power of ten, at least `max`.
function niceTop(max) {
  if (!(max > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(max));
  return [1, 2, 5, 10].map((m) => m * power).find((v) => v >= max);
}

// series: [{name, color, values: (number|null)[]}]; labels: one per point (shown at both
// ends and in each point's tooltip); format: how a value is written.
export function lineChart({ kind, title, labels, series, format = String, width = 440, height = 150 }) {
  const pad = { left: 44, right: 8, top: 8, bottom: 20 };
  const w = width - pad.left - pad.right, h = height - pad.top - pad.bottom;
  const all = series.flatMap((s) => s.values).filter((v) => v !== null && v !== undefined);
  const top = niceTop(Math.max(0, ...all));
  const n = labels.length;
  const x = (i) => pad.left + (n > 1 ? (i * w) / (n - 1) : w / 2);
  const y = (v) => pad.top + h - (v / top) * h;
  const chart = svg("svg", { class: "chart", "data-chart": kind, viewBox: `0 0 ${width} ${height}`,
                             width, height, role: "img", "aria-label": title });
  for (const v of [0, top / 2, top]) {
    chart.append(svg("line", { class: "grid", x1: pad.left, x2: pad.left + w, y1: y(v), y2: y(v) }));
    const label = svg("text", { class: "axis", x: pad.left - 4, y: y(v) + 4, "text-anchor": "end" });
    label.textContent = format(v);
    chart.append(label);
  }
  for (const [i, anchor] of [[0, "start"], [n - 1, "end"]]) {
    const label = svg("text", { class: "axis", x: x(i), y: height - 4, "text-anchor": anchor });
    label.textContent = labels[i] || "";
    chart.append(label);
  }
  for (const s of series) {
    // A gap (null: nothing to measure that minute) breaks the line rather than drawing 0.
    const runs = [[]];
    s.values.forEach((v, i) => {
      if (v === null || v === undefined) { if (runs[runs.length - 1].length) runs.push([]); }
      else runs[runs.length - 1].push(`${x(i).toFixed(1)},${y(v).toFixed(1)}`);
    });
    const total = s.values.reduce((sum, v) => sum + (v || 0), 0);
    const group = svg("g", { class: "series", "data-series": s.name, "data-total": Math.round(total * 100) / 100,
                             "data-values": s.values.map((v) => (v === null || v === undefined ? "" : v)).join(",") });
    for (const run of runs.filter((r) => r.length)) {
      group.append(svg("polyline", { points: run.join(" "), fill: "none", stroke: s.color, "stroke-width": 1.6 }));
    }
    s.values.forEach((v, i) => {
      if (v === null || v === undefined || (v === 0 && s.skipZero !== false)) return;
      const dot = svg("circle", { cx: x(i), cy: y(v), r: 2.2, fill: s.color });
      const tip = svg("title");
      tip.textContent = `${labels[i]}: ${s.name} ${format(v)}`;
      dot.append(tip);
      group.append(dot);
    });
    chart.append(group);
  }
  return chart;
}

export function legend(series) {
  const box = document.createElement("div");
  box.className = "legend";
  for (const s of series) {
    const item = document.createElement("span");
    const swatch = document.createElement("i");
    swatch.style.background = s.color;
    item.append(swatch, s.name);
    box.append(item);
  }
  return box;
}

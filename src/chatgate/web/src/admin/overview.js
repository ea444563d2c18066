// Overview: everyone's requests over a chosen range, per hour (GET /admin/analytics/global): requests,
// tokens, error rate, latency p50/p95, cache hit rate; by kind and by model. Each chart has its numbers
// in a table too (read by screen readers, and by the tests).
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { h } from "../lib/dom.js";
import { formatMs, formatNumber, formatPercent } from "../lib/format.js";
import { table, tiles } from "./widgets.js";

const HOUR = 3600;
const RANGES = [
  ["24", "Last 24 hours"],
  ["168", "Last 7 days"],
  ["720", "Last 30 days"],
  ["custom", "Custom range"],
];
const COLOURS = ["#2f5bd3", "#d9480f", "#2b8a3e", "#ae3ec9"];
let range = { hours: "24", from: null, to: null }; // kept while the dashboard is open

const localInput = (date) => new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);

export function currentWindow() {
  if (range.hours === "custom" && range.from && range.to) return { from: new Date(range.from), to: new Date(range.to) };
  const to = new Date();
  return { from: new Date(to.getTime() - Number(range.hours === "custom" ? 24 : range.hours) * HOUR * 1000), to };
}

export async function renderOverview(view, api) {
  const select = h("select", { id: "range" }, RANGES.map(([v, label]) => h("option", { value: v }, label)));
  select.value = range.hours;
  const { from, to } = currentWindow();
  const fromInput = h("input", { id: "range-from", type: "datetime-local", value: localInput(from) });
  const toInput = h("input", { id: "range-to", type: "datetime-local", value: localInput(to) });
  const custom = h(
    "span",
    { class: "custom-range" },
    h("label", { for: "range-from" }, "From"),
    fromInput,
    h("label", { for: "range-to" }, "To"),
    toInput,
  );
  custom.hidden = range.hours !== "custom";
  select.addEventListener("change", () => (custom.hidden = select.value !== "custom"));
  const body = h("div", { class: "overview-body" });
  const form = h(
    "form",
    { class: "toolbar", "aria-label": "Range" },
    h("label", { for: "range" }, "Range"),
    select,
    custom,
    h("button", { type: "submit", class: "primary" }, "Show"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    range = { hours: select.value, from: fromInput.value, to: toInput.value };
    await draw(body, api);
  });
  view.append(h("h2", {}, "Overview"), form, body);
  await draw(body, api);
}

async function draw(body, api) {
  const { from, to } = currentWindow();
  const query = new URLSearchParams({ from: from.toISOString(), to: to.toISOString() });
  const data = await api.get(`/admin/analytics/global?${query}`);
  const hours = hourly(data);
  const x = hours.map((r) => r.t);
  body.replaceChildren(
    tiles([
      ["Requests", formatNumber(data.requests), "requests"],
      ["Errors", `${formatNumber(data.errors)} (${formatPercent(data.error_rate)})`, "errors"],
      ["Tokens in / out", `${formatNumber(data.tokens_in)} / ${formatNumber(data.tokens_out)}`, "tokens"],
      ["Latency p50 / p95", `${formatMs(data.latency_ms?.p50)} / ${formatMs(data.latency_ms?.p95)}`, "latency"],
      ["Cache hit rate", formatPercent(data.cache_hit_rate), "cache"],
      ["Streams", formatNumber(data.streams), "streams"],
    ]),
    h(
      "div",
      { class: "charts" },
      chart("requests", "Requests per hour", x, [["Requests", hours.map((r) => r.requests)]], formatNumber),
      chart(
        "tokens",
        "Tokens per hour",
        x,
        [
          ["In", hours.map((r) => r.tokens_in)],
          ["Out", hours.map((r) => r.tokens_out)],
        ],
        formatNumber,
      ),
      chart("errors", "Error rate", x, [["Error rate", hours.map((r) => (r.requests ? r.error_rate : null))]], formatPercent, true),
      chart(
        "latency",
        "Latency (ms)",
        x,
        [
          ["p50", hours.map((r) => r.latency_ms?.p50 ?? null)],
          ["p95", hours.map((r) => r.latency_ms?.p95 ?? null)],
        ],
        formatMs,
      ),
      chart("cache", "Cache hit rate", x, [["Hit rate", hours.map((r) => (r.requests ? r.cache_hit_rate : null))]], formatPercent, true),
    ),
    breakdown("By kind", "Kind", data.by_kind ?? {}),
    breakdown("By model", "Model", data.by_model ?? {}),
  );
}

/** One row per hour of the range, the hours without requests as zeros. */
function hourly(data) {
  const seen = new Map((data.by_hour ?? []).map((r) => [Math.floor(Date.parse(r.hour) / 1000), r]));
  const start = Math.floor(Date.parse(data.from) / 1000 / HOUR) * HOUR;
  const end = Date.parse(data.to) / 1000;
  const rows = [];
  for (let t = start; t < end; t += HOUR) {
    rows.push({ t, requests: 0, tokens_in: 0, tokens_out: 0, error_rate: 0, cache_hit_rate: 0, latency_ms: {}, ...seen.get(t) });
  }
  return rows;
}

function chart(key, title, x, series, format, share = false) {
  const plot = h("div", { class: "plot", "aria-hidden": "true" });
  const total = series.map(([name, ys]) => [name, ys]);
  const numbers = h(
    "table",
    { class: "visually-hidden chart-data" },
    h("caption", {}, title),
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Hour"), total.map(([name]) => h("th", { scope: "col" }, name)))),
    h(
      "tbody",
      {},
      x.map((t, i) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, new Date(t * 1000).toLocaleString()),
          total.map(([, ys]) => h("td", { dataset: { value: ys[i] ?? "" } }, ys[i] == null ? "–" : format(ys[i]))),
        ),
      ),
    ),
  );
  const figure = h("figure", { class: "chart", dataset: { chart: key } }, h("figcaption", {}, title), plot, numbers);
  requestAnimationFrame(() => plotInto(plot, x, series, format, share));
  return figure;
}

function plotInto(plot, x, series, format, share) {
  if (!plot.isConnected) return;
  const width = Math.max(plot.clientWidth, 200);
  const options = {
    width,
    height: 180,
    legend: { show: series.length > 1 },
    cursor: { drag: { x: false, y: false } },
    scales: { x: { time: true }, y: share ? { range: [0, 1] } : { range: (_, min, max) => [0, Math.max(max, 1)] } },
    axes: [{ stroke: "#888" }, { stroke: "#888", values: (_, ticks) => ticks.map((v) => format(v)), size: 60 }],
    series: [{}, ...series.map(([label], i) => ({ label, stroke: COLOURS[i], width: 2, fill: i === 0 ? `${COLOURS[0]}22` : undefined, spanGaps: false }))],
  };
  const chart = new uPlot(options, [x, ...series.map(([, ys]) => ys)], plot);
  const resize = new ResizeObserver(() => {
    if (!plot.isConnected) {
      resize.disconnect();
      chart.destroy();
      return;
    }
    chart.setSize({ width: Math.max(plot.clientWidth, 200), height: 180 });
  });
  resize.observe(plot);
}

function breakdown(caption, what, groups) {
  const rows = Object.entries(groups).map(([name, g]) => [
    name || "(none)",
    formatNumber(g.requests),
    formatPercent(g.error_rate),
    formatNumber(g.tokens_in),
    formatNumber(g.tokens_out),
    formatMs(g.latency_ms?.p50),
    formatMs(g.latency_ms?.p95),
    formatPercent(g.cache_hit_rate),
  ]);
  return h(
    "section",
    { class: "breakdown", dataset: { breakdown: what.toLowerCase() } },
    table(
      caption,
      [[what], ["Requests", true], ["Error rate", true], ["Tokens in", true], ["Tokens out", true], ["p50", true], ["p95", true], ["Cache hits", true]],
      rows,
      { empty: "No requests in this range." },
    ),
  );
}

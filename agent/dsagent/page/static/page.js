// The agent's live page. Backfills the charts once through the Prometheus API (/api/v1/query_range),
// then follows /api/page/events: one Server-Sent Event a second with /api/status's JSON and the instant
// queries below (same evaluator, same `data` format as /api/v1/query). No framework, no build step.
"use strict";

const STEP_SECONDS = 1;
const MAX_WINDOW_SECONDS = 900;
const STALE_AFTER_MS = 4000;
const OK_FINISH_REASONS = new Set(["stop", "length"]);
const ERROR_WINDOW_SECONDS = 30;
const COLORS = ["#2c6bd0", "#d0342c", "#1f9d55", "#d68a00", "#7b4bc4", "#0f9aa8", "#b8447a", "#5c6b7a"];

// Charts: each series entry is one selector; a selector may return several series (labelBy names them).
const CHARTS = [
  {id: "chart-latency", unit: "s", series: [
    {q: "inference_latency_p50_seconds", label: "p50 latency"},
    {q: "inference_latency_p99_seconds", label: "p99 latency"},
    {q: "inference_ttft_p50_seconds", label: "p50 TTFT"},
    {q: "inference_ttft_p99_seconds", label: "p99 TTFT"}]},
  {id: "chart-qps", series: [{q: "inference_qps", label: "QPS"}]},
  {id: "chart-tokens", series: [{q: "inference_output_tokens_per_second", label: "tokens/s"}]},
  {id: "chart-errors", unit: "%", derived: "errors", series: []},
  {id: "chart-queue", series: [
    {q: "dsagent_engine_requests_running", label: "running"},
    {q: "dsagent_engine_requests_waiting", label: "waiting"}]},
  {id: "chart-kv", unit: "%", series: [{q: "dsagent_engine_kv_cache_usage_ratio", label: "KV cache use", scale: 100}]},
  {id: "chart-knobs", series: [{q: "dsagent_engine_knob_value", labelBy: "knob"}]},
  {id: "chart-gpu", unit: "%", series: [{q: "dsagent_gpu_utilization_ratio", labelBy: "gpu_index", prefix: "GPU ", scale: 100}]},
];
const REQUESTS_QUERY = "inference_requests_total";
// active throttle reasons only (a comparison filter: 9 reasons x N GPUs would be most of each event's bytes)
const THROTTLE_QUERY = "dsagent_gpu_clock_throttle_active > 0";
const TABLE_QUERIES = ["dsagent_gpu_sm_clock_hertz", "dsagent_gpu_memory_clock_hertz", THROTTLE_QUERY,
  "dsagent_gpu_xid_errors_total", "dsagent_engine_knob_info"];
const CHART_QUERIES = [...new Set(CHARTS.flatMap(c => c.series.map(s => s.q)))];
const STREAM_QUERIES = [...CHART_QUERIES, REQUESTS_QUERY, ...TABLE_QUERIES];

// ---- time series kept in the page: one shared time axis, one array per series ---------------------
const state = {xs: [], series: new Map(), charts: new Map(), ticks: 0, lastEventMs: 0, windowSeconds: 600,
  backfilled: false, source: null, sloLines: []};

function seriesKey(query, metric) {
  const labels = Object.keys(metric).filter(k => k !== "__name__").sort().map(k => `${k}=${metric[k]}`).join(",");
  return `${query}{${labels}}`;
}

function ensureSeries(key, meta) {
  let entry = state.series.get(key);
  if (!entry) {
    entry = {...meta, ys: new Array(state.xs.length).fill(null)};
    state.series.set(key, entry);
  }
  return entry;
}

function describe(chartSeries, metric) {
  if (chartSeries.labelBy) return (chartSeries.prefix || "") + (metric[chartSeries.labelBy] ?? "?");
  return chartSeries.label || metric.__name__;
}

function chartSeriesFor(query) {
  const found = [];
  for (const chart of CHARTS) for (const s of chart.series) if (s.q === query) found.push([chart, s]);
  return found;
}

function num(text) { const v = parseFloat(text); return Number.isFinite(v) ? v : null; }

function trim(nowSeconds) {
  const cutoff = nowSeconds - state.windowSeconds;
  let drop = 0;
  while (drop < state.xs.length && state.xs[drop] < cutoff) drop++;
  if (!drop) return;
  state.xs.splice(0, drop);
  for (const entry of state.series.values()) entry.ys.splice(0, drop);
}

function meta(query, metric) {
  const [chart, s] = chartSeriesFor(query)[0] || [null, {}];
  return {query, chartId: chart ? chart.id : null, label: describe(s, metric), scale: s.scale || 1, metric};
}

// Backfill: one query_range per selector over the window, on a 1 s grid.
async function backfill() {
  const end = Math.floor(Date.now() / 1000);
  const start = end - state.windowSeconds;
  const grid = [];
  for (let t = start; t <= end; t += STEP_SECONDS) grid.push(t);
  state.xs = grid;
  const index = new Map(grid.map((t, i) => [t, i]));
  await Promise.all([...CHART_QUERIES, REQUESTS_QUERY].map(async query => {
    const params = new URLSearchParams({query, start, end, step: STEP_SECONDS});
    let body;
    try {
      body = await (await fetch(`/api/v1/query_range?${params}`)).json();
    } catch (err) {
      return;  // the stream's banner reports an unreachable agent
    }
    if (body.status !== "success") {
      for (const [chart] of chartSeriesFor(query)) chartError(chart.id, `${query}: ${body.error}`);
      return;
    }
    for (const result of body.data.result) {
      const entry = ensureSeries(seriesKey(query, result.metric), meta(query, result.metric));
      for (const [t, v] of result.values) {
        const i = index.get(Math.round(t));
        if (i !== undefined) entry.ys[i] = num(v);
      }
    }
  }));
  // a young agent has less history than the window: start the axis at its first point
  let first = state.xs.length;
  for (const entry of state.series.values()) {
    const i = entry.ys.findIndex(v => v !== null);
    if (i >= 0 && i < first) first = i;
  }
  if (first > 0) {
    state.xs.splice(0, first);
    for (const entry of state.series.values()) entry.ys.splice(0, first);
  }
  state.backfilled = true;
  renderCharts();
}

function appendTick(event) {
  const t = Math.round(event.time * 1000) / 1000;
  if (state.xs.length && t <= state.xs[state.xs.length - 1]) return;
  state.xs.push(t);
  for (const entry of state.series.values()) entry.ys.push(null);
  for (const query of [...CHART_QUERIES, REQUESTS_QUERY]) {
    const answer = event.queries[query];
    if (!answer) continue;
    if (answer.status !== "success") {
      for (const [chart] of chartSeriesFor(query)) chartError(chart.id, `${query}: ${answer.error}`);
      continue;
    }
    for (const result of answer.data.result) {
      const entry = ensureSeries(seriesKey(query, result.metric), meta(query, result.metric));
      entry.ys[entry.ys.length - 1] = num(result.value[1]);
    }
  }
  trim(t);
}

// Error rate: share of finished requests in the last 30 s whose finish reason is not stop/length.
function errorRateSeries() {
  const reasons = [...state.series.values()].filter(e => e.query === REQUESTS_QUERY);
  const ys = new Array(state.xs.length).fill(null);
  let j = 0;
  for (let i = 0; i < state.xs.length; i++) {
    while (state.xs[j] < state.xs[i] - ERROR_WINDOW_SECONDS) j++;
    let total = 0, errors = 0, seen = false;
    for (const entry of reasons) {
      const now = entry.ys[i];
      let before = null;
      for (let k = j; k < i && before === null; k++) before = entry.ys[k];
      if (now === null || before === null) continue;
      seen = true;
      const delta = Math.max(0, now - before);
      total += delta;
      if (!OK_FINISH_REASONS.has(entry.metric.finish_reason)) errors += delta;
    }
    ys[i] = seen ? (total > 0 ? 100 * errors / total : 0) : null;
  }
  return ys;
}

// ---- charts -----------------------------------------------------------------------------------------
function fmt(v, unit) {
  if (v === null || v === undefined) return "-";
  if (v === 0) return unit === "%" ? "0 %" : unit === "s" ? "0 s" : "0";
  if (unit === "s") return v < 1 ? `${(v * 1000).toFixed(v < 0.01 ? 2 : 0)} ms` : `${v.toFixed(2)} s`;
  if (unit === "%") return `${v.toFixed(1)} %`;
  const a = Math.abs(v);
  if (a >= 1e9) return `${(v / 1e9).toFixed(2)}G`;
  if (a >= 1e6) return `${(v / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${(v / 1e3).toFixed(1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function chartError(chartId, message) {
  const el = document.getElementById(chartId);
  let box = el.querySelector(".panel-error");
  if (!box) { box = document.createElement("div"); box.className = "panel-error"; el.appendChild(box); }
  box.textContent = message;
}

function chartData(chart) {
  if (chart.derived === "errors") return {labels: ["error rate"], columns: [errorRateSeries()]};
  const entries = [...state.series.values()].filter(e => e.chartId === chart.id)
    .sort((a, b) => a.label.localeCompare(b.label, undefined, {numeric: true}));
  const labels = entries.map(e => e.label);
  const columns = entries.map(e => e.scale === 1 ? e.ys : e.ys.map(v => v === null ? null : v * e.scale));
  if (chart.id === "chart-latency" && entries.length) {
    for (const line of state.sloLines) {  // the SLO as the loaded rules state it, drawn across the window
      labels.push(line.label);
      columns.push(state.xs.map(() => line.value));
    }
  }
  return {labels, columns};
}

// SLO lines: alerting rules comparing a latency/TTFT quantile with a constant (`histogram_quantile(0.99,
// ...inference_latency_seconds_bucket...) > 0.2`, `inference_latency_p99_seconds > 0.2`).
const SLO_THRESHOLD = />\s*([0-9.]+(?:e-?[0-9]+)?)\s*$/;
const SLO_QUANTITY = /inference_(?:latency|ttft)/;
const SLO_QUANTILE = /histogram_quantile|_p[0-9]{2}_/;
function sloLinesFrom(groups) {
  const lines = [];
  for (const group of groups) for (const rule of group.rules || []) {
    if (rule.type !== "alerting" || !rule.query) continue;
    const query = rule.query.trim();
    const match = SLO_THRESHOLD.exec(query);
    if (!match || !SLO_QUANTITY.test(query) || !SLO_QUANTILE.test(query)) continue;
    const value = parseFloat(match[1]);
    lines.push({label: `SLO: ${rule.name} (${fmt(value, "s")})`, value});
  }
  return lines;
}

function renderCharts() {
  for (const chart of CHARTS) {
    const el = document.getElementById(chart.id);
    const {labels, columns} = chartData(chart);
    const signature = labels.join("|");
    let held = state.charts.get(chart.id);
    if (!labels.length) {
      if (!el.querySelector(".chart-empty")) {
        el.replaceChildren(title(el), Object.assign(document.createElement("div"), {className: "chart-empty", textContent: "no data yet"}));
      }
      continue;
    }
    const data = [state.xs, ...columns];
    if (held && held.signature === signature) {
      held.plot.setData(data);
      continue;
    }
    if (held) held.plot.destroy();
    el.replaceChildren(title(el));
    const opts = {
      width: Math.max(300, el.clientWidth || 400), height: 170,
      series: [{}, ...labels.map((label, i) => ({label, stroke: COLORS[i % COLORS.length], width: 1.5,
        value: (u, v) => fmt(v, chart.unit)}))],
      axes: [{}, {size: 64, values: (u, vals) => vals.map(v => fmt(v, chart.unit))}],
      scales: {x: {time: true}, y: chart.unit === "%" ? {range: (u, min, max) => [0, Math.max(100, max || 0)]} : {}},
      legend: {live: true},
      cursor: {drag: {x: false, y: false}},
    };
    const plot = new uPlot(opts, data, el);
    state.charts.set(chart.id, {plot, signature});
  }
}

function title(el) {
  return Object.assign(document.createElement("div"), {className: "chart-title", textContent: el.dataset.title});
}

window.addEventListener("resize", () => {
  for (const [id, held] of state.charts) held.plot.setSize({width: Math.max(300, document.getElementById(id).clientWidth), height: 170});
});

// ---- panels -----------------------------------------------------------------------------------------
function $(id) { return document.getElementById(id); }
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }
function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  td.title = text;  // cut cells (rule expressions, reasons) show in full on hover
  if (className) td.className = className;
  return td;
}
function row(cells) { const tr = document.createElement("tr"); tr.append(...cells); return tr; }

function panelError(panelId, message) {
  const box = document.querySelector(`#${panelId} > .panel-error`);
  if (!box) return;
  box.hidden = !message;
  box.textContent = message || "";
}

function vectorByLabel(event, query, label) {
  const answer = event.queries[query];
  const out = new Map();
  if (!answer || answer.status !== "success") return out;
  for (const r of answer.data.result) {
    const key = r.metric[label];
    if (!out.has(key)) out.set(key, []);
    out.get(key).push({metric: r.metric, value: num(r.value[1])});
  }
  return out;
}

function renderEngine(event, status) {
  const engine = status.engine || {};
  const el = $("engine-state");
  el.textContent = engine.state || "?";
  el.className = `state ${engine.state || ""}`;
  setText("engine-restarts", String(engine.restarts_total ?? "-"));
  setText("engine-running", fmt(engine.requests_running ?? null));
  setText("engine-waiting", fmt(engine.requests_waiting ?? null));
  setText("engine-kv", engine.kv_cache_usage_ratio == null ? "-" : `${(100 * engine.kv_cache_usage_ratio).toFixed(1)} %`);
  setText("requests-total", String(status.agent?.requests_received_total ?? "-"));
  setText("engine-detail", `${engine.kind || "?"} at ${engine.url || "?"}${engine.reason ? ": " + engine.reason : ""}`);
  const source = (status.sources || {}).engine;
  panelError("engine-panel", source && !source.ok ? `engine scrape failing: ${source.error}` : "");
  const knobs = [];
  for (const [knob, items] of vectorByLabel(event, "dsagent_engine_knob_value", "knob")) knobs.push(`${knob} = ${fmt(items[0].value)}`);
  for (const [knob, items] of vectorByLabel(event, "dsagent_engine_knob_info", "knob")) knobs.push(`${knob} = ${items[0].metric.value}`);
  const box = $("knobs");
  const text = knobs.sort().join("\n");
  if (box.dataset.text !== text) {
    box.dataset.text = text;
    box.replaceChildren(...(knobs.length ? knobs.map(k => Object.assign(document.createElement("span"), {className: "knob", textContent: k}))
      : [document.createTextNode("no knob values (engine not scraped yet)")]));
  }
}

function renderSlo(status) {
  const slo = status.slo || {};
  setText("slo-window", slo.window_seconds ? `(last ${slo.window_seconds} s)` : "");
  setText("slo-qps", fmt(slo.qps ?? null));
  setText("slo-p50", fmt(slo.latency_p50_seconds ?? null, "s"));
  setText("slo-p99", fmt(slo.latency_p99_seconds ?? null, "s"));
  setText("slo-ttft99", fmt(slo.ttft_p99_seconds ?? null, "s"));
  setText("slo-tps", fmt(slo.output_tokens_per_second ?? null));
  const errors = errorRateSeries();
  setText("slo-errors", fmt(errors.length ? errors[errors.length - 1] : null, "%"));
}

function renderGpus(event, status) {
  const gpus = status.gpus || {};
  const devices = gpus.devices || [];
  const sm = vectorByLabel(event, "dsagent_gpu_sm_clock_hertz", "gpu_index");
  const mem = vectorByLabel(event, "dsagent_gpu_memory_clock_hertz", "gpu_index");
  const throttle = vectorByLabel(event, THROTTLE_QUERY, "gpu_index");
  const xid = vectorByLabel(event, "dsagent_gpu_xid_errors_total", "gpu_index");
  const gib = b => b == null ? "-" : `${(b / 2 ** 30).toFixed(1)} GiB`;
  const mhz = items => items && items[0].value != null ? `${(items[0].value / 1e6).toFixed(0)} MHz` : "-";
  const rows = devices.map(d => {
    const reasons = (throttle.get(String(d.index)) || []).filter(i => i.value).map(i => i.metric.reason).sort();
    const xids = xid.get(String(d.index));
    return row([cell(String(d.index)), cell(d.name || "-"),
      cell(d.utilization_ratio == null ? "-" : `${(100 * d.utilization_ratio).toFixed(0)} %`),
      cell(`${gib(d.memory_used_bytes)} / ${gib(d.memory_total_bytes)}`),
      cell(d.temperature_celsius == null ? "-" : `${d.temperature_celsius.toFixed(0)} °C`),
      cell(d.power_draw_watts == null ? "-" : `${d.power_draw_watts.toFixed(0)} W`),
      cell(mhz(sm.get(String(d.index)))), cell(mhz(mem.get(String(d.index)))),
      cell(reasons.length ? reasons.join(", ") : "none"),
      cell(xids ? fmt(xids[0].value) : "-", xids && xids[0].value ? "firing" : "")]);
  });
  $("gpu-table").querySelector("tbody").replaceChildren(...rows);
  $("gpu-table").hidden = !devices.length;
  const none = $("gpu-none");
  none.hidden = devices.length > 0;
  none.textContent = devices.length ? "" : `no GPU: ${gpus.none_reason || "unknown reason"}`;
  const failing = Object.entries(status.sources || {}).filter(([name, s]) => name.startsWith("gpu") && !s.ok);
  panelError("gpu-panel", failing.map(([name, s]) => `${name} failing: ${s.error}`).join("; "));
}

function renderRules(event) {
  if (!("rules" in event)) return;  // sent every few events
  const body = $("rules-table").querySelector("tbody");
  const rules = event.rules;
  if (rules && rules.error) { panelError("rules-panel", `rules: ${rules.error}`); return; }
  panelError("rules-panel", "");
  const groups = rules && rules.rules ? rules.rules.groups || [] : [];
  state.sloLines = sloLinesFrom(groups);
  const rows = [];
  const nowSeconds = event.time;
  for (const group of groups) for (const rule of group.rules || []) {
    let stateText = rule.type === "alerting" ? (rule.state || "inactive") : (rule.health || "ok");
    let detail = rule.lastError ? `error: ${rule.lastError}` : (rule.query || "");
    if (rule.state === "pending" && rule.duration) {
      const since = Math.min(...(rule.alerts || []).map(a => Date.parse(a.activeAt) / 1000).filter(Number.isFinite));
      if (Number.isFinite(since)) stateText += ` (${Math.max(0, rule.duration - (nowSeconds - since)).toFixed(0)} s left)`;
    }
    rows.push(row([cell(`${group.name}/${rule.name}`), cell(stateText, rule.state || ""), cell(detail)]));
  }
  body.replaceChildren(...rows);
  $("rules-table").hidden = !rows.length;
  $("rules-none").hidden = rows.length > 0;
}

function renderActions(status) {
  const actions = status.actions || [];
  const rows = actions.slice().reverse().map(a => {
    const ms = typeof a.timestamp === "number" ? a.timestamp * 1000 : Date.parse(a.timestamp);
    const when = Number.isFinite(ms) ? new Date(ms).toLocaleTimeString() : String(a.timestamp ?? "");
    const target = [a.action, a.knob].filter(Boolean).join(" ") || a.kind || "";
    const change = a.old != null || a.new != null ? ` ${a.old ?? ""} → ${a.new ?? ""}` : "";
    const outcome = String(a.outcome ?? "") + (a.dry_run && a.outcome !== "dry_run" ? " (dry-run)" : "");
    return row([cell(when), cell(String(a.rule ?? "")), cell(target + change), cell(outcome, `outcome-${a.outcome}`),
      cell(String(a.reason ?? ""))]);
  });
  $("actions-table").querySelector("tbody").replaceChildren(...rows);
  $("actions-table").hidden = !rows.length;
  $("actions-none").hidden = rows.length > 0;
}

function renderExport(status) {
  const exp = status.export || {};
  setText("export-destinations", status.agent?.telemetry_destinations || "");
  panelError("export-panel", exp.error ? `export stats: ${exp.error}` : "");
  const byDestination = new Map();
  for (const [key, value] of Object.entries(exp)) {
    const dot = key.lastIndexOf(".");
    if (dot < 0) continue;
    const name = key.slice(0, dot);
    if (!byDestination.has(name)) byDestination.set(name, {});
    byDestination.get(name)[key.slice(dot + 1)] = value;
  }
  const rows = [...byDestination].map(([name, f]) => row([cell(name), cell(fmt(f.sent_documents ?? null)),
    cell(fmt(f.retries ?? null)), cell(fmt(f.dead_lettered_documents ?? null), f.dead_lettered_documents ? "firing" : ""),
    cell(fmt(f.dropped_documents ?? null)), cell(fmt(f.spool_depth_documents ?? null)), cell(fmt(f.spool_bytes ?? null))]));
  $("export-table").querySelector("tbody").replaceChildren(...rows);
}

function renderHeader(status) {
  const agent = status.agent || {};
  setText("agent-version", agent.version ? `${agent.version}` : "");
  setText("agent-summary", `pid ${agent.pid ?? "?"} · up ${fmt(agent.uptime_seconds ?? null, "s")} · data ${agent.data_dir ?? "?"}`);
}

// ---- the stream -------------------------------------------------------------------------------------
function setLive(up, message) {
  const pill = $("live");
  pill.textContent = up ? "live" : "disconnected";
  pill.className = `pill ${up ? "live" : "down"}`;
  const banner = $("banner");
  banner.hidden = up;
  if (!up) banner.textContent = message;
}

function onTick(message) {
  const event = JSON.parse(message.data);
  state.lastEventMs = Date.now();
  state.ticks++;
  setLive(true);
  if (event.retention_seconds) state.windowSeconds = Math.min(MAX_WINDOW_SECONDS, event.retention_seconds);
  if (state.backfilled) appendTick(event);
  if (event.status_error) {
    for (const id of ["engine-panel", "gpu-panel", "export-panel"]) panelError(id, `status unavailable: ${event.status_error}`);
  } else if (event.status) {
    renderHeader(event.status);
    renderEngine(event, event.status);
    renderSlo(event.status);
    renderGpus(event, event.status);
    renderActions(event.status);
    renderExport(event.status);
  }
  renderRules(event);
  if (state.backfilled) renderCharts();
}

function connect() {
  const params = new URLSearchParams();
  for (const q of STREAM_QUERIES) params.append("query", q);
  const source = new EventSource(`/api/page/events?${params}`);
  state.source = source;
  source.addEventListener("tick", onTick);
  source.onerror = async () => {
    if (Date.now() - state.lastEventMs <= 1000) return;
    let up = false;
    try { up = (await fetch("/healthz", {cache: "no-store"})).ok; } catch (err) { up = false; }
    setLive(false, up
      ? `the agent at ${location.host} answers but refuses the page's stream: beyond loopback it needs the server ` +
        "token (open the page through a tunnel to 127.0.0.1); retrying"
      : `agent unreachable at ${location.host}: retrying every 2 s`);
  };
}

setInterval(() => {
  if (state.lastEventMs && Date.now() - state.lastEventMs > STALE_AFTER_MS) {
    setLive(false, `no update from the agent for ${((Date.now() - state.lastEventMs) / 1000).toFixed(0)} s: agent down or unreachable`);
  }
}, 1000);

// For tests and the curious: how many points each chart holds.
window.dsagentPage = {
  ticks: () => state.ticks,
  pointCounts: () => Object.fromEntries(CHARTS.map(c => [c.id, chartData(c).columns.reduce((n, ys) => n + ys.filter(v => v !== null).length, 0)])),
};

backfill().finally(connect);

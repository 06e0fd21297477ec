// The kaos web view: a hash-routed single page over the kaos API (through `kaos ui`'s signing proxy, /api/...).
import { fmt, lineChart, parallelChart, scatterChart } from "./charts.js";

const TOKEN = "kaos.token";
const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
let generation = 0; // bumped on every navigation: a page's pending work checks it and stops when stale
const runsCache = new Map(); // workspace -> jobs, for compare/grid/lineage after the runs table loaded them
let lastLineage = null; // the lineage page's last walk: {ws, depth, answer, known statuses}

(function takeToken() {
  const url = new URL(location.href);
  const token = url.searchParams.get("token");
  if (token) {
    sessionStorage.setItem(TOKEN, token);
    url.searchParams.delete("token");
    history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
})();

async function api(path, query = {}) {
  const params = new URLSearchParams(Object.entries(query).filter(([, v]) => v !== undefined && v !== null));
  const response = await fetch(`/api${path}${params.size ? "?" + params : ""}`,
                               { headers: { "X-Kaos-Token": sessionStorage.getItem(TOKEN) || "" } });
  const body = await response.json();
  if (!response.ok) throw new Error(`${body.error?.code || response.status}: ${body.error?.message || ""}`);
  return body;
}

const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const enc = encodeURIComponent;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const short = (id) => id.length > 18 ? id.slice(0, 18) + "…" : id;
const h = (html) => { const t = document.createElement("template"); t.innerHTML = html.trim(); return t.content.firstElementChild; };

function setCrumbs(ws, extra = []) {
  const links = [`<a href="#/">workspaces</a>`];
  if (ws) links.push(`<a href="#/ws/${enc(ws)}">${esc(ws)}</a>`, `<a href="#/ws/${enc(ws)}/grid">charts</a>`,
                    `<a href="#/ws/${enc(ws)}/models">models</a>`, `<a href="#/ws/${enc(ws)}/endpoints">endpoints</a>`);
  crumbs.innerHTML = links.concat(extra).join("");
}

// --- routing ---------------------------------------------------------------------------------------------------
const routes = [
  [/^#?\/?$/, workspacesPage],
  [/^#\/ws\/([^/]+)$/, runsPage],
  [/^#\/ws\/([^/]+)\/compare\/([^/]+)$/, comparePage],
  [/^#\/ws\/([^/]+)\/job\/([^/]+)$/, jobPage],
  [/^#\/ws\/([^/]+)\/lineage\/([^/]+)$/, lineagePage],
  [/^#\/ws\/([^/]+)\/grid$/, gridPage],
  [/^#\/ws\/([^/]+)\/models$/, modelsPage],
  [/^#\/ws\/([^/]+)\/models\/([^/]+)$/, modelGroupPage],
  [/^#\/ws\/([^/]+)\/endpoints$/, endpointsPage],
  [/^#\/ws\/([^/]+)\/endpoints\/([^/]+)$/, endpointPage],
];

async function route() {
  const mine = ++generation;
  for (const key of Object.keys(main.dataset)) delete main.dataset[key]; // a page's flags never outlive it
  const hash = location.hash || "#/";
  for (const [pattern, page] of routes) {
    const match = hash.match(pattern);
    if (match) {
      try {
        await page(() => mine === generation, ...match.slice(1).map(decodeURIComponent));
      } catch (error) {
        if (mine === generation) main.replaceChildren(h(`<p class="error">${esc(error.message)}</p>`));
      }
      return;
    }
  }
  main.innerHTML = `<p class="error">no such page: ${esc(hash)}</p>`;
}
window.addEventListener("hashchange", route);
route();

// --- workspaces ------------------------------------------------------------------------------------------------
async function workspacesPage() {
  setCrumbs(null);
  const { workspaces } = await api("/workspaces");
  const rows = workspaces.map((w) => {
    const name = typeof w === "string" ? w : w.name;
    return `<tr><td><a href="#/ws/${enc(name)}">${esc(name)}</a></td><td>${esc(w.owner || "")}</td><td>${esc(w.created_at || "")}</td></tr>`;
  }).join("");
  main.innerHTML = `<h1>Workspaces</h1><table id="workspaces"><thead><tr><th>name</th><th>owner</th><th>created</th></tr></thead>
    <tbody>${rows || `<tr><td colspan="3" class="muted">none yet: kaos workspace create NAME</td></tr>`}</tbody></table>`;
}

// --- runs ------------------------------------------------------------------------------------------------------
async function loadRuns(ws, live, onPage) {
  const jobs = [];
  let cursor = null;
  do {
    // A small first page draws the table sooner; the rest comes in the largest pages the API gives.
    const page = await api(`/workspaces/${enc(ws)}/jobs`, { limit: jobs.length ? 200 : 50, cursor });
    jobs.push(...page.jobs);
    cursor = page.next;
    if (onPage) onPage(jobs, Boolean(cursor));
  } while (cursor && live());
  runsCache.set(ws, jobs);
  return jobs;
}

const duration = (j) => j.started_at && j.ended_at ? (Date.parse(j.ended_at) - Date.parse(j.started_at)) / 1000 : undefined;
const BASE = { id: (j) => j.id, status: (j) => j.status, kind: (j) => j.kind, created: (j) => j.created_at,
               "duration s": duration, cost: (j) => costOf(j) };

function costOf(job) {
  const c = job.cost;
  if (c === undefined || c === null) return undefined;
  if (typeof c === "number") return c;
  for (const key of ["total_usd", "usd", "total"]) if (typeof c[key] === "number") return c[key];
  return undefined;
}

// Column keys: "id" (base), "param:lr", "metric:accuracy", "series:loss.min".
function columnsOf(jobs) {
  const params = new Set(), metrics = new Set(), series = new Set();
  for (const j of jobs) {
    Object.keys(j.hyperparameters || {}).forEach((k) => params.add(k));
    Object.keys(j.metrics || {}).forEach((k) => metrics.add(k));
    Object.keys(j.metric_series || {}).forEach((k) => series.add(k));
  }
  return [...Object.keys(BASE), ...[...params].sort().map((p) => `param:${p}`),
          ...[...metrics].sort().map((m) => `metric:${m}`),
          ...[...series].sort().flatMap((s) => ["min", "max", "last"].map((a) => `series:${s}.${a}`))];
}

function value(job, column) {
  if (column in BASE) return BASE[column](job);
  const [kind, name] = [column.slice(0, column.indexOf(":")), column.slice(column.indexOf(":") + 1)];
  if (kind === "param") return (job.hyperparameters || {})[name];
  if (kind === "metric") return (job.metrics || {})[name];
  const dot = name.lastIndexOf(".");
  return ((job.metric_series || {})[name.slice(0, dot)] || {})[name.slice(dot + 1)];
}

function compare(a, b) {
  const missingA = a === undefined || a === null, missingB = b === undefined || b === null;
  if (missingA || missingB) return missingA - missingB;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b));
}

// "lr>=0.1 accuracy>0.9 loss.min<0.3 status=FAILED": every condition must hold.
function parseFilter(text, columns) {
  const conditions = [];
  for (const part of text.split(/[\s,]+/).filter(Boolean)) {
    const m = part.match(/^([^<>=!]+)(>=|<=|!=|=|>|<)(.+)$/);
    if (!m) throw new Error(`filter: "${part}" is not NAME OP VALUE (OP one of = != < > <= >=)`);
    const [, name, op, raw] = m;
    const column = [name, `param:${name}`, `metric:${name}`, `series:${name}`, `series:${name}.last`].find((c) => columns.includes(c));
    if (!column) throw new Error(`filter: no column "${name}"`);
    const want = Number.isNaN(Number(raw)) ? raw : Number(raw);
    conditions.push((job) => {
      const v = value(job, column);
      if (v === undefined || v === null) return false;
      const c = compare(v, want);
      return { "=": c === 0, "!=": c !== 0, "<": c < 0, ">": c > 0, "<=": c <= 0, ">=": c >= 0 }[op];
    });
  }
  return (job) => conditions.every((f) => f(job));
}

function storedJson(key, fallback) {
  try { return JSON.parse(localStorage.getItem(key)) ?? fallback; } catch { return fallback; }
}

async function runsPage(live, ws) {
  const started = performance.now();
  setCrumbs(ws);
  const columnsKey = `kaos.columns.${ws}`, sortKey = `kaos.sort.${ws}`;
  main.innerHTML = `<h1>Runs of ${esc(ws)}</h1>
    <div class="toolbar">
      <select id="status"><option value="">any status</option></select>
      <input id="filter" type="text" placeholder="filter: lr>=0.1 accuracy>0.9 loss.min<0.3">
      <details class="columns"><summary>columns</summary><div id="chooser"></div></details>
      <button id="compare" disabled>compare</button>
      <span id="count" class="muted"></span><span id="filter-error" class="error"></span>
    </div>
    <table id="runs"><thead></thead><tbody></tbody></table>`;
  const state = { jobs: [], sort: storedJson(sortKey, { column: "created", desc: true }), selected: new Set() };
  const $ = (id) => main.querySelector(`#${id}`);
  let all = [], chosen = [];

  function chooseDefaults() {
    const stored = storedJson(columnsKey, null);
    if (stored) return stored.filter((c) => all.includes(c));
    const params = all.filter((c) => c.startsWith("param:")).slice(0, 6);
    return ["id", "status", "created", "duration s", ...params, ...all.filter((c) => c.startsWith("metric:")),
            ...all.filter((c) => c.startsWith("series:") && c.endsWith(".last"))];
  }

  function renderChooser() {
    $("chooser").innerHTML = all.map((c) => `<label><input type="checkbox" data-column="${esc(c)}"${chosen.includes(c) ? " checked" : ""}> ${esc(c)}</label>`).join("");
  }

  function renderStatus() {
    const current = $("status").value;
    const statuses = [...new Set(state.jobs.map((j) => j.status))].sort();
    $("status").innerHTML = `<option value="">any status</option>` + statuses.map((s) => `<option${s === current ? " selected" : ""}>${esc(s)}</option>`).join("");
  }

  function renderRows() {
    let predicate = () => true;
    try {
      predicate = parseFilter($("filter").value, all);
      $("filter-error").textContent = "";
    } catch (error) {
      $("filter-error").textContent = error.message;
    }
    const status = $("status").value;
    const { column, desc } = state.sort;
    // Each run's sort value is read once, not once per comparison.
    const keyed = state.jobs.filter((j) => (!status || j.status === status) && predicate(j))
      .map((j) => [value(j, column) ?? null, j]);
    keyed.sort(([a], [b]) => {
      const c = compare(a, b);
      return a === null || b === null ? c : desc ? -c : c; // runs without the value stay last either way
    });
    const rows = keyed.map(([, j]) => j);
    main.querySelector("thead").innerHTML = `<tr><th></th>${chosen.map((c) => `<th data-column="${esc(c)}" class="${c === column ? (desc ? "sorted-desc" : "sorted-asc") : ""}">${esc(c.replace(/^(param|metric|series):/, ""))}</th>`).join("")}</tr>`;
    const body = rows.map((j) => `<tr data-id="${esc(j.id)}"><td><input type="checkbox" data-select="${esc(j.id)}"${state.selected.has(j.id) ? " checked" : ""}></td>${chosen.map((c) => {
      const v = value(j, c);
      if (c === "id") return `<td class="mono"><a href="#/ws/${enc(ws)}/job/${enc(j.id)}">${esc(j.id)}</a></td>`;
      if (c === "status") return `<td class="status-${esc(v)}">${esc(v)}</td>`;
      return typeof v === "number" ? `<td class="num">${fmt(v)}</td>` : `<td>${esc(typeof v === "object" && v !== null ? JSON.stringify(v) : v)}</td>`;
    }).join("")}</tr>`).join("");
    main.querySelector("tbody").innerHTML = body;
    $("count").textContent = `${rows.length} of ${state.jobs.length} runs${state.more ? " (loading more…)" : ""}`;
  }

  main.querySelector("thead").addEventListener("click", (event) => {
    const column = event.target.closest("th")?.dataset.column;
    if (!column) return;
    state.sort = { column, desc: state.sort.column === column ? !state.sort.desc : false };
    localStorage.setItem(sortKey, JSON.stringify(state.sort));
    renderRows();
  });
  $("chooser").addEventListener("change", (event) => {
    const column = event.target.dataset.column;
    chosen = event.target.checked ? all.filter((c) => c === column || chosen.includes(c)) : chosen.filter((c) => c !== column);
    localStorage.setItem(columnsKey, JSON.stringify(chosen));
    renderRows();
  });
  $("status").addEventListener("change", renderRows);
  $("filter").addEventListener("input", renderRows);
  main.querySelector("tbody").addEventListener("change", (event) => {
    const id = event.target.dataset.select;
    if (!id) return;
    if (event.target.checked) state.selected.add(id); else state.selected.delete(id);
    $("compare").disabled = state.selected.size < 2;
    $("compare").textContent = `compare ${state.selected.size || ""}`.trim();
  });
  $("compare").addEventListener("click", () => {
    location.hash = `#/ws/${enc(ws)}/compare/${[...state.selected].map(enc).join(",")}`;
  });

  await loadRuns(ws, live, (jobs, more) => {
    if (!live()) return;
    const first = !state.jobs.length;
    state.jobs = jobs;
    state.more = more;
    // The first page is drawn at once; the pages after it are drawn together once the last one is in (each draw
    // rebuilds the table: drawing every page would draw the first runs once per page).
    if (first || !more) {
      all = columnsOf(jobs);
      chosen = chooseDefaults();
      renderChooser();
      renderStatus();
      renderRows();
    } else {
      $("count").textContent = `${state.jobs.length} runs loaded (loading more…)`;
    }
    if (first) measureFirstRender(ws, started);
    main.dataset.loaded = more ? "partial" : "all";
  });
}

// Where the first render's time goes, for the browser test to print: the first page's request (Resource Timing:
// its time and size) and the whole, from this page's start and from the navigation's.
function measureFirstRender(ws, started) {
  const now = performance.now();
  const request = performance.getEntriesByType("resource").filter((e) => e.name.includes(`/api/workspaces/${enc(ws)}/jobs?`)).pop();
  Object.assign(main.dataset, {
    firstRenderMs: String(Math.round(now - started)), firstRenderFromNavigationMs: String(Math.round(now)),
    firstRequestMs: request ? String(Math.round(request.responseEnd - request.startTime)) : "",
    firstRequestBytes: request ? String(request.decodedBodySize) : "",
  });
}

// --- compare ---------------------------------------------------------------------------------------------------
async function metricPoints(ws, jobId) {
  const points = [];
  let next = null, summary = {};
  do {
    const page = await api(`/workspaces/${enc(ws)}/jobs/${enc(jobId)}/metrics`, { limit: 10000, next });
    points.push(...page.points);
    summary = page.summary;
    next = page.next;
  } while (next);
  const byMetric = {};
  for (const p of points) (byMetric[p.metric] ||= []).push([p.step, p.value]);
  return { summary, byMetric };
}

function chartsOf(byRun, log) {
  const names = [...new Set(byRun.flatMap(({ series }) => Object.keys(series.byMetric)))].sort();
  const box = h(`<div class="charts"></div>`);
  for (const name of names) {
    box.append(lineChart(byRun.filter(({ series }) => series.byMetric[name])
      .map(({ label, series }) => ({ name: label, points: series.byMetric[name] })), { title: name, log }));
  }
  if (!names.length) box.append(h(`<p class="muted">no metrics logged over time</p>`));
  return box;
}

async function comparePage(live, ws, ids) {
  setCrumbs(ws);
  const jobIds = ids.split(",").filter(Boolean);
  const jobs = await Promise.all(jobIds.map((id) => api(`/workspaces/${enc(ws)}/jobs/${enc(id)}`)));
  const series = await Promise.all(jobIds.map((id) => metricPoints(ws, id)));
  if (!live()) return;
  const params = await Promise.all(jobs.map(async (j) => j.hyperparameters ??
    (await api(`/workspaces/${enc(ws)}/jobs/${enc(j.id)}/files`, { what: "params" })).params));
  const names = [...new Set(params.flatMap((p) => Object.keys(p || {})))].sort();
  const differs = (n) => new Set(params.map((p) => JSON.stringify((p || {})[n]))).size > 1;
  const metricNames = [...new Set(jobs.flatMap((j) => Object.keys(j.metrics || {})))].sort();
  const seriesNames = [...new Set(series.flatMap((s) => Object.keys(s.summary)))].sort();
  main.innerHTML = `<h1>Compare ${jobs.length} runs</h1>
    <div class="toolbar"><label><input type="checkbox" id="all-params"> show identical params too</label>
      <label><input type="checkbox" id="log"> log scale</label></div>
    <table id="compare-table"><thead><tr><th></th>${jobs.map((j) => `<th><a href="#/ws/${enc(ws)}/job/${enc(j.id)}">${esc(short(j.id))}</a></th>`).join("")}</tr></thead><tbody></tbody></table>
    <h2>Metrics over steps</h2><div id="charts"></div>`;
  const body = main.querySelector("tbody");
  const row = (label, cells, cls = "") => `<tr class="${cls}"><td>${esc(label)}</td>${cells.map((v) => typeof v === "number" ? `<td class="num">${fmt(v)}</td>` : `<td>${esc(v ?? "")}</td>`).join("")}</tr>`;
  function render() {
    const showAll = main.querySelector("#all-params").checked;
    const shown = names.filter((n) => showAll || differs(n));
    body.innerHTML = row("status", jobs.map((j) => j.status)) +
      shown.map((n) => row(`param ${n}`, params.map((p) => { const v = (p || {})[n]; return typeof v === "object" ? JSON.stringify(v) : v; }), "param" + (differs(n) ? " differs" : ""))).join("") +
      (shown.length ? "" : `<tr><td colspan="${jobs.length + 1}" class="muted">no params differ</td></tr>`) +
      metricNames.map((m) => row(`metric ${m}`, jobs.map((j) => (j.metrics || {})[m]), "metric")).join("") +
      seriesNames.flatMap((s) => ["min", "max", "last"].map((a) => row(`${s} ${a}`, series.map((x) => (x.summary[s] || {})[a]), "series"))).join("");
    main.querySelector("#charts").replaceChildren(chartsOf(jobs.map((j, i) => ({ label: short(j.id), series: series[i] })), main.querySelector("#log").checked));
  }
  main.querySelector("#all-params").addEventListener("change", render);
  main.querySelector("#log").addEventListener("change", render);
  render();
}

// --- job -------------------------------------------------------------------------------------------------------
function kv(pairs) {
  return `<table class="kv"><tbody>${pairs.filter(([, v]) => v !== undefined && v !== null && v !== "")
    .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v}</td></tr>`).join("")}</tbody></table>`;
}

async function jobPage(live, ws, id) {
  setCrumbs(ws, [`<a href="#/ws/${enc(ws)}/lineage/${enc("job:" + id)}">lineage</a>`]);
  const base = `/workspaces/${enc(ws)}/jobs/${enc(id)}`;
  const job = await api(base);
  const sources = job.sources || {};
  const snap = (sid) => `<a class="mono" href="#/ws/${enc(ws)}/lineage/${enc("snapshot:" + sid)}">${esc(sid)}</a>`;
  const summary = (j) => kv([["kind", esc(j.kind)], ["created", esc(j.created_at)], ["started", esc(j.started_at)], ["ended", esc(j.ended_at)],
    ["failure", esc(j.failure_reason)], ["environment", `<span class="mono">${esc(j.environment)}</span>`],
    ["resources", esc(JSON.stringify(j.resources))], ["model", j.model ? `<a class="mono" href="#/ws/${enc(ws)}/lineage/${enc("model:" + j.id)}">${esc(j.model)}</a>` : null],
    ["cost", costHtml(j.cost)], ["attempt", j.attempt > 1 ? esc(j.attempt) : null]]);
  main.innerHTML = `<h1>Job <span class="mono">${esc(job.id)}</span> <span id="job-status" class="status-${esc(job.status)}">${esc(job.status)}</span></h1>
    <div id="summary">${summary(job)}</div>
    <h2>Inputs</h2>
    ${kv([["code" + (sources.code ? ` (${sources.code})` : ""), snap(job.inputs.code)],
          ...Object.entries(job.inputs.data).map(([c, s]) => [`data:${c}` + (sources.data ? ` (${sources.data})` : ""), snap(s)]),
          ["params" + (sources.params ? ` (${sources.params})` : ""), snap(job.inputs.params)]])}
    <div id="params"></div><div id="files"></div>
    <h2>Metrics</h2><div id="metrics">${kv(Object.entries(job.metrics || {}).map(([k, v]) => [k, fmt(v)]))}</div>
    <label><input type="checkbox" id="log"> log scale</label><div id="charts"></div>
    <h2>Log</h2><pre class="log" id="log-text"></pre><p id="log-state" class="muted"></p>`;
  const running = { byMetric: {}, summary: {} }; // metric lines read from the log while the job runs
  const showSeries = async () => {
    const s = await metricPoints(ws, id);
    // Nothing stored yet (the job runs): keep the chart drawn from its log.
    if (!live() || (!Object.keys(s.byMetric).length && Object.keys(running.byMetric).length)) return;
    const draw = () => main.querySelector("#charts").replaceChildren(chartsOf(Object.keys(s.byMetric).length ? [{ label: short(id), series: s }] : [], main.querySelector("#log").checked));
    main.querySelector("#log").onchange = draw;
    draw();
  };
  showSeries();
  api(base + "/files", { what: "params" }).then((f) => {
    if (live()) main.querySelector("#params").innerHTML = `<h2>Params</h2>${kv(Object.entries(f.params || {}).map(([k, v]) => [k, `<span class="mono">${esc(JSON.stringify(v))}</span>`]))}`;
  }).catch(() => {});
  const showFiles = () => Promise.all(["code", "model"].map((what) => api(base + "/files", { what }).catch(() => ({})))).then(([code, model]) => {
    if (!live()) return;
    const files = (code.code || []).map((f) => `<tr><td class="mono">${esc(f.path)}</td><td class="num">${fmt(f.size)}</td><td class="mono">${esc((f.sha256 || "").slice(0, 16))}</td></tr>`).join("");
    const m = model.model;
    main.querySelector("#files").innerHTML = `<h2>Code files</h2><table><thead><tr><th>path</th><th>bytes</th><th>sha256</th></tr></thead><tbody>${files}</tbody></table>
      <h2>Model files</h2>${m ? `<p><a href="${esc(m.url)}">model.tar.gz</a> (${fmt(m.size)} bytes)</p>` : `<p class="muted">no model yet</p>`}`;
  });
  showFiles();
  // While it runs, its JSON metric lines are charted from the log as they arrive (Record stores the full series,
  // regex-defined metrics included, when it ends).
  const drawRunning = (events) => {
    for (const { message } of events) {
      const line = message.trim();
      if (!line.startsWith("{") || !line.includes('"metric"')) continue;
      try {
        const point = JSON.parse(line);
        if (typeof point.metric !== "string" || typeof point.value !== "number") continue;
        const series = (running.byMetric[point.metric] ||= []);
        series.push([typeof point.step === "number" ? point.step : series.length, point.value]);
      } catch { /* not a metric line */ }
    }
    if (Object.keys(running.byMetric).length && !main.dataset.ended)
      main.querySelector("#charts").replaceChildren(chartsOf([{ label: `${short(id)} (running)`, series: running }], main.querySelector("#log").checked));
  };
  if (await followLog(live, `${base}/logs`, ["COMPLETED", "FAILED", "KILLED"].includes(job.status) ? undefined : drawRunning)) {
    // The job has ended: Record stored its final metrics and the series it logged.
    const ended = await api(base);
    if (!live()) return;
    main.querySelector("#metrics").innerHTML = kv(Object.entries(ended.metrics || {}).map(([k, v]) => [k, fmt(v)]));
    main.querySelector("#job-status").textContent = ended.status;
    main.querySelector("#summary").innerHTML = summary(ended);
    await Promise.all([showSeries(), showFiles()]);
    main.dataset.ended = "true";
  }
}

// The job's `cost` (chalicelib/cost.py): total, basis (measured, elapsed or estimate), the prices' date, the lines.
function costHtml(cost) {
  if (cost === undefined || cost === null) return null;
  if (typeof cost !== "object") return esc(cost);
  const lines = (cost.lines || []).map((l) => `<tr><td>${esc(l.item)}</td><td class="num">${fmt(l.quantity)} ${esc(l.unit)}</td><td class="num">$${fmt(l.usd ?? l.quantity * l.price)}</td></tr>`).join("");
  return `<span id="cost">$${fmt(cost.usd)}</span> <span class="pill">${esc(cost.basis)}</span> <span class="muted">${esc(cost.prices || "")}</span>` +
    (lines ? `<table class="cost-lines"><tbody>${lines}</tbody></table>` : "");
}

// Follows a log (a job's, an endpoint's: the same page shape) until it is complete or the page is left.
async function followLog(live, path, onEvents = () => {}) {
  const pre = main.querySelector("#log-text"), state = main.querySelector("#log-state");
  let next = null;
  while (live()) {
    const page = await api(path, { next, limit: 1000 });
    if (!live()) return;
    if (page.events.length) {
      onEvents(page.events);
      pre.append(document.createTextNode(page.events.map((e) => e.message.replace(/\n$/, "")).join("\n") + "\n"));
      pre.scrollTop = pre.scrollHeight;
    }
    const status = main.querySelector("#job-status");
    if (status && page.status) {
      status.textContent = page.status;
      status.className = `status-${page.status}`;
    }
    next = page.next;
    if (page.complete) {
      state.textContent = "log complete";
      return true;
    }
    state.textContent = `following${page.status ? ` (${page.status})` : ""}…`;
    if (!page.events.length) await sleep(1000); // CloudWatch has nothing newer yet: ask again in a second
  }
  return false;
}

// --- lineage ---------------------------------------------------------------------------------------------------

// The walk both ways, in pages of at most 100 nodes (each page's levels are queried one after another, so small
// pages keep a long chain under the API's 29 s limit), up to 2000 nodes; edges seen from both ends count once.
async function walk(live, ws, node, depth) {
  const nodes = [], edges = new Map();
  let cursor = null, first = null;
  do {
    const page = await api(`/workspaces/${enc(ws)}/lineage/${enc(node)}`, { direction: "both", depth, limit: 100, cursor });
    first ||= page;
    nodes.push(...page.nodes);
    for (const e of page.edges) edges.set(`${e.source} ${e.rel} ${e.target}`, e);
    cursor = page.next;
  } while (cursor && live() && nodes.length < 2000);
  return { ...first, nodes, edges: [...edges.values()], next: cursor };
}

// A walk both ways that no depth or page limit cut short holds the whole connected graph: following one of its
// nodes needs no new walk, only a new root.
function reusable(ws, depth, node) {
  if (!lastLineage || lastLineage.ws !== ws || lastLineage.depth !== depth) return null;
  const { answer } = lastLineage;
  if (answer.next || !answer.nodes.some((n) => n.id === node)) return null;
  const around = new Map(answer.nodes.map((n) => [n.id, []]));
  for (const e of answer.edges) {
    around.get(e.source)?.push(e.target);
    around.get(e.target)?.push(e.source);
  }
  const distance = new Map([[answer.root, 0]]);
  const queue = [answer.root];
  while (queue.length) {
    const current = queue.shift();
    for (const next of around.get(current) || []) {
      if (!distance.has(next)) { distance.set(next, distance.get(current) + 1); queue.push(next); }
    }
  }
  return Math.max(...distance.values()) < depth ? { ...answer, root: node } : null;
}

async function lineagePage(live, ws, node) {
  setCrumbs(ws);
  const depth = Number(sessionStorage.getItem("kaos.depth") || 100);
  main.innerHTML = `<h1>Lineage of <span class="mono">${esc(node)}</span></h1>
    <div class="toolbar"><label>depth <input id="depth" type="number" min="1" max="500" value="${depth}"></label>
    <span class="muted">drag to pan, wheel to zoom, click a node to follow it; red: failed or killed jobs</span></div>
    <div class="split"><div class="graph" id="graph"></div><div class="side" id="side"></div></div>`;
  main.querySelector("#depth").addEventListener("change", (e) => { sessionStorage.setItem("kaos.depth", e.target.value); route(); });
  const reused = reusable(ws, depth, node);
  const answer = reused || await walk(live, ws, node, depth);
  const jobIds = answer.nodes.filter((n) => n.type === "job").map((n) => n.id.slice(4));
  // Statuses (failed jobs are marked): from the runs already loaded, else the newest page of the workspace's jobs,
  // then one read per job still missing.
  const listed = reused ? [] : runsCache.get(ws) || (jobIds.length ? (await api(`/workspaces/${enc(ws)}/jobs`, { limit: 200 })).jobs : []);
  const known = reused ? lastLineage.known : new Map(listed.map((j) => [j.id, j.status]));
  await Promise.all(jobIds.filter((j) => !known.has(j)).map((j) =>
    api(`/workspaces/${enc(ws)}/jobs/${enc(j)}`).then((job) => known.set(j, job.status)).catch(() => {})));
  lastLineage = { ws, depth, answer, known };
  if (!live()) return;
  const side = main.querySelector("#side");
  const describe = (n) => {
    const job = n.type === "job" ? n.id.slice(4) : n.type === "model" ? n.id.slice(6) : null;
    side.innerHTML = `<h2 class="mono">${esc(n.id)}</h2>${kv([...Object.entries(n.attrs || {}).map(([k, v]) => [k, `<span class="mono">${esc(typeof v === "object" ? JSON.stringify(v) : v)}</span>`]), ["cost", costHtml(n.cost)]])}
      ${job ? `<p><a id="open-job" href="#/ws/${enc(ws)}/job/${enc(job)}">open the job page</a></p>` : ""}
      ${n.type === "endpoint" ? `<p><a href="#/ws/${enc(ws)}/endpoints/${enc(n.id.slice(9))}">open the endpoint page</a></p>` : ""}
      ${n.type === "version" ? `<p><a href="#/ws/${enc(ws)}/models/${enc(n.id.slice(8).split(".")[0])}">open the model group</a></p>` : ""}
      <p class="muted">${answer.nodes.length} nodes, ${answer.edges.length} edges${answer.next ? " (more: raise the limit)" : ""}</p>`;
  };
  describe(answer.nodes.find((n) => n.id === node) || { id: node, attrs: {} });
  const { lineageGraph } = await import("./graph.js"); // only this page draws graphs: the others load without it
  if (!live()) return;
  lineageGraph(main.querySelector("#graph"), answer, known, (n) => {
    if (n.id === node) return;
    location.hash = `#/ws/${enc(ws)}/lineage/${enc(n.id)}`;
  });
  main.dataset.nodes = String(answer.nodes.length);
}

// --- grid: param against metric --------------------------------------------------------------------------------
async function gridPage(live, ws) {
  setCrumbs(ws);
  const jobs = runsCache.get(ws) || await loadRuns(ws, live);
  if (!live()) return;
  const columns = columnsOf(jobs);
  const params = columns.filter((c) => c.startsWith("param:"));
  const metrics = columns.filter((c) => c.startsWith("metric:") || c.startsWith("series:"));
  const option = (c, selected) => `<option value="${esc(c)}"${selected ? " selected" : ""}>${esc(c)}</option>`;
  main.innerHTML = `<h1>Params against metrics (${jobs.length} runs)</h1>
    <div class="toolbar"><label>x <select id="x">${params.map((c, i) => option(c, i === 0)).join("")}</select></label>
    <label>y <select id="y">${metrics.map((c, i) => option(c, i === 0)).join("")}</select></label>
    <label><input type="checkbox" id="log-x"> log x</label><label><input type="checkbox" id="log"> log y</label></div>
    <div id="scatter"></div><h2>Parallel coordinates (every param that varies, then y)</h2><div id="parallel"></div>`;
  const draw = () => {
    const x = main.querySelector("#x").value, y = main.querySelector("#y").value;
    const done = jobs.filter((j) => typeof value(j, y) === "number");
    main.querySelector("#scatter").replaceChildren(scatterChart(done.map((j) => ({ x: value(j, x), y: value(j, y), label: j.id, href: `#/ws/${enc(ws)}/job/${enc(j.id)}` })),
      { xLabel: x.replace(/^param:/, ""), yLabel: y.replace(/^(metric|series):/, ""), log: main.querySelector("#log").checked,
        logX: main.querySelector("#log-x").checked }));
    // A param every run shares says nothing: only the ones that vary get an axis.
    const varying = params.filter((c) => new Set(done.map((j) => JSON.stringify(value(j, c)))).size > 1);
    main.querySelector("#parallel").replaceChildren(parallelChart(done,
      [...varying, y].map((c) => ({ label: c.replace(/^(param|metric|series):/, ""), get: (j) => value(j, c) }))));
  };
  for (const id of ["x", "y", "log", "log-x"]) main.querySelector(`#${id}`).addEventListener("change", draw);
  draw();
}

// --- model registry and endpoints (the serving routes) ----------------------------------------------------------
const table = (id, headers, rows, empty) => `<table id="${id}"><thead><tr>${headers.map((x) => `<th>${esc(x)}</th>`).join("")}</tr></thead>
  <tbody>${rows.join("") || `<tr><td colspan="${headers.length}" class="muted">${esc(empty)}</td></tr>`}</tbody></table>`;
const aliasList = (aliases) => Object.entries(aliases || {}).map(([a, v]) => `<span class="pill">${esc(a)} → ${esc(v)}</span>`).join(" ");

async function modelsPage(live, ws) {
  setCrumbs(ws);
  const { groups } = await api(`/workspaces/${enc(ws)}/models`);
  if (!live()) return;
  main.innerHTML = `<h1>Model registry of ${esc(ws)}</h1>` + table("groups", ["group", "latest version", "aliases"],
    groups.map((g) => `<tr><td><a href="#/ws/${enc(ws)}/models/${enc(g.group)}">${esc(g.group)}</a></td><td class="num">${esc(g.latest_version)}</td><td>${aliasList(g.aliases)}</td></tr>`),
    "no model registered yet: kaos model register GROUP JOB");
}

async function modelGroupPage(live, ws, group) {
  setCrumbs(ws);
  const answer = await api(`/workspaces/${enc(ws)}/models/${enc(group)}`);
  if (!live()) return;
  main.innerHTML = `<h1>Model group ${esc(group)}</h1><p>${aliasList(answer.aliases)}</p>` + table("versions",
    ["version", "status", "aliases", "job", "framework", "model sha256", "created"],
    answer.versions.map((v) => `<tr><td class="num"><a href="#/ws/${enc(ws)}/lineage/${enc(`version:${group}.${v.version}`)}">${esc(v.version)}</a></td>
      <td class="status-${esc(v.status)}">${esc(v.status)}</td><td>${(v.aliases || []).map((a) => `<span class="pill">${esc(a)}</span>`).join(" ")}</td>
      <td class="mono"><a href="#/ws/${enc(ws)}/job/${enc(v.job_id)}">${esc(v.job_id)}</a></td><td>${esc(v.framework)}</td>
      <td class="mono">${esc((v.model_sha256 || "").slice(0, 16))}</td><td>${esc(v.created_at)}</td></tr>`), "no versions");
}

const modelRef = (ws, m) => !m ? "" : m.group ? `<a href="#/ws/${enc(ws)}/models/${enc(m.group)}">${esc(m.group)}/${esc(m.version)}</a>`
  : `<a class="mono" href="#/ws/${enc(ws)}/job/${enc(m.job_id)}">${esc(m.job_id)}</a>`;

async function endpointsPage(live, ws) {
  setCrumbs(ws);
  const endpoints = [];
  let next = null;
  do {
    const page = await api(`/workspaces/${enc(ws)}/endpoints`, { limit: 200, next });
    endpoints.push(...page.endpoints);
    next = page.next;
  } while (next && live());
  if (!live()) return;
  main.innerHTML = `<h1>Endpoints of ${esc(ws)}</h1>` + table("endpoints", ["name", "status", "kind", "model", "size", "cost", "updated"],
    endpoints.map((e) => `<tr><td><a href="#/ws/${enc(ws)}/endpoints/${enc(e.name)}">${esc(e.name)}</a></td><td class="status-${esc(e.status)}">${esc(e.status)}</td>
      <td>${esc(e.kind)}</td><td>${modelRef(ws, e.model)}</td>
      <td>${esc(e.kind === "realtime" ? `${e.instance_count} × ${e.instance_type}` : `${e.memory_mb} MB, ${e.max_concurrency} at once`)}</td>
      <td class="num">${e.cost ? "$" + fmt(e.cost.usd) : ""}</td><td>${esc(e.updated_at)}</td></tr>`),
    "no endpoints yet: kaos serve deploy MODEL");
}

async function endpointPage(live, ws, name) {
  setCrumbs(ws, [`<a href="#/ws/${enc(ws)}/lineage/${enc("endpoint:" + name)}">lineage</a>`]);
  const base = `/workspaces/${enc(ws)}/endpoints/${enc(name)}`;
  const e = await api(base);
  if (!live()) return;
  main.innerHTML = `<h1>Endpoint ${esc(e.name)} <span class="status-${esc(e.status)}">${esc(e.status)}</span></h1>
    ${kv([["kind", esc(e.kind)], ["model", modelRef(ws, e.model)], ["SageMaker endpoint", `<span class="mono">${esc(e.sagemaker_endpoint)}</span>`],
          ["memory / concurrency", e.kind === "realtime" ? null : esc(`${e.memory_mb} MB, ${e.max_concurrency}`)],
          ["instances", e.kind === "realtime" ? esc(`${e.instance_count} × ${e.instance_type}`) : null],
          ["data capture", e.capture_percent ? esc(`${e.capture_percent} %`) : null], ["failure", esc(e.failure_reason)],
          ["cost", costHtml(e.cost)], ["invocations", `<span class="mono">POST ${esc(e.invocations_path)}</span>`],
          ["created", esc(e.created_at)], ["updated", esc(e.updated_at)]])}
    <h2>Deployments</h2>` + table("deployments", ["deployment", "model", "status", "started", "ended", "failure"],
    (e.deployments || []).map((d) => `<tr><td class="mono">${esc(d.deployment)}</td><td>${modelRef(ws, d.model)}</td><td class="status-${esc(d.status)}">${esc(d.status)}</td>
      <td>${esc(d.started_at)}</td><td>${esc(d.ended_at)}</td><td>${esc(d.failure_reason)}</td></tr>`), "none") +
    `<h2>Log</h2><pre class="log" id="log-text"></pre><p id="log-state" class="muted"></p>`;
  await followLog(live, `${base}/logs`);
}

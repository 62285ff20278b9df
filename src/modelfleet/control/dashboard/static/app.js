// modelfleet dashboard: one page, three views (#/, #/service/NAME, #/environments), fed by
// the server's event stream (/api/feed) once a second. No framework: the DOM is built with
// createElement and textContent only, so nothing a service reports is ever parsed as HTML.
"use strict";

const WINDOW_S = 600; // the service charts show the last ten minutes
const main = document.getElementById("main");
let feed = null;
let view = null; // {kind, name, ...} of what is on screen

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

const fmt = {
  rate: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) : v.toFixed(1)),
  pct: (v) => (v === null || v === undefined ? "–" : (v * 100).toFixed(1) + "%"),
  ms: (v) => (v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms"),
  time: (t) => new Date(t * 1000).toLocaleTimeString(),
};

function notice(text, ok) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.className = ok ? "ok" : "bad";
  box.hidden = false;
  setTimeout(() => { box.hidden = true; }, 6000);
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  if (response.status === 401) { location.reload(); throw new Error("logged out"); }
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new Error((body && body.message) || response.statusText);
  return body;
}

function listen(service) {
  if (feed) feed.close();
  const live = document.getElementById("live");
  feed = new EventSource("/api/feed" + (service ? "?service=" + encodeURIComponent(service) : ""));
  feed.onopen = () => { live.className = "live on"; };
  feed.onerror = () => { live.className = "live off"; };
  feed.addEventListener("overview", (e) => { if (view && view.kind === "overview") renderOverview(JSON.parse(e.data)); });
  feed.addEventListener("service", (e) => { if (view && view.kind === "service") updateService(JSON.parse(e.data)); });
}

// -- overview ---------------------------------------------------------------------------------

function utilizationCell(row) {
  const target = row.autoscale ? row.target_utilization / 100 : null;
  const used = row.last_minute.utilization;
  const bar = el("span", { class: "bar" }, el("span", { class: "fill" }));
  bar.firstChild.style.width = Math.min(100, used * 100).toFixed(0) + "%";
  if (target !== null) {
    const mark = el("span", { class: "target", title: "autoscale target " + row.target_utilization + "%" });
    mark.style.left = Math.min(100, target * 100).toFixed(0) + "%";
    bar.append(mark);
  }
  return el("td", { class: "util" }, bar, " ", fmt.pct(used), target !== null ? " / " + fmt.pct(target) : "");
}

function renderOverview(data) {
  const rows = data.services.map((s) =>
    el("tr", { "data-service": s.name, class: "state-" + s.state.toLowerCase() + (s.version ? " version" : "") },
      // an endpoint's version ("fraud:blue") is listed under its endpoint, by its version name
      el("td", { class: "name" }, el("a", { href: "#/service/" + encodeURIComponent(s.name),
        title: s.name }, s.version ? "↳ " + s.version : s.name)),
      el("td", { class: "state", title: s.detail || "" }, s.state),
      el("td", { class: "replicas" }, s.ready + "/" + s.desired),
      el("td", { class: "rps" }, fmt.rate(s.last_minute.requests_per_s)),
      el("td", { class: "errors" }, fmt.pct(s.last_minute.error_rate)),
      el("td", { class: "p50" }, fmt.ms(s.last_minute.p50_ms)),
      el("td", { class: "p99" }, fmt.ms(s.last_minute.p99_ms)),
      utilizationCell(s)));
  const table = el("table", { id: "services" },
    el("thead", {}, el("tr", {}, ["Service", "State", "Replicas ready/desired", "req/s", "errors",
      "p50", "p99", "utilization / target"].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows.length ? rows : el("tr", {}, el("td", { colspan: 8 }, "No services yet."))));
  main.replaceChildren(el("h2", {}, "Services"),
    el("p", { class: "hint" }, "Figures over the last minute, sampled each second; percentiles from the router's latency buckets."),
    table);
}

// -- one service ---------------------------------------------------------------------------------

function chartSize(node) {
  return { width: Math.max(300, node.clientWidth || 600), height: 200 };
}

function makeChart(node, title, series, data, extra) {
  const opts = Object.assign({
    title, ...chartSize(node),
    scales: { x: { time: true } },
    series: [{}].concat(series),
    axes: [{}, { size: 60 }],
  }, extra || {});
  return new uPlot(opts, data, node);
}

function columns(series, keys) {
  return [series.time].concat(keys.map((k) => series[k]));
}

const CHARTS = [
  { id: "chart-requests", title: "Requests per second by status",
    keys: ["ok", "client_errors", "server_errors", "unavailable"],
    series: [{ label: "2xx/3xx", stroke: "#2a7" }, { label: "4xx", stroke: "#d90" },
      { label: "5xx", stroke: "#c33" }, { label: "503", stroke: "#a3c" }] },
  { id: "chart-latency", title: "Latency (ms), per second",
    keys: ["p50_ms", "p99_ms"],
    series: [{ label: "p50", stroke: "#37c" }, { label: "p99", stroke: "#c63" }] },
  { id: "chart-replicas", title: "Replicas (markers: scale events)",
    keys: ["ready", "desired"], markers: true,
    series: [{ label: "ready", stroke: "#2a7" }, { label: "desired", stroke: "#777", dash: [4, 4] }] },
  { id: "chart-queue", title: "Queue depth, in flight and 503s (no capacity in time)",
    keys: ["queued", "in_flight", "unavailable"],
    series: [{ label: "queued", stroke: "#a3c" }, { label: "in flight", stroke: "#37c" },
      { label: "503/s", stroke: "#c33" }] },
];

function placeMarkers(u) {
  // one absolutely placed element per scale event, its reason in the tooltip (title)
  const layer = u.root.querySelector(".markers");
  if (!layer) return;
  layer.replaceChildren();
  for (const e of (view && view.events) || []) {
    const x = u.valToPos(e.time, "x");
    if (x < 0 || x > u.over.clientWidth) continue;
    const util = e.utilization === null || e.utilization === undefined ? "" : ", utilization " + fmt.pct(e.utilization);
    const mark = el("div", {
      class: "scale-marker" + (e.to > e.from ? " up" : e.to < e.from ? " down" : ""),
      title: fmt.time(e.time) + ": " + e.from + " → " + e.to + util + " — " + e.reason,
      "data-from": e.from, "data-to": e.to,
    });
    mark.style.left = x + "px";
    layer.append(mark);
  }
}

function renderService(detail) {
  view.detail = detail;
  view.events = detail.scale_events;
  view.series = detail.series;
  const scaling = detail.autoscale
    ? "autoscale " + detail.min_replicas + "–" + detail.max_replicas + " at " + detail.target_utilization + "%"
    : "fixed " + detail.num_replicas + " replicas";
  const replicasInput = el("input", { id: "replicas-input", type: "number", min: 1, value: detail.desired || 1 });
  const keySelect = el("select", { id: "key-select" }, el("option", {}, "Primary"), el("option", {}, "Secondary"));
  const head = el("section", { class: "head" },
    el("h2", {}, detail.name, " ", el("span", { id: "service-state", class: "badge state-" + detail.state.toLowerCase() }, detail.state)),
    el("p", { id: "service-summary" }),
    el("p", { class: "hint" }, scaling, detail.detail ? " · " + detail.detail : ""),
    el("div", { class: "actions" },
      el("label", {}, "Replicas ", replicasInput),
      el("button", { id: "set-replicas", onclick: () => setReplicas(detail, replicasInput.value) }, "Set replicas"),
      el("label", {}, " Key ", keySelect),
      el("button", { id: "regen-key", onclick: () => regenKey(detail.name, keySelect.value) }, "Regenerate key")));
  const charts = el("section", { class: "charts" }, CHARTS.map((c) => el("div", { id: c.id, class: "chart" })));
  const tables = el("section", { class: "tables" },
    detail.versions ? el("h3", {}, "Versions (since the router set them)") : "",
    detail.versions ? versionTable(detail.name, detail.versions) : "",
    el("h3", {}, "Replicas"), el("div", { id: "replica-table" }),
    el("div", { id: "log-panel", hidden: "" }, el("h3", { id: "log-title" }), el("pre", { id: "log-text" })),
    el("h3", {}, "Model data collected"), el("div", { id: "collected" }),
    el("h3", {}, "Deploy configuration"), el("pre", { id: "config" }, JSON.stringify(detail.config, null, 2)));
  main.replaceChildren(head, charts, tables);
  view.charts = CHARTS.map((c) => {
    const node = document.getElementById(c.id);
    const hooks = c.markers ? { hooks: { draw: [placeMarkers] } } : {};
    const chart = makeChart(node, c.title, c.series, columns(detail.series, c.keys), hooks);
    if (c.markers) chart.over.append(el("div", { class: "markers" }));
    if (c.markers) placeMarkers(chart);
    return chart;
  });
  updateService(detail, true);
}

function versionTable(endpoint, versions) {
  const rows = Object.entries(versions).map(([name, v]) => {
    const m = v.mirror;
    const mirror = m ? m.sent + " sent, " + m.dropped + " dropped, " + m.agreed + " agreed, " + m.disagreed +
      " disagreed, " + m.errors + " errors" : "–";
    return el("tr", { "data-version": name },
      el("td", {}, el("a", { href: "#/service/" + encodeURIComponent(endpoint + ":" + name) }, name),
        v.is_default ? " (default)" : ""),
      el("td", {}, v.mirror_percentile > 0 ? "mirror " + v.mirror_percentile + "%" : fmt.pct(v.weight / 100)),
      el("td", {}, String(v.requests)), el("td", {}, fmt.pct(v.error_rate)),
      el("td", {}, fmt.ms(v.latency.p50_ms)), el("td", {}, fmt.ms(v.latency.p99_ms)), el("td", {}, mirror));
  });
  return el("table", { id: "versions" },
    el("thead", {}, el("tr", {}, ["Version", "Traffic", "requests", "errors", "p50", "p99", "mirrored copies"]
      .map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

function updateService(detail, initial) {
  if (!view || view.kind !== "service" || detail.name !== view.name) return;
  if (!view.charts) return; // the first full view (with history) is still loading: it renders
  if (!initial) {
    const s = view.series;
    const last = s.time.length ? s.time[s.time.length - 1] : 0;
    detail.series.time.forEach((t, i) => {
      if (t <= last) return;
      for (const k of Object.keys(s)) s[k].push(detail.series[k][i]);
    });
    const cutoff = Date.now() / 1000 - WINDOW_S;
    while (s.time.length && s.time[0] < cutoff) for (const k of Object.keys(s)) s[k].shift();
    const seen = new Set(view.events.map((e) => e.time + ":" + e.from + ":" + e.to));
    for (const e of detail.scale_events) if (!seen.has(e.time + ":" + e.from + ":" + e.to)) view.events.push(e);
    CHARTS.forEach((c, i) => view.charts[i].setData(columns(s, c.keys)));
  }
  const lm = detail.last_minute;
  document.getElementById("service-state").textContent = detail.state;
  document.getElementById("service-summary").replaceChildren(
    el("span", { id: "service-replicas" }, detail.ready + "/" + detail.desired), " replicas ready · ",
    el("span", { id: "service-rps" }, fmt.rate(lm.requests_per_s)), " req/s · errors ", fmt.pct(lm.error_rate),
    " · p50 ", fmt.ms(lm.p50_ms), " · p99 ", fmt.ms(lm.p99_ms), " · utilization ", fmt.pct(lm.utilization),
    " (last minute)");
  renderReplicas(detail.replicas);
}

function renderReplicas(replicas) {
  const rows = replicas.map((r) => el("tr", { "data-replica": r.id },
    el("td", {}, r.id), el("td", {}, r.state), el("td", {}, r.generation), el("td", {}, r.restarts),
    el("td", {}, r.pid === null ? "–" : r.pid),
    el("td", {}, el("a", { href: "#", class: "log-link", onclick: (e) => { e.preventDefault(); showLog(r.id); } }, "log"))));
  document.getElementById("replica-table").replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, ["Replica", "State", "Generation", "Restarts", "pid", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
  const collected = replicas.map((r) => el("tr", {}, el("td", {}, r.id), el("td", {}, r.collected.records),
    el("td", {}, r.collected.written), el("td", {}, r.collected.dropped)));
  document.getElementById("collected").replaceChildren(el("table", {},
    el("thead", {}, el("tr", {}, ["Replica", "records", "written", "dropped"].map((h) => el("th", {}, h)))),
    el("tbody", {}, collected)));
}

function showLog(replica) {
  if (view.logTimer) clearInterval(view.logTimer);
  const panel = document.getElementById("log-panel");
  panel.hidden = false;
  document.getElementById("log-title").textContent = "Log of " + replica + " (live)";
  const load = async () => {
    try {
      const text = await api("/api/services/" + encodeURIComponent(view.name) + "/logs?lines=200&replica=" + encodeURIComponent(replica));
      const pre = document.getElementById("log-text");
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    } catch (err) { clearInterval(view.logTimer); notice(err.message, false); }
  };
  load();
  view.logTimer = setInterval(load, 2000);
}

async function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

async function setReplicas(detail, raw) {
  const n = Number(raw);
  if (!Number.isInteger(n) || n < 1) { notice("Replicas must be a whole number of at least 1", false); return; }
  const what = detail.autoscale
    ? "Autoscaling is on: this sets its minimum and maximum to " + n + ", so the autoscaler keeps " + n + " replicas."
    : "Set " + detail.name + " to " + n + " replicas?";
  if (!confirm(what + " The service is updated as `modelfleet service update` does. Continue?")) return;
  try { notice((await post("/api/services/" + encodeURIComponent(detail.name) + "/replicas", { replicas: n })).message, true); }
  catch (err) { notice(err.message, false); }
}

async function regenKey(name, key) {
  if (!confirm("Regenerate the " + key + " key of " + name + "? Clients using it are refused from now on.")) return;
  try { notice((await post("/api/services/" + encodeURIComponent(name) + "/regen-key", { key })).message, true); }
  catch (err) { notice(err.message, false); }
}

// -- environments and models -----------------------------------------------------------------------

async function renderEnvironments() {
  const [envs, models] = await Promise.all([api("/api/environments"), api("/api/models")]);
  const envRows = envs.map((e) => el("tr", {},
    el("td", { title: e.hash }, e.hash.slice(0, 12)), el("td", {}, e.name), el("td", {}, e.python || "–"),
    el("td", {}, el("details", {}, el("summary", {}, e.packages.length + " packages"), el("pre", {}, e.packages.join("\n")))),
    el("td", {}, e.used_by.join(", ") || "–")));
  const modelRows = models.map((m) => el("tr", {},
    el("td", {}, m.name), el("td", {}, m.version), el("td", {}, m.files),
    el("td", {}, Object.entries(m.tags).map(([k, v]) => k + "=" + v).join(", ") || "–"),
    el("td", {}, fmt.time(m.created_time))));
  main.replaceChildren(
    el("h2", {}, "Environments"),
    el("table", { id: "environments" }, el("thead", {}, el("tr", {}, ["Hash", "Name", "Python", "Packages", "Used by"].map((h) => el("th", {}, h)))),
      el("tbody", {}, envRows.length ? envRows : el("tr", {}, el("td", { colspan: 5 }, "No built environments (services may run in this interpreter).")))),
    el("h2", {}, "Registered models"),
    el("table", { id: "models" }, el("thead", {}, el("tr", {}, ["Name", "Version", "Files", "Tags", "Registered"].map((h) => el("th", {}, h)))),
      el("tbody", {}, modelRows.length ? modelRows : el("tr", {}, el("td", { colspan: 5 }, "No models registered.")))));
}

// -- routing -----------------------------------------------------------------------------------

async function route() {
  if (view && view.logTimer) clearInterval(view.logTimer);
  const hash = location.hash || "#/";
  try {
    if (hash.startsWith("#/service/")) {
      const name = decodeURIComponent(hash.slice("#/service/".length));
      view = { kind: "service", name };
      listen(name);
      renderService(await api("/api/services/" + encodeURIComponent(name) + "?minutes=" + WINDOW_S / 60));
    } else if (hash === "#/environments") {
      view = { kind: "environments" };
      listen(null);
      await renderEnvironments();
    } else {
      view = { kind: "overview" };
      listen(null);
      renderOverview(await api("/api/overview"));
    }
  } catch (err) {
    main.replaceChildren(el("p", { class: "bad" }, err.message));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("resize", () => {
  if (view && view.charts) view.charts.forEach((c) => c.setSize(chartSize(c.root.parentNode)));
});
route();

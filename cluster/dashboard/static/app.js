// The dashboard's page: one server-sent event stream (a snapshot, then patches of what
// changed), kept in plain maps; each page renders from them. The fleet table renders only
// the rows in view, so 5,000 nodes cost as much as fifty.

const ROW = 26;
const HOUR = 3600;
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const COLUMNS_OF_SERIES = 6; // [time, tasks/s, queued, running, failed/s, queue wait]
const noSeries = () => Array.from({ length: COLUMNS_OF_SERIES }, () => []);
const data = { nodes: new Map(), jobs: new Map(), head: {}, timeline: [], series: noSeries(), skew: 0 };
const view = { page: "fleet", job: null, sort: "id", up: true, filter: "", rows: [] };

// ------------------------------------------------------------------ formatting

const now = () => Date.now() / 1000 + data.skew;
function duration(s) {
  s = Math.max(0, Math.floor(s));
  if (s >= 86400) return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
  if (s >= 3600) return `${Math.floor(s / 3600)}h${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 60)}m${s % 60}s`;
}
const gib = (b) => (b ? `${(b / 2 ** 30).toFixed(1)} GiB` : "");
const clock = (t) => new Date(t * 1000).toLocaleTimeString();
const labels = (l) => Object.entries(l || {}).map(([k, v]) => `${k}=${v}`).join(" ");
function heartbeat(n) {
  if (n.hb === null || n.hb === undefined) return "";
  const every = data.head.heartbeat_interval;
  return n.hb === 0 ? `< ${every ? (2 * every).toFixed(0) : "?"}s` : `<span class="late">${n.hb}s</span>`;
}

// ------------------------------------------------------------------ the stream

function apply(msg, fresh) {
  if (fresh) {
    data.nodes.clear();
    data.jobs.clear();
    data.timeline = [];
    data.series = noSeries();
  }
  data.skew = msg.now - Date.now() / 1000;
  if (msg.nodes) {
    for (const n of msg.nodes.set) data.nodes.set(n.id, n);
    for (const id of msg.nodes.del) data.nodes.delete(id);
  }
  if (msg.jobs) {
    for (const j of msg.jobs.set) data.jobs.set(String(j.id), j);
    for (const id of msg.jobs.del) data.jobs.delete(String(id));
  }
  if (msg.head) data.head = msg.head;
  if (msg.timeline) {
    data.timeline.push(...msg.timeline);
    if (data.timeline.length > 1000) data.timeline.splice(0, data.timeline.length - 1000);
  }
  if (msg.series) {
    for (const sample of msg.series) sample.forEach((v, i) => data.series[i].push(v));
    const cut = data.series[0].findIndex((t) => t >= msg.now - HOUR);
    if (cut > 0) data.series.forEach((s) => s.splice(0, cut));
  }
  schedule();
}

function connect() {
  const source = new EventSource("api/events");
  source.addEventListener("snapshot", (e) => apply(JSON.parse(e.data), true));
  source.addEventListener("patch", (e) => apply(JSON.parse(e.data), false));
  source.onopen = () => setLink(true);
  source.onerror = () => setLink(false); // EventSource reconnects by itself, to a new snapshot
}

function setLink(up) {
  const link = $("link");
  link.textContent = up ? "live" : "reconnecting";
  link.className = `link ${up ? "up" : "down"}`;
}

let pending = false;
function schedule() {
  if (!pending) {
    pending = true;
    requestAnimationFrame(render);
  }
}

// The page in view is drawn again whole, at most once a frame: patches come a few times a
// second, and drawing a page (5,000 rows sorted, 31 in the DOM) takes milliseconds.
const PAGES = {
  fleet: () => { renderFleet(); renderTimeline(); },
  work: () => renderWork(),
  jobs: () => renderJobs(),
  job: () => renderJobSummary(),
  coordinator: () => renderCoordinator(),
};

function render() {
  pending = false;
  renderSummary();
  PAGES[view.page]();
}

function renderSummary() {
  const h = data.head;
  const t = h.totals || {};
  $("summary").textContent = h.status_error
    ? `leader: ${h.status_error}`
    : `leader ${h.leader?.coordinator_id ?? "?"} (epoch ${h.leader?.epoch ?? "?"}) · ${t.tasks_per_second ?? 0} tasks/s · ` +
      `${t.queued ?? 0} queued · ${t.running ?? 0} running · ${t.jobs ?? 0} jobs`;
}

// ------------------------------------------------------------------ fleet

const COLUMNS = [
  ["id", "node"], ["host", "host"], ["state", "state"], ["busy", "busy"], ["load", "load"],
  ["hb", "heartbeat"], ["memory", "memory"], ["version", "version"], ["labels", "labels"], ["relay", "relay"],
  ["started", "uptime"],
];
const sortKey = {
  load: (n) => (n.host_load === null ? -1 : n.host_load),
  memory: (n) => (n.memory_used === null ? -1 : n.memory_used),
  busy: (n) => n.busy,
  hb: (n) => (n.hb === null ? -1 : n.hb),
  labels: (n) => labels(n.labels),
  started: (n) => -n.started,
};

function matches(n, words) {
  if (!words.length) return true;
  const text = `${n.id} ${n.host} ${n.state} ${n.version} ${labels(n.labels)} ${n.relay}`.toLowerCase();
  return words.every((w) => text.includes(w));
}

function renderFleet() {
  const nodes = [...data.nodes.values()];
  const words = view.filter.toLowerCase().split(/\s+/).filter(Boolean);
  const key = sortKey[view.sort] || ((n) => n[view.sort]);
  view.rows = nodes.filter((n) => matches(n, words));
  view.rows.sort((a, b) => {
    const x = key(a), y = key(b);
    return (x < y ? -1 : x > y ? 1 : a.id < b.id ? -1 : 1) * (view.up ? 1 : -1);
  });
  renderAggregate(nodes);
  $("shown").textContent = `${view.rows.length} of ${nodes.length} shown`;
  $("fleet-spacer").style.height = `${view.rows.length * ROW}px`;
  renderVisibleRows();
}

function renderAggregate(nodes) {
  const states = {}, versions = {};
  const hist = new Array(10).fill(0);
  let busy = 0, workers = 0;
  for (const n of nodes) {
    states[n.state] = (states[n.state] || 0) + 1;
    versions[n.version] = (versions[n.version] || 0) + 1;
    busy += n.busy;
    workers += n.workers;
    if (n.workers) hist[Math.min(9, Math.floor((10 * n.busy) / n.workers))]++;
  }
  $("node-count").textContent = nodes.length;
  $("state-chips").innerHTML = Object.entries(states).sort()
    .map(([s, c]) => `<span class="chip st-${esc(s)}" data-filter="${esc(s)}">${esc(s)} ${c}</span>`).join("");
  $("workers").textContent = `${busy} / ${workers}`;
  $("workers-bar").style.width = `${workers ? (100 * busy) / workers : 0}%`;
  const most = Math.max(1, ...hist);
  $("load-hist").innerHTML = hist.map((c, i) => `<div title="${i * 10}-${i * 10 + 10}%: ${c} nodes" style="height:${(100 * c) / most}%"></div>`).join("");
  $("versions").innerHTML = Object.entries(versions).sort()
    .map(([v, c]) => `<span class="chip" data-filter="${esc(v)}">${esc(v)} ${c}</span>`).join("");
}

function renderVisibleRows() {
  const box = $("fleet-scroll");
  const first = Math.max(0, Math.floor(box.scrollTop / ROW) - 5);
  const last = Math.min(view.rows.length, first + Math.ceil(box.clientHeight / ROW) + 10);
  const t = now();
  const html = [];
  for (let i = first; i < last; i++) {
    const n = view.rows[i];
    // The host's 1-minute load per usable CPU and memory in use, from the agent's heartbeats
    // ("-": not said, e.g. an agent behind a relay, whose beats stop there).
    const load = n.host_load === null ? "-" : `${Math.round(100 * n.host_load)}%`;
    const memory = n.memory_used === null ? gib(n.memory) : `${Math.round(100 * n.memory_used)}% of ${gib(n.memory)}`;
    html.push(
      `<div class="grid row" data-node="${esc(n.id)}" data-state="${esc(n.state)}">` +
        `<span title="${esc(n.id)}">${esc(n.id)}</span><span title="${esc(n.host)}">${esc(n.host)}</span>` +
        `<span class="st-${esc(n.state)}">${esc(n.state)}</span><span>${n.busy}/${n.workers}</span>` +
        `<span>${load}</span><span>${heartbeat(n)}</span><span>${memory}</span>` +
        `<span>${esc(n.version)}</span><span title="${esc(labels(n.labels))}">${esc(labels(n.labels))}</span>` +
        `<span>${esc(n.relay)}</span><span>${duration(t - n.started)}</span></div>`,
    );
  }
  const rows = $("fleet-rows");
  rows.style.transform = `translateY(${first * ROW}px)`;
  rows.innerHTML = html.join("");
}

function renderTimeline() {
  const items = data.timeline.slice(-300).reverse();
  $("timeline").innerHTML = items
    .map((e) => `<li class="ev-${esc(e.kind.split(" ")[0])}"><time>${clock(e.t)}</time><b>${esc(e.node)}</b> ` +
      `${esc(e.kind)}${e.detail ? `: ${esc(e.detail)}` : ""}</li>`).join("");
}

function setupFleet() {
  $("fleet-head").innerHTML = COLUMNS.map(([k, t]) => `<span data-sort="${k}">${t}</span>`).join("");
  $("fleet-head").addEventListener("click", (e) => {
    const k = e.target.dataset.sort;
    if (!k) return;
    view.up = view.sort === k ? !view.up : true;
    view.sort = k;
    for (const s of $("fleet-head").children) s.className = s.dataset.sort === k ? `sorted${view.up ? "" : " up"}` : "";
    renderFleet();
  });
  $("fleet-head").children[0].className = "sorted";
  $("filter").addEventListener("input", (e) => {
    view.filter = e.target.value;
    renderFleet();
  });
  for (const id of ["state-chips", "versions"]) {
    $(id).addEventListener("click", (e) => {
      if (!e.target.dataset.filter) return;
      $("filter").value = view.filter = e.target.dataset.filter;
      renderFleet();
    });
  }
  $("fleet-scroll").addEventListener("scroll", () => requestAnimationFrame(renderVisibleRows), { passive: true });
}

// ------------------------------------------------------------------ work

const charts = {};
const CHARTS = [["chart-tps", 1, "tasks/s", "#2563eb"], ["chart-queued", 2, "queued", "#d97706"],
  ["chart-running", 3, "running", "#1f9d55"], ["chart-failed", 4, "failed/s", "#dc2626"],
  ["chart-wait", 5, "queue wait (s)", "#7c3aed"]];

function renderWork() {
  for (const [id, column, label, stroke] of CHARTS) {
    const box = $(id);
    const series = [data.series[0], data.series[column]];
    if (!charts[id]) {
      const opts = { width: Math.max(300, box.clientWidth - 16), height: 200, legend: { show: true },
        scales: { x: { time: true } }, series: [{}, { label, stroke, width: 1.5, fill: `${stroke}22` }] };
      charts[id] = new uPlot(opts, series, box);
    } else charts[id].setData(series);
  }
}

// ------------------------------------------------------------------ jobs

const JOB_COLUMNS = ["id", "owner", "host", "function", "state", "progress", "done", "failed", "rate", "elapsed"];

// Running (and lost) jobs, then the most recent of the others: a week of history can hold
// thousands, which `clusterctl jobs --all` lists.
const FINISHED_SHOWN = 200;

function renderJobs() {
  const all = [...data.jobs.values()].sort((a, b) => b.id - a.id);
  const live = all.filter((j) => j.state === "running" || j.state === "lost");
  const ended = all.filter((j) => j.state !== "running" && j.state !== "lost");
  const jobs = live.concat(ended.slice(0, FINISHED_SHOWN));
  const older = ended.length - Math.min(ended.length, FINISHED_SHOWN);
  const t = now();
  $("jobs-rows").innerHTML = (jobs.length ? jobs.map((j) => {
    const pct = j.total ? Math.min(100, (100 * j.done) / j.total) : 0;
    return `<div class="grid jobs row" data-job="${j.id}" data-done="${j.done}" data-state="${esc(j.state)}">` +
      `<span>${j.id}</span><span>${esc(j.owner)}</span><span>${esc(j.host)}</span>` +
      `<span title="${esc(j.function)}">${esc(j.function)}</span><span class="st-${esc(j.state)}">${esc(j.state)}` +
      `${j.detached ? " (detached)" : ""}</span><span class="progress"><div style="width:${pct}%"></div></span>` +
      `<span>${j.done}/${j.total || "?"}</span><span>${j.failed}</span><span>${j.rate ? `${j.rate}/s` : ""}</span>` +
      `<span>${duration((j.ended || t) - j.started)}</span></div>`;
  }).join("") : `<p class="note">no jobs</p>`) +
    (older ? `<p class="note">and ${older} older finished jobs: <code>clusterctl jobs --all</code></p>` : "");
}

function renderJobSummary() {
  const j = data.jobs.get(String(view.job));
  $("job-summary").innerHTML = j ? dl({
    job: j.id, owner: j.owner, host: j.host, function: j.function, state: j.state,
    progress: `${j.done} of ${j.total || "?"} done, ${j.failed} failed`, rate: j.rate ? `${j.rate} tasks/s` : "",
    started: new Date(j.started * 1000).toLocaleString(), elapsed: duration((j.ended || now()) - j.started),
  }) : `<p class="note">job ${esc(view.job)}: no record (yet, or removed)</p>`;
}

// A job's failures and output are read from its spool on request: again every few seconds
// while it runs.
let jobLoaded = 0;
async function loadJob(id, refresh = false) {
  renderJobSummary();
  if (!refresh) $("job-failures").innerHTML = $("job-output").textContent = "";
  jobLoaded = Date.now();
  const answer = await fetch(`api/jobs/${encodeURIComponent(id)}`);
  if (!answer.ok || view.job !== id) return;
  const d = await answer.json();
  $("job-failures").innerHTML = d.failures.length
    ? `<pre>${d.failures.map((f) => `[task ${f.index}] ${esc(f.error)}\n${esc(f.traceback)}`).join("\n")}</pre>`
    : `<p class="note">${esc(d.note || "none")}</p>`;
  $("job-output").innerHTML = d.output
    .map((o) => `<span class="${o.stream === "err" ? "err" : ""}">[task ${o.index}${o.stream === "err" ? " err" : ""}] ${esc(o.text)}</span>`)
    .join("\n") || esc(d.note || "no output");
}

// ------------------------------------------------------------------ coordinator

const dl = (o) => `<dl>${Object.entries(o).map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("")}</dl>`;

function renderCoordinator() {
  const h = data.head;
  const l = h.leader || {};
  const failovers = (h.failovers || []).slice().reverse()
    .map((f) => `<tr><td>${clock(f.t)}</td><td>${esc(f.from || "(none)")}</td><td>${esc(f.to)}</td><td>${f.epoch}</td></tr>`).join("");
  const counts = (o) => Object.entries(o || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "none";
  $("coordinator").innerHTML = dl({
    leader: h.leader ? `${l.coordinator_id} on ${l.host} (pid ${l.pid})` : "none", epoch: l.epoch ?? "",
    endpoint: l.endpoint ?? "", version: l.version ?? "", "leading for": h.leader ? duration(now() - l.started) : "",
    standbys: h.standbys, status: h.status_error || "answering", relays: counts(h.relays),
    "written off": counts(h.written_off),
  }) + `<h3 style="margin-top:12px">Leaders seen (failovers)</h3><table><tr><th>when</th><th>from</th><th>to</th>` +
    `<th>epoch</th></tr>${failovers}</table><h3 style="margin-top:12px">Counters</h3><p>${esc(counts(h.counters))}</p>`;
}

// ------------------------------------------------------------------ pages

function route() {
  const [page, arg] = (location.hash.slice(1) || "fleet").split("/");
  view.page = page === "jobs" && arg ? "job" : ["fleet", "work", "jobs", "coordinator"].includes(page) ? page : "fleet";
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== `page-${view.page}`;
  for (const a of document.querySelectorAll("nav a")) a.className = a.dataset.page === page ? "on" : "";
  if (view.page === "job") {
    view.job = arg;
    loadJob(arg);
  }
  schedule();
}

setupFleet();
$("jobs-head").innerHTML = JOB_COLUMNS.map((c) => `<span>${c}</span>`).join("");
$("jobs-rows").addEventListener("click", (e) => {
  const row = e.target.closest("[data-job]");
  if (row) location.hash = `jobs/${row.dataset.job}`;
});
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => schedule());
setInterval(() => {
  schedule(); // ages and uptimes tick
  const job = view.page === "job" && data.jobs.get(String(view.job));
  if (job && job.state === "running" && Date.now() - jobLoaded > 3000) loadJob(view.job, true);
}, 1000);
route();
connect();

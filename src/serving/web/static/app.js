// serving operator page: polls /ui/api/stats (totals summed over every replica of the server),
// derives rates, latency quantiles, error ratio and batch sizes from the differences between
// polls, draws the last 5 minutes (the server's history of them first), and sends real V2
// requests from the "try it" form.
"use strict";

const POLL_MS = 1000;
const SLICES_POLL_MS = 10000;
const KEEP_S = 300;
let apiKey = null;          // this tab's memory only
let previous = null;        // the last stats document
let previousAt = 0;
const series = [];          // [{t, byScope: {scope: derived}}]
let scopes = [""];          // "" = all models, else "model:version"
const metadata = {};

const $ = (id) => document.getElementById(id);
const fmt = (v, digits = 1) => (v === null || v === undefined || Number.isNaN(v)) ? "–" :
  v >= 1000 ? Math.round(v).toLocaleString("en-US") : v.toFixed(digits);

function authHeaders(extra) {
  const h = Object.assign({}, extra || {});
  if (apiKey) h["Authorization"] = "Bearer " + apiKey;
  return h;
}

async function api(path, options = {}) {
  options.headers = authHeaders(options.headers);
  const response = await fetch(path, options);
  if (response.status === 401 && !options.retried) {
    askKey("This server needs an API key.");
    if (apiKey) return api(path, Object.assign(options, { retried: true }));
  }
  return response;
}

function askKey(why) {
  const key = window.prompt((why ? why + " " : "") + "API key (kept in this tab's memory only):", "");
  if (key !== null) apiKey = key.trim() || null;
}

// ---- statistics -------------------------------------------------------------------------

function quantile(q, bounds, counts) {
  const total = counts.reduce((a, b) => a + b, 0);
  if (!total) return null;
  const target = q * total;
  let cumulative = 0;
  for (let i = 0; i < counts.length; i++) {
    const before = cumulative;
    cumulative += counts[i];
    if (cumulative >= target && counts[i] > 0) {
      if (i >= bounds.length) return bounds[bounds.length - 1];  // +Inf bucket: its lower bound
      const lower = i === 0 ? 0 : bounds[i - 1];
      return lower + (bounds[i] - lower) * ((target - before) / counts[i]);
    }
  }
  return bounds[bounds.length - 1];
}

function key(m) { return m.model + ":" + m.version; }

function derive(doc, old, dt, scope) {
  const now = doc.models.filter((m) => !scope || key(m) === scope);
  const before = new Map((old ? old.models : []).map((m) => [key(m), m]));
  let requests = 0, failures = 0, batches = 0, rows = 0, queue = 0;
  let buckets = [];
  for (const m of now) {
    const o = before.get(key(m));
    queue += m.queue_depth;
    if (!o) continue;
    requests += Math.max(0, m.requests - o.requests);
    failures += Math.max(0, m.failures - o.failures);
    batches += Math.max(0, m.batches - o.batches);
    rows += Math.max(0, m.batch_rows - o.batch_rows);
    const delta = m.latency_buckets.map((c, i) => Math.max(0, c - (o.latency_buckets[i] || 0)));
    buckets = buckets.length ? buckets.map((c, i) => c + delta[i]) : delta;
  }
  const bounds = doc.latency_bounds;
  const ms = (s) => (s === null ? null : s * 1000);
  return {
    rate: old ? requests / dt : null,
    p50: ms(quantile(0.5, bounds, buckets)),
    p99: ms(quantile(0.99, bounds, buckets)),
    errors: requests ? (100 * failures) / requests : (old ? 0 : null),
    queue,
    batch: batches ? rows / batches : null,
  };
}

// The server keeps the last minutes (a summary every few seconds): drawn at once when the page
// opens, so a page opened after traffic shows it without waiting for new requests.
function seed(history) {
  for (const doc of history) {
    if (previous) {
      const dt = Math.max(doc.time - previousAt, 0.001);
      const byScope = {};
      for (const scope of [""].concat(doc.models.map(key))) byScope[scope] = derive(doc, previous, dt, scope);
      series.push({ t: doc.time, byScope });
    }
    previous = doc;
    previousAt = doc.time;
  }
}

async function poll(withHistory = false) {
  let doc;
  try {
    const response = await api(withHistory ? "/ui/api/stats?history=1" : "/ui/api/stats");
    if (!response.ok) throw new Error("HTTP " + response.status);
    doc = await response.json();
  } catch (err) {
    $("updated").textContent = "stats unavailable: " + err.message;
    return;
  }
  if (doc.history) seed(doc.history.filter((h) => h.time < doc.time));
  const t = doc.time;
  const dt = previous ? Math.max(t - previousAt, 0.001) : 1;
  scopes = [""].concat(doc.models.map(key));
  const byScope = {};
  for (const scope of scopes) byScope[scope] = derive(doc, previous, dt, scope);
  if (previous) series.push({ t, byScope });
  while (series.length && t - series[0].t > KEEP_S) series.shift();
  previous = doc;
  previousAt = t;
  render(doc, byScope);
}

// ---- rendering --------------------------------------------------------------------------

function render(doc, byScope) {
  $("replicas").textContent = "replicas: " + doc.replicas.length;
  $("updated").textContent = "updated " + new Date(doc.time * 1000).toLocaleTimeString("en-GB");
  const all = byScope[""];
  $("rate-total").textContent = fmt(all.rate);
  $("p50-total").textContent = fmt(all.p50, 2);
  $("p99-total").textContent = fmt(all.p99, 2);
  $("errors-total").textContent = fmt(all.errors, 2);
  $("queue-total").textContent = fmt(all.queue, 0);
  $("batch-total").textContent = fmt(all.batch, 1);
  renderScopeSelect();
  renderModels(doc, byScope);
  renderErrors(doc.errors);
  renderTryModels(doc.versions);
  drawCharts();
}

function renderScopeSelect() {
  const select = $("scope");
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("|") === scopes.join("|")) return;
  const chosen = select.value;
  select.replaceChildren(...scopes.map((s) => new Option(s || "all models", s)));
  select.value = scopes.includes(chosen) ? chosen : "";
}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function renderModels(doc, byScope) {
  const body = $("models").tBodies[0];
  const rows = doc.versions.map((v) => {
    const d = byScope[v.model + ":" + v.version] || {};
    const tr = document.createElement("tr");
    tr.dataset.model = v.model;
    tr.dataset.version = v.version;
    tr.append(cell(v.model), cell(v.version), cell(v.state, "state-" + v.state), cell(v.device || "–"),
      cell(v.platform || "–"), cell(v.max_batch_size ?? "–"), cell(fmt(d.rate), "num"), cell(fmt(d.p50, 2), "num"),
      cell(fmt(d.p99, 2), "num"), cell(fmt(d.errors, 2), "num"), cell(fmt(d.queue, 0), "num"), cell(fmt(d.batch), "num"),
      cell(worstSlices[v.model + ":" + v.version] || "–", "slice"));
    if (v.reason) tr.title = v.reason;
    return tr;
  });
  body.replaceChildren(...rows);
}

// Each version's worst evaluation slice (serving evaluate --slice-by), from the operator route; a
// server without it, or a key that is not an admin key, leaves the column empty.
let worstSlices = {};
async function pollSlices() {
  try {
    const response = await api("/v2/admin/models");
    if (!response.ok) return;
    const next = {};
    for (const model of (await response.json()).models) {
      for (const v of model.versions) if (v.worst_slice) next[model.name + ":" + v.version] = v.worst_slice;
    }
    worstSlices = next;
  } catch (err) {
    worstSlices = {};
  }
}

function renderErrors(errors) {
  const body = $("errors").tBodies[0];
  if (!errors.length) {
    const tr = document.createElement("tr");
    tr.className = "empty";
    tr.append(cell("none", "muted"));
    tr.firstChild.colSpan = 6;
    body.replaceChildren(tr);
    return;
  }
  body.replaceChildren(...errors.slice(0, 12).map((e) => {
    const tr = document.createElement("tr");
    const msg = cell(e.message, "msg");
    msg.title = e.message;
    tr.append(cell(new Date(e.time * 1000).toLocaleTimeString("en-GB"), "nowrap"), cell(e.model), cell(e.version),
      cell(e.http_status + " " + e.grpc_status, "status nowrap"), msg, cell(e.request_id, "mono"));
    return tr;
  }));
}

function drawCharts() {
  const scope = $("scope").value;
  const pick = (f) => series.map((p) => [p.t, (p.byScope[scope] || {})[f]]);
  chart($("chart-throughput"), [{ points: pick("rate"), color: "#4fb3ff" }]);
  chart($("chart-latency"), [{ points: pick("p50"), color: "#4fb3ff" }, { points: pick("p99"), color: "#f5a524" }]);
  chart($("chart-errors"), [{ points: pick("errors"), color: "#ff6b6b" }]);
  chart($("chart-queue"), [{ points: pick("queue"), color: "#3ecf8e" }, { points: pick("batch"), color: "#b48eff" }]);
}

function chart(canvas, lines) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * ratio)) { canvas.width = Math.round(w * ratio); canvas.height = Math.round(h * ratio); }
  const g = canvas.getContext("2d");
  g.setTransform(ratio, 0, 0, ratio, 0, 0);
  g.clearRect(0, 0, w, h);
  const left = 44, right = 8, top = 8, bottom = 18;
  const now = series.length ? series[series.length - 1].t : Date.now() / 1000;
  const values = lines.flatMap((l) => l.points.map((p) => p[1])).filter((v) => v !== null && v !== undefined);
  const max = niceMax(values.length ? Math.max(...values) : 1);
  g.font = "11px system-ui, sans-serif";
  g.strokeStyle = "#26313d";
  g.fillStyle = "#7f8c99";
  g.lineWidth = 1;
  for (let i = 0; i <= 3; i++) {
    const y = top + ((h - top - bottom) * i) / 3;
    g.beginPath(); g.moveTo(left, y); g.lineTo(w - right, y); g.stroke();
    g.fillText(fmt(max * (1 - i / 3), max < 1 ? 2 : max < 10 ? 1 : 0), 2, y + 4);
  }
  for (const s of [300, 240, 180, 120, 60, 0]) {
    const x = left + ((w - left - right) * (KEEP_S - s)) / KEEP_S;
    g.fillText(s ? "-" + s / 60 + "m" : "now", Math.min(x - 8, w - 26), h - 4);
  }
  let last = null;
  for (const line of lines) {
    g.strokeStyle = line.color;
    g.lineWidth = 1.6;
    g.beginPath();
    let started = false;
    for (const [t, v] of line.points) {
      if (v === null || v === undefined) { started = false; continue; }
      const x = left + ((w - left - right) * (KEEP_S - (now - t))) / KEEP_S;
      const y = top + (h - top - bottom) * (1 - v / max);
      if (started) g.lineTo(x, y); else g.moveTo(x, y);
      started = true;
    }
    g.stroke();
    const tail = line.points.length ? line.points[line.points.length - 1][1] : null;
    if (last === null) last = tail;
  }
  canvas.dataset.last = last === null || last === undefined ? "" : String(last);
  canvas.dataset.points = String(lines[0].points.length);
}

function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

// ---- try it -----------------------------------------------------------------------------

function renderTryModels(versions) {
  const select = $("try-model");
  const ready = versions.filter((v) => v.state === "READY").map((v) => v.model + ":" + v.version);
  const have = Array.from(select.options).map((o) => o.value);
  if (have.join("|") === ready.join("|")) return;
  const chosen = select.value;
  select.replaceChildren(...ready.map((r) => new Option(r.replace(":", " v"), r)));
  select.value = ready.includes(chosen) ? chosen : (ready[0] || "");
  buildForm();
}

async function buildForm() {
  const chosen = $("try-model").value;
  const box = $("try-inputs");
  if (!chosen) { box.replaceChildren(); return; }
  const [model, version] = chosen.split(":");
  if (!metadata[chosen]) {
    const response = await api(`/v2/models/${encodeURIComponent(model)}/versions/${encodeURIComponent(version)}`);
    metadata[chosen] = await response.json();
  }
  const md = metadata[chosen];
  box.replaceChildren(...md.inputs.flatMap((input) => {
    const shape = input.shape.map((d) => (d < 0 ? 1 : d));
    const label = document.createElement("div");
    label.className = "input-label";
    label.textContent = `${input.name} · ${input.datatype} · shape `;
    const shapeBox = document.createElement("input");
    shapeBox.value = JSON.stringify(shape);
    shapeBox.size = 14;
    shapeBox.dataset.input = input.name;
    shapeBox.className = "try-shape";
    label.append(shapeBox);
    const area = document.createElement("textarea");
    area.dataset.input = input.name;
    area.dataset.datatype = input.datatype;
    area.className = "try-data";
    const n = shape.reduce((a, b) => a * b, 1);
    const fill = input.datatype === "BYTES" ? "" : input.datatype.startsWith("FP") ? 0.5 : 0;
    area.value = JSON.stringify(new Array(Math.min(n, 4096)).fill(fill));
    if (input.datatype !== "BYTES") return [label, area];
    // BYTES: text in the box, or files (an image per row), sent as they are in binary tensors.
    const picker = document.createElement("input");
    picker.type = "file";
    picker.multiple = true;
    picker.className = "try-file";
    picker.dataset.input = input.name;
    picker.addEventListener("change", async () => {
      const files = Array.from(picker.files);
      area.files = await Promise.all(files.map(async (f) => new Uint8Array(await f.arrayBuffer())));
      area.value = JSON.stringify(files.map((f) => f.name));
      shapeBox.value = JSON.stringify([files.length, ...shape.slice(1)]);
      area.readOnly = files.length > 0;
    });
    label.append(" or files ", picker);
    return [label, area];
  }));
}

const TYPED = {
  BOOL: Uint8Array, UINT8: Uint8Array, UINT16: Uint16Array, UINT32: Uint32Array, UINT64: BigUint64Array,
  INT8: Int8Array, INT16: Int16Array, INT32: Int32Array, INT64: BigInt64Array, FP32: Float32Array, FP64: Float64Array,
};

function encodeBinary(datatype, flat) {
  if (datatype === "BYTES") {
    const parts = flat.map((s) => (s instanceof Uint8Array ? s : new TextEncoder().encode(String(s))));
    const out = new Uint8Array(parts.reduce((a, p) => a + 4 + p.length, 0));
    const view = new DataView(out.buffer);
    let at = 0;
    for (const p of parts) { view.setUint32(at, p.length, true); out.set(p, at + 4); at += 4 + p.length; }
    return out;
  }
  const Typed = TYPED[datatype];
  if (!Typed) throw new Error(`binary ${datatype} is not supported by this form`);
  const big = Typed === BigInt64Array || Typed === BigUint64Array;
  return new Uint8Array(Typed.from(flat, (v) => (big ? BigInt(v) : datatype === "BOOL" ? (v ? 1 : 0) : v)).buffer);
}

function decodeBinary(datatype, bytes) {
  if (datatype === "BYTES") {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const out = [];
    for (let at = 0; at < bytes.length;) { const n = view.getUint32(at, true); out.push(new TextDecoder().decode(bytes.slice(at + 4, at + 4 + n))); at += 4 + n; }
    return out;
  }
  const Typed = TYPED[datatype];
  if (!Typed) throw new Error(`binary ${datatype} cannot be shown`);
  const copy = bytes.slice();
  return Array.from(new Typed(copy.buffer), (v) => (typeof v === "bigint" ? Number(v) : datatype === "BOOL" ? v !== 0 : v));
}

async function send(event) {
  event.preventDefault();
  const chosen = $("try-model").value;
  if (!chosen) return;
  const [model, version] = chosen.split(":");
  const md = metadata[chosen];
  const binary = $("try-binary").checked;
  const out = $("try-output");
  let body, headers = { "Content-Type": "application/json" };
  try {
    const inputs = Array.from(document.querySelectorAll(".try-data")).map((area) => {
      const shape = JSON.parse(document.querySelector(`.try-shape[data-input="${area.dataset.input}"]`).value);
      const data = area.files && area.files.length ? area.files : [JSON.parse(area.value)].flat(Infinity);
      return { name: area.dataset.input, datatype: area.dataset.datatype, shape, data };
    });
    if (!binary && !inputs.some((i) => i.data.some((v) => v instanceof Uint8Array))) {
      body = JSON.stringify({ inputs });
    } else {
      const raws = inputs.map((i) => encodeBinary(i.datatype, i.data));
      const header = {
        inputs: inputs.map((i, k) => ({ name: i.name, datatype: i.datatype, shape: i.shape, parameters: { binary_data_size: raws[k].length } })),
        outputs: md.outputs.map((o) => ({ name: o.name, parameters: { binary_data: true } })),
      };
      const head = new TextEncoder().encode(JSON.stringify(header));
      body = new Blob([head, ...raws]);
      headers = { "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": String(head.length) };
    }
  } catch (err) {
    out.textContent = "cannot build the request: " + err.message;
    return;
  }
  const started = performance.now();
  let response, payload;
  try {
    response = await api(`/v2/models/${encodeURIComponent(model)}/versions/${encodeURIComponent(version)}/infer`,
      { method: "POST", headers, body });
    const raw = new Uint8Array(await response.arrayBuffer());
    const headerLength = response.headers.get("Inference-Header-Content-Length");
    if (headerLength) {
      const n = parseInt(headerLength, 10);
      payload = JSON.parse(new TextDecoder().decode(raw.slice(0, n)));
      let at = n;
      for (const o of payload.outputs) {
        const size = o.parameters && o.parameters.binary_data_size;
        if (size !== undefined) { o.data = decodeBinary(o.datatype, raw.slice(at, at + size)); at += size; delete o.parameters.binary_data_size; }
      }
    } else {
      payload = JSON.parse(new TextDecoder().decode(raw));
    }
  } catch (err) {
    out.textContent = "request failed: " + err.message;
    return;
  }
  const ms = performance.now() - started;
  $("try-status").textContent = `HTTP ${response.status} · request id ${response.headers.get("X-Request-ID") || "–"} · `;
  $("try-latency").textContent = `${ms.toFixed(1)} ms`;
  out.dataset.status = String(response.status);
  out.textContent = pretty(payload);
}

// JSON with arrays of numbers, strings or booleans kept on one line.
function pretty(value, indent = "") {
  if (Array.isArray(value)) {
    if (value.every((v) => v === null || typeof v !== "object")) return JSON.stringify(value);
    return "[\n" + value.map((v) => indent + "  " + pretty(v, indent + "  ")).join(",\n") + "\n" + indent + "]";
  }
  if (value && typeof value === "object") {
    const parts = Object.entries(value).map(([k, v]) => indent + "  " + JSON.stringify(k) + ": " + pretty(v, indent + "  "));
    return "{\n" + parts.join(",\n") + "\n" + indent + "}";
  }
  return JSON.stringify(value);
}

// ---- start ------------------------------------------------------------------------------

async function start() {
  $("key-button").addEventListener("click", () => askKey(""));
  $("scope").addEventListener("change", drawCharts);
  $("try-model").addEventListener("change", buildForm);
  $("try").addEventListener("submit", send);
  try {
    const response = await api("/v2");
    const md = await response.json();
    $("server").textContent = `${md.name} ${md.version}`;
  } catch (err) {
    $("server").textContent = "server metadata unavailable";
  }
  await pollSlices();
  await poll(true);
  setInterval(poll, POLL_MS);
  setInterval(pollSlices, SLICES_POLL_MS);
}

start();

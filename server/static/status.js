// The status page of one fedsilo job: polls ./status once a second and redraws.
// No library and nothing from the network: the curves are SVG drawn here.
"use strict";

const POLL_MS = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";
const CHART = { width: 480, height: 240, left: 48, right: 12, top: 12, bottom: 30 };
const SERIES_NAMES = {
  train_loss: "train loss",
  eval_loss: "eval loss",
  eval_accuracy: "eval accuracy",
};
let updates = 0;

function byId(id) {
  return document.getElementById(id);
}

function text(id, value) {
  const node = byId(id);
  if (node.textContent !== value) node.textContent = value;
}

function cell(row, value, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  if (value instanceof Node) td.appendChild(value);
  else td.textContent = value;
  row.appendChild(td);
  return td;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  const s = Math.floor(seconds);
  if (s < 60) return `${seconds.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

function roundText(job) {
  if (job.phase === "evaluating") return `final evaluation (${job.rounds} rounds)`;
  if (job.phase === "finished") return `done: ${job.rounds_completed} of ${job.rounds}`;
  return `${job.round} of ${job.rounds}`;
}

function renderSummary(status) {
  const job = status.job;
  text("job-title", `fedsilo job ${job.job_id} · ${job.task}`);
  document.title = `job ${job.job_id}: ${job.phase} ${job.round}/${job.rounds}`;
  text("phase", job.phase);
  text("round", roundText(job));
  text("rounds-completed", String(job.rounds_completed));
  text("clients-connected", `${status.clients_connected} (${status.clients_ready} ready)`);
  text("strategy", job.strategy);
  text("started", new Date(job.started_at).toLocaleString());
  text("uptime", duration(job.uptime_seconds));
  const current = status.round;
  let detail = "";
  if (current) {
    detail = `round ${current.number}: ${current.delivered} of ${current.selected.length} ` +
      `updates in, ${current.dropped.length} dropped, ${duration(current.elapsed_seconds)} so far`;
  } else if (job.stop_reason) {
    detail = `stopping: ${job.stop_reason}`;
  }
  text("round-detail", detail);
}

function progressNode(client) {
  if (client.progress === null || client.progress === undefined) return "";
  const bar = document.createElement("progress");
  bar.max = 1;
  bar.value = client.progress;
  bar.title = `${Math.round(client.progress * 100)} %`;
  return bar;
}

function dropText(drop) {
  if (!drop) return "";
  return `round ${drop.round}: ${drop.reason} (while ${drop.phase})`;
}

function renderClients(clients) {
  const body = byId("clients").tBodies[0];
  const rows = clients.map((client) => {
    const row = document.createElement("tr");
    row.dataset.client = client.name;
    row.dataset.state = client.state;
    row.className = `state-${client.state}`;
    cell(row, client.name, "name");
    cell(row, String(client.client_id), "num");
    cell(row, client.detail, "state");
    cell(row, progressNode(client));
    cell(row, client.connected ? duration(client.stage_seconds) : "", "num");
    cell(row, dropText(client.drop), "drop");
    return row;
  });
  body.replaceChildren(...rows);
}

function renderHistory(history) {
  const body = byId("history").tBodies[0];
  const rows = history.slice(-10).reverse().map((entry) => {
    const row = document.createElement("tr");
    row.dataset.round = String(entry.round);
    cell(row, String(entry.round), "num");
    cell(row, fmt(entry.train_loss, 4), "num");
    cell(row, fmt(entry.eval_loss, 4), "num");
    cell(row, entry.eval_accuracy === null || entry.eval_accuracy === undefined
      ? "–" : `${(entry.eval_accuracy * 100).toFixed(1)} %`, "num");
    cell(row, fmt(entry.seconds, 2), "num");
    return row;
  });
  body.replaceChildren(...rows);
}

function svg(name, attributes, parent) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

function niceTicks(low, high, count) {
  const span = high - low || 1;
  const step = Math.pow(10, Math.floor(Math.log10(span / count)));
  const factor = [1, 2, 5, 10].find((f) => span / (step * f) <= count) || 10;
  const size = step * factor;
  const ticks = [];
  for (let t = Math.ceil(low / size) * size; t <= high + size * 1e-9; t += size) ticks.push(t);
  return ticks;
}

function drawChart(node, history, names, fixedRange, fromZero) {
  const series = names.map((name) => ({
    name,
    points: history
      .filter((entry) => entry[name] !== null && entry[name] !== undefined)
      .map((entry) => [entry.round, entry[name]]),
  }));
  node.replaceChildren();
  const all = series.flatMap((s) => s.points);
  if (all.length === 0) {
    svg("text", { x: CHART.width / 2, y: CHART.height / 2, "text-anchor": "middle", class: "empty" },
      node).textContent = "no rounds yet";
    return;
  }
  // Every chart spans the same rounds, so that the curves line up one above the other.
  const xs = history.map((entry) => entry.round);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(Math.max(...xs), x0 + 1);
  let [y0, y1] = fixedRange || [fromZero ? Math.min(0, ...ys) : Math.min(...ys), Math.max(...ys)];
  if (y1 - y0 < 1e-9) [y0, y1] = [y0 - 0.5, y1 + 0.5];
  const w = CHART.width - CHART.left - CHART.right;
  const h = CHART.height - CHART.top - CHART.bottom;
  const px = (x) => CHART.left + ((x - x0) / (x1 - x0)) * w;
  const py = (y) => CHART.top + (1 - (y - y0) / (y1 - y0)) * h;
  for (const tick of niceTicks(y0, y1, 5)) {
    svg("line", { x1: CHART.left, x2: CHART.left + w, y1: py(tick), y2: py(tick), class: "grid" }, node);
    svg("text", { x: CHART.left - 6, y: py(tick) + 4, "text-anchor": "end" }, node).textContent =
      Number(tick.toPrecision(3)).toString();
  }
  for (const tick of niceTicks(x0, x1, 8).filter(Number.isInteger)) {
    svg("text", { x: px(tick), y: CHART.top + h + 16, "text-anchor": "middle" }, node).textContent =
      String(tick);
  }
  svg("line", { x1: CHART.left, x2: CHART.left + w, y1: CHART.top + h, y2: CHART.top + h, class: "axis" }, node);
  svg("line", { x1: CHART.left, x2: CHART.left, y1: CHART.top, y2: CHART.top + h, class: "axis" }, node);
  svg("text", { x: CHART.left + w, y: CHART.height - 2, "text-anchor": "end" }, node).textContent = "round";
  series.forEach((s, index) => {
    if (s.points.length === 0) return;
    const d = s.points.map((p, i) => `${i ? "L" : "M"}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`);
    svg("path", { d: d.join(" "), class: `series ${s.name}`, "data-points": s.points.length }, node);
    for (const p of s.points) svg("circle", { cx: px(p[0]), cy: py(p[1]), r: 2.5, class: s.name }, node);
    const legendY = CHART.top + 12 + index * 14;
    svg("rect", { x: CHART.left + w - 110, y: legendY - 8, width: 10, height: 3, class: s.name }, node);
    svg("text", { x: CHART.left + w - 96, y: legendY - 3 }, node).textContent = SERIES_NAMES[s.name];
  });
}

function render(status) {
  renderSummary(status);
  renderClients(status.clients);
  renderHistory(status.history);
  drawChart(byId("loss-chart"), status.history, ["train_loss", "eval_loss"], null, true);
  drawChart(byId("accuracy-chart"), status.history, ["eval_accuracy"], [0, 1], false);
  updates += 1;
  document.body.dataset.updates = String(updates);
  document.body.dataset.phase = status.job.phase;
  document.body.dataset.roundsCompleted = String(status.job.rounds_completed);
}

function setConnection(live, reason) {
  const node = byId("connection");
  node.className = `connection ${live ? "live" : "lost"}`;
  node.textContent = live
    ? `live · ${new Date().toLocaleTimeString()}`
    : `connection lost (${reason}): the job has ended or the server stopped; retrying`;
}

async function poll() {
  try {
    const response = await fetch("status", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    render(await response.json());
    setConnection(true);
  } catch (error) {
    setConnection(false, error.message);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();

// The dashboard's live view (docs/dashboard.md). One EventSource carries everything:
// `board` events (the page of turbines shown, the focus turbine with its history, the
// summary, models, health and alarms; at most once a second) and the feed's alarm and
// clear records. Changing the page, the filter or the focus opens a new stream.
"use strict";

const GROUP_LETTERS = { vibration: "V", rotation: "R", voltage: "U" };
const PAGE = 60;
const view = { offset: 0, state: "", focus: null, stream: null, last: null };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

const SVG = "http://www.w3.org/2000/svg";

// A sparkline of `values` (nulls are gaps); `limit` draws a dashed threshold line.
function sparkline(values, limit, cls = "spark") {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", cls);
  svg.setAttribute("viewBox", "0 0 100 30");
  svg.setAttribute("preserveAspectRatio", "none");
  const known = values.filter((v) => v !== null);
  if (!known.length) return svg;
  let lo = Math.min(...known), hi = Math.max(...known);
  if (limit !== undefined) { lo = Math.min(lo, limit, 0); hi = Math.max(hi, limit * 1.2); }
  const span = hi - lo || 1;
  const y = (v) => (28 - ((v - lo) / span) * 26).toFixed(1);
  const x = (i) => ((i / Math.max(values.length - 1, 1)) * 100).toFixed(1);
  let d = "", pen = "M";
  values.forEach((v, i) => {
    if (v === null) { pen = "M"; return; }
    d += `${pen}${x(i)} ${y(v)} `;
    pen = "L";
  });
  const path = document.createElementNS(SVG, "path");
  path.setAttribute("d", d);
  path.setAttribute("class", "line");
  svg.append(path);
  if (limit !== undefined) {
    const line = document.createElementNS(SVG, "line");
    line.setAttribute("x1", 0); line.setAttribute("x2", 100);
    line.setAttribute("y1", y(limit)); line.setAttribute("y2", y(limit));
    line.setAttribute("class", "limit");
    svg.append(line);
  }
  return svg;
}

// A letter per group, lit when flagged; the diagnosed group (primary) underlined.
function flags(groups, primary) {
  return el("span", { class: "flags" }, Object.entries(GROUP_LETTERS).map(([group, letter]) =>
    el("span", { class: ["flag", groups && groups[group] ? "on" : "", group === primary ? "primary" : ""].join(" ").trim(),
                 title: group === primary ? `${group} (diagnosis)` : group, "data-group": group, text: letter })));
}

// A card is kept while its turbine stays on the page (its children are redrawn), so a
// click, a hover or keyboard focus is not lost to the next board event.
const cards = new Map();

function card(item) {
  const key = `${item.pipeline}/${item.turbine}`;
  let node = cards.get(key);
  if (!node) {
    node = el("button", { class: "turbine", "data-turbine": item.turbine, "data-pipeline": item.pipeline,
      onclick: () => { view.focus = view.focus === key ? null : key; connect(); } });
    cards.set(key, node);
  }
  node.dataset.state = item.state;
  node.setAttribute("aria-pressed", view.focus === key ? "true" : "false");
  node.replaceChildren(...[
    el("span", { class: "name", text: item.turbine }),
    el("span", { class: "state", text: item.state.replace("_", " ") }),
    flags(item.groups, item.primary),
    item.score ? sparkline(item.score, 1) : null,
    item.simulator && !item.simulator.running ? el("span", { class: "stopped", text: "stopped" }) : null,
  ].filter(Boolean));
  return node;
}

function renderSummary(board) {
  for (const node of document.querySelectorAll("[data-count]")) {
    node.textContent = board.summary[node.dataset.count];
  }
  for (const chip of document.querySelectorAll(".chip")) {
    chip.setAttribute("aria-pressed", chip.dataset.filter === view.state ? "true" : "false");
  }
}

function renderHealth(board) {
  const h = board.health, figures = [["decisions/s", h.decisions_per_s]];
  for (const [name, p] of Object.entries(h.pipelines || {})) {
    if (p.latency_ms) figures.push([`${name} latency p50/p99 ms`, `${p.latency_ms.p50} / ${p.latency_ms.p99}`]);
  }
  if (h.spool) figures.push(["capture spool", h.spool.depth]);
  for (const [name, s] of Object.entries(h.sketch || {})) {
    if (s && s.psi_max !== null && s.psi_max !== undefined) figures.push([`${name} drift PSI`, s.psi_max.toFixed(3)]);
  }
  if (h.uptime_s !== undefined) figures.push(["uptime", `${Math.round(h.uptime_s)} s`]);
  $("health").replaceChildren(...figures.map(([label, value]) =>
    el("span", { class: "figure" }, el("small", { text: label }), el("b", { text: String(value) }))));
}

function renderModels(board) {
  const jobs = board.jobs.map((j) => `job ${j.job_id}: ${j.model} v${j.version} ${j.phase}`);
  $("models").replaceChildren(...Object.entries(board.pipelines).map(([name, p]) =>
    el("li", { "data-pipeline": name },
      el("b", { text: name }), " ",
      el("span", { class: "model", text: `${p.model.name} v${p.model.version}` }), " ",
      p.shadow ? el("span", { class: "extra", text: `shadow: ${p.shadow.name} v${p.shadow.version}` }) : null,
      jobs.length ? el("span", { class: "extra", text: jobs.join("; ") }) : null)));
}

function renderGrid(board) {
  const page = board.turbines, shown = new Set(page.items.map((i) => `${i.pipeline}/${i.turbine}`));
  for (const key of [...cards.keys()]) if (!shown.has(key)) cards.delete(key);
  const nodes = page.items.map(card), grid = $("grid");
  if (nodes.length !== grid.children.length || nodes.some((n, i) => grid.children[i] !== n)) {
    grid.replaceChildren(...nodes);
  }
  const last = Math.min(page.offset + page.items.length, page.total);
  $("page-info").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "none";
  $("prev").disabled = page.offset === 0;
  $("next").disabled = page.offset + page.limit >= page.total;
}

function control(item, body) {
  const { source } = item.simulator;
  fetch(`/api/simulator/${encodeURIComponent(source)}/${encodeURIComponent(item.turbine)}`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  }).then((r) => r.json()).then((status) => {
    $("focus-error").textContent = status.error || "";
    if (status.error) return;
    view.last.focus.simulator = status;  // shown now; the next board event agrees
    renderFocus(view.last);
  });
}

function toggles(item, what, kinds, active) {
  return el("div", { class: "toggles" }, el("small", { text: what === "fault" ? "faults" : "drifts" }),
    kinds.map((kind) => el("button", {
      "data-fault": what === "fault" ? kind : null, "data-drift": what === "drift" ? kind : null,
      "aria-pressed": active.includes(kind) ? "true" : "false", text: kind,
      onclick: () => control(item, { [what]: kind, on: !active.includes(kind) }),
    })));
}

// The panel's parts are redrawn apart: the controls only when the simulator's state
// changes, so a button is never replaced under the pointer by the next board event.
function renderFocus(board) {
  const item = board && board.focus, panel = $("focus");
  if (!item) { panel.hidden = true; panel.replaceChildren(); return; }
  if (panel.dataset.key !== `${item.pipeline}/${item.turbine}`) {
    panel.dataset.key = `${item.pipeline}/${item.turbine}`;
    panel.replaceChildren(el("div", { id: "focus-head" }), el("div", { id: "focus-controls" }),
      el("p", { class: "error", id: "focus-error" }), el("div", { id: "focus-charts", class: "charts" }));
  }
  panel.hidden = false;
  $("focus-head").replaceChildren(
    el("h2", {}, el("span", { text: item.turbine }), " ",
      el("span", { class: "state", "data-state": item.state, text: item.state.replace("_", " ") })),
    el("p", { text: item.model ? `${item.pipeline}: ${item.model.name} v${item.model.version}` +
      (item.primary ? ` · diagnosis: ${item.primary}` : "") : `${item.pipeline}: not scored yet` }),
    flags(item.groups, item.primary));
  const controls = $("focus-controls"), sim = item.simulator, drawn = JSON.stringify(sim || null);
  if (controls.dataset.drawn !== drawn) {
    controls.dataset.drawn = drawn;
    const kinds = sim && board.simulators[sim.source];
    controls.replaceChildren(...(sim ? [el("div", { class: "controls" },
      el("button", { "data-control": "running", "aria-pressed": sim.running ? "true" : "false",
        text: sim.running ? "running — stop" : "stopped — start",
        onclick: () => control(item, { running: !sim.running }) }),
      toggles(item, "fault", kinds.faults, sim.faults),
      toggles(item, "drift", kinds.drifts, sim.drifts))] : []));
  }
  const charts = $("focus-charts");
  if (!item.history) { charts.replaceChildren(); return; }
  charts.replaceChildren(
    el("div", { class: "series head" }, el("small", { text: "feature" }),
      el("small", { text: "input" }), el("small", { text: "error vs threshold" })),
    ...Object.keys(item.history.errors).map((name) => el("div", { class: "series" },
      el("small", { text: name }),
      sparkline(item.history.features[name], undefined, "spark wide"),
      sparkline(item.history.errors[name], item.thresholds[name], "spark wide"))));
}

function renderAlarms(board) {
  $("alarm-list").replaceChildren(...board.alarms.slice(0, 20).map((a) =>
    el("li", { "data-kind": a.event },
      el("time", { text: a.time.slice(11, 19) }), " ",
      el("b", { text: a.event }), ` ${a.turbine} `,
      el("span", { text: a.event === "alarm" ? a.groups.join(", ") + (a.primary ? ` (diagnosis: ${a.primary})` : "") : "" }),
      a.actions.map((act) => el("span", { class: act.ok ? "action" : "action failed",
        title: act.error || "done", text: `${act.actuator} ${act.ok ? "✓" : "✗"}` })))));
}

function render(board) {
  view.last = board;
  renderSummary(board);
  renderHealth(board);
  renderModels(board);
  renderGrid(board);
  renderFocus(board);
  renderAlarms(board);
}

function connect() {
  if (view.stream) view.stream.close();
  const query = new URLSearchParams({ decisions: "none", board: "1", offset: view.offset, limit: PAGE });
  if (view.state) query.set("state", view.state);
  if (view.focus) query.set("focus", view.focus);
  const stream = new EventSource(`/events?${query}`);
  view.stream = stream;
  const conn = $("conn");
  stream.onopen = () => { conn.dataset.conn = "live"; conn.textContent = "live"; };
  stream.onerror = () => { conn.dataset.conn = "lost"; conn.textContent = "reconnecting"; };
  stream.onmessage = (message) => {
    const record = JSON.parse(message.data);
    if (record.event === "board") render(record);
  };
}

$("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE); connect(); });
$("next").addEventListener("click", () => { view.offset += PAGE; connect(); });
for (const chip of document.querySelectorAll(".chip")) {
  chip.addEventListener("click", () => { view.state = chip.dataset.filter; view.offset = 0; connect(); });
}
connect();

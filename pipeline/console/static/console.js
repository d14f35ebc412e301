// clipwatch console: the alert feed (live over Server-Sent Events), camera tiles, alert detail and review.
// Plain JavaScript, no dependencies; every text goes through textContent (never innerHTML).
"use strict";

const LIMIT = 200;
const state = { alerts: [], cameras: new Map(), selected: null, filters: {} };
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

const fmtTime = (s) => (s == null ? "–" : new Date(s * 1000).toLocaleString());
const fmtP = (p) => (p == null ? "n/a" : p < 0.0001 ? p.toExponential(1) : p.toFixed(4));
function ago(s) {
  if (s == null) return "never";
  const d = Math.max(0, Date.now() / 1000 - s);
  if (d < 60) return `${Math.round(d)} s ago`;
  if (d < 3600) return `${Math.round(d / 60)} min ago`;
  if (d < 86400) return `${Math.round(d / 3600)} h ago`;
  return fmtTime(s);
}

function banner(text) {
  $("banner").textContent = text || "";
  $("banner").hidden = !text;
}

function announce(text) {
  $("announcer").textContent = text;
}

async function api(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  let body = null;
  try { body = await response.json(); } catch { body = null; }
  if (response.status === 401) {
    banner("This console needs a token: open it once as /?token=YOUR_TOKEN (the token is then kept in a cookie).");
  }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

// ---- filters ---------------------------------------------------------------------------------------------------

function readFilters() {
  const form = new FormData($("filters"));
  const filters = {};
  for (const name of ["camera", "kind", "state"]) if (form.get(name)) filters[name] = form.get(name);
  if (form.get("since")) filters.since = Date.now() / 1000 - Number(form.get("since"));
  state.filters = filters;
  return filters;
}

function matches(alert) {
  const f = state.filters;
  if (f.camera && alert.camera !== f.camera && alert.stream_id !== f.camera) return false;
  if (f.kind && alert.kind !== f.kind) return false;
  if (f.since && alert.scored_at < f.since) return false;
  if (f.state && alert.review.state !== f.state) return false;
  return true;
}

// ---- alerts ----------------------------------------------------------------------------------------------------

async function loadAlerts() {
  const query = new URLSearchParams({ ...readFilters(), limit: LIMIT });
  try {
    const page = await api(`/api/alerts?${query}`);
    state.alerts = page.alerts;
    state.total = page.total;
    renderAlerts();
  } catch (error) {
    $("count").textContent = `Could not load alerts: ${error.message}`;
  }
}

function renderCount() {
  const shown = state.alerts.length;
  const total = Math.max(state.total || 0, shown);
  $("count").textContent = total === 0 ? "No alerts match." :
    shown < total ? `Showing the newest ${shown} of ${total} alerts.` : `${total} alert${total === 1 ? "" : "s"}.`;
}

function alertRow(alert, fresh) {
  const select = () => selectAlert(alert.key);
  const reviewed = alert.review.state !== "open";
  return el("tr", { "data-key": alert.key, "aria-selected": String(alert.key === state.selected),
    class: [fresh ? "new" : "", reviewed ? "reviewed" : ""].join(" ").trim() || null, onclick: select },
    el("td", {}, el("button", { type: "button", class: "link", text: fmtTime(alert.scored_at),
      "aria-label": `${alert.kind} alert on ${alert.camera} at ${fmtTime(alert.scored_at)}: show details`,
      onclick: (event) => { event.stopPropagation(); select(); } })),
    el("td", {}, el("span", { class: "camera", text: alert.camera }),
      el("span", { class: "clip", text: alert.clip_key })),
    el("td", {}, el("span", { class: `kind k-${alert.kind}`, text: alert.kind })),
    el("td", { text: fmtP(alert.p_value) }),
    el("td", { text: alert.prediction ?? "–" }),
    el("td", {}, el("span", { class: `review-state r-${alert.review.state}`, text: alert.review.state })));
}

function renderAlerts(freshKey) {
  $("alerts").replaceChildren(...state.alerts.map((a) => alertRow(a, a.key === freshKey)));
  renderCount();
}

function upsertAlert(alert, fresh) {
  const index = state.alerts.findIndex((a) => a.key === alert.key);
  const keep = matches(alert);
  if (index >= 0 && !keep) state.alerts.splice(index, 1);
  else if (index >= 0) state.alerts[index] = alert;
  else if (keep) {
    state.alerts.push(alert);
    state.alerts.sort((a, b) => b.scored_at - a.scored_at || (a.key < b.key ? 1 : -1));
    state.alerts = state.alerts.slice(0, LIMIT);
    if (fresh) state.total = (state.total || 0) + 1;
  }
  renderAlerts(fresh ? alert.key : null);
}

// ---- detail and review -----------------------------------------------------------------------------------------

async function selectAlert(key) {
  state.selected = key;
  for (const row of $("alerts").rows) row.setAttribute("aria-selected", String(row.dataset.key === key));
  try {
    renderDetail(await api(`/api/alerts/${encodeURIComponent(key)}`));
    $("detail-title").focus();
  } catch (error) {
    banner(`Could not load alert ${key}: ${error.message}`);
  }
}

function renderDetail(alert) {
  $("detail-empty").hidden = true;
  $("detail-body").hidden = false;
  $("detail-body").dataset.key = alert.key;
  $("detail-title").textContent = `Alert ${alert.key}`;
  const img = $("d-thumb");
  if (alert.thumbnail) {
    img.hidden = false;
    img.src = alert.thumbnail;
    img.alt = `Thumbnail of clip ${alert.clip_key}`;
    $("d-thumb-caption").textContent = `clip ${alert.clip_key}, ${alert.clip_start ?? "?"}–${alert.clip_end ?? "?"} s`;
  } else {
    img.hidden = true;
    img.removeAttribute("src");
    $("d-thumb-caption").textContent = "No thumbnail was stored for this alert.";
  }
  $("d-kind").replaceChildren(el("span", { class: `kind k-${alert.kind}`, text: alert.kind }));
  $("d-camera").textContent = `${alert.camera} (stream ${alert.stream_id})`;
  $("d-clip").textContent = `${alert.clip_key}, ${alert.clip_start ?? "?"}–${alert.clip_end ?? "?"} s`;
  $("d-time").textContent = fmtTime(alert.scored_at);
  $("d-p").textContent = fmtP(alert.p_value);
  $("d-fused").textContent = alert.fused_score == null ? "n/a" : alert.fused_score.toFixed(3);
  $("d-prediction").textContent = alert.prediction == null ? "–" :
    `${alert.prediction}${alert.softmax == null ? "" : ` (softmax ${alert.softmax.toFixed(2)})`}`;
  const review = alert.review;
  $("d-review").replaceChildren(el("span", { class: `review-state r-${review.state}`, text: review.state }),
    review.at ? ` ${fmtTime(review.at)}${review.by ? ` by ${review.by}` : ""}${review.note ? `: ${review.note}` : ""}` : "");
  $("d-reasons").replaceChildren(...(alert.reasons.length ? alert.reasons : ["(none given)"]).map(
    (reason) => el("li", { text: reason })));
  for (const button of $("review").querySelectorAll("button[data-action]")) {
    const action = button.dataset.action;
    button.disabled = (action === "ack" && review.state === "acknowledged") ||
      (action === "dismiss" && review.state === "dismissed") || (action === "reopen" && review.state === "open");
  }
}

async function review(action) {
  const key = $("detail-body").dataset.key;
  const note = $("review").elements.note.value.trim();
  try {
    const alert = await api(`/api/alerts/${encodeURIComponent(key)}/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify(note ? { note } : {}) });
    $("review").elements.note.value = "";
    upsertAlert(alert, false);
    renderDetail(alert);
    announce(`Alert ${alert.key} is now ${alert.review.state}.`);
  } catch (error) {
    banner(`Could not ${action} alert ${key}: ${error.message}`);
  }
}

// ---- cameras ---------------------------------------------------------------------------------------------------

async function loadCameras() {
  try {
    const { cameras } = await api("/api/cameras");
    state.cameras = new Map(cameras.map((c) => [c.camera, c]));
    renderCameras();
  } catch (error) {
    $("cameras").replaceChildren(el("li", { class: "empty", text: `Could not load cameras: ${error.message}` }));
  }
}

function cameraTile(camera) {
  const recent = camera.recent_counts || {};
  const counts = ["normal", "novel", "adversarial"].map((v) => `${recent[v] || 0} ${v}`).join(" · ");
  const last = camera.last_verdict;
  const pressed = state.filters.camera === camera.camera;
  return el("li", {}, el("button", { type: "button", class: "tile", "data-camera": camera.camera,
    "data-state": camera.state, "aria-pressed": String(pressed),
    "aria-label": `${camera.camera}: ${camera.state}, ${camera.open_alerts} open alerts. ` +
      (pressed ? "Show all cameras' alerts." : "Show only this camera's alerts."),
    onclick: () => {
      $("filters").elements.camera.value = pressed ? "" : camera.camera;
      loadAlerts().then(renderCameras);
    } },
    el("span", { class: "name", text: camera.camera }),
    el("span", { class: "line" }, el("span", { class: `state s-${camera.state}`, text: camera.state }),
      camera.detail ? ` ${camera.detail}` : ""),
    el("span", { class: "strip", "aria-hidden": "true" },
      ...camera.recent.map((v) => el("span", { class: `v-${v}`, title: v }))),
    el("span", { class: "line", text: `last ${camera.recent.length}: ${counts}` }),
    el("span", { class: "line", text: last ? `last verdict ${last.verdict}, ${ago(last.at)}` : "no verdict yet" }),
    el("span", { class: `line${camera.open_alerts ? " alerts-open" : ""}`,
      text: `${camera.open_alerts} open of ${camera.alerts} alert${camera.alerts === 1 ? "" : "s"}` })));
}

function renderCameras() {
  const cameras = [...state.cameras.values()].sort((a, b) => a.camera.localeCompare(b.camera));
  $("cameras").replaceChildren(...(cameras.length ? cameras.map(cameraTile) :
    [el("li", { class: "empty", text: "No camera has reported yet." })]));
  const select = $("filters").elements.camera;
  const chosen = select.value;
  select.replaceChildren(el("option", { value: "", text: "all cameras" }),
    ...cameras.map((c) => el("option", { value: c.camera, text: c.camera })));
  if (chosen && !state.cameras.has(chosen)) select.append(el("option", { value: chosen, text: chosen }));
  select.value = chosen;
  const open = cameras.reduce((n, c) => n + c.open_alerts, 0);
  const total = cameras.reduce((n, c) => n + c.alerts, 0);
  $("summary").textContent = `${cameras.length} camera${cameras.length === 1 ? "" : "s"}, ${open} open of ${total} alerts`;
}

// ---- live events -----------------------------------------------------------------------------------------------

function connect() {
  const live = $("live");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    live.dataset.state = "live";
    live.textContent = "live";
    refresh();  // whatever happened before this connection (or while it was down) is fetched now
  });
  source.addEventListener("error", () => {
    live.dataset.state = "reconnecting";
    live.textContent = "reconnecting…";
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  });
  source.addEventListener("alert", (event) => {
    const alert = JSON.parse(event.data);
    upsertAlert(alert, true);
    announce(`New ${alert.kind} alert on ${alert.camera}.`);
  });
  source.addEventListener("review", (event) => {
    const alert = JSON.parse(event.data);
    upsertAlert(alert, false);
    if ($("detail-body").dataset.key === alert.key) renderDetail(alert);
  });
  source.addEventListener("camera", (event) => {
    const camera = JSON.parse(event.data);
    state.cameras.set(camera.camera, camera);
    renderCameras();
  });
  source.addEventListener("reset", refresh);
}

function refresh() {
  return loadCameras().then(loadAlerts).then(renderCameras);
}

document.addEventListener("DOMContentLoaded", () => {
  $("filters").addEventListener("change", () => loadAlerts().then(renderCameras));
  $("filters").addEventListener("reset", () => setTimeout(() => loadAlerts().then(renderCameras)));
  $("filters").addEventListener("submit", (event) => event.preventDefault());
  $("review").addEventListener("submit", (event) => event.preventDefault());
  for (const button of $("review").querySelectorAll("button[data-action]")) {
    button.addEventListener("click", () => review(button.dataset.action));
  }
  refresh();
  connect();
  setInterval(renderCameras, 30000);  // keeps "… ago" current
});

// pgcrdr console: a little plain JS over server-rendered pages. It keeps the signed-in token in
// sessionStorage, polls the JSON API with it to stay live, and sends every action to the same
// API the CLI uses, showing the server's own message when it refuses one.
"use strict";

const TOKEN_KEY = "pgcrdr.token";
const POLL_MS = 1500;
const page = document.body.dataset.page;
const project = document.body.dataset.project;
const service = document.body.dataset.service;

// --- small helpers ---------------------------------------------------------------------------
function token() { return sessionStorage.getItem(TOKEN_KEY); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function showAlert(box, message, info) {
  if (!box) return;
  box.textContent = message || "";
  box.classList.toggle("info", !!info);
  box.hidden = !message;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Every request carries the token. A 401/403 on a data request means the token is no longer
// valid: back to the sign-in page. Errors carry the server's message.
async function api(method, path, body, opts) {
  const headers = { "Authorization": "Bearer " + ((opts && opts.token) || token() || "") };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let resp;
  try {
    resp = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "The control plane cannot be reached (" + e.message + "); retrying");
  }
  showReplica(resp);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) {
    const message = (data && data.message) || ("HTTP " + resp.status);
    if ((resp.status === 401 || resp.status === 403) && !(opts && opts.signIn)) {
      sessionStorage.removeItem(TOKEN_KEY);
      location.assign("/?expired=1&next=" + encodeURIComponent(location.pathname));
    }
    throw new ApiError(resp.status, resp.status >= 500 ? "Server error: " + message : message);
  }
  return data;
}

// Several control-plane replicas: which one answered, and which one leads (response headers).
function showReplica(resp) {
  const el = document.getElementById("replica");
  const replica = resp.headers.get("X-Pgcrdr-Replica");
  if (!el || !replica) return;
  const leader = resp.headers.get("X-Pgcrdr-Leader");
  el.textContent = replica === leader ? "replica " + replica + " (leader)"
    : "replica " + replica + ", leader " + (leader || "being elected");
  el.hidden = false;
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

// One duration format everywhere: milliseconds below 1 s, then seconds with 2 decimals (1 from 10 s).
function fmtSeconds(s) {
  if (s === null || s === undefined || isNaN(s)) return "–";
  if (s < 0.9995) return Math.round(s * 1000) + " ms";
  return s.toFixed(s < 9.995 ? 2 : 1) + " s";
}

function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function durationOf(op) {
  // To the millisecond when the view model could measure it; else the whole-second timestamps.
  if (op.duration_s !== null && op.duration_s !== undefined) return op.duration_s;
  if (!op.create_time) return null;
  const end = op.finish_time ? new Date(op.finish_time) : new Date();
  return (end - new Date(op.create_time)) / 1000;
}

function roleBadge(label, testid) {
  return el("span", { class: "role-label role-" + (label || "none"), "data-testid": testid, text: label || "—" });
}

// A node's progress as the view model words it (views.node_progress): a bar only where there is
// a measure, nothing once the node is built.
function progressOf(row) {
  return (row.progress || []).map((p) => {
    const bar = p.max ? el("progress", { max: String(p.max), value: String(p.current || 0) }) : null;
    return el("div", { class: "progress", "data-testid": "node-progress" }, bar, bar ? " " : "", p.label);
  });
}

// Poll ``fn`` every POLL_MS; errors are shown in the page alert, and cleared once it works again.
function poll(fn) {
  const live = document.getElementById("live");
  const alertBox = document.getElementById("page-alert");
  let failing = false;
  async function tick() {
    try {
      await fn();
      if (failing) showAlert(alertBox, "");
      failing = false;
      if (live) live.hidden = false;
    } catch (e) {
      failing = true;
      showAlert(alertBox, e.message);
    }
    setTimeout(tick, POLL_MS);
  }
  tick();
}

// Re-render a container only when its data changed (keeps open <details> and focus stable).
const lastRendered = new WeakMap();
function renderIfChanged(container, data, render) {
  const key = JSON.stringify(data);
  if (lastRendered.get(container) === key) return;
  lastRendered.set(container, key);
  container.replaceChildren(...[].concat(render(data)));
}

function requireToken() {
  if (!token()) {
    location.assign("/?next=" + encodeURIComponent(location.pathname));
    return false;
  }
  const out = document.getElementById("sign-out");
  out.hidden = false;
  out.addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.assign("/"); });
  return true;
}

// --- sign in -----------------------------------------------------------------------------------
function initSignIn() {
  const box = document.getElementById("signin-alert");
  const params = new URLSearchParams(location.search);
  if (params.get("expired")) {
    showAlert(box, "Your session has ended (the token is no longer valid). Sign in again.", true);
  } else if (token()) {
    enter(token()).catch((e) => {
      sessionStorage.removeItem(TOKEN_KEY);
      showAlert(box, "Sign in again: " + e.message, true);
    });
  }

  async function enter(tok) {
    const projects = (await api("GET", "/v1/project", undefined, { token: tok, signIn: true })).projects;
    sessionStorage.setItem(TOKEN_KEY, tok);
    const next = params.get("next");
    if (next && next.startsWith("/console/")) location.assign(next);
    else if (projects.length) location.assign("/console/project/" + encodeURIComponent(projects[0].project_name));
    else showAlert(box, "Signed in, but there is no project yet.", true);
  }

  document.getElementById("token-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const tok = document.getElementById("token").value.trim();
    showAlert(box, "");
    try {
      await api("GET", "/v1/me", undefined, { token: tok, signIn: true });
      await enter(tok);
    } catch (e) {
      showAlert(box, "Sign-in failed: " + e.message);
    }
  });
  document.getElementById("password-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    showAlert(box, "");
    try {
      const res = await api("POST", "/v1/userauth", {
        email: document.getElementById("email").value.trim(),
        password: document.getElementById("password").value,
      }, { signIn: true });
      await enter(res.token);
    } catch (e) {
      showAlert(box, "Sign-in failed: " + e.message);
    }
  });
}

// --- services ----------------------------------------------------------------------------------
function initServices() {
  const tbody = document.querySelector("#services tbody");
  poll(async () => {
    const data = await api("GET", `/console/api/project/${encodeURIComponent(project)}/services`);
    renderIfChanged(tbody, data.services, (services) => {
      if (!services.length) {
        return el("tr", {}, el("td", { colspan: "5", class: "muted" },
          "No services yet. Create one with avn service create NAME --service-type pg --plan startup-4 --cloud CLOUD."));
      }
      return services.map((s) => el("tr", { "data-service": s.service_name },
        el("td", {}, el("a", { href: `/console/project/${encodeURIComponent(project)}/service/${encodeURIComponent(s.service_name)}`,
          text: s.service_name })),
        el("td", { "data-testid": "state" }, s.state),
        el("td", {}, s.label ? roleBadge(s.label, "role") : "—"),
        el("td", {}, s.plan),
        el("td", {}, s.cloud_description || s.cloud_name)));
    });
  });
}

// --- service overview --------------------------------------------------------------------------
function maskUri(uri, password, show) {
  if (show || !password) return uri;
  return uri.split(":" + encodeURIComponent(password) + "@").join(":••••••••@");
}

function initService() {
  let showPassword = false;
  let last = null;
  let note = null; // where the Service URI leads when the other service of the pair is the writer
  const toggle = document.getElementById("toggle-password");
  toggle.addEventListener("click", () => {
    showPassword = !showPassword;
    toggle.textContent = showPassword ? "Hide password" : "Show password";
    if (last) renderUris(last);
  });

  function renderUris(svc) {
    const pw = svc.service_uri_params && svc.service_uri_params.password;
    const ci = svc.connection_info || {};
    const rows = [["Service URI", [svc.service_uri]]];
    if (ci.pgbouncer && ci.pgbouncer.length) rows.push(["Pooled URI", ci.pgbouncer]);
    // A powered-off service has no standby to reach.
    const off = svc.state === "POWEROFF";
    rows.push(["Standby URIs", off ? [] : (ci.pg_standby || [])]);
    renderIfChanged(document.getElementById("svc-uris"), { rows, showPassword, note, off }, () => rows.flatMap(([k, uris]) => [
      el("dt", {}, k),
      el("dd", { "data-testid": k.toLowerCase().replace(/ /g, "-") },
        uris.length ? uris.map((u) => el("div", {}, el("code", {}, maskUri(u, pw, showPassword))))
          : (off ? "none (the service is powered off)" : "none"),
        k === "Service URI" && note ? el("div", { class: "note", "data-testid": "service-uri-note" }, note) : null),
    ]));
  }

  const base = `/v1/project/${encodeURIComponent(project)}/service/${encodeURIComponent(service)}`;
  poll(async () => {
    const [svcResp, dr] = await Promise.all([
      api("GET", base),
      api("GET", `/console/api/project/${encodeURIComponent(project)}/service/${encodeURIComponent(service)}/disaster-recovery`),
    ]);
    const svc = svcResp.service;
    last = svc;
    document.getElementById("svc-state").textContent = svc.state;
    const me = dr.primary.service_name === service ? dr.primary : dr.recovery;
    const roleEl = document.getElementById("svc-role");
    roleEl.textContent = me && me.label ? me.label : "";
    roleEl.hidden = !(me && me.label);
    // The status message without what an operation that has just ended made stale (view model).
    const message = me ? me.status_message : svc.status_message;
    const msg = document.getElementById("svc-message");
    msg.textContent = message || "";
    msg.hidden = !message;
    renderIfChanged(document.getElementById("svc-facts"), svc, () => [
      el("dt", {}, "State"), el("dd", { "data-testid": "service-state" }, svc.state),
      el("dt", {}, "Disaster recovery role"), el("dd", {}, me && me.label ? me.label : "none (no recovery service)"),
      el("dt", {}, "Plan"), el("dd", {}, `${svc.plan} (${svc.node_count} node${svc.node_count > 1 ? "s" : ""})`),
      el("dt", {}, "Cloud"), el("dd", {}, `${svc.cloud_description} (${svc.cloud_name})`),
      el("dt", {}, "Created"), el("dd", {}, fmtTime(svc.create_time)),
    ]);
    note = dr.service_uri_note;
    renderUris(svc);
    renderIfChanged(document.querySelector("#svc-nodes tbody"), me ? me.nodes : [], (nodes) => nodes.length
      ? nodes.map((n) => el("tr", {}, el("td", {}, n.name), el("td", { "data-testid": "node-role" }, n.role),
        el("td", { "data-testid": "node-state" }, n.state),
        el("td", {}, progressOf(n).length ? progressOf(n) : "–")))
      : el("tr", {}, el("td", { colspan: "4", class: "muted" }, "No node is running (yet).")));
    const repl = document.getElementById("svc-replication-section");
    repl.hidden = !dr.replication;
    if (dr.replication) {
      const r = dr.replication;
      document.getElementById("svc-replication").textContent = r.to
        ? `${r.from} replicates to ${r.to}; lag ${fmtBytes(r.lag_bytes)}` +
          (r.lag_seconds !== null && r.lag_seconds !== undefined ? `, ${fmtSeconds(r.lag_seconds)} behind` : "")
        : `${r.from || "No service"} is active; nothing replicates from it right now`;
    }
    renderIfChanged(document.getElementById("svc-backups"), svc.backups, (backups) => backups.length
      ? el("table", { class: "grid" },
        el("thead", {}, el("tr", {}, ["Backup", "Time", "Size", "Stored in"].map((h) => el("th", {}, h)))),
        el("tbody", {}, backups.map((b) => el("tr", {}, el("td", {}, b.backup_name), el("td", {}, fmtTime(b.backup_time)),
          el("td", {}, fmtBytes(b.data_size)), el("td", {}, b.storage_location || "–")))))
      : el("p", { class: "muted" }, "No backups yet"));
  });
}

// --- cross-region disaster recovery ------------------------------------------------------------
// The smallest round value (1, 1.5, 2, 2.5, 3, 4, 5, 6, 8 x 10^n of B, kB, MB...) at least v.
function niceCeil(v) {
  let unit = 1;
  while (v / unit >= 1024 && unit < 1024 ** 4) unit *= 1024;
  const x = v / unit;
  const p = 10 ** Math.floor(Math.log10(x));
  const m = [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].find((k) => k * p >= x - 1e-9);
  return m * p * unit;
}

function drawLagChart(container, samples, now) {
  const W = 640, H = 180, L = 62, R = 10, T = 10, B = 26;
  // Recent minutes: from the first sample kept (at least 2, at most 15 minutes back).
  const first = samples.length ? samples[0].t : now;
  const span = Math.min(15 * 60, Math.max(120, now - first));
  const t0 = now - span;
  const pts = samples.filter((s) => s.t >= t0);
  // Scaled to the highest sample, with headroom above it (never drawn on the top line).
  const peak = Math.max(0, ...pts.map((s) => s.lag_bytes || 0));
  const max = niceCeil(Math.max(1024, peak * 1.15));
  const x = (t) => L + ((t - t0) / span) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Replication lag in bytes over recent minutes");
  svg.setAttribute("data-samples", String(pts.filter((s) => s.lag_bytes !== null).length));
  svg.setAttribute("data-peak", String(peak));
  svg.setAttribute("data-axis-max", String(max));
  const add = (tag, attrs, text) => {
    const n = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text !== undefined) n.textContent = text;
    svg.append(n);
    return n;
  };
  for (const f of [0, 0.5, 1]) {
    add("line", { x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), stroke: "#d9e0e7" });
    add("text", { x: L - 6, y: y(max * f) + 4, "text-anchor": "end", "font-size": "11", fill: "#5d6b7a" }, fmtBytes(max * f));
  }
  for (const f of [1, 2 / 3, 1 / 3, 0]) {
    const ago = span * f;
    const text = !f ? "now" : ago >= 120 ? `-${Math.round(ago / 60)} min` : `-${Math.round(ago)} s`;
    add("text", { x: x(now - ago), y: H - 8, "text-anchor": "middle", "font-size": "11", fill: "#5d6b7a" }, text);
  }
  // One polyline per run of known values: a gap (no passive side, region down) stays a gap.
  let run = [];
  const flush = () => {
    if (run.length) add("polyline", { points: run.join(" "), fill: "none", stroke: "#1f6feb", "stroke-width": "2" });
    if (run.length === 1) add("circle", { cx: run[0].split(",")[0], cy: run[0].split(",")[1], r: "2", fill: "#1f6feb" });
    run = [];
  };
  for (const s of pts) {
    if (s.lag_bytes === null) { flush(); continue; }
    run.push(`${x(s.t).toFixed(1)},${y(s.lag_bytes).toFixed(1)}`);
  }
  flush();
  if (!pts.some((s) => s.lag_bytes !== null)) {
    add("text", { x: (L + W) / 2, y: H / 2, "text-anchor": "middle", fill: "#5d6b7a", "font-size": "13" },
      "No replication lag observed yet");
  }
  container.replaceChildren(svg);
}

function stepList(op) {
  return el("ol", { class: "ops" }, op.steps.map((s) => el("li", {},
    el("span", { class: "st-" + s.state }, s.name.replace(/_/g, " ")), " — ", s.state,
    s.duration_s !== null && s.duration_s !== undefined ? ` in ${fmtSeconds(s.duration_s)}` : "",
    s.detail ? el("span", { class: "muted" }, ` (${s.detail})`) : "")));
}

function dataGivenUp(op) {
  const d = op.data_loss;
  if (!d) return op.kind === "failover" ? "unknown" : "–";
  const known = (v) => v !== null && v !== undefined;
  let out;
  if (d.known === false || !known(d.bytes)) {
    // The primary could not be asked: the figure is unknown; say what bounds it and how old it is:
    // "unknown (at least N, from a position seen S before)".
    const bound = known(d.lower_bound_bytes) ? `at least ${fmtBytes(d.lower_bound_bytes)}` : null;
    const age = known(d.primary_last_seen_age_s) ? `from a position seen ${fmtSeconds(d.primary_last_seen_age_s)} before` : null;
    const why = [bound, age].filter(Boolean).join(", ");
    out = "unknown" + (why ? ` (${why})` : "");
  } else {
    out = fmtBytes(d.bytes);
  }
  if (d.divergent_commits !== undefined) out += `, ${d.divergent_commits} commit(s) kept`;
  return out;
}

function initDisasterRecovery() {
  const enc = encodeURIComponent;
  const viewUrl = `/console/api/project/${enc(project)}/service/${enc(service)}/disaster-recovery`;
  const svcUrl = (name) => `/v1/project/${enc(project)}/service/${enc(name)}`;
  const pageAlert = document.getElementById("dr-alert");
  let view = null;
  let cycleMode = null; // "cycle" (Manage > Service recovery cycle) or "failback"

  const $ = (id) => document.getElementById(id);
  const actionsBtn = $("actions"), menu = $("actions-menu"), manageMenu = $("manage-menu");
  const dialogs = ["create-dialog", "confirm-dialog", "cycle-dialog"].map($);

  function closeMenu() {
    menu.hidden = true;
    manageMenu.hidden = true;
    actionsBtn.setAttribute("aria-expanded", "false");
  }
  function openDialog(d) {
    closeMenu();
    showAlert(d.querySelector(".alert"), "");
    d.hidden = false;
  }
  function closeDialog(d) { d.hidden = true; if (d.id === "cycle-dialog") cycleMode = null; }
  for (const d of dialogs) {
    for (const b of d.querySelectorAll("[data-close]")) b.addEventListener("click", () => closeDialog(d));
  }
  actionsBtn.addEventListener("click", () => {
    const open = menu.hidden;
    closeMenu();
    menu.hidden = !open;
    actionsBtn.setAttribute("aria-expanded", String(open));
  });
  document.addEventListener("click", (ev) => {
    if (!ev.target.closest("#actions-wrap")) closeMenu();
  });
  document.addEventListener("keydown", (ev) => {
    if (ev.key !== "Escape") return;
    if (!menu.hidden) { closeMenu(); actionsBtn.focus(); return; }
    const open = dialogs.find((d) => !d.hidden);
    if (open) closeDialog(open);
  });

  // A role change through the API; the server's refusal is shown where the user clicked.
  async function setRole(name, role, alertBox, button) {
    if (button) button.disabled = true;
    showAlert(alertBox, "");
    try {
      await api("PUT", svcUrl(name), { disaster_recovery_role: role });
      await refresh();
      return true;
    } catch (e) {
      showAlert(alertBox, e.message);
      await refresh().catch(() => {});
      return false;
    } finally {
      if (button) button.disabled = false;
      if (view) render(view);
    }
  }

  // --- Create recovery service
  $("create-recovery").addEventListener("click", () => {
    const d = $("create-dialog");
    $("recovery-name").value = `${view.primary.service_name}-dr`;
    const sel = $("recovery-cloud");
    sel.replaceChildren(...view.clouds.map((c) => el("option", { value: c.cloud_name }, `${c.cloud_description} (${c.cloud_name})`)));
    openDialog(d);
  });
  $("create-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const d = $("create-dialog");
    const btn = d.querySelector("button[type=submit]");
    btn.disabled = true;
    showAlert(d.querySelector(".alert"), "");
    try {
      await api("POST", `/v1/project/${enc(project)}/service`, {
        service_name: $("recovery-name").value.trim(), service_type: "pg", plan: view.primary.plan,
        cloud: $("recovery-cloud").value, user_config: {},
        service_integrations: [{ integration_type: "disaster_recovery", source_service: view.primary.service_name }],
      });
      closeDialog(d);
      await refresh();
    } catch (e) {
      showAlert(d.querySelector(".alert"), e.message);
    } finally {
      btn.disabled = false;
    }
  });

  // --- Actions menu
  let confirmDo = null;
  menu.addEventListener("click", (ev) => {
    const item = ev.target.closest("[data-action]");
    if (!item || item.disabled) return;
    const action = item.dataset.action;
    if (action === "manage") {
      manageMenu.hidden = !manageMenu.hidden;
      item.setAttribute("aria-expanded", String(!manageMenu.hidden));
      ev.stopPropagation();
      return;
    }
    const p = view.primary.service_name, r = view.recovery.service_name;
    if (action === "failback" || action === "recovery_cycle") {
      cycleMode = action === "failback" ? "failback" : "cycle";
      openDialog($("cycle-dialog"));
      render(view);
      return;
    }
    const d = $("confirm-dialog");
    if (action === "switchover") {
      $("confirm-title").textContent = "Switchover to recovery service";
      $("confirm-text").textContent = `${r} becomes the active service and ${p} passive. Writes pause briefly ` +
        "while the writer moves; the Service URI does not change and no acknowledged write is lost.";
      $("confirm-go").textContent = "Switchover";
      confirmDo = (btn, box) => setRole(r, "active", box, btn);
    } else if (action === "switchback") {
      $("confirm-title").textContent = "Switchback to primary service";
      $("confirm-text").textContent = `${p} becomes the active service again and ${r} passive. Writes pause ` +
        "briefly while the writer moves; the Service URI does not change.";
      $("confirm-go").textContent = "Switchback";
      confirmDo = (btn, box) => setRole(p, "active", box, btn);
    }
    openDialog(d);
  });
  $("confirm-go").addEventListener("click", async () => {
    const d = $("confirm-dialog");
    if (confirmDo && await confirmDo($("confirm-go"), d.querySelector(".alert"))) closeDialog(d);
  });

  // --- Service recovery cycle wizard
  const cycle = $("cycle-dialog");
  for (const b of cycle.querySelectorAll("[data-run]")) {
    b.addEventListener("click", async () => {
      const box = cycle.querySelector(".alert");
      const p = view.primary.service_name;
      const run = b.dataset.run;
      if (run === "done") { closeDialog(cycle); return; }
      if (run === "restore") {
        // It replaces the primary's data: confirm first, in the console's own dialog.
        const r = view.recovery.service_name;
        $("confirm-title").textContent = "Restore primary service";
        $("confirm-text").textContent = `This replaces the data of ${p} with a copy of ${r}, the active service. ` +
          `${p}'s current data directory is kept aside first; what was written to ${p} and never reached ${r} ` +
          `will not be in the restored service. ${p} shows Rebuilding until it has caught up, then Passive.`;
        $("confirm-go").textContent = "Restore";
        confirmDo = (btn, confirmBox) => setRole(p, "passive", confirmBox, btn);
        openDialog($("confirm-dialog"));
        return;
      }
      const role = { failover: "failed", promote: "active" }[run];
      await setRole(p, role, box, b);
    });
  }

  function renderSide(side, s) {
    const root = $(side);
    root.querySelector(".side-name").textContent = s.service_name;
    root.querySelector(".side-cloud").textContent = `${s.cloud_description} (${s.cloud_name}) · ${s.plan}`;
    const label = root.querySelector(".role-label");
    label.textContent = s.label;
    label.className = "role-label role-" + s.label;
    root.querySelector(".side-state").textContent = "State: " + s.state + (s.status_message ? " — " + s.status_message : "");
    renderIfChanged(root.querySelector(".side-nodes"), s.nodes, (nodes) => nodes.map((n) =>
      el("div", { class: "node" }, el("span", { class: "muted" }, `${n.name}: ${n.role}, ${n.state}`), progressOf(n))));
  }

  function renderCycle(v) {
    if (!v.cycle) { if (!cycle.hidden) closeDialog(cycle); return; }
    cycle.querySelector(".wz-primary-name").textContent = v.primary.service_name;
    cycle.querySelector(".wz-recovery-name").textContent = v.recovery.service_name;
    for (const [sel, s] of [["wizard-primary-label", v.primary], ["wizard-recovery-label", v.recovery]]) {
      const n = cycle.querySelector(`[data-testid=${sel}]`);
      n.textContent = s.label;
      n.className = "role-label small role-" + s.label;
    }
    const words = { done: "✓ Done", running: "In progress…", current: "Next", pending: "" };
    for (const st of v.cycle.steps) {
      const li = cycle.querySelector(`[data-step=${st.id}]`);
      li.hidden = cycleMode === "failback" && st.id === "failover";
      li.querySelector(".step-status").textContent = words[st.status];
      li.querySelector(".step-status").className = "step-status st-" + st.status;
      const b = li.querySelector("[data-run]");
      b.disabled = !st.offered;
      b.title = st.why || "";
      const why = li.querySelector(".step-why");
      if (why) why.textContent = st.offered || st.status === "done" ? "" : st.why;
    }
    const prog = cycle.querySelector("[data-step=restore] .step-progress");
    const rebuilding = v.primary.label === "Rebuilding" || (v.operation && v.operation.kind === "failback_restore");
    renderIfChanged(prog, rebuilding ? v.primary.nodes : null, (nodes) => nodes
      ? [el("div", {}, `${v.primary.service_name} is `, el("strong", {}, v.primary.label), nodes.length ? ":" : "")]
        .concat(nodes.map((n) => el("div", { class: "node" }, `${n.name}: ${n.state} `, progressOf(n))))
      : []);
    renderIfChanged(cycle.querySelector(".cycle-operation"), v.operation, (op) => op
      ? [el("div", {}, el("strong", {}, v.kind_labels[op.kind] || op.kind), " in progress:"), stepList(op)] : []);
  }

  function render(v) {
    const paired = !!v.recovery;
    const a = v.actions;
    $("no-pair").hidden = paired;
    $("pair").hidden = !paired;
    $("create-recovery").hidden = !a.create_recovery.offered;
    $("create-hint").textContent = a.create_recovery.offered ? "" : a.create_recovery.why;
    $("actions-wrap").hidden = !paired;
    for (const item of menu.querySelectorAll("[data-action]")) {
      const key = item.dataset.action === "manage" ? "recovery_cycle" : item.dataset.action;
      const offer = a[key];
      // Only what makes sense now is offered; the rest is left out of the menu.
      item.closest("li").hidden = !(offer && offer.offered);
      item.title = offer ? offer.why : "";
    }
    if (paired) {
      renderSide("side-primary", v.primary);
      renderSide("side-recovery", v.recovery);
      const r = v.replication;
      const between = document.querySelector(".link-between");
      const fromPrimary = r.from === v.primary.service_name;
      $("arrow-right").style.display = r.to && fromPrimary ? "" : "none";
      $("arrow-left").style.display = r.to && !fromPrimary ? "" : "none";
      between.classList.toggle("broken", !r.to);
      $("direction-text").textContent = r.to ? `${r.from} → ${r.to}` : "no replication";
      $("lag-text").textContent = !r.to ? "" : `lag ${fmtBytes(r.lag_bytes)}` +
        (r.lag_seconds !== null && r.lag_seconds !== undefined ? ` · ${fmtSeconds(r.lag_seconds)} behind` : "");
      $("auto-text").textContent = v.automatic_failover || "";
      drawLagChart($("lag-chart"), v.lag_history, v.now);
    }
    // The last operation failed (or was undone): say so, with the server's reason.
    showAlert($("dr-problem"), v.problem ? v.problem.message : "");
    showAlert(cycle.querySelector("[data-testid=wizard-problem]"), v.problem ? v.problem.message : "");
    const opBox = $("operation");
    opBox.hidden = !v.operation;
    renderIfChanged(opBox, v.operation, (op) => op
      ? [el("div", {}, el("strong", {}, v.kind_labels[op.kind] || op.kind), ` in progress (started ${fmtTime(op.create_time)})`),
        stepList(op)] : []);
    renderIfChanged($("history"), v.history, (history) => history.length
      ? el("table", { class: "grid", id: "history-table" },
        el("thead", {}, el("tr", {}, ["Operation", "Started", "Duration", "Result", "Write pause", "Data given up", "Steps"]
          .map((h) => el("th", {}, h)))),
        el("tbody", {}, history.map((op) => el("tr", { "data-kind": op.kind },
          el("td", {}, v.kind_labels[op.kind] || op.kind),
          el("td", {}, fmtTime(op.create_time)),
          el("td", { "data-testid": "duration" }, fmtSeconds(durationOf(op))),
          // undone: the move was taken back and the old writer writes again; the message says why.
          el("td", { class: "st-" + op.state, "data-testid": "result" }, op.state, op.message ? ` — ${op.message}` : ""),
          el("td", { "data-testid": "write-pause" }, op.write_pause_s === null ? "–" : fmtSeconds(op.write_pause_s)),
          el("td", { "data-testid": "data-given-up" }, dataGivenUp(op)),
          el("td", {}, el("details", {}, el("summary", {}, `${op.steps.length} step${op.steps.length === 1 ? "" : "s"}`), stepList(op)))))))
      : el("p", { class: "muted" }, "No operations yet."));
    if (!cycle.hidden) renderCycle(v);
  }

  async function refresh() {
    view = await api("GET", viewUrl);
    render(view);
  }
  poll(refresh);
}

// --- a service's recent events (the project event log, filtered) -------------------------------
function initServiceEvents() {
  const box = document.getElementById("svc-events");
  if (!box) return;
  const url = `/console/api/project/${encodeURIComponent(project)}/service/${encodeURIComponent(service)}/events?limit=20`;
  poll(async () => {
    const { events } = await api("GET", url);
    renderIfChanged(box, events, (evs) => evs.length
      ? el("table", { class: "grid", "data-testid": "service-events" },
        el("thead", {}, el("tr", {}, ["Time", "Actor", "Event", "Description"].map((h) => el("th", {}, h)))),
        el("tbody", {}, evs.map((e) => el("tr", {}, el("td", {}, fmtTime(e.time)), el("td", {}, e.actor),
          el("td", {}, e.event_type), el("td", {}, e.event_desc)))))
      : el("p", { class: "muted" }, "No events yet"));
  });
}

// --- start -------------------------------------------------------------------------------------
if (page === "signin") initSignIn();
else if (requireToken()) {
  if (page === "services") initServices();
  else if (page === "service") { initService(); initServiceEvents(); }
  else if (page === "dr") initDisasterRecovery();
}

// The DevPocket web console: a client of the public API and WebSockets, as the
// mobile app is. The access token lives in memory only; the refresh token in this
// tab's sessionStorage (so a reload stays signed in), cleared at sign-out. Nothing
// puts a token in a URL but the WebSocket `token` query, which is the API's.
import { Terminal } from "/console/xterm.mjs";
import { FitAddon } from "/console/addon-fit.mjs";

const API = "/api/v1";
const REFRESH_KEY = "devpocket.refresh";
const session = { access: null, expiresAt: 0, user: null };
let leaveView = () => {};

// ---------------------------------------------------------------- the API

class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super(body?.detail || `HTTP ${status}`);
    this.status = status;
    this.body = body || {};
    this.retryAfter = retryAfter;
  }
}

async function refreshTokens() {
  const refresh_token = sessionStorage.getItem(REFRESH_KEY);
  if (!refresh_token) return false;
  const response = await fetch(`${API}/auth/refresh`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ refresh_token }),
  });
  if (!response.ok) return false;
  keepTokens(await response.json());
  return true;
}

function keepTokens(tokens) {
  session.access = tokens.access_token;
  session.expiresAt = Date.now() + tokens.expires_in * 1000;
  sessionStorage.setItem(REFRESH_KEY, tokens.refresh_token);
}

/// A fresh access token: refreshed when it expires within a minute.
async function accessToken() {
  if (session.access && Date.now() < session.expiresAt - 60_000) return session.access;
  if (await refreshTokens()) return session.access;
  signOut(false);
  throw new ApiError(401, { detail: "Your session has ended; sign in again." });
}

async function api(method, path, body) {
  const headers = {};
  if (session.access || sessionStorage.getItem(REFRESH_KEY)) {
    headers.Authorization = `Bearer ${await accessToken()}`;
  }
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(API + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  const json = text ? JSON.parse(text) : null;
  if (!response.ok) {
    if (response.status === 401 && headers.Authorization) signOut(false);
    throw new ApiError(response.status, json, response.headers.get("Retry-After"));
  }
  return json;
}

/// What an error says to the person, as the API gave it.
function explain(err) {
  if (!(err instanceof ApiError)) return `Something went wrong: ${err.message}`;
  const fields = err.body.context?.fields;
  const detail = fields
    ? Object.entries(fields).map(([f, m]) => `${f}: ${m.join("; ")}`).join("\n")
    : err.body.detail || err.message;
  if (err.status === 423) return `Locked: ${detail}`;
  if (err.status === 429) return `Too many attempts: ${detail}`;
  return detail;
}

function wsUrl(path, params) {
  const url = new URL(API + path, location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) url.searchParams.set(k, v);
  return url;
}

// ---------------------------------------------------------------- the page

const view = document.getElementById("view");

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (v === true) el.setAttribute(k, "");
    else if (v !== false && v !== null && v !== undefined) el.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      el.append(child instanceof Node ? child : String(child));
    }
  }
  return el;
}

function show(...nodes) {
  view.classList.remove("full");
  view.replaceChildren(...nodes);
}

function signOut(callApi = true) {
  if (callApi && session.access) {
    fetch(`${API}/auth/logout`, { method: "POST", headers: { Authorization: `Bearer ${session.access}` } });
  }
  session.access = null;
  session.expiresAt = 0;
  session.user = null;
  sessionStorage.removeItem(REFRESH_KEY);
  leaveView();
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else route();
}

document.getElementById("sign-out").addEventListener("click", () => signOut(true));

// ---------------------------------------------------------------- sign in

function signInView() {
  document.getElementById("bar").hidden = true;
  const message = h("p", { class: "error", id: "auth-error", role: "alert" });
  let mode = "signin";
  const fields = h("div", { class: "stack" });
  const form = h("form", { class: "stack", id: "auth-form" }, fields, message,
    h("button", { class: "primary", type: "submit", id: "auth-submit" }, "Sign in"));
  const tabs = h("div", { class: "tabs" },
    h("button", { type: "button", id: "tab-signin", "aria-pressed": "true", onclick: () => setMode("signin") }, "Sign in"),
    h("button", { type: "button", id: "tab-register", "aria-pressed": "false", onclick: () => setMode("register") }, "Create account"));
  function setMode(m) {
    mode = m;
    tabs.children[0].setAttribute("aria-pressed", String(m === "signin"));
    tabs.children[1].setAttribute("aria-pressed", String(m === "register"));
    form.querySelector("#auth-submit").textContent = m === "signin" ? "Sign in" : "Create account";
    message.textContent = "";
    fields.replaceChildren(...(m === "signin"
      ? [
          h("label", {}, "Username or e-mail", h("input", { name: "login", autocomplete: "username", required: true })),
          h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "current-password", required: true })),
        ]
      : [
          h("label", {}, "Username", h("input", { name: "username", autocomplete: "username", required: true })),
          h("label", {}, "E-mail", h("input", { name: "email", type: "email", autocomplete: "email", required: true })),
          h("label", {}, "Password", h("input", { name: "password", type: "password", autocomplete: "new-password", required: true })),
        ]));
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.textContent = "";
    const data = Object.fromEntries(new FormData(form));
    const submit = form.querySelector("#auth-submit");
    submit.disabled = true;
    try {
      const answer = mode === "signin"
        ? await api("POST", "/auth/login", { username_or_email: data.login, password: data.password })
        : await api("POST", "/auth/register", { username: data.username, email: data.email, password: data.password });
      keepTokens(answer);
      session.user = answer.user;
      location.hash = "#/environments";
    } catch (err) {
      message.textContent = explain(err);
    } finally {
      submit.disabled = false;
    }
  });
  setMode("signin");
  show(h("h1", {}, "DevPocket"), h("p", { class: "muted" }, "Development environments, from any browser."), tabs, form);
}

// ---------------------------------------------------------------- environments

const badge = (status) => h("span", { class: `badge ${status}` }, status);
const inTransit = (env) => env.status === "creating" || !["ready", "stopped", "failed", "deleted"].includes(env.phase);

async function lifecycle(env, action) {
  if (action === "delete") {
    if (!confirm(`Delete ${env.name}? Its machine and files are gone for good.`)) return;
    await api("DELETE", `/environments/${env.id}`);
  } else {
    if (action !== "start" && !confirm(`${action[0].toUpperCase() + action.slice(1)} ${env.name}?`)) return;
    await api("POST", `/environments/${env.id}/${action}`, {});
  }
}

function environmentCard(env, refresh) {
  const act = (action, label, cls) => h("button", {
    type: "button", class: cls, "data-action": action,
    onclick: async () => {
      try { await lifecycle(env, action); } catch (err) { alert(explain(err)); }
      refresh();
    },
  }, label);
  return h("div", { class: "card env", "data-id": env.id, "data-status": env.status, "data-phase": env.phase },
    h("div", { class: "row spread" },
      h("h3", {}, h("a", { href: `#/environments/${env.id}` }, env.name)),
      badge(env.status)),
    h("p", { class: "muted" }, `${env.template_name || env.template} · ${env.phase}${env.status_message ? ` · ${env.status_message}` : ""}`),
    inTransit(env) ? h("progress", { max: 100, value: env.progress ?? 0 }) : null,
    h("div", { class: "row" },
      env.status === "running" ? h("a", { href: `#/terminal/${env.id}/main` }, "Terminal") : null,
      env.status === "stopped" || env.status === "error" ? act("start", "Start") : null,
      env.status === "running" ? act("stop", "Stop") : null,
      env.status === "running" || env.status === "stopped" ? act("restart", "Restart") : null,
      act("delete", "Delete", "danger")));
}

function environmentsView() {
  const list = h("div", { id: "environments" }, h("p", { class: "muted" }, "Loading…"));
  const error = h("p", { class: "error", role: "alert" });
  let timer = null;
  async function refresh() {
    clearTimeout(timer);
    try {
      const envs = await api("GET", "/environments");
      error.textContent = "";
      list.replaceChildren(...(envs.length
        ? envs.map((env) => environmentCard(env, refresh))
        : [h("p", { class: "muted" }, "No environment yet: create one.")]));
      timer = setTimeout(refresh, envs.some(inTransit) ? 1500 : 10000);
    } catch (err) {
      error.textContent = explain(err);
      timer = setTimeout(refresh, 5000);
    }
  }
  leaveView = () => clearTimeout(timer);
  show(h("div", { class: "row spread" }, h("h2", {}, "Environments"),
    h("a", { href: "#/create" }, h("button", { class: "primary", type: "button", id: "new-environment" }, "New environment"))),
    error, list);
  refresh();
}

async function createView() {
  const error = h("p", { class: "error", role: "alert" });
  const [templates, info] = await Promise.all([api("GET", "/templates"), api("GET", "/info")]);
  const providerFields = h("div", { class: "stack" });
  if (info.default_provider === "digitalocean") {
    try {
      const [regions, sizes] = await Promise.all([api("GET", "/regions"), api("GET", "/sizes")]);
      const mine = (items) => items.filter((i) => !i.provider || i.provider === info.default_provider);
      const option = (value, label, selected, disabled) => h("option", { value, selected, disabled }, label);
      providerFields.append(
        h("label", {}, "Region", h("select", { name: "region" },
          mine(regions).map((r) => option(r.slug, r.name, r.default, r.available === false)))),
        h("label", {}, "Size", h("select", { name: "size" },
          mine(sizes).map((s) => option(s.slug, `${s.slug} (${s.cpu ? `${s.cpu} CPU, ` : ""}${s.memory})`, s.default, s.available === false)))));
    } catch (err) {
      error.textContent = explain(err);
    }
  }
  const form = h("form", { class: "stack", id: "create-form" },
    h("label", {}, "Name", h("input", { name: "name", required: true, value: "My project" })),
    h("label", {}, "Template", h("select", { name: "template_id" },
      templates.filter((t) => t.status !== "deprecated")
        .map((t) => h("option", { value: t.name }, `${t.display_name} — ${t.description}`)))),
    providerFields, error,
    h("button", { class: "primary", type: "submit", id: "create-submit" }, "Create"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = Object.fromEntries(new FormData(form));
    try {
      const env = await api("POST", "/environments", data);
      location.hash = `#/environments/${env.id}`;
    } catch (err) {
      error.textContent = explain(err);
    }
  });
  show(h("h2", {}, "New environment"), form);
}

function environmentView(id) {
  const head = h("div", { id: "environment" });
  const progress = h("progress", { max: 100, value: 0, id: "progress" });
  const stage = h("span", { class: "muted", id: "stage" });
  const log = h("pre", { class: "log", id: "log" });
  const metrics = h("dl", { class: "metrics" });
  let socket = null;
  let timer = null;
  let after = null;
  let closed = false;

  async function refresh() {
    try {
      const env = await api("GET", `/environments/${id}`);
      head.replaceChildren(environmentCard(env, refresh));
      if (env.status === "running") {
        const m = await api("GET", `/environments/${id}/metrics`).catch(() => null);
        if (m) {
          const cell = (label, value) => h("div", {}, h("dt", {}, label), h("dd", {}, value));
          metrics.replaceChildren(
            cell("CPU", `${(m.cpu_usage ?? 0).toFixed(1)} %`),
            cell("Memory", `${(m.memory_usage ?? 0).toFixed(1)} %`),
            cell("Disk", `${(m.disk_usage ?? 0).toFixed(1)} %`),
            cell("Network in", `${m.network_in ?? 0} B`),
            cell("Network out", `${m.network_out ?? 0} B`));
        }
      }
    } catch (err) {
      head.replaceChildren(h("p", { class: "error" }, explain(err)));
    }
    timer = setTimeout(refresh, 5000);
  }

  async function follow() {
    if (closed) return;
    const token = await accessToken().catch(() => null);
    if (!token) return;
    socket = new WebSocket(wsUrl(`/ws/logs/${id}`, { token, after }));
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      if (frame.type === "installation_log") {
        after = frame.seq;
        log.append(frame.data + "\n");
        log.scrollTop = log.scrollHeight;
      } else if (frame.type === "installation_progress") {
        progress.value = frame.progress;
        stage.textContent = `${frame.phase}${frame.stage && frame.stage !== frame.phase ? ` · ${frame.stage}` : ""} · ${frame.progress} %`;
      } else if (frame.type === "installation_complete") {
        progress.value = 100;
      } else if (frame.type === "installation_error") {
        stage.textContent = `failed: ${frame.error}`;
      }
    };
    socket.onclose = (event) => {
      if (!closed && event.code !== 1000 && event.code !== 1008) setTimeout(follow, 2000);
    };
  }

  leaveView = () => {
    closed = true;
    clearTimeout(timer);
    socket?.close();
  };
  const sessionName = h("input", { value: "main", "aria-label": "Session name", size: 10 });
  show(head,
    h("h3", {}, "Provisioning"), progress, stage, log,
    h("h3", {}, "Metrics"), metrics,
    h("div", { class: "row" }, h("label", { class: "muted" }, "Session "), sessionName,
      h("button", {
        type: "button",
        id: "open-terminal",
        onclick: () => { location.hash = `#/terminal/${id}/${encodeURIComponent(sessionName.value || "main")}`; },
      }, "Open terminal")));
  refresh();
  follow();
}

// ---------------------------------------------------------------- terminal

/// Large pastes go as several frames (the server takes at most 256 KiB a frame).
const INPUT_CHUNK = 32 * 1024;

function terminalView(target, id, name) {
  document.getElementById("bar").hidden = false;
  view.classList.add("full");
  const state = h("span", { class: "state", id: "terminal-state" }, "connecting");
  const clients = h("span", { class: "muted", id: "terminal-clients" });
  const box = h("div", { id: "terminal" });
  const term = new Terminal({ cursorBlink: true, fontSize: 14, scrollback: 5000, allowProposedApi: false });
  const fit = new FitAddon();
  term.loadAddon(fit);
  let socket = null;
  let lastSeq = null;
  let closed = false;
  let retry = 500;

  const send = (frame) => {
    if (socket?.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  };
  const setState = (text, cls) => {
    state.textContent = text;
    state.className = `state ${cls || ""}`;
  };

  term.onData((data) => {
    for (let i = 0; i < data.length; i += INPUT_CHUNK) send({ type: "input", data: data.slice(i, i + INPUT_CHUNK) });
  });
  term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  const onWindowResize = () => fit.fit();
  window.addEventListener("resize", onWindowResize);

  async function connect() {
    if (closed) return;
    const token = await accessToken().catch(() => null);
    if (!token) return;
    const path = target === "server" ? `/ws/servers/${id}/terminal` : `/ws/terminal/${id}`;
    socket = new WebSocket(wsUrl(path, { token, session: name, cols: term.cols, rows: term.rows, resume: lastSeq }));
    socket.onopen = () => { retry = 500; };
    socket.onmessage = (event) => {
      const frame = JSON.parse(event.data);
      switch (frame.type) {
        case "output":
          lastSeq = frame.seq;
          term.write(frame.data);
          break;
        case "welcome":
          clients.textContent = `${frame.session.clients} client${frame.session.clients === 1 ? "" : "s"}`;
          break;
        case "status":
          if (frame.state === "connected") setState("connected");
          else if (frame.state === "reconnecting") setState(`reconnecting: ${frame.message || ""}`, "reconnecting");
          else if (frame.state === "closed") { closed = true; setState(`closed: ${frame.message || ""}`, "closed"); }
          else if (frame.state === "idle_warning") setState(`idle: stops at ${frame.stop_at}; type to keep it`, "reconnecting");
          break;
        case "error":
          setState(`error: ${frame.message}`, "reconnecting");
          break;
      }
    };
    socket.onclose = (event) => {
      if (closed || event.code === 1000 || event.code === 1008) {
        closed = true;
        if (event.code === 1008) setState(`closed: ${event.reason}`, "closed");
        return;
      }
      setState("reconnecting…", "reconnecting");
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 5000);
    };
  }

  leaveView = () => {
    closed = true;
    window.removeEventListener("resize", onWindowResize);
    socket?.close();
    term.dispose();
  };
  const copy = h("button", { type: "button", onclick: () => navigator.clipboard?.writeText(term.getSelection()) }, "Copy");
  const paste = h("button", {
    type: "button",
    onclick: async () => {
      const text = await navigator.clipboard?.readText().catch(() => null);
      if (text) term.paste(text);
      term.focus();
    },
  }, "Paste");
  const back = target === "server" ? "#/servers" : `#/environments/${id}`;
  view.replaceChildren(
    h("div", { class: "termbar" }, h("a", { href: back }, "← Back"), h("span", {}, `session ${name}`), clients, copy, paste, state),
    box);
  term.open(box);
  fit.fit();
  term.focus();
  connect();
}

// ---------------------------------------------------------------- servers and apps

async function serversView() {
  const error = h("p", { class: "error", role: "alert" });
  const [servers, apps] = await Promise.all([api("GET", "/servers"), api("GET", "/apps")]);
  const appCard = (app) => h("div", { class: "card" },
    h("div", { class: "row spread" }, h("h3", {}, app.name), badge(app.status)),
    h("p", { class: "muted" }, app.path, app.url ? [" · ", h("a", { href: app.url, rel: "noopener noreferrer", target: "_blank" }, app.url)] : null),
    h("div", { class: "row" },
      ...["start", "stop"].map((action) => h("button", {
        type: "button",
        onclick: async () => {
          try { await api("POST", `/apps/${app.id}/${action}`, {}); serversView(); } catch (err) { error.textContent = explain(err); }
        },
      }, action[0].toUpperCase() + action.slice(1)))));
  show(h("h2", {}, "Servers"), error,
    servers.length ? servers.map((s) => h("div", { class: "card" },
      h("div", { class: "row spread" }, h("h3", {}, s.name), badge(s.status)),
      h("p", { class: "muted" }, `${s.username}@${s.host}:${s.port}`),
      s.status === "online" ? h("a", { href: `#/server-terminal/${s.id}/main` }, "Terminal") : null,
      apps.filter((a) => a.server_id === s.id).map(appCard)))
      : h("p", { class: "muted" }, "No server registered. Register one from the app or the API (POST /api/v1/servers)."));
}

// ---------------------------------------------------------------- routing

async function route() {
  leaveView();
  leaveView = () => {};
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  const signedIn = session.access || sessionStorage.getItem(REFRESH_KEY);
  if (!signedIn || parts[0] === "signin") {
    if (signedIn && parts[0] === "signin") { location.hash = "#/environments"; return; }
    return signInView();
  }
  document.getElementById("bar").hidden = false;
  try {
    if (!session.user) session.user = await api("GET", "/auth/me");
    document.getElementById("who").textContent = session.user.username;
    switch (parts[0]) {
      case "create": return await createView();
      case "environments": return parts[1] ? environmentView(parts[1]) : environmentsView();
      case "terminal": return terminalView("environment", parts[1], parts[2] || "main");
      case "server-terminal": return terminalView("server", parts[1], parts[2] || "main");
      case "servers": return await serversView();
      default: location.hash = "#/environments";
    }
  } catch (err) {
    show(h("p", { class: "error" }, explain(err)));
  }
}

window.addEventListener("hashchange", route);
route();

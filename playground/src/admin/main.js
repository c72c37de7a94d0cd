// The operator console (`/admin`): live figures of every instance and their sum from the
// `serverStats` subscription, charts of the last five minutes, the busiest rooms, who is
// online and their sockets, and the admin actions (disconnect a user, publish a channel event,
// send a notification), each confirmed first and then listed in the log of admin actions.
//
// The bar on top is the playground's: the token is shared with the chat and the playground.
// Without an admin token the page asks for one; the server refuses the data to anyone else.
import "../graphiql/playground.css";
import "./admin.css";

import { createClient } from "graphql-ws";

import {
  expiresIn,
  graphqlUrl,
  storedToken,
  storeToken,
  subscriptionUrl,
  tokenClaims,
  urlToken,
} from "../shared/session.js";

/** The charts keep this many seconds. */
const HISTORY_SECONDS = 300;
/** Tables that come from queries are refreshed this often. */
const TABLE_REFRESH_MS = 5_000;

const STATS = `subscription {
  serverStats {
    at
    instances { ...figures }
    total { ...figures }
  }
}
fragment figures on InstanceStats {
  instance at stale startedAt
  connections { name value }
  subscriptions { name value }
  cohorts cohortMembers
  eventsPublished eventsDelivered publishedPerSecond deliveredPerSecond
  latencyP50Ms latencyP99Ms slowConsumers
  refusals { name value }
  redis database signedInSockets
  sockets { userId transport queued }
}`;
const TABLES = `query {
  roomLoads(first: 10) {
    byMembersOnline { roomId title membersOnline messagesLastMinute }
    byMessages { roomId title membersOnline messagesLastMinute }
  }
  onlineUsers { user { id username } status connections }
  adminActions(last: 50) { id adminName action target detail at }
}`;
const DISCONNECT = `mutation($userId: ID!) { disconnectUser(userId: $userId) }`;
const PUBLISH = `mutation($channel: String!, $type: String!, $data: JSON) {
  publish(channel: $channel, type: $type, data: $data) { id }
}`;
const NOTIFY = `mutation($input: SendNotificationInput!) { sendNotification(input: $input) }`;

// --- a little DOM ------------------------------------------------------------------------------

/** An element with attributes (`on*` are listeners) and children (strings become text). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "className") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en"));
const fmtRate = (n) => (n === null || n === undefined ? "–" : n < 10 ? n.toFixed(1) : Math.round(n).toLocaleString("en"));
const fmtMs = (n) => (n === null || n === undefined ? "–" : `${n < 10 ? n.toFixed(2) : Math.round(n)} ms`);
const sum = (list) => list.reduce((t, f) => t + f.value, 0);

// --- state -------------------------------------------------------------------------------------

const fromUrl = urlToken();
let token = fromUrl || storedToken();
let tokenFromUrl = Boolean(fromUrl);
let client = null;
let latest = null;
/** Per second: { at, published, delivered } of the total. */
const history = [];
let selectedUser = "";
let tables = null;
let tableTimer = null;

async function gql(query, variables = {}) {
  const response = await fetch(graphqlUrl(), {
    method: "POST",
    headers: {
      "Content-Type": "application/json",
      Accept: "application/graphql-response+json, application/json",
      ...(token ? { Authorization: `Bearer ${token}` } : {}),
    },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  if (body.errors?.length) {
    const e = body.errors[0];
    throw new Error(`${e.extensions?.code ?? "ERROR"}: ${e.message}`);
  }
  return body.data;
}

// --- the bar -----------------------------------------------------------------------------------

function bar() {
  const claims = tokenClaims(token);
  let who = "Anonymous: the console needs an admin token";
  if (token && !claims) who = "That does not look like a JWT";
  else if (claims) {
    const name = claims.name || claims.sub || "?";
    who = `Signed in as ${name} (${claims.role || "user"}), ${expiresIn(claims)}`;
    if (tokenFromUrl) who += " · from the URL, not saved";
  }
  const input = h("input", {
    id: "admin-token",
    "data-testid": "token-input",
    type: "password",
    autocomplete: "off",
    spellcheck: "false",
    placeholder: "Paste a JWT",
  });
  input.value = token;
  const apply = (next) => {
    token = next;
    tokenFromUrl = false;
    storeToken(next);
    start();
  };
  return h(
    "header",
    { className: "tp-bar" },
    h("a", { className: "tp-brand", href: "/" }, h("span", { className: "tp-logo", "aria-hidden": "true" }, "T"), "Tidings"),
    h(
      "nav",
      { className: "tp-nav", "aria-label": "Pages" },
      h("a", { href: "/" }, "Chat"),
      h("a", { href: "/playground" }, "Playground"),
      h("a", { href: "/admin", "aria-current": "page" }, "Console"),
    ),
    h(
      "form",
      {
        className: "tp-token",
        onsubmit: (e) => {
          e.preventDefault();
          apply(input.value.trim());
        },
      },
      h("label", { for: "admin-token" }, "Token"),
      input,
      h("button", { type: "submit", "data-testid": "token-apply" }, "Use token"),
      token ? h("button", { type: "button", className: "tp-secondary", onclick: () => apply("") }, "Sign out") : null,
    ),
    h("p", { className: "tp-who", "data-testid": "token-status", "aria-live": "polite" }, who),
  );
}

// --- figures -----------------------------------------------------------------------------------

function instanceCard(s) {
  const figure = (name, label, value) => [h("dt", {}, label), h("dd", { "data-figure": name }, value)];
  const refusals = sum(s.refusals);
  return h(
    "section",
    {
      className: s.stale ? "ad-instance ad-stale" : "ad-instance",
      "data-testid": "instance",
      "data-instance": s.instance,
      "data-stale": s.stale ? "true" : "false",
    },
    h(
      "h3",
      {},
      h("span", {}, s.instance === "total" ? "All instances" : `Instance ${s.instance}`),
      s.stale ? h("span", { className: "ad-badge", "data-testid": "stale" }, "stopped reporting") : null,
    ),
    h(
      "dl",
      { className: "ad-figures" },
      figure("connections", "Connections", fmt(sum(s.connections))),
      s.connections.filter((f) => f.value > 0).map((f) => figure(`connections-${f.name}`, `· ${f.name}`, fmt(f.value))),
      figure("signed-in-sockets", "Signed-in sockets", fmt(s.signedInSockets)),
      figure("subscriptions", "Subscriptions", fmt(sum(s.subscriptions))),
      s.subscriptions.filter((f) => f.value > 0).map((f) => figure(`subscriptions-${f.name}`, `· ${f.name}`, fmt(f.value))),
      figure("cohorts", "Cohorts (members)", `${fmt(s.cohorts)} (${fmt(s.cohortMembers)})`),
      figure("published", "Published /s", fmtRate(s.publishedPerSecond)),
      figure("delivered", "Delivered /s", fmtRate(s.deliveredPerSecond)),
      figure("p50", "Latency p50", fmtMs(s.latencyP50Ms)),
      figure("p99", "Latency p99", fmtMs(s.latencyP99Ms)),
      figure("slow-consumers", "Slow consumers cut", fmt(s.slowConsumers)),
      figure("refusals", "Refusals", fmt(refusals)),
      s.refusals.filter((f) => f.value > 0).map((f) => figure(`refusals-${f.name}`, `· ${f.name}`, fmt(f.value))),
      figure("redis", "Redis", s.redis),
      figure("database", "Database", s.database),
    ),
  );
}

/** Canvases drawn once the page is in the document. */
const toDraw = [];

function chart(label, testId, series, unit) {
  const canvas = h("canvas", { "data-testid": testId, width: 600, height: 160 });
  toDraw.push([canvas, series]);
  const last = series.map((s) => `${s.name} ${unit(s.points.at(-1) ?? 0)}`).join(" · ");
  return h("figure", { className: "ad-panel ad-chart" }, h("h2", {}, label), canvas, h("figcaption", { className: "ad-legend" }, `${last} · up to the last ${HISTORY_SECONDS / 60} minutes`));
}

function draw(canvas, series) {
  const ctx = canvas.getContext("2d");
  if (!ctx) return;
  const { width, height } = canvas;
  const style = getComputedStyle(document.documentElement);
  ctx.clearRect(0, 0, width, height);
  const max = Math.max(1, ...series.flatMap((s) => s.points));
  ctx.strokeStyle = style.getPropertyValue("--tp-line") || "#ccc";
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = Math.round(((height - 10) * i) / 4) + 5;
    ctx.beginPath();
    ctx.moveTo(0, y);
    ctx.lineTo(width, y);
    ctx.stroke();
  }
  ctx.fillStyle = style.getPropertyValue("--tp-muted") || "#666";
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillText(fmtRate(max), 4, 14);
  // The width spans what the page has seen, up to five minutes (at least half a minute).
  const span = Math.max(30, ...series.map((s) => s.points.length - 1));
  for (const s of series) {
    ctx.strokeStyle = s.color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    s.points.forEach((v, i) => {
      const x = width - (s.points.length - 1 - i) * (width / span);
      const y = height - 5 - (v / max) * (height - 10);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
}

// --- tables ------------------------------------------------------------------------------------

function table(testId, head, rows) {
  return h(
    "table",
    { "data-testid": testId },
    h("thead", {}, h("tr", {}, head.map(([label, num]) => h("th", { className: num ? "ad-num" : null }, label)))),
    h("tbody", {}, rows),
  );
}

/** Every listed socket of the live instances, with the instance it is on. */
function allSockets() {
  if (!latest) return [];
  return latest.instances
    .filter((i) => !i.stale)
    .flatMap((i) => i.sockets.map((s) => ({ ...s, instance: i.instance })));
}

function tablesSection() {
  const rooms = tables?.roomLoads;
  const roomRows = (list) =>
    (list ?? []).map((r) =>
      h("tr", { "data-room": r.roomId }, h("td", {}, r.title), h("td", { className: "ad-num" }, fmt(r.membersOnline)), h("td", { className: "ad-num" }, fmt(r.messagesLastMinute))),
    );
  const roomHead = [["Room"], ["Online", true], ["Messages /min", true]];
  const sockets = allSockets();
  const users = (tables?.onlineUsers ?? []).map((p) => {
    const mine = sockets.filter((s) => s.userId === p.user.id);
    const transports = [...new Set(mine.map((s) => s.transport))].join(", ");
    return h(
      "tr",
      { "data-user": p.user.id, className: p.user.id === selectedUser ? "ad-selected" : null },
      h("td", {}, h("button", { className: "ad-link", type: "button", onclick: () => selectUser(p.user.id) }, p.user.username)),
      h("td", {}, p.status),
      h("td", { className: "ad-num", "data-figure": "connections" }, fmt(p.connections)),
      h("td", {}, transports || "–"),
    );
  });
  const mine = sockets.filter((s) => s.userId === selectedUser);
  return h(
    "div",
    { className: "ad-tables" },
    h("section", { className: "ad-panel" }, h("h2", {}, "Rooms by members online"), table("rooms-by-online", roomHead, roomRows(rooms?.byMembersOnline))),
    h("section", { className: "ad-panel" }, h("h2", {}, "Rooms by messages per minute"), table("rooms-by-messages", roomHead, roomRows(rooms?.byMessages))),
    h(
      "section",
      { className: "ad-panel" },
      h("h2", {}, "Online users"),
      table("online-users", [["User"], ["Status"], ["Connections", true], ["Transports"]], users),
    ),
    h(
      "section",
      { className: "ad-panel" },
      h("h2", {}, selectedUser ? `Sockets of ${selectedUser}` : "A user's sockets"),
      selectedUser
        ? table(
            "user-sockets",
            [["Instance"], ["Transport"], ["Queued frames", true]],
            mine.map((s) => h("tr", {}, h("td", {}, s.instance), h("td", {}, s.transport), h("td", { className: "ad-num" }, fmt(s.queued)))),
          )
        : h("p", { className: "ad-status" }, "Pick an online user to see their sockets and queue depths."),
    ),
  );
}

function selectUser(id) {
  selectedUser = id;
  const target = document.querySelector("[data-testid=disconnect-user]");
  if (target) target.value = id;
  renderTables();
}

// --- actions -----------------------------------------------------------------------------------

/** Asks before an action; resolves true when confirmed. */
function confirmAction(text) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { "data-testid": "confirm-dialog" },
      h("p", {}, text),
      h(
        "menu",
        {},
        h("button", { type: "button", "data-testid": "confirm-no", onclick: () => dialog.close("no") }, "Cancel"),
        h("button", { type: "button", className: "ad-confirm", "data-testid": "confirm-yes", onclick: () => dialog.close("yes") }, "Confirm"),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "yes");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** The last action's outcome, kept across the page's renders. */
let outcome = { text: "", error: false };

function say(text, error = false) {
  outcome = { text, error };
  const el = document.querySelector("[data-testid=action-result]");
  if (el) {
    el.textContent = text;
    el.className = error ? "ad-status ad-error" : "ad-status";
  }
}

async function act(question, run) {
  if (!(await confirmAction(question))) return say("Cancelled.");
  try {
    say(await run());
  } catch (e) {
    say(String(e.message ?? e), true);
  }
  refreshTables();
}

function actionsSection() {
  const field = (label, el) => h("label", {}, label, el);
  const userInput = h("input", { "data-testid": "disconnect-user", required: true, placeholder: "user id" });
  userInput.value = selectedUser;
  const disconnect = h(
    "form",
    {
      "data-testid": "disconnect-form",
      onsubmit: (e) => {
        e.preventDefault();
        const userId = userInput.value.trim();
        act(`Disconnect ${userId} on every instance and void their tokens?`, async () => {
          await gql(DISCONNECT, { userId });
          return `Disconnected ${userId}.`;
        });
      },
    },
    h("h2", {}, "Disconnect a user"),
    field("User id", userInput),
    h("button", { type: "submit", "data-testid": "disconnect-submit" }, "Disconnect"),
  );
  const channel = h("input", { "data-testid": "publish-channel", required: true, placeholder: "public:news" });
  const type = h("input", { "data-testid": "publish-type", required: true, placeholder: "announcement" });
  const data = h("textarea", { "data-testid": "publish-data", rows: 2, placeholder: '{"text": "hello"}' });
  const publish = h(
    "form",
    {
      onsubmit: (e) => {
        e.preventDefault();
        let parsed = null;
        try {
          parsed = data.value.trim() ? JSON.parse(data.value) : null;
        } catch {
          return say("The data is not JSON.", true);
        }
        act(`Publish ${type.value} to ${channel.value}?`, async () => {
          await gql(PUBLISH, { channel: channel.value.trim(), type: type.value.trim(), data: parsed });
          return `Published to ${channel.value}.`;
        });
      },
    },
    h("h2", {}, "Publish a channel event"),
    field("Channel", channel),
    field("Type", type),
    field("Data (JSON)", data),
    h("button", { type: "submit", "data-testid": "publish-submit" }, "Publish"),
  );
  const audience = h(
    "select",
    { "data-testid": "notify-audience" },
    ["user", "room", "role", "everyone"].map((a) => h("option", { value: a }, a)),
  );
  const who = h("input", { "data-testid": "notify-target", placeholder: "id or role (not for everyone)" });
  const title = h("input", { "data-testid": "notify-title", required: true, placeholder: "Maintenance at 18:00" });
  const body = h("input", { "data-testid": "notify-body", placeholder: "optional" });
  const notify = h(
    "form",
    {
      onsubmit: (e) => {
        e.preventDefault();
        const input = { kind: "admin", title: title.value.trim() };
        if (body.value.trim()) input.body = body.value.trim();
        const a = audience.value;
        if (a === "user") input.userId = who.value.trim();
        if (a === "room") input.roomId = who.value.trim();
        if (a === "role") input.role = who.value.trim();
        const to = a === "everyone" ? "everyone" : `${a} ${who.value.trim()}`;
        act(`Notify ${to}: “${input.title}”?`, async () => {
          const n = (await gql(NOTIFY, { input })).sendNotification;
          return `Notified ${n} ${n === 1 ? "person" : "people"}.`;
        });
      },
    },
    h("h2", {}, "Send a notification"),
    field("To", audience),
    field("User id, room id or role", who),
    field("Title", title),
    field("Body", body),
    h("button", { type: "submit", "data-testid": "notify-submit" }, "Send"),
  );
  return h(
    "section",
    { className: "ad-panel" },
    h("div", { className: "ad-actions" }, disconnect, publish, notify),
    h(
      "p",
      { className: outcome.error ? "ad-status ad-error" : "ad-status", "data-testid": "action-result", "aria-live": "polite" },
      outcome.text,
    ),
  );
}

function logSection() {
  const rows = (tables?.adminActions ?? []).map((a) =>
    h(
      "tr",
      { "data-action": a.action, "data-target": a.target },
      h("td", {}, new Date(a.at).toLocaleString("en-GB")),
      h("td", {}, a.adminName),
      h("td", {}, a.action),
      h("td", {}, a.target),
      h("td", {}, a.detail ?? ""),
    ),
  );
  return h(
    "section",
    { className: "ad-panel" },
    h("h2", {}, "Admin actions"),
    table("action-log", [["When"], ["Who"], ["What"], ["Target"], ["Detail"]], rows),
  );
}

// --- the page ----------------------------------------------------------------------------------

let status = "";
let refused = "";

/**
 * The parts that change while the page is open, each redrawn on its own: the figures every
 * second, the tables when their data comes. The action forms are made once per sign-in, so
 * what a person is typing is never redrawn under them.
 */
let parts = null;

/** The whole page: after a sign-in, a sign-out or a refusal. */
function render() {
  const root = document.getElementById("admin-root");
  const claims = tokenClaims(token);
  const main = h("main", { className: "ad-main" });
  parts = null;
  if (!claims || claims.role !== "admin" || refused) {
    main.append(
      h(
        "section",
        { className: "ad-panel ad-signin", "data-testid": "admin-signin" },
        h("h2", {}, "Operator console"),
        h("p", {}, "This console is for administrators. Paste an admin token in the bar above (make one with ", h("code", {}, "tidings token --user NAME --role admin"), ")."),
        refused ? h("p", { className: "ad-error", "data-testid": "admin-refused" }, refused) : null,
      ),
    );
  } else {
    parts = { live: h("div", { className: "ad-live" }), tables: h("div"), log: h("div") };
    main.append(parts.live, parts.tables, actionsSection(), parts.log);
  }
  root.replaceChildren(bar(), main);
  renderLive();
  renderTables();
}

/** The figures and the charts. */
function renderLive() {
  if (!parts) return;
  toDraw.length = 0;
  const live = [h("p", { className: "ad-status", "data-testid": "stats-status" }, status)];
  if (latest) {
    const pick = (k) => history.map((p) => p[k]);
    live.push(
      h("div", { className: "ad-instances", "data-testid": "instances" }, instanceCard(latest.total), latest.instances.map(instanceCard)),
      h(
        "div",
        { className: "ad-charts" },
        chart(
          "Events per second (all instances)",
          "events-chart",
          [
            { name: "published", color: "#0969da", points: pick("published") },
            { name: "delivered", color: "#1a7f37", points: pick("delivered") },
          ],
          (n) => `${fmtRate(n)}/s`,
        ),
        chart(
          "Delivery latency (worst instance)",
          "latency-chart",
          [
            { name: "p50", color: "#8250df", points: pick("p50") },
            { name: "p99", color: "#cf222e", points: pick("p99") },
          ],
          fmtMs,
        ),
      ),
    );
  }
  parts.live.replaceChildren(...live);
  for (const [canvas, series] of toDraw.splice(0)) draw(canvas, series);
}

/** The tables and the log of admin actions. */
function renderTables() {
  if (!parts) return;
  parts.tables.replaceChildren(tablesSection());
  parts.log.replaceChildren(logSection());
}

function onStats(stats) {
  latest = stats;
  history.push({
    published: stats.total.publishedPerSecond,
    delivered: stats.total.deliveredPerSecond,
    p50: stats.total.latencyP50Ms ?? 0,
    p99: stats.total.latencyP99Ms ?? 0,
  });
  while (history.length > HISTORY_SECONDS) history.shift();
  const live = stats.instances.filter((i) => !i.stale).length;
  status = `Live · ${live} of ${stats.instances.length} instance${stats.instances.length === 1 ? "" : "s"} reporting · ${new Date(stats.at).toLocaleTimeString("en-GB")}`;
  renderLive();
  renderTables();
}

async function refreshTables() {
  try {
    tables = await gql(TABLES);
  } catch (e) {
    status = String(e.message ?? e);
  }
  renderTables();
}

function start() {
  client?.dispose();
  client = null;
  clearInterval(tableTimer);
  latest = null;
  tables = null;
  refused = "";
  history.length = 0;
  const claims = tokenClaims(token);
  if (!claims || claims.role !== "admin") return render();
  status = "Connecting…";
  render();
  client = createClient({
    url: subscriptionUrl(),
    connectionParams: { authToken: token },
    retryAttempts: Infinity,
    shouldRetry: (e) => !(e && typeof e === "object" && e.code === 4403),
  });
  client.subscribe(
    { query: STATS },
    {
      next: (result) => {
        if (result.errors?.length) {
          const e = result.errors[0];
          refused = `${e.extensions?.code ?? "ERROR"}: ${e.message}`;
          return render();
        }
        onStats(result.data.serverStats);
      },
      error: (e) => {
        const errors = Array.isArray(e) ? e : [];
        refused = errors.length
          ? `${errors[0].extensions?.code ?? "ERROR"}: ${errors[0].message}`
          : "The server refused this token.";
        render();
      },
      complete: () => {},
    },
  );
  refreshTables();
  tableTimer = setInterval(refreshTables, TABLE_REFRESH_MS);
}

start();

// The Tidings demo chat: sign up or log in, pick or create a room, chat with history paging,
// typing, presence, notification toasts and the leaderboard; edit and delete your messages,
// react to any, see who has read how far and how many messages each room has unread, and
// search the rooms you belong to.
//
// Queries and mutations go over HTTP; subscriptions (and `setTyping`, which belongs to the
// socket) go over one graphql-ws connection that reconnects with backoff. A room's feed always
// (re)starts from the last message id the page has seen, so a reconnect shows what was sent
// meanwhile, with no gap and no duplicate.
//
// For automation the page takes `?token=JWT&room=ID`, and marks its parts with the
// `data-testid`s API.md names.
import "./chat.css";

import { storedToken, storeToken, tokenClaims, urlToken } from "../shared/session.js";
import { ApiError, gql } from "./api.js";
import { $, avatar, bodyNodes, compareIds, h, timeTag } from "./dom.js";
import { LiveConnection } from "./live.js";

const PAGE = 50;
const ROOM_SLUG = /^[a-z0-9_-]{1,64}$/;
const TYPING_REFRESH_MS = 3000;
const TYPING_IDLE_MS = 4000;
/** The server ends a typing `true` after 5 s; this only guards against a lost `false`. */
const TYPING_SHOWN_MS = 7000;
const TOAST_MS = 8000;
/** Messages by one sender within this span are shown as one group. */
const GROUP_MS = 5 * 60 * 1000;
const ROOM_KEY = "tidings.room";

const USER = "id username";
const MESSAGE = `id roomId kind body clientMessageId createdAt editedAt deletedAt reactions { emoji count viewerReacted } sender { ${USER} }`;
const RECEIPT = `user { ${USER} } messageId at`;
/** The reactions the page offers in one click. */
const QUICK_REACTIONS = ["👍", "❤️", "😂", "🎉"];
/** The page tells the server how far it has read at most this often. */
const MARK_READ_MS = 1000;
const NOTIFICATION = "id kind level title body data createdAt readAt";
const Q = {
  me: `query { me { ${USER} role } }`,
  login: `mutation($u: String!, $p: String!) { login(username: $u, password: $p) { token } }`,
  register: `mutation($u: String!, $p: String!) { register(username: $u, password: $p) { token } }`,
  rooms: `query { rooms { id title isPrivate memberCount unreadCount } }`,
  join: `mutation($r: ID!) { joinRoom(roomId: $r) { id title isPrivate memberCount } }`,
  room: `query($r: ID!) { room(id: $r) { id title isPrivate memberCount } }`,
  history: `query($r: ID!, $before: ID, $last: Int) { messages(roomId: $r, before: $before, last: $last) { ${MESSAGE} } }`,
  send: `mutation($r: ID!, $b: String!, $c: String) { sendMessage(roomId: $r, body: $b, clientMessageId: $c) { ${MESSAGE} } }`,
  typing: `mutation($r: ID!, $t: Boolean!) { setTyping(roomId: $r, isTyping: $t) }`,
  setPresence: `mutation($s: PresenceStatus!) { setPresence(status: $s) { status } }`,
  notifications: `query { notifications(last: 20) { ${NOTIFICATION} } unreadNotificationCount }`,
  markRead: `mutation { markNotificationsRead }`,
  edit: `mutation($id: ID!, $b: String!) { editMessage(id: $id, body: $b) { ${MESSAGE} } }`,
  del: `mutation($id: ID!) { deleteMessage(id: $id) { ${MESSAGE} } }`,
  react: `mutation($id: ID!, $e: String!) { react(messageId: $id, emoji: $e) { ${MESSAGE} } }`,
  unreact: `mutation($id: ID!, $e: String!) { unreact(messageId: $id, emoji: $e) { ${MESSAGE} } }`,
  markRoomRead: `mutation($r: ID!, $id: ID!) { markRead(roomId: $r, messageId: $id) { id unreadCount } }`,
  receipts: `query($r: ID!) { room(id: $r) { readReceipts { ${RECEIPT} } } }`,
  search: `query($q: String!) { searchMessages(query: $q, first: 20) { ${MESSAGE} } }`,
  // Subscriptions
  messageAdded: `subscription($r: ID!, $after: ID) { messageAdded(roomId: $r, after: $after) { ${MESSAGE} } }`,
  typingFeed: `subscription($r: ID!) { typing(roomId: $r) { user { ${USER} } isTyping } }`,
  presenceFeed: `subscription($r: ID) { presence(roomId: $r) { user { ${USER} } status connections } }`,
  notificationFeed: `subscription { notifications { ${NOTIFICATION} } }`,
  leaderboardFeed: `subscription { leaderboard(limit: 10) { version entries { rank points user { ${USER} } } } }`,
  roomEvents: `subscription($r: ID!) { roomEvents(roomId: $r) { __typename position at
    ... on MessageEdited { message { ${MESSAGE} } }
    ... on MessageDeleted { messageId }
    ... on ReactionsChanged { messageId reactions { emoji count viewerReacted } }
    ... on ReadReceiptMoved { receipt { ${RECEIPT} } } } }`,
};

/** Everything the page knows; the DOM is drawn from it. */
const state = {
  token: "",
  tokenFromUrl: false,
  me: null,
  live: null,
  /** The open room: `lastSeenId` is where its feed resumes; `ready` once history is in. */
  room: null,
  roomGeneration: 0,
  roomFeeds: [],
  userFeeds: [],
  rooms: [],
  typingOut: { active: false, sentAt: 0, idle: 0 },
  typingIn: new Map(),
  presence: new Map(),
  notifications: new Map(),
  unread: 0,
  /** The open room's messages by id, as last drawn (changes redraw them). */
  messages: new Map(),
  /** The open room's read receipts by user id. */
  receipts: new Map(),
  /** The id of the message being edited, if any. */
  editing: null,
  /** The last message id this page told the server it has read, and when. */
  markedRead: { id: "0", at: 0, timer: 0 },
};

// --- sign in ----------------------------------------------------------------------------------

function showLogin(message = "") {
  $("app-view").hidden = true;
  $("login-view").hidden = false;
  const error = $("login-error");
  error.textContent = message;
  error.hidden = !message;
  $("login-username").focus();
}

$("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.currentTarget;
  const action = event.submitter?.value === "register" ? "register" : "login";
  const username = form.username.value.trim();
  const password = form.password.value;
  const error = $("login-error");
  if (!username || !password) {
    error.textContent = "Enter a username and a password.";
    error.hidden = false;
    return;
  }
  for (const button of form.querySelectorAll("button")) button.disabled = true;
  try {
    const data = await gql("", Q[action], { u: username, p: password });
    const token = data[action].token;
    storeToken(token);
    form.password.value = "";
    await start(token, false);
  } catch (e) {
    error.textContent =
      e.code === "UNAUTHENTICATED" ? "That username and password do not match." : e.message;
    error.hidden = false;
  } finally {
    for (const button of form.querySelectorAll("button")) button.disabled = false;
  }
});

$("logout").addEventListener("click", () => {
  storeToken("");
  stop();
  showLogin();
});

/** Signs the page in with `token`: who am I, then the live connection, rooms and the room. */
async function start(token, fromUrl) {
  state.token = token;
  state.tokenFromUrl = fromUrl;
  let me;
  try {
    me = (await gql(token, Q.me)).me;
  } catch (e) {
    if (e.code === "NETWORK") {
      showLogin("The server cannot be reached. Reload the page to try again.");
      return;
    }
    if (!fromUrl) storeToken("");
    showLogin(e.code === "UNAUTHENTICATED" ? "Your session has ended: sign in again." : e.message);
    return;
  }
  if (!me) {
    showLogin("Sign in to chat.");
    return;
  }
  state.me = me;
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("me-name").textContent = me.username;
  const claims = tokenClaims(token);
  $("me-name").title = claims?.role === "admin" ? "admin" : "";
  $("me-avatar").replaceWith(Object.assign(avatar(me.username, "avatar-sm"), { id: "me-avatar" }));

  state.live = new LiveConnection({
    token: () => state.token,
    onStatus: showConnection,
    onConnected: connected,
    onDisconnected: disconnected,
    // A renewed session: requests over HTTP use the fresh token too, and a session the person
    // signed into (not one given in the URL) is remembered with it.
    onRenewed: (fresh) => {
      state.token = fresh;
      if (!state.tokenFromUrl) storeToken(fresh);
    },
    onRejected: (reason) => {
      stop();
      if (!state.tokenFromUrl) storeToken("");
      showLogin(
        reason === "token expired"
          ? "Your session expired: sign in again."
          : "The server did not accept your session: sign in again.",
      );
    },
  });

  const params = new URLSearchParams(window.location.search);
  let initial = params.get("room") || readRoomKey() || "lobby";
  if (!ROOM_SLUG.test(initial)) initial = "lobby";
  await Promise.all([loadRooms(), openRoom(initial)]);
}

function stop() {
  state.live?.close();
  state.live = null;
  state.roomGeneration += 1;
  state.room = null;
  state.me = null;
  state.token = "";
  clearTimeout(state.typingOut.idle);
  state.typingOut.active = false;
}

// --- the connection ---------------------------------------------------------------------------

function showConnection(status, detail) {
  $("connection").dataset.state = status;
  $("connection-status").textContent = status;
  $("connection-detail").textContent = detail;
  $("retry-now").hidden = status !== "reconnecting" || !detail.startsWith("next try");
}
$("retry-now").addEventListener("click", () => state.live?.retryNow());

/** A socket was acknowledged: start (again) every feed, the room's from its last message. */
function connected() {
  startUserFeeds();
  if (state.room?.ready) startRoomFeeds();
  else if (state.room && !state.room.loading) openRoom(state.room.id); // it failed while away
  loadRooms();
}

/** The socket closed and took its subscriptions along: what they showed may now be stale. */
function disconnected() {
  state.userFeeds = [];
  state.roomFeeds = [];
  state.typingIn.forEach((t) => clearTimeout(t.timer));
  state.typingIn.clear();
  renderTyping();
  state.typingOut.active = false;
}

function startUserFeeds() {
  stopFeeds(state.userFeeds);
  const live = state.live;
  // Subscribe first, then read what came before: together, nothing is missed.
  state.userFeeds.push(
    live.subscribe(Q.notificationFeed, {}, {
      next: (data) => {
        const n = data.notifications;
        const isNew = !state.notifications.has(n.id);
        addNotification(n);
        if (isNew) {
          if (!n.readAt) state.unread += 1;
          renderUnread();
          toast(n);
        }
      },
      error: (e) => console.warn("notifications:", e?.message ?? e),
    }),
    live.subscribe(Q.leaderboardFeed, {}, {
      next: (data) => renderLeaderboard(data.leaderboard),
      error: (e) => console.warn("leaderboard:", e?.message ?? e),
    }),
  );
  gql(state.token, Q.notifications)
    .then((data) => {
      for (const n of data.notifications) addNotification(n);
      state.unread = data.unreadNotificationCount;
      renderUnread();
    })
    .catch((e) => console.warn("notifications:", e.message));
}

function stopFeeds(feeds) {
  for (const stopFeed of feeds.splice(0)) stopFeed();
}

// --- rooms ------------------------------------------------------------------------------------

function readRoomKey() {
  try {
    return window.localStorage.getItem(ROOM_KEY) || "";
  } catch {
    return "";
  }
}

async function loadRooms() {
  try {
    state.rooms = (await gql(state.token, Q.rooms)).rooms;
  } catch {
    return; // keep the list we have; the next (re)connect loads it again
  }
  renderRooms();
}

function renderRooms() {
  const list = $("room-list");
  const current = state.room?.id;
  const rooms = [...state.rooms];
  if (current && !rooms.some((r) => r.id === current)) rooms.push({ id: current, title: current });
  rooms.sort((a, b) => a.id.localeCompare(b.id));
  list.replaceChildren(
    ...rooms.map((room) =>
      h(
        "li",
        {},
        h(
          "a",
          {
            href: `/?room=${encodeURIComponent(room.id)}`,
            class: "room-link",
            "aria-current": room.id === current ? "page" : undefined,
            onclick: (event) => {
              if (event.metaKey || event.ctrlKey || event.shiftKey || event.button !== 0) return;
              event.preventDefault();
              if (room.id !== state.room?.id) openRoom(room.id);
            },
          },
          h("span", { class: "room-hash", "aria-hidden": "true" }, room.isPrivate ? "🔒" : "#"),
          h("span", { class: "room-name" }, room.title && room.title !== room.id ? room.title : room.id),
          room.unreadCount && room.id !== current
            ? h("span", { class: "room-unread", "data-testid": "room-unread", title: "unread messages" }, room.unreadCount)
            : null,
          room.memberCount ? h("span", { class: "room-count", title: "members" }, room.memberCount) : null,
        ),
      ),
    ),
  );
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("join-input");
  const id = input.value.trim().toLowerCase();
  if (!ROOM_SLUG.test(id)) {
    input.setCustomValidity("Use 1 to 64 lowercase letters, digits, “_” or “-”.");
    input.reportValidity();
    return;
  }
  input.setCustomValidity("");
  input.value = "";
  openRoom(id);
});
$("join-input").addEventListener("input", (e) => e.target.setCustomValidity(""));

/** Joins `id` (creating it when new), shows its latest page and starts its feeds. */
async function openRoom(id) {
  const generation = ++state.roomGeneration;
  stopFeeds(state.roomFeeds);
  stopTyping();
  state.room = { id, title: id, ready: false, loading: true, lastSeenId: "0", oldestId: null, hasMore: false };
  state.typingIn.forEach((t) => clearTimeout(t.timer));
  state.typingIn.clear();
  state.presence.clear();
  state.messages.clear();
  state.receipts.clear();
  state.editing = null;
  clearTimeout(state.markedRead.timer);
  state.markedRead = { id: "0", at: 0, timer: 0 };
  renderReceipts();
  $("message-list").replaceChildren();
  $("room-title").textContent = `#${id}`;
  $("room-meta").textContent = "";
  $("message-input").placeholder = `Message #${id}`;
  $("load-earlier").hidden = true;
  $("history-start").hidden = true;
  showRoomError("");
  renderTyping();
  renderPresence();
  renderRooms();
  rememberRoom(id);

  let room;
  let messages;
  try {
    room = (await gql(state.token, Q.join, { r: id })).joinRoom;
    if (generation !== state.roomGeneration) return;
    messages = (await gql(state.token, Q.history, { r: id, last: PAGE })).messages;
  } catch (e) {
    if (generation !== state.roomGeneration) return;
    state.room.loading = false;
    showRoomError(
      e.code === "NETWORK"
        ? `Cannot open #${id} while the server is away: it opens when the connection is back.`
        : `Cannot open #${id}: ${e.message}`,
    );
    return;
  }
  if (generation !== state.roomGeneration) return;
  Object.assign(state.room, {
    title: room.title,
    ready: true,
    loading: false,
    lastSeenId: messages.at(-1)?.id ?? "0",
    oldestId: messages[0]?.id ?? null,
    hasMore: messages.length === PAGE,
  });
  showRoomHead(room);
  for (const m of messages) addMessage(m);
  renderHistoryEdge();
  scrollToBottom();
  loadReceipts(state.room);
  markRoomRead();
  if (state.live?.connected) startRoomFeeds();
  if (!state.rooms.some((r) => r.id === id)) loadRooms();
}

function showRoomHead(room) {
  $("room-title").textContent = room.title && room.title !== room.id ? room.title : `#${room.id}`;
  $("room-meta").textContent = `${room.isPrivate ? "Private" : "Public"} · ${plural(room.memberCount, "member")}`;
}

/** Someone joined or left (a SYSTEM message): the member counts changed. */
async function refreshRoom(room) {
  try {
    const fresh = (await gql(state.token, Q.room, { r: room.id })).room;
    if (fresh && room === state.room) showRoomHead(fresh);
  } catch {
    // the counts stay as they were; nothing else depends on them
  }
  loadRooms();
}

function rememberRoom(id) {
  const url = new URL(window.location.href);
  url.searchParams.set("room", id);
  window.history.replaceState(null, "", url);
  document.title = `#${id} · Tidings`;
  try {
    window.localStorage.setItem(ROOM_KEY, id);
  } catch {
    // storage disabled: the URL still says which room
  }
}

function showRoomError(text) {
  const node = $("room-error");
  node.textContent = text;
  node.hidden = !text;
}

/** The room's live feeds: new messages (from the last one seen), typing and presence. */
function startRoomFeeds() {
  stopFeeds(state.roomFeeds);
  const room = state.room;
  const live = state.live;
  if (!room?.ready || !live?.connected) return;
  const roomError = (e) => {
    if (room === state.room) showRoomError(`#${room.id}: ${e?.message ?? e}`);
  };
  state.presence.clear(); // the feed starts with everyone online now
  renderPresence();
  refreshShown(room);
  state.roomFeeds.push(
    live.subscribe(Q.messageAdded, { r: room.id, after: room.lastSeenId }, {
      next: (data) => {
        if (room !== state.room) return;
        const m = data.messageAdded;
        if (compareIds(m.id, room.lastSeenId) > 0) room.lastSeenId = m.id;
        const stick = nearBottom() || m.sender?.id === state.me?.id;
        addMessage(m);
        typingStopped(m.sender?.id);
        if (stick) scrollToBottom();
        if (m.kind === "SYSTEM") refreshRoom(room);
        markRoomRead();
        renderReceipts();
      },
      error: roomError,
    }),
    live.subscribe(Q.roomEvents, { r: room.id }, {
      next: (data) => {
        if (room === state.room) roomEvent(data.roomEvents);
      },
      error: roomError,
    }),
    live.subscribe(Q.typingFeed, { r: room.id }, {
      next: (data) => {
        if (room !== state.room) return;
        const { user, isTyping } = data.typing;
        if (user.id === state.me?.id) return;
        if (isTyping) typingStarted(user);
        else typingStopped(user.id);
      },
      error: roomError,
    }),
    live.subscribe(Q.presenceFeed, { r: room.id }, {
      next: (data) => {
        if (room !== state.room) return;
        const p = data.presence;
        if (p.status === "OFFLINE") state.presence.delete(p.user.id);
        else state.presence.set(p.user.id, p);
        // Our own status as the server has it (a reconnect starts ONLINE again).
        if (p.user.id === state.me?.id && p.status !== "OFFLINE") $("status-select").value = p.status;
        renderPresence();
      },
      error: roomError,
    }),
  );
}

// --- messages ---------------------------------------------------------------------------------

function messageNode(m) {
  const pending = !m.id;
  const attrs = {
    class: `message${m.kind === "SYSTEM" ? " system" : ""}${pending ? " pending" : ""}`,
    "data-id": m.id || undefined,
    "data-client-id": m.clientMessageId || undefined,
    "data-sender": m.sender?.id,
    "data-at": m.createdAt,
  };
  if (m.kind === "SYSTEM") {
    return h("li", attrs, h("p", { class: "system-text" }, m.body), timeTag(m.createdAt));
  }
  const name = m.sender?.username ?? "someone";
  const mine = m.sender?.id === state.me?.id;
  const mentionsMe = !mine && state.me && bodyNodes(m.body, state.me.username).length > 1;
  if (mentionsMe) attrs.class += " mentions-me";
  return h(
    "li",
    attrs,
    avatar(name),
    h(
      "div",
      { class: "message-main" },
      h(
        "p",
        { class: "message-meta" },
        h("span", { class: "sender" }, name),
        " ",
        timeTag(m.createdAt),
        m.editedAt && !m.deletedAt ? h("span", { class: "edited", "data-testid": "edited-mark", title: m.editedAt }, " (edited)") : null,
      ),
      m.deletedAt
        ? h("p", { class: "message-body deleted", "data-testid": "deleted-mark" }, "This message was deleted.")
        : state.editing === m.id
          ? editor(m)
          : h("p", { class: "message-body" }, bodyNodes(m.body, state.me?.username)),
      pending ? h("p", { class: "message-state" }, "sending…") : null,
      pending || m.deletedAt ? null : reactionBar(m),
    ),
    pending || m.deletedAt ? null : messageActions(m, mine),
  );
}

/** The counts per emoji under a message; a click adds or takes back one's own. */
function reactionBar(m) {
  const reactions = m.reactions ?? [];
  if (!reactions.length) return null;
  return h(
    "div",
    { class: "reactions", "data-testid": "reactions" },
    reactions.map((r) =>
      h(
        "button",
        {
          type: "button",
          class: `reaction${r.viewerReacted ? " mine" : ""}`,
          "data-emoji": r.emoji,
          "aria-pressed": String(r.viewerReacted),
          title: r.viewerReacted ? "Take back your reaction" : "React too",
          onclick: () => toggleReaction(m, r.emoji),
        },
        `${r.emoji} ${r.count}`,
      ),
    ),
  );
}

/** Quick reactions, and for one's own message, edit and delete: shown on hover and focus. */
function messageActions(m, mine) {
  return h(
    "div",
    { class: "message-actions" },
    QUICK_REACTIONS.map((emoji) =>
      h(
        "button",
        {
          type: "button",
          class: "icon-button",
          "data-testid": `react-${emoji}`,
          "aria-label": `React with ${emoji}`,
          onclick: () => toggleReaction(m, emoji),
        },
        emoji,
      ),
    ),
    mine
      ? [
          h("button", { type: "button", class: "link-button", "data-testid": "edit-button", onclick: () => startEdit(m) }, "Edit"),
          h("button", { type: "button", class: "link-button", "data-testid": "delete-button", onclick: () => removeMessage(m) }, "Delete"),
        ]
      : null,
  );
}

/** The inline editor of one's own message: Enter saves, Escape cancels. */
function editor(m) {
  // The body as the textarea's own text: its starting value.
  const input = h(
    "textarea",
    { class: "edit-input", "data-testid": "edit-input", rows: 2, maxlength: 5000, "aria-label": "Edit message" },
    m.body,
  );
  const save = () => saveEdit(m, input.value);
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      save();
    } else if (event.key === "Escape") {
      cancelEdit(m);
    }
  });
  setTimeout(() => input.focus(), 0);
  return h(
    "div",
    { class: "editor" },
    input,
    h("button", { type: "button", class: "button small primary", "data-testid": "edit-save", onclick: save }, "Save"),
    h("button", { type: "button", class: "link-button", onclick: () => cancelEdit(m) }, "Cancel"),
  );
}

function startEdit(m) {
  state.editing = m.id;
  redraw(m.id);
}

function cancelEdit(m) {
  state.editing = null;
  redraw(m.id);
}

async function saveEdit(m, body) {
  const text = body.trim();
  if (!text || text === m.body) return cancelEdit(m);
  try {
    const edited = (await gql(state.token, Q.edit, { id: m.id, b: text })).editMessage;
    state.editing = null;
    updateMessage(edited);
  } catch (e) {
    toastError(`Cannot edit: ${e.message}`);
  }
}

async function removeMessage(m) {
  try {
    updateMessage((await gql(state.token, Q.del, { id: m.id })).deleteMessage);
  } catch (e) {
    toastError(`Cannot delete: ${e.message}`);
  }
}

async function toggleReaction(m, emoji) {
  const mine = (state.messages.get(m.id)?.reactions ?? []).some((r) => r.emoji === emoji && r.viewerReacted);
  try {
    const data = await gql(state.token, mine ? Q.unreact : Q.react, { id: m.id, e: emoji });
    updateMessage(mine ? data.unreact : data.react);
  } catch (e) {
    toastError(`Cannot react: ${e.message}`);
  }
}

/** Redraws a message shown in the open room, from what the page knows of it. */
function redraw(id) {
  const m = state.messages.get(id);
  const node = $("message-list").querySelector(`[data-id="${CSS.escape(id)}"]`);
  if (!m || !node) return;
  const fresh = messageNode(m);
  node.replaceWith(fresh);
  regroup(fresh);
  if (fresh.nextElementSibling) regroup(fresh.nextElementSibling);
}

/** A newer state of a message: kept and redrawn (if it belongs to the open room). */
function updateMessage(m) {
  if (!state.messages.has(m.id)) return;
  state.messages.set(m.id, m);
  redraw(m.id);
}

/** One change to the open room from `roomEvents` (new messages come from `messageAdded`). */
function roomEvent(event) {
  switch (event.__typename) {
    case "MessageEdited":
      updateMessage(event.message);
      break;
    case "MessageDeleted": {
      const m = state.messages.get(event.messageId);
      if (m) updateMessage({ ...m, body: "", deletedAt: event.at, reactions: [] });
      break;
    }
    case "ReactionsChanged": {
      const m = state.messages.get(event.messageId);
      if (m) updateMessage({ ...m, reactions: event.reactions });
      break;
    }
    case "ReadReceiptMoved":
      state.receipts.set(event.receipt.user.id, event.receipt);
      renderReceipts();
      break;
    default:
  }
}

/** After a (re)connect: what changed in the shown messages while the page was away. */
async function refreshShown(room) {
  try {
    const messages = (await gql(state.token, Q.history, { r: room.id, last: PAGE })).messages;
    if (room !== state.room) return;
    for (const m of messages) updateMessage(m);
  } catch {
    // the messages stay as drawn; the next reconnect tries again
  }
  loadReceipts(room);
}

async function loadReceipts(room) {
  try {
    const receipts = (await gql(state.token, Q.receipts, { r: room.id })).room?.readReceipts ?? [];
    if (room !== state.room) return;
    state.receipts.clear();
    for (const r of receipts) state.receipts.set(r.user.id, r);
  } catch {
    return;
  }
  renderReceipts();
}

/** "Seen by …": the others who have read up to the last message shown. */
function renderReceipts() {
  const node = $("read-receipts");
  if (!node) return;
  const last = state.room?.lastSeenId ?? "0";
  const names = [...state.receipts.values()]
    .filter((r) => r.user.id !== state.me?.id && compareIds(r.messageId, last) >= 0)
    .map((r) => r.user.username)
    .sort();
  node.textContent = names.length ? `Seen by ${names.join(", ")}` : "";
  node.hidden = !names.length;
}

/** Tells the server how far this page has read the open room, at most once a second. */
function markRoomRead() {
  const room = state.room;
  if (!room?.ready || room.lastSeenId === "0" || document.hidden) return;
  if (compareIds(room.lastSeenId, state.markedRead.id) <= 0) return;
  const wait = state.markedRead.at + MARK_READ_MS - Date.now();
  if (wait > 0) {
    clearTimeout(state.markedRead.timer);
    state.markedRead.timer = setTimeout(markRoomRead, wait);
    return;
  }
  const id = room.lastSeenId;
  state.markedRead = { id, at: Date.now(), timer: 0 };
  gql(state.token, Q.markRoomRead, { r: room.id, id })
    .then(() => loadRooms())
    .catch(() => {
      if (room === state.room) state.markedRead.id = "0"; // try again with the next message
    });
}

document.addEventListener("visibilitychange", markRoomRead);

// --- search -----------------------------------------------------------------------------------

$("search-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const query = $("search-input").value.trim();
  const results = $("search-results");
  const panel = $("search-panel");
  if (!query) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  try {
    const found = (await gql(state.token, Q.search, { q: query })).searchMessages;
    $("search-summary").textContent = found.length ? `${plural(found.length, "message")} found` : "Nothing found.";
    results.replaceChildren(
      ...found.map((m) =>
        h(
          "li",
          { class: "search-result" },
          h(
            "a",
            {
              href: `/?room=${encodeURIComponent(m.roomId)}`,
              onclick: (e) => {
                e.preventDefault();
                if (m.roomId !== state.room?.id) openRoom(m.roomId);
              },
            },
            h("span", { class: "search-room" }, `#${m.roomId}`),
            " ",
            h("span", { class: "sender" }, m.sender?.username ?? "someone"),
            ": ",
            m.body,
          ),
        ),
      ),
    );
  } catch (e) {
    $("search-summary").textContent = e.message;
    results.replaceChildren();
  }
});

$("search-close").addEventListener("click", () => {
  $("search-panel").hidden = true;
});

/** Puts a message in id order (pending ones stay last); a message already shown is skipped. */
function addMessage(m) {
  const list = $("message-list");
  if (list.querySelector(`[data-id="${CSS.escape(m.id)}"]`)) return;
  state.messages.set(m.id, m);
  const node = messageNode(m);
  // Our own send, confirmed by the feed before the mutation answered (or the other way round).
  const pending =
    m.clientMessageId && m.sender?.id === state.me?.id
      ? list.querySelector(`.pending[data-client-id="${CSS.escape(m.clientMessageId)}"]`)
      : null;
  pending?.remove();
  let before = null;
  for (let child = list.lastElementChild; child; child = child.previousElementSibling) {
    if (!child.dataset.id) {
      before = child;
      continue;
    }
    if (compareIds(child.dataset.id, m.id) < 0) break;
    before = child;
  }
  list.insertBefore(node, before);
  regroup(node);
  if (node.nextElementSibling) regroup(node.nextElementSibling);
}

/** Marks a message that continues its sender's run, so it is drawn without name and avatar. */
function regroup(node) {
  const prev = node.previousElementSibling;
  const sameRun =
    prev &&
    !node.classList.contains("system") &&
    !prev.classList.contains("system") &&
    prev.dataset.sender === node.dataset.sender &&
    new Date(node.dataset.at) - new Date(prev.dataset.at) < GROUP_MS;
  node.classList.toggle("continued", Boolean(sameRun));
}

function renderHistoryEdge() {
  const room = state.room;
  $("load-earlier").hidden = !room?.hasMore;
  const start = $("history-start");
  start.hidden = !room?.ready || room.hasMore;
  start.textContent = room ? `This is the beginning of #${room.id}.` : "";
}

$("load-earlier").addEventListener("click", async (event) => {
  const room = state.room;
  if (!room?.ready || !room.oldestId) return;
  const button = event.currentTarget;
  button.disabled = true;
  const scroller = $("scroller");
  try {
    const older = (await gql(state.token, Q.history, { r: room.id, before: room.oldestId, last: PAGE }))
      .messages;
    if (room !== state.room) return;
    const fromBottom = scroller.scrollHeight - scroller.scrollTop;
    for (const m of older) addMessage(m);
    room.oldestId = older[0]?.id ?? room.oldestId;
    room.hasMore = older.length === PAGE;
    renderHistoryEdge();
    scroller.scrollTop = scroller.scrollHeight - fromBottom; // keep the reader's place
  } catch (e) {
    showRoomError(`Cannot load earlier messages: ${e.message}`);
  } finally {
    button.disabled = false;
  }
});

function nearBottom() {
  const s = $("scroller");
  return s.scrollHeight - s.scrollTop - s.clientHeight < 120;
}

function scrollToBottom() {
  const s = $("scroller");
  s.scrollTop = s.scrollHeight;
}

// --- sending ----------------------------------------------------------------------------------

function newClientMessageId() {
  if (window.crypto?.randomUUID) return window.crypto.randomUUID();
  return `c-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * Sends with a clientMessageId, so a retry after a failure can never post twice. The message
 * shows at once as pending; the server's answer or the feed, whichever comes first, confirms it.
 */
async function send(body, clientMessageId = newClientMessageId(), existing = null) {
  const room = state.room;
  if (!room?.ready) return;
  const list = $("message-list");
  const draft = {
    clientMessageId,
    kind: "USER",
    body,
    createdAt: new Date().toISOString(),
    sender: state.me,
  };
  const node = messageNode(draft);
  if (existing) existing.replaceWith(node);
  else list.append(node);
  regroup(node);
  scrollToBottom();
  try {
    const m = (await gql(state.token, Q.send, { r: room.id, b: body, c: clientMessageId })).sendMessage;
    if (room === state.room) addMessage(m);
  } catch (e) {
    if (room !== state.room || !node.isConnected) return;
    const failed = messageNode(draft);
    failed.classList.add("failed");
    failed.querySelector(".message-state").replaceChildren(
      h("span", {}, `Not sent: ${e.message} `),
      h("button", { type: "button", class: "link-button", onclick: () => send(body, clientMessageId, failed) }, "Retry"),
      " · ",
      h("button", { type: "button", class: "link-button", onclick: () => failed.remove() }, "Discard"),
    );
    node.replaceWith(failed);
  }
}

$("composer").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("message-input");
  const body = input.value.trim();
  if (!body) return;
  input.value = "";
  autosize();
  stopTyping();
  send(body);
  input.focus();
});

$("message-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    $("composer").requestSubmit();
  }
});

$("message-input").addEventListener("input", () => {
  autosize();
  if ($("message-input").value.trim()) startTyping();
  else stopTyping();
});

function autosize() {
  const input = $("message-input");
  input.style.height = "auto";
  input.style.height = `${Math.min(input.scrollHeight, 200)}px`;
}

// --- typing -----------------------------------------------------------------------------------

/** Tells the room we type: at most every few seconds, and `false` once we stop. */
function startTyping() {
  const out = state.typingOut;
  const room = state.room;
  if (!room?.ready || !state.live?.connected) return;
  const now = Date.now();
  if (!out.active || now - out.sentAt > TYPING_REFRESH_MS) {
    out.active = true;
    out.sentAt = now;
    state.live.request(Q.typing, { r: room.id, t: true }).catch(() => (out.active = false));
  }
  clearTimeout(out.idle);
  out.idle = setTimeout(stopTyping, TYPING_IDLE_MS);
}

function stopTyping() {
  const out = state.typingOut;
  clearTimeout(out.idle);
  if (!out.active) return;
  out.active = false;
  if (state.room?.ready && state.live?.connected) {
    state.live.request(Q.typing, { r: state.room.id, t: false }).catch(() => {});
  }
}

function typingStarted(user) {
  const entry = state.typingIn.get(user.id);
  clearTimeout(entry?.timer);
  state.typingIn.set(user.id, {
    name: user.username,
    timer: setTimeout(() => typingStopped(user.id), TYPING_SHOWN_MS),
  });
  renderTyping();
}

function typingStopped(userId) {
  const entry = state.typingIn.get(userId);
  if (!entry) return;
  clearTimeout(entry.timer);
  state.typingIn.delete(userId);
  renderTyping();
}

function renderTyping() {
  const names = [...state.typingIn.values()].map((t) => t.name).sort();
  const node = $("typing-indicator");
  if (!names.length) {
    node.replaceChildren();
    return;
  }
  const who =
    names.length === 1
      ? names[0]
      : `${names.slice(0, -1).join(", ")} and ${names.at(-1)}`;
  node.replaceChildren(
    h("span", { class: "typing-dots", "aria-hidden": "true" }, h("i"), h("i"), h("i")),
    h("span", {}, `${who} ${names.length === 1 ? "is" : "are"} typing…`),
  );
}

// --- presence ---------------------------------------------------------------------------------

function renderPresence() {
  const people = [...state.presence.values()].sort((a, b) =>
    a.user.username.localeCompare(b.user.username),
  );
  $("presence-list").replaceChildren(
    ...people.map((p) => {
      const me = p.user.id === state.me?.id;
      const status = p.status.toLowerCase();
      return h(
        "li",
        { class: `person status-${status}`, "data-user": p.user.id },
        h("span", { class: "status-dot", title: status, "aria-hidden": "true" }),
        avatar(p.user.username, "avatar-sm"),
        h("span", { class: "person-name" }, p.user.username),
        me ? h("span", { class: "badge" }, "you") : null,
        p.status !== "ONLINE" ? h("span", { class: "person-status" }, status) : null,
        h("span", { class: "visually-hidden" }, p.status === "ONLINE" ? ", online" : ""),
      );
    }),
  );
  $("online-count").textContent = people.length ? String(people.length) : "";
  $("presence-empty").hidden = people.some((p) => p.user.id !== state.me?.id);
}

$("status-select").addEventListener("change", async (event) => {
  try {
    await gql(state.token, Q.setPresence, { s: event.target.value });
  } catch (e) {
    toastError(`Cannot set your status: ${e.message}`);
  }
});

// --- leaderboard ------------------------------------------------------------------------------

function renderLeaderboard(snapshot) {
  $("leaderboard").replaceChildren(
    ...snapshot.entries.map((e) =>
      h(
        "li",
        { class: e.user.id === state.me?.id ? "entry me" : "entry" },
        h("span", { class: "rank" }, e.rank),
        h("span", { class: "entry-name" }, e.user.username),
        h("span", { class: "points" }, `${e.points} pt${e.points === 1 ? "" : "s"}`),
      ),
    ),
  );
  $("leaderboard-empty").hidden = snapshot.entries.length > 0;
}

// --- notifications ----------------------------------------------------------------------------

function addNotification(n) {
  state.notifications.set(n.id, n);
  renderNotifications();
}

function renderNotifications() {
  const ordered = [...state.notifications.values()]
    .sort((a, b) => compareIds(b.id, a.id))
    .slice(0, 30);
  $("notification-list").replaceChildren(
    ...ordered.map((item) =>
      h(
        "li",
        { class: `notification level-${item.level.toLowerCase()}${item.readAt ? "" : " unread"}` },
        h("p", { class: "notification-title" }, notificationLink(item)),
        item.body ? h("p", { class: "notification-body" }, item.body) : null,
        timeTag(item.createdAt),
      ),
    ),
  );
  $("notifications-empty").hidden = ordered.length > 0;
}

/** A mention's title opens its room. */
function notificationLink(n) {
  const roomId = n.data && typeof n.data === "object" ? n.data.roomId : null;
  if (!roomId || !ROOM_SLUG.test(roomId)) return n.title;
  return h(
    "a",
    {
      href: `/?room=${encodeURIComponent(roomId)}`,
      onclick: (event) => {
        event.preventDefault();
        if (roomId !== state.room?.id) openRoom(roomId);
      },
    },
    n.title,
  );
}

function renderUnread() {
  $("unread-count").textContent = state.unread > 0 ? String(state.unread) : "";
  $("mark-read").hidden = state.unread === 0;
}

$("mark-read").addEventListener("click", async () => {
  try {
    await gql(state.token, Q.markRead);
  } catch (e) {
    toastError(`Cannot mark notifications read: ${e.message}`);
    return;
  }
  const now = new Date().toISOString();
  for (const n of state.notifications.values()) n.readAt ??= now;
  state.unread = 0;
  renderUnread();
  renderNotifications();
});

function toast(n) {
  const node = h(
    "div",
    { class: `toast level-${n.level.toLowerCase()}`, role: "status" },
    h("div", { class: "toast-text" }, h("p", { class: "toast-title" }, notificationLink(n)), n.body ? h("p", { class: "toast-body" }, n.body) : null),
    h("button", { type: "button", class: "toast-close", "aria-label": "Dismiss", onclick: () => node.remove() }, "×"),
  );
  $("toasts").append(node);
  setTimeout(() => node.remove(), TOAST_MS);
}

function toastError(text) {
  toast({ level: "ERROR", title: text, body: null, data: null });
}

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

// --- boot -------------------------------------------------------------------------------------

const fromUrl = urlToken();
const token = fromUrl || storedToken();
if (token) start(token, Boolean(fromUrl));
else showLogin();

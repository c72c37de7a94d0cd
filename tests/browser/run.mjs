// Browser tests: Debian's chromium, driven by playwright-core, against a running Tidings
// server. tests/browser.rs starts the server, makes the tokens and runs one scenario of this
// script per Rust test:
//
//   node tests/browser/run.mjs graphiql | chat | history | restart | renewal | admin
//
// Every page records each request it makes (workers' and WebSockets included), and every
// scenario ends by checking that none left 127.0.0.1: the pages must work offline.
//
// The `restart` scenario needs its harness: it prints `@@tidings <command>` and waits for the
// Rust test to act and answer on standard input: `stop` the page's server, `start` a new one
// on the same address and database, `start-other` a server on another address and the same
// database (the answer is its URL), `stop-other` that one. The `admin` scenario needs it too
// (two instances and their clients: `alice-closed` waits for alice's sockets to be closed and
// answers their close codes, `stop-other` stops the second instance). The other scenarios run
// by hand:
//
//   npm ci --prefix tests/browser
//   TIDINGS_URL=http://127.0.0.1:8000 ALICE_TOKEN=$(tidings token --user alice) \
//     BOB_TOKEN=$(tidings token --user bob) ROOM_SUFFIX=-$(date +%s) node tests/browser/run.mjs chat

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join as joinPath } from "node:path";
import { createInterface } from "node:readline";
import { setTimeout as sleep } from "node:timers/promises";

import { chromium } from "playwright-core";

function required(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (see the comment at the top of this file)`);
  return value;
}

const SCENARIO = process.argv[2];
const BASE = required("TIDINGS_URL").replace(/\/+$/, "");
const ALICE = required("ALICE_TOKEN");
const BOB = required("BOB_TOKEN");
// A short-lived token of alice's, for the `renewal` scenario.
const ALICE_SHORT = process.env.ALICE_SHORT_TOKEN ?? "";
const SUFFIX = process.env.ROOM_SUFFIX ?? "";
const SCREENSHOTS = process.env.SCREENSHOT_DIR || "";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

// Bounds: each test, and each wait inside one, so that a page that never gets there fails with
// what it was waiting for.
const TEST_MS = 90_000;
const STEP_MS = 15_000;

// --- the browser ------------------------------------------------------------------------------

let browser;
/** Every page this run opened, with what it requested and what it logged. */
const pages = [];

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    // No sandbox (the tests run as root); nothing in the background that would reach out.
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--disable-dev-shm-usage",
    ],
  });
});

after(async () => {
  await browser?.close();
});

/**
 * Opens `path` in a fresh browser context (its own storage, as a second person would have).
 * The page's requests and console errors are recorded for the checks at the end.
 */
async function open(path, name) {
  const context = await browser.newContext({
    viewport: { width: 1280, height: 800 },
    colorScheme: "light",
    reducedMotion: "reduce",
  });
  const record = { name, context, requests: [], errors: [] };
  context.on("request", (request) => record.requests.push(request.url()));
  const page = await context.newPage();
  record.page = page;
  page.on("websocket", (ws) => record.requests.push(ws.url()));
  page.on("worker", (worker) => record.requests.push(worker.url()));
  page.on("pageerror", (error) => record.errors.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    if (message.type() === "error") record.errors.push(`console: ${message.text()}`);
  });
  pages.push(record);
  await page.goto(`${BASE}${path}`);
  return page;
}

/** Every URL any page requested is on this machine. */
function assertNothingLeftTheMachine() {
  const seen = pages.flatMap((p) => p.requests);
  assert.ok(seen.length > 0, "no request was recorded at all");
  const outside = seen.filter((url) => {
    const { protocol, hostname } = new URL(url);
    if (!["http:", "https:", "ws:", "wss:"].includes(protocol)) return false; // data:, blob:
    return !["127.0.0.1", "localhost", "[::1]"].includes(hostname);
  });
  assert.deepEqual(outside, [], "requests left 127.0.0.1");
}

/** No page threw or logged an error (a CSP violation would show here), except `allowed`. */
function assertNoPageErrors(allowed = () => false) {
  const errors = pages.flatMap((p) => p.errors.map((e) => `${p.name}: ${e}`));
  assert.deepEqual(errors.filter((e) => !allowed(e)), [], "the pages reported errors");
}

async function screenshot(page, name) {
  if (!SCREENSHOTS) return;
  mkdirSync(SCREENSHOTS, { recursive: true });
  await page.screenshot({ path: joinPath(SCREENSHOTS, `${name}.png`) });
}

/** A test whose failure leaves a screenshot of every open page (`failed-<page>.png`). */
function pageTest(name, fn, timeout = TEST_MS) {
  test(name, { timeout }, async () => {
    try {
      await fn();
    } catch (error) {
      for (const p of pages) {
        if (!p.page.isClosed()) await screenshot(p.page, `failed-${p.name}`).catch(() => {});
      }
      throw error;
    }
  });
}

// --- the API, from outside the pages ----------------------------------------------------------

async function gql(token, query, variables = {}, base = BASE) {
  const response = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  assert.equal(body.errors, undefined, `errors for ${query}: ${JSON.stringify(body.errors)}`);
  return body.data;
}

const join = (token, room) =>
  gql(token, "mutation($r: ID!) { joinRoom(roomId: $r) { id } }", { r: room });
const send = async (token, room, body, base = BASE) =>
  (
    await gql(
      token,
      "mutation($r: ID!, $b: String!) { sendMessage(roomId: $r, body: $b) { id } }",
      { r: room, b: body },
      base,
    )
  ).sendMessage.id;

/**
 * A client script's subscription over graphql-sse (distinct connections mode) at `base`:
 * `next(what)` is its next `next` event's data, within `STEP_MS`; `close()` ends it.
 */
async function streamOf(token, query, base = BASE) {
  const controller = new AbortController();
  const response = await fetch(`${base}/graphql`, {
    method: "POST",
    headers: { "content-type": "application/json", accept: "text/event-stream", authorization: `Bearer ${token}` },
    body: JSON.stringify({ query }),
    signal: controller.signal,
  });
  assert.equal(response.status, 200, `the stream of ${query}`);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let pending = null;
  return {
    async next(what, timeout = STEP_MS) {
      const deadline = Date.now() + timeout;
      for (;;) {
        const at = buffer.indexOf("\n\n");
        if (at >= 0) {
          const lines = buffer.slice(0, at).split("\n");
          buffer = buffer.slice(at + 2);
          const event = lines.find((l) => l.startsWith("event:"))?.slice(6).trim();
          if (!event) continue; // a keep-alive comment
          assert.equal(event, "next", `waiting for ${what}`);
          return JSON.parse(lines.filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join(""));
        }
        const left = deadline - Date.now();
        if (left <= 0) assert.fail(`not within ${timeout} ms: ${what}; the stream had ${JSON.stringify(buffer)}`);
        pending ??= reader.read();
        const chunk = await Promise.race([pending, sleep(left).then(() => null)]);
        if (chunk === null) continue;
        pending = null;
        if (chunk.done) assert.fail(`the stream ended waiting for ${what}`);
        buffer += chunk.value;
      }
    },
    close() {
      pending?.catch(() => {});
      reader.cancel().catch(() => {});
      controller.abort();
    },
  };
}

// --- page helpers -----------------------------------------------------------------------------

const byTestId = (page, id) => page.getByTestId(id);

async function waitConnected(page) {
  await byTestId(page, "connection-status").filter({ hasText: /^connected$/ }).waitFor({ timeout: STEP_MS });
}

/** The texts of a list's children, one per child. */
async function items(page, testId) {
  return byTestId(page, testId).locator(":scope > *").allInnerTexts();
}

/** Waits until `check(value)` holds for `read()`; fails with the last value otherwise. */
async function eventually(what, read, check, timeout = STEP_MS) {
  const deadline = Date.now() + timeout;
  let value;
  for (;;) {
    value = await read();
    if (check(value)) return value;
    if (Date.now() > deadline) assert.fail(`not within ${timeout} ms: ${what}; last saw ${JSON.stringify(value)}`);
    await sleep(100);
  }
}

async function sendFromPage(page, text) {
  await byTestId(page, "message-input").fill(text);
  await byTestId(page, "send-button").click();
}

const messageBodies = async (page) =>
  (await items(page, "message-list")).map((t) => t.replace(/\s+/g, " ").trim());

// --- scenarios --------------------------------------------------------------------------------

const scenarios = {
  graphiql() {
    const room = `graphiql${SUFFIX}`;

    pageTest("GraphiQL renders with the schema docs, runs a query and a subscription", async () => {
      await join(ALICE, room);
      const page = await open(`/playground?token=${encodeURIComponent(ALICE)}`, "graphiql");
      await page.locator(".graphiql-container").waitFor({ timeout: STEP_MS });
      await assert.doesNotReject(
        page.getByTestId("token-status").filter({ hasText: "Signed in as alice" }).waitFor({ timeout: STEP_MS }),
      );

      // The docs: the explorer lists the root types, and Query's fields from introspection.
      await page.getByRole("button", { name: /documentation explorer/i }).click();
      const docs = page.locator(".graphiql-doc-explorer");
      await docs.getByText("Query", { exact: true }).first().click({ timeout: STEP_MS });
      await docs.getByText("unreadNotificationCount").first().waitFor({ timeout: STEP_MS });

      // A query over HTTP, with the token as a bearer header: `me` is alice.
      await setOperation(page, "WhoAmI", "query WhoAmI { me { username role } }");
      await page.locator(".graphiql-execute-button").click();
      // The response editor is Monaco too: read its text, with its non-breaking spaces.
      const result = page.locator(".graphiql-response");
      const response = async () => (await result.innerText()).replace(/[\s\u00a0]+/g, " ");
      await eventually("alice in the query's result", response, (t) => t.includes('"username": "alice"'));
      await screenshot(page, "graphiql");

      // A subscription over WebSocket, with the token in connection_init: only members may
      // follow a room, so a message arriving proves alice's token went along.
      await setOperation(page, "RoomFeed", `subscription RoomFeed { messageAdded(roomId: "${room}") { body sender { username } } }`);
      await page.locator(".graphiql-execute-button").click();
      const body = `live_in_graphiql_${Date.now()}`;
      // graphql-transport-ws has no "subscribed" acknowledgement: publish once a second until
      // the editor shows one.
      await eventually(
        "the subscription result in the response editor",
        async () => {
          await send(ALICE, room, body);
          for (let i = 0; i < 10; i++) {
            if ((await response()).includes(body)) return true;
            await sleep(100);
          }
          return false;
        },
        Boolean,
      );
      await screenshot(page, "graphiql-subscription");
      // Stop it (the button toggles while a subscription runs).
      await page.locator(".graphiql-execute-button").click();

      // The same subscription over Server-Sent Events, by the switch in the bar: the server
      // counts an SSE connection while it runs.
      await page.getByTestId("transport-select").selectOption("sse");
      await page.locator(".graphiql-execute-button").click();
      const sseBody = `sse_in_graphiql_${Date.now()}`;
      await eventually(
        "the subscription result over SSE in the response editor",
        async () => {
          await send(ALICE, room, sseBody);
          for (let i = 0; i < 10; i++) {
            if ((await response()).includes(sseBody)) return true;
            await sleep(100);
          }
          return false;
        },
        Boolean,
      );
      const metrics = await (await fetch(`${BASE}/metrics`)).text();
      assert.match(metrics, /tidings_connections\{transport="sse"\} [1-9]/, "the subscription ran over SSE");
      await screenshot(page, "graphiql-sse");
      await page.locator(".graphiql-execute-button").click();
    });

    pageTest("a browser's GET /graphql gets GraphiQL too", async () => {
      const page = await open("/graphql", "graphql-html");
      await page.locator(".graphiql-container").waitFor({ timeout: STEP_MS });
      assert.match(await page.title(), /playground/i);
    });

    test("nothing left 127.0.0.1 and no page reported an error", () => {
      assertNothingLeftTheMachine();
      assertNoPageErrors();
    });
  },

  chat() {
    const room = `duo${SUFFIX}`;

    pageTest("two people chat: messages, typing, presence, mentions and the leaderboard", async () => {
      const alice = await open(`/?token=${encodeURIComponent(ALICE)}&room=${room}`, "alice");
      await waitConnected(alice);
      const bob = await open(`/?token=${encodeURIComponent(BOB)}&room=${room}`, "bob");
      await waitConnected(bob);

      // Each sees the other online (one child per person, holding the username).
      await eventually("alice sees bob online", () => items(alice, "presence-list"), (l) => l.some((t) => t.includes("bob")));
      await eventually("bob sees alice online", () => items(bob, "presence-list"), (l) => l.some((t) => t.includes("alice")));

      // Alice types: bob sees it, and not alice herself.
      await byTestId(alice, "message-input").pressSequentially("Hi Bob, the deploy is done", { delay: 20 });
      await eventually("bob sees alice typing", () => byTestId(bob, "typing-indicator").innerText(), (t) => t.includes("alice"));
      assert.doesNotMatch(await byTestId(alice, "typing-indicator").innerText(), /alice/);
      await screenshot(bob, "chat-typing");
      await byTestId(alice, "send-button").click();

      // Both see it, once; bob's typing indicator clears with it.
      for (const page of [alice, bob]) {
        await eventually("the message on both pages", () => messageBodies(page), (l) => l.filter((t) => t.includes("the deploy is done")).length === 1);
      }
      await eventually("bob's typing indicator clears", () => byTestId(bob, "typing-indicator").innerText(), (t) => !t.includes("alice"));

      // Bob answers with a mention (Enter sends): alice sees it and gets a notification.
      await byTestId(bob, "message-input").pressSequentially("@alice thanks! Looks good from here");
      await eventually("alice sees bob typing", () => byTestId(alice, "typing-indicator").innerText(), (t) => t.includes("bob"));
      await byTestId(bob, "message-input").press("Enter");
      await eventually("alice sees bob's answer", () => messageBodies(alice), (l) => l.some((t) => t.includes("Looks good from here")));
      await eventually(
        "alice's notification for the mention",
        () => items(alice, "notification-list"),
        (l) => l.some((t) => t.includes("bob mentioned you")),
      );
      const toast = alice.locator(".toast").filter({ hasText: "bob mentioned you" });
      await toast.waitFor({ timeout: STEP_MS });
      await screenshot(alice, "chat-mention");
      await toast.getByRole("button", { name: "Dismiss" }).click();
      await toast.waitFor({ state: "detached", timeout: STEP_MS });

      // A few more lines, so the screenshots show a conversation.
      await sendFromPage(alice, "Great. I'll post the release notes in #announcements");
      await eventually("bob sees it", () => messageBodies(bob), (l) => l.some((t) => t.includes("release notes")));

      // Both leaderboards rank both of them.
      for (const page of [alice, bob]) {
        await eventually("the leaderboard ranks both", () => items(page, "leaderboard"), (l) => l.some((t) => t.includes("alice")) && l.some((t) => t.includes("bob")));
      }

      // Both lists hold the same messages in the same order, each once.
      const a = await messageBodies(alice);
      await eventually("bob's list equals alice's", () => messageBodies(bob), (l) => JSON.stringify(l) === JSON.stringify(a));
      assert.equal(new Set(a).size, a.length, `a message shows twice: ${JSON.stringify(a)}`);

      await screenshot(alice, "chat");
    });

    pageTest("sign up, log in and create a room from the page", async () => {
      const page = await open("/", "signup");
      const name = `carol${SUFFIX.replace(/[^A-Za-z0-9_.-]/g, "")}`;
      await page.getByLabel("Username").fill(name);
      await page.getByLabel("Password").fill("correct horse battery");
      await screenshot(page, "login");
      await page.getByRole("button", { name: "Create account" }).click();
      await waitConnected(page);
      const newRoom = `fresh${SUFFIX}`;
      await page.getByLabel("Join or create a room").fill(newRoom);
      await page.getByRole("button", { name: "Join", exact: true }).click();
      await eventually("the new room's join message", () => messageBodies(page), (l) => l.some((t) => t.includes(`${name} joined`)));
      assert.equal(await page.locator("#room-title").innerText(), `#${newRoom}`);
      await sendFromPage(page, "first!");
      await eventually("the message", () => messageBodies(page), (l) => l.some((t) => t.includes("first!")));

      // Log out, then back in with the same account.
      await page.getByRole("button", { name: "Log out" }).click();
      await page.getByLabel("Username").fill(name);
      await page.getByLabel("Password").fill("correct horse battery");
      await page.getByRole("button", { name: "Log in" }).click();
      await waitConnected(page);
      await eventually("the room and its message after logging in", () => messageBodies(page), (l) => l.some((t) => t.includes("first!")));
    });

    test("nothing left 127.0.0.1 and no page reported an error", () => {
      assertNothingLeftTheMachine();
      assertNoPageErrors();
    });
  },

  features() {
    const room = `features${SUFFIX}`;

    pageTest("edits, deletes, reactions, read receipts, unread counts and search in the demo chat", async () => {
      await join(ALICE, room);
      await join(BOB, room);
      const other = `elsewhere${SUFFIX}`;
      await join(ALICE, other);
      await join(BOB, other);
      await send(BOB, other, "an unread line in another room");
      const alice = await open(`/?token=${encodeURIComponent(ALICE)}&room=${room}`, "alice");
      await waitConnected(alice);
      const bob = await open(`/?token=${encodeURIComponent(BOB)}&room=${room}`, "bob");
      await waitConnected(bob);

      // The other room's unread count shows in the room list.
      await eventually("alice sees an unread count on the other room", () => items(alice, "room-list"), (l) => l.some((t) => t.includes(other) && /\b1\b/.test(t)));

      await sendFromPage(alice, "The release is on Thursdy");
      await eventually("bob sees the message", () => messageBodies(bob), (l) => l.some((t) => t.includes("Thursdy")));

      // Alice fixes her typo: bob sees the edit live, marked as edited.
      const mine = alice.locator("#message-list .message").filter({ hasText: "Thursdy" });
      await mine.hover();
      await mine.getByTestId("edit-button").click();
      await mine.getByTestId("edit-input").fill("The release is on Thursday");
      await mine.getByTestId("edit-save").click();
      await eventually("bob sees the edit", () => messageBodies(bob), (l) => l.some((t) => t.includes("Thursday") && t.includes("(edited)")));

      // Bob reacts; alice sees the count, and adds hers.
      const theirs = bob.locator("#message-list .message").filter({ hasText: "Thursday" });
      await theirs.hover();
      await theirs.getByTestId("react-🎉").click();
      const onAlice = alice.locator("#message-list .message").filter({ hasText: "Thursday" });
      await onAlice.locator(".reaction").filter({ hasText: "🎉 1" }).waitFor({ timeout: STEP_MS });
      await onAlice.locator(".reaction").filter({ hasText: "🎉 1" }).click();
      await theirs.locator(".reaction").filter({ hasText: "🎉 2" }).waitFor({ timeout: STEP_MS });

      // Bob has read it: alice sees "Seen by bob".
      await eventually("alice sees bob's receipt", () => byTestId(alice, "read-receipts").innerText(), (t) => t.includes("bob"));

      // A message deleted by its author becomes a tombstone on both pages.
      await sendFromPage(alice, "oops, wrong room");
      await eventually("bob sees the slip", () => messageBodies(bob), (l) => l.some((t) => t.includes("wrong room")));
      const slip = alice.locator("#message-list .message").filter({ hasText: "wrong room" });
      await slip.hover();
      await slip.getByTestId("delete-button").click();
      await eventually("bob sees the tombstone", () => messageBodies(bob), (l) => !l.some((t) => t.includes("wrong room")) && l.some((t) => t.includes("This message was deleted.")));

      // Search finds the edited message by its new words.
      await byTestId(alice, "search-input").fill("thursday");
      await byTestId(alice, "search-input").press("Enter");
      await eventually("the search result", () => items(alice, "search-results"), (l) => l.length === 1 && l[0].includes("Thursday"));

      await onAlice.hover();
      await screenshot(alice, "chat-features");
    });

    test("nothing left 127.0.0.1 and no page reported an error", () => {
      assertNothingLeftTheMachine();
      assertNoPageErrors();
    });
  },

  history() {
    const room = `archive${SUFFIX}`;

    pageTest("history pages back with messages(before:, last:)", async () => {
      await join(BOB, room);
      for (let i = 1; i <= 60; i++) await send(BOB, room, `archived line ${i}`);
      const page = await open(`/?token=${encodeURIComponent(ALICE)}&room=${room}`, "history");
      await waitConnected(page);
      // The room holds bob's join, 60 lines and alice's join. The latest page is the last 50:
      // lines 12 to 60 and alice's join.
      const numbers = (list) => list.flatMap((t) => t.match(/archived line (\d+)/)?.[1] ?? []).map(Number);
      const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
      const first = await eventually("the latest page", () => messageBodies(page), (l) => l.length >= 50);
      assert.equal(first.length, 50, `expected one page of 50, got ${first.length}`);
      assert.deepEqual(numbers(first), range(12, 60));
      await page.getByRole("button", { name: "Load earlier messages" }).click();
      // The page before it is the rest, down to the room's first message.
      const all = await eventually("every message", () => messageBodies(page), (l) => l.length === 62);
      assert.deepEqual(numbers(all), range(1, 60));
      assert.match(all[0], /bob joined/);
      await page.getByText(`This is the beginning of #${room}.`).waitFor({ timeout: STEP_MS });
      assert.equal(await page.getByRole("button", { name: "Load earlier messages" }).isVisible(), false);
    });

    test("nothing left 127.0.0.1 and no page reported an error", () => {
      assertNothingLeftTheMachine();
      assertNoPageErrors();
    });
  },

  restart() {
    const room = `restart${SUFFIX}`;
    const input = createInterface({ input: process.stdin });
    const lines = input[Symbol.asyncIterator]();
    after(() => input.close()); // or standard input keeps Node running
    /** Asks the harness to act on the server, and waits for its answer. */
    async function harness(command, expected) {
      process.stdout.write(`@@tidings ${command}\n`);
      const { value, done } = await lines.next();
      const answer = done ? "(closed)" : value.trim();
      if (expected) assert.equal(answer, expected, `the harness did not ${command} the server`);
      return answer;
    }

    pageTest("a page whose server restarts reconnects and shows what was sent meanwhile", async () => {
      await join(BOB, room);
      const page = await open(`/?token=${encodeURIComponent(ALICE)}&room=${room}`, "restart");
      const subscribes = [];
      page.on("websocket", (ws) =>
        ws.on("framesent", ({ payload }) => {
          try {
            const frame = JSON.parse(String(payload));
            if (frame.type === "subscribe" && frame.payload.query.includes("messageAdded")) subscribes.push(frame.payload.variables);
          } catch {
            // not JSON: not ours to check
          }
        }),
      );
      await waitConnected(page);
      const lastBefore = await send(BOB, room, "before the restart");
      await eventually("the first message", () => messageBodies(page), (l) => l.some((t) => t.includes("before the restart")));

      await harness("stop", "stopped");
      await eventually("the page notices", () => byTestId(page, "connection-status").innerText(), (t) => t !== "connected");
      // Meanwhile bob goes on, through another server on the same database (as through another
      // instance): nothing listens where the page reconnects, so it cannot see these live.
      const other = await harness("start-other");
      assert.match(other, /^http:\/\/127\.0\.0\.1:\d+$/, `start-other answered ${other}`);
      await send(BOB, room, "sent while you were away", other);
      await send(BOB, room, "and one more", other);
      await harness("stop-other", "stopped");
      assert.notEqual(await byTestId(page, "connection-status").innerText(), "connected");
      await screenshot(page, "chat-reconnecting");

      await harness("start", "started");
      await waitConnected(page);
      const after = await eventually(
        "both messages after the reconnect",
        () => messageBodies(page),
        (l) => l.some((t) => t.includes("sent while you were away")) && l.some((t) => t.includes("and one more")),
      );
      // In order, once each.
      const order = ["before the restart", "sent while you were away", "and one more"].map((b) => after.findIndex((t) => t.includes(b)));
      assert.deepEqual([...order].sort((x, y) => x - y), order, `out of order: ${JSON.stringify(after)}`);
      assert.equal(new Set(after).size, after.length, `a message shows twice: ${JSON.stringify(after)}`);
      // The new socket resumed from the last message the page had seen.
      assert.equal(subscribes.at(-1)?.after, lastBefore, `subscriptions sent: ${JSON.stringify(subscribes)}`);

      // And it is live again: a new message arrives without a reload.
      await send(BOB, room, "welcome back");
      await eventually("a live message after the reconnect", () => messageBodies(page), (l) => l.some((t) => t.includes("welcome back")));
    });

    test("nothing left 127.0.0.1, and the only errors are the failed reconnects", () => {
      assertNothingLeftTheMachine();
      // While the server is down, Chromium logs each refused WebSocket and fetch; and a request
      // that meets the server as it stops (on a kept-alive connection it is closing) is reset.
      assertNoPageErrors((e) => /ERR_CONNECTION_REFUSED|ERR_CONNECTION_RESET|WebSocket connection to .* failed/.test(e));
    });
  },
};

/** A sample of `/metrics`, e.g. `tidings_connections{transport="graphql_ws"}`. */
async function metric(series) {
  const text = await (await fetch(`${BASE}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : NaN;
}

scenarios.renewal = () => {
  const room = `renewal${SUFFIX}`;
  const CONNECTIONS = 'tidings_connections{transport="graphql_ws"}';
  const RENEWED = 'tidings_token_renewals_total{outcome="renewed"}';

  // Past the first token's expiry (2 min), so this test is bounded by more than the others.
  pageTest("the chat renews its token before it expires and keeps its one socket", async () => {
    assert.ok(ALICE_SHORT, "ALICE_SHORT_TOKEN is not set");
    const exp = JSON.parse(Buffer.from(ALICE_SHORT.split(".")[1], "base64url").toString()).exp;
    await join(BOB, room);
    const page = await open(`/?token=${encodeURIComponent(ALICE_SHORT)}&room=${room}`, "renewal");
    const sockets = () => pages.find((p) => p.page === page).requests.filter((u) => u.startsWith("ws"));
    await waitConnected(page);
    await eventually("alice's one socket counted", () => metric(CONNECTIONS), (n) => n === 1);

    await send(BOB, room, "before the expiry");
    await eventually("a message before the expiry", () => messageBodies(page), (l) => l.some((t) => t.includes("before the expiry")));

    // Until well past the first token's expiry, the page keeps its socket and the count holds.
    const past = exp * 1000 + 5_000;
    while (Date.now() < past) {
      assert.equal(await metric(CONNECTIONS), 1, "the page's socket count moved");
      await sleep(5_000);
    }
    assert.ok((await metric(RENEWED)) >= 1, "the page renewed its token on its socket");
    await send(BOB, room, "after the expiry");
    await eventually("a message after the first token's expiry", () => messageBodies(page), (l) => l.some((t) => t.includes("after the expiry")));
    assert.equal(await byTestId(page, "connection-status").innerText(), "connected");
    assert.equal(await metric(CONNECTIONS), 1);
    assert.equal(sockets().length, 1, `the page opened one socket: ${sockets()}`);
  }, 200_000);

  test("nothing left 127.0.0.1, and no page reported an error", () => {
    assertNothingLeftTheMachine();
    assertNoPageErrors();
  });
};

scenarios.admin = () => {
  // Two instances share a Redis: the page is served by A (TIDINGS_URL), B is OTHER_URL. The
  // harness holds clients on both: alice twice on A and once on B (graphql-ws), bob once on B
  // (/ws); the console's own socket is the third on A.
  const OTHER = required("OTHER_URL").replace(/\/+$/, "");
  const ADMIN = required("ADMIN_TOKEN");
  const input = createInterface({ input: process.stdin });
  const lines = input[Symbol.asyncIterator]();
  after(() => input.close());
  async function harness(command) {
    process.stdout.write(`@@tidings ${command}\n`);
    const { value, done } = await lines.next();
    return done ? "(closed)" : value.trim();
  }
  /** An instance's own count of its connections over `transport`, from its /metrics. */
  async function connections(base, transport) {
    const text = await (await fetch(`${base}/metrics`)).text();
    const series = `tidings_connections{transport="${transport}"}`;
    const line = text.split("\n").find((l) => l.startsWith(`${series} `));
    return line ? Number(line.slice(series.length + 1)) : 0;
  }
  /** What the page shows: per instance card, its figures by name. */
  const cards = (page) =>
    page.locator("[data-testid=instance]").evaluateAll((els) =>
      els.map((el) => ({
        instance: el.dataset.instance,
        stale: el.dataset.stale === "true",
        figures: Object.fromEntries(
          [...el.querySelectorAll("[data-figure]")].map((d) => [d.dataset.figure, d.textContent.trim()]),
        ),
      })),
    );
  const num = (card, name) => Number((card?.figures[name] ?? "0").replace(/,/g, "")) || 0;

  pageTest("without an admin token the console asks for one, and the server refuses its data", async () => {
    const anonymous = await open("/admin", "admin-anonymous");
    await byTestId(anonymous, "admin-signin").waitFor({ timeout: STEP_MS });
    assert.equal(await anonymous.locator("[data-testid=instance]").count(), 0);
    const user = await open(`/admin?token=${encodeURIComponent(ALICE)}`, "admin-user");
    await byTestId(user, "admin-signin").waitFor({ timeout: STEP_MS });
    assert.match(await byTestId(user, "token-status").innerText(), /\(user\)/);
    // The page is not the guard: the API is.
    const r = await fetch(`${BASE}/graphql`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${ALICE}` },
      body: JSON.stringify({ query: "{ adminActions { id } }" }),
    });
    const body = await r.json();
    assert.equal(body.errors?.[0]?.extensions?.code, "FORBIDDEN");
  });

  pageTest("the console shows each instance and their sum, and a disconnect closes the user's sockets on both", async () => {
    // Some traffic for the tables and the charts.
    await join(ALICE, `lobby${SUFFIX}`);
    await join(BOB, `lobby${SUFFIX}`);
    const page = await open(`/admin?token=${encodeURIComponent(ADMIN)}`, "admin");
    for (let i = 0; i < 3; i++) await send(ALICE, `lobby${SUFFIX}`, `hello ${i}`);
    // Both instances, each as its own /metrics counts itself, and the sum.
    const shown = await eventually(
      "two instances reporting, with the sockets the harness holds",
      async () => {
        const list = await cards(page);
        const expected = {};
        for (const base of [BASE, OTHER]) {
          expected[base] = [await connections(base, "graphql_ws"), await connections(base, "legacy_ws")];
        }
        return { list, expected };
      },
      ({ list, expected }) => {
        const live = list.filter((c) => c.instance !== "total" && !c.stale);
        if (live.length !== 2) return false;
        const pairs = live.map((c) => [num(c, "connections-graphql_ws"), num(c, "connections-legacy_ws")]);
        const want = Object.values(expected);
        return (
          want.every(([g, l]) => pairs.some(([pg, pl]) => pg === g && pl === l)) &&
          JSON.stringify(want.sort()) === JSON.stringify([[1, 1], [3, 0]])
        );
      },
    );
    const total = shown.list.find((c) => c.instance === "total");
    assert.equal(num(total, "connections"), 5, JSON.stringify(total));
    assert.equal(num(total, "connections-graphql_ws"), 4);
    assert.equal(num(total, "connections-legacy_ws"), 1);
    assert.equal(total.figures.redis, "up");
    assert.equal(total.figures.database, "ok");

    // Who is online, and alice's sockets on both instances.
    await eventually("alice and bob online", () => byTestId(page, "online-users").innerText(), (t) => t.includes("alice") && t.includes("bob"));
    await page.locator("[data-testid=online-users] tr[data-user=alice] button").click();
    const sockets = await eventually(
      "alice's three sockets listed",
      () => page.locator("[data-testid=user-sockets] tbody tr").allInnerTexts(),
      (rows) => rows.length === 3,
    );
    assert.equal(new Set(sockets.map((r) => r.split("\t")[0])).size, 2, `on two instances: ${sockets}`);
    await eventually(
      "the lobby among the busiest rooms",
      () => byTestId(page, "rooms-by-messages").innerText(),
      (t) => t.includes(`lobby${SUFFIX}`),
    );
    if (SCREENSHOTS) {
      await sleep(3_000); // a few seconds on the charts
      mkdirSync(SCREENSHOTS, { recursive: true });
      await page.screenshot({ path: joinPath(SCREENSHOTS, "admin.png"), fullPage: true });
    }

    // Disconnect alice, confirmed in a dialog.
    assert.equal(await byTestId(page, "disconnect-user").inputValue(), "alice");
    await byTestId(page, "disconnect-submit").click();
    await byTestId(page, "confirm-dialog").waitFor({ timeout: STEP_MS });
    await byTestId(page, "confirm-yes").click();
    await eventually("the action's result", () => byTestId(page, "action-result").innerText(), (t) => t.includes("Disconnected alice"));
    assert.equal(await harness("alice-closed"), "4403 4403 4403", "alice's sockets on both instances closed");
    await eventually(
      "the action log lists the disconnect",
      () => page.locator("[data-testid=action-log] tbody tr[data-action=disconnect]").allInnerTexts(),
      (rows) => rows.length === 1 && rows[0].includes("alice") && rows[0].includes("root"),
    );
    await eventually(
      "the figures without alice: the console's socket on A, bob's on B",
      async () => num((await cards(page)).find((c) => c.instance === "total"), "connections"),
      (n) => n === 2,
    );
  });

  /** Answers the console's confirmation with `button` (`confirm-yes` or `confirm-no`). */
  async function answer(page, button) {
    await byTestId(page, "confirm-dialog").waitFor({ timeout: STEP_MS });
    await byTestId(page, button).click();
    await byTestId(page, "confirm-dialog").waitFor({ state: "detached", timeout: STEP_MS });
  }
  /** The action log's rows as the page shows them, newest first. */
  const logRows = (page) =>
    page
      .locator("[data-testid=action-log] tbody tr")
      .evaluateAll((rows) => rows.map((r) => ({ action: r.dataset.action, target: r.dataset.target, text: r.innerText })));

  pageTest("the console publishes and notifies a role and everyone once confirmed, and a cancelled action does nothing", async () => {
    const page = pages.find((p) => p.name === "admin").page;
    // A client script of bob's: channel events from A, its notifications from B.
    const events = await streamOf(BOB, 'subscription { events(channels: ["public:console"]) { type data } }', BASE);
    const notes = await streamOf(BOB, "subscription { notifications { kind title body } }", OTHER);
    try {
      await sleep(500); // both subscriptions started

      await byTestId(page, "publish-channel").fill("public:console");
      await byTestId(page, "publish-type").fill("announcement");
      await byTestId(page, "publish-data").fill('{"text": "from the console"}');
      await byTestId(page, "publish-submit").click();
      await answer(page, "confirm-yes");
      await eventually("the publish's result", () => byTestId(page, "action-result").innerText(), (t) => t === "Published to public:console.");
      assert.deepEqual((await events.next("the published event")).data.events, {
        type: "announcement",
        data: { text: "from the console" },
      });

      await byTestId(page, "notify-audience").selectOption("role");
      await byTestId(page, "notify-target").fill("user");
      await byTestId(page, "notify-title").fill("For every user");
      await byTestId(page, "notify-body").fill("by role");
      await byTestId(page, "notify-submit").click();
      await answer(page, "confirm-yes");
      // alice and bob have the role `user`.
      await eventually("the role notification's result", () => byTestId(page, "action-result").innerText(), (t) => t === "Notified 2 people.");
      assert.deepEqual((await notes.next("the role's notification")).data.notifications, {
        kind: "admin",
        title: "For every user",
        body: "by role",
      });

      // Cancelled: nothing is sent, nothing logged.
      await byTestId(page, "notify-audience").selectOption("everyone");
      await byTestId(page, "notify-title").fill("Never sent");
      await byTestId(page, "notify-body").fill("");
      await byTestId(page, "notify-submit").click();
      await answer(page, "confirm-no");
      await eventually("the cancellation", () => byTestId(page, "action-result").innerText(), (t) => t === "Cancelled.");

      await byTestId(page, "notify-title").fill("For everyone");
      await byTestId(page, "notify-submit").click();
      await answer(page, "confirm-yes");
      // alice, bob and root.
      await eventually("the notification to everyone", () => byTestId(page, "action-result").innerText(), (t) => t === "Notified 3 people.");
      const next = (await notes.next("the notification to everyone, with nothing before it")).data.notifications;
      assert.equal(next.title, "For everyone", "the cancelled notification never came");

      const rows = await eventually(
        "the log lists the four actions, newest first",
        () => logRows(page),
        (rows) => rows.length === 4,
      );
      assert.deepEqual(
        rows.map((r) => [r.action, r.target]),
        [
          ["notify", "everyone"],
          ["notify", "role:user"],
          ["publish", "public:console"],
          ["disconnect", "alice"],
        ],
      );
      assert.ok(rows.every((r) => r.text.includes("root")), JSON.stringify(rows));
      assert.ok(rows[1].text.includes("For every user"), rows[1].text);
      assert.ok(rows[2].text.includes("announcement"), rows[2].text);
      assert.ok(!rows.some((r) => r.text.includes("Never sent")), JSON.stringify(rows));
    } finally {
      events.close();
      notes.close();
    }
  });

  pageTest("an instance that stops reporting is marked, and left out of the sum", async () => {
    const page = pages.find((p) => p.name === "admin").page;
    assert.equal(await harness("stop-other"), "stopped");
    const list = await eventually(
      "B marked as stopped",
      () => cards(page),
      (l) => l.filter((c) => c.stale).length === 1,
      20_000,
    );
    assert.equal(await page.locator("[data-testid=stale]").count(), 1);
    assert.equal(num(list.find((c) => c.instance === "total"), "connections-legacy_ws"), 0);
  });

  test("nothing left 127.0.0.1, and no page reported an error", () => {
    assertNothingLeftTheMachine();
    // B's going away is logged by nobody: the console's socket is on A.
    assertNoPageErrors();
  });
};

const scenario = scenarios[SCENARIO];
if (!scenario) throw new Error(`unknown scenario ${SCENARIO}: one of ${Object.keys(scenarios).join(", ")}`);
scenario();

/**
 * Replaces the operation in GraphiQL's editor (Monaco) with `text`, as a person would, and
 * waits until GraphiQL has taken it in: the tab is named after the operation `name`.
 */
async function setOperation(page, name, text) {
  const editor = page.locator(".graphiql-query-editor .monaco-editor").first();
  await editor.click();
  await page.keyboard.press("ControlOrMeta+A");
  await page.keyboard.press("Delete");
  await page.keyboard.insertText(text);
  await page.keyboard.press("Home"); // scroll back to the start of the line
  await page.locator(".graphiql-tab").filter({ hasText: name }).waitFor({ timeout: STEP_MS });
}

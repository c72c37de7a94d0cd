// The live connection: one graphql-ws client (graphql-transport-ws) per signed-in page, kept
// open for as long as the page is, reconnecting with exponential backoff.
//
// Subscriptions are the page's, not the socket's: every one is dropped when the socket closes
// and started again by the page when a new socket is acknowledged (`onConnected`). graphql-ws
// would otherwise resend each subscription exactly as first sent, and a room's feed must
// resume from the last message the page saw (`messageAdded(after:)`), not from where it began.
//
// The socket outlives its token: the server says when the token expires (the ack's
// `expiresAt`), and before then the page gets a fresh one (`refreshToken`) and hands it to the
// socket (`authenticate`), which goes on with every subscription instead of closing.
import { createClient } from "graphql-ws";
import { subscriptionUrl } from "../shared/session.js";

const FIRST_DELAY_MS = 500;
const MAX_DELAY_MS = 15_000;
/** The client pings this often; a pong later than PONG_TIMEOUT_MS means the socket is dead. */
const PING_INTERVAL_MS = 10_000;
const PONG_TIMEOUT_MS = 5_000;
/** Closes that mean "this token will not do": the page asks the person to sign in again. */
const TOKEN_REJECTED = 4403;
/** Renew this long before the token expires (or halfway there, for a shorter token). */
const RENEW_LEAD_MS = 60_000;
/** After a failed renewal, try again this much later (while the token lasts). */
const RENEW_RETRY_MS = 10_000;
/** Browsers fire a longer `setTimeout` at once: a longer wait is taken in steps of this. */
const MAX_TIMER_MS = 2 ** 31 - 1;

const REFRESH = `mutation { refreshToken { token } }`;
const AUTHENTICATE = `mutation($token: String!) { authenticate(token: $token) { expiresAt } }`;

/** The delay before retry `n` (0-based): doubling from 0.5 s up to 15 s, with jitter. */
export function backoffDelay(n) {
  const ceiling = Math.min(MAX_DELAY_MS, FIRST_DELAY_MS * 2 ** n);
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

const isCloseEvent = (e) => e && typeof e === "object" && "code" in e && "reason" in e;

export class LiveConnection {
  /**
   * @param {object} options
   * @param {() => string} options.token the current token, read at every (re)connect
   * @param {(state: string, detail: string) => void} options.onStatus `connecting`,
   *   `connected`, `reconnecting` or `offline`, with a sentence for people
   * @param {() => void} options.onConnected a socket is live: (re)start subscriptions
   * @param {() => void} options.onDisconnected the socket closed: its subscriptions are gone
   * @param {(reason: string) => void} options.onRejected the server refused the token
   * @param {(token: string) => void} options.onRenewed the socket now uses this fresh token
   */
  constructor(options) {
    this.options = options;
    this.connected = false;
    this.feeds = new Set();
    this.failures = 0;
    this.wake = null;
    this.closedForGood = false;
    this.onOnline = () => this.retryNow();
    window.addEventListener("online", this.onOnline);
    this.open();
  }

  open() {
    let pongTimer;
    this.options.onStatus(this.failures ? "reconnecting" : "connecting", "");
    this.client = createClient({
      url: subscriptionUrl(),
      connectionParams: () => ({ authToken: this.options.token() }),
      lazy: false,
      keepAlive: PING_INTERVAL_MS,
      retryAttempts: Infinity,
      // A refused token is final; anything else (a restart, a network blip) is retried.
      shouldRetry: (e) => !(isCloseEvent(e) && e.code === TOKEN_REJECTED),
      retryWait: (retries) => this.pause(retries),
      onNonLazyError: (e) => this.failed(e),
      on: {
        connecting: (isRetry) => {
          if (isRetry) this.options.onStatus("reconnecting", "connecting…");
        },
        connected: (_socket, payload) => {
          this.connected = true;
          this.scheduleRenewal(payload?.expiresAt);
          this.failures = 0;
          this.options.onStatus("connected", "");
          this.options.onConnected();
        },
        closed: (event) => {
          clearTimeout(pongTimer);
          clearTimeout(this.renewTimer);
          const wasConnected = this.connected;
          this.connected = false;
          this.dropFeeds();
          if (wasConnected) this.options.onDisconnected(event);
        },
        // Our own ping went out: expect the pong in time, or drop the socket and reconnect.
        ping: (received) => {
          if (!received) pongTimer = setTimeout(() => this.client.terminate(), PONG_TIMEOUT_MS);
        },
        pong: (received) => {
          if (received) clearTimeout(pongTimer);
        },
      },
    });
  }

  /** Renews the token on this socket before `expiresAt` (ISO 8601), if the server gave one. */
  scheduleRenewal(expiresAt) {
    clearTimeout(this.renewTimer);
    const expires = Date.parse(expiresAt ?? "");
    if (Number.isNaN(expires)) return;
    const left = expires - Date.now();
    const wait = Math.max(0, left - Math.min(RENEW_LEAD_MS, left / 2));
    this.renewTimer =
      wait > MAX_TIMER_MS
        ? setTimeout(() => this.scheduleRenewal(expiresAt), MAX_TIMER_MS)
        : setTimeout(() => this.renew(expires), wait);
  }

  /**
   * A fresh token for the current one, handed to the socket: its subscriptions go on. A token
   * this server cannot refresh (an identity provider's) is left to expire: the page then asks
   * the person to sign in again.
   */
  async renew(expires) {
    try {
      const { refreshToken } = await this.request(REFRESH, {});
      const { authenticate } = await this.request(AUTHENTICATE, { token: refreshToken.token });
      this.options.onRenewed(refreshToken.token);
      this.scheduleRenewal(authenticate.expiresAt);
    } catch (e) {
      if (e?.extensions?.code === "FORBIDDEN" || !this.connected) return;
      if (Date.now() + RENEW_RETRY_MS < expires) {
        this.renewTimer = setTimeout(() => this.renew(expires), RENEW_RETRY_MS);
      }
    }
  }

  /** graphql-ws's `retryWait`: a backoff the person can cut short ("Retry now", going online). */
  pause(retries) {
    const delay = backoffDelay(retries);
    const until = Date.now() + delay;
    return new Promise((resolve) => {
      const tick = () => {
        const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
        this.options.onStatus("reconnecting", `next try in ${left} s`);
      };
      tick();
      const ticker = setInterval(tick, 1000);
      const timer = setTimeout(done, delay);
      function done() {
        clearInterval(ticker);
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = null;
        done();
      };
    });
  }

  retryNow() {
    this.wake?.();
  }

  /** The client gave up: a refused token ends the session; anything else starts a new client. */
  failed(error) {
    this.connected = false;
    this.dropFeeds();
    if (this.closedForGood) return;
    if (isCloseEvent(error) && error.code === TOKEN_REJECTED) {
      this.close();
      this.options.onRejected(error.reason || "token refused");
      return;
    }
    const why = isCloseEvent(error) ? `closed ${error.code} ${error.reason || ""}`.trim() : "";
    this.client.dispose();
    this.failures += 1;
    const delay = backoffDelay(this.failures);
    this.options.onStatus("offline", `${why}; retrying in ${Math.ceil(delay / 1000)} s`);
    this.restartTimer = setTimeout(() => this.open(), delay);
  }

  /**
   * Starts a subscription on the live socket; returns its stop function. It ends by itself when
   * the socket closes (the page starts it again from `onConnected`).
   */
  subscribe(query, variables, { next, error }) {
    let stopped = false;
    const feed = () => {
      if (stopped) return;
      stopped = true;
      this.feeds.delete(feed);
      dispose();
    };
    const dispose = this.client.subscribe(
      { query, variables },
      {
        next: (result) => {
          if (stopped) return;
          if (result.errors?.length) error?.(result.errors[0]);
          else next(result.data);
        },
        error: (e) => {
          if (!stopped) error?.(Array.isArray(e) ? e[0] : e);
        },
        complete: () => {},
      },
    );
    this.feeds.add(feed);
    return feed;
  }

  /**
   * One operation over the socket (a mutation whose effect belongs to the socket, such as
   * `setTyping`: closing the socket ends it). Rejects at once when not connected.
   */
  request(query, variables) {
    if (!this.connected) return Promise.reject(new Error("not connected"));
    return new Promise((resolve, reject) => {
      let result;
      let settled = false;
      const settle = (fn, value) => {
        if (settled) return;
        settled = true;
        this.feeds.delete(feed);
        fn(value);
      };
      // Dropped with the socket like a subscription, so graphql-ws never replays it on the
      // next socket.
      const feed = () => {
        dispose();
        settle(reject, new Error("disconnected"));
      };
      const dispose = this.client.subscribe(
        { query, variables },
        {
          next: (r) => (result = r),
          error: (e) => settle(reject, Array.isArray(e) ? e[0] : e),
          complete: () =>
            result?.errors?.length
              ? settle(reject, result.errors[0])
              : settle(resolve, result?.data),
        },
      );
      this.feeds.add(feed);
    });
  }

  dropFeeds() {
    for (const feed of [...this.feeds]) feed();
  }

  close() {
    this.closedForGood = true;
    clearTimeout(this.renewTimer);
    clearTimeout(this.restartTimer);
    window.removeEventListener("online", this.onOnline);
    this.dropFeeds();
    this.client.dispose();
    this.connected = false;
  }
}

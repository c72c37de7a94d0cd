// What both pages share: where the API is, and the token a person signed in with.
//
// The token lives in localStorage under one key, so signing in on the chat page also signs the
// playground in (and the other way round). A token given as `?token=` is used for that page
// only and never stored: automation and shared links must not replace a person's session.

const STORAGE_KEY = "tidings.token";

/** `POST` queries and mutations here. */
export function graphqlUrl() {
  return new URL("/graphql", window.location.href).href;
}

/** Subscriptions (graphql-transport-ws) here: the same path, over ws: or wss:. */
export function subscriptionUrl() {
  const url = new URL("/graphql", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

/** graphql-sse streams here (both of its modes; this page uses distinct connections). */
export function streamUrl() {
  return new URL("/graphql/stream", window.location.href).href;
}

/** The token given in the page's URL, if any. */
export function urlToken() {
  return new URLSearchParams(window.location.search).get("token")?.trim() || "";
}

export function storedToken() {
  try {
    return window.localStorage.getItem(STORAGE_KEY) || "";
  } catch {
    return ""; // storage disabled (private mode, policy): no remembered session
  }
}

export function storeToken(token) {
  try {
    if (token) window.localStorage.setItem(STORAGE_KEY, token);
    else window.localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: the session lasts as long as the page
  }
}

/**
 * The claims of a JWT, decoded for display only (the server verifies tokens; the page just
 * says whose token it holds and when it expires). Null when it is not a JWT.
 */
export function tokenClaims(token) {
  const part = token?.split(".")[1];
  if (!part) return null;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** "in 23 h", "in 5 min", "expired": when a token's `exp` is. */
export function expiresIn(claims, now = Date.now()) {
  if (!claims || typeof claims.exp !== "number") return "";
  const seconds = Math.round(claims.exp - now / 1000);
  if (seconds <= 0) return "expired";
  if (seconds < 90) return `expires in ${seconds} s`;
  if (seconds < 90 * 60) return `expires in ${Math.round(seconds / 60)} min`;
  if (seconds < 48 * 3600) return `expires in ${Math.round(seconds / 3600)} h`;
  return `expires in ${Math.round(seconds / 86400)} days`;
}

// GraphiQL for Tidings: the IDE with the schema's docs, queries and mutations over HTTP,
// subscriptions over WebSocket (graphql-transport-ws) or Server-Sent Events (graphql-sse), by a
// switch in the bar, and a token bar whose token goes both into `Authorization: Bearer` and
// into `connection_init` as `{ authToken }`.
//
// Everything here is bundled into /assets by Vite, Monaco's workers included: the page loads
// nothing from anywhere but the server that serves it.
import "graphiql/setup-workers/vite";
import "graphiql/style.css";
import "./playground.css";

import { createGraphiQLFetcher } from "@graphiql/toolkit";
import { GraphiQL } from "graphiql";
import { getOperationAST, parse } from "graphql";
import { createClient as createSseClient } from "graphql-sse";
import { useEffect, useId, useMemo, useState } from "react";
import { createRoot } from "react-dom/client";

import {
  expiresIn,
  graphqlUrl,
  storedToken,
  storeToken,
  streamUrl,
  subscriptionUrl,
  tokenClaims,
  urlToken,
} from "../shared/session.js";

const DEFAULT_QUERY = `# Welcome to the Tidings playground.
#
# Paste a token above, or sign in on the chat page:
# both pages share it. It goes out as "Authorization:
# Bearer" on HTTP and in connection_init on WebSocket.
# Make one:  tidings token --user alice
#
# Ctrl-Enter runs an operation; subscriptions stream
# until you stop them. The first icon on the left
# opens the schema's docs.

query Me {
  me { id username role points }
  rooms { id title memberCount }
}

mutation Hello {
  joinRoom(roomId: "lobby") { id memberCount }
  sendMessage(roomId: "lobby", body: "hello") {
    id
    body
  }
}

subscription Lobby {
  messageAdded(roomId: "lobby") {
    id
    body
    sender { username }
  }
}
`;

const TRANSPORT_KEY = "tidings.playground.transport";

function storedTransport() {
  try {
    return window.localStorage.getItem(TRANSPORT_KEY) === "sse" ? "sse" : "ws";
  } catch {
    return "ws";
  }
}

/** Whether GraphiQL's request runs a subscription (the operation it names, or the only one). */
function isSubscription({ query, operationName }) {
  try {
    return getOperationAST(parse(query), operationName || undefined)?.operation === "subscription";
  } catch {
    return false; // the server reports the syntax error
  }
}

/**
 * Subscriptions over graphql-sse (a stream per subscription, the distinct connections mode),
 * everything else through `http`: GraphiQL iterates what a fetcher returns.
 */
function sseFetcher(http, token) {
  const client = createSseClient({
    url: streamUrl(),
    headers: token ? { Authorization: `Bearer ${token}` } : {},
    retryAttempts: 0,
  });
  return (params, options) =>
    isSubscription(params) ? client.iterate(params) : http(params, options);
}

function TransportSwitch({ transport, onChange }) {
  const id = useId();
  return (
    <div className="tp-transport">
      <label htmlFor={id}>Subscriptions over</label>
      <select
        id={id}
        data-testid="transport-select"
        value={transport}
        onChange={(e) => onChange(e.target.value)}
      >
        <option value="ws">WebSocket</option>
        <option value="sse">Server-Sent Events</option>
      </select>
    </div>
  );
}

function TokenBar({ token, fromUrl, onApply, transport, onTransport }) {
  const [draft, setDraft] = useState(token);
  const inputId = useId();
  const claims = tokenClaims(token);
  useEffect(() => setDraft(token), [token]);

  let who = "Anonymous: the leaderboard and public channels only";
  if (token && !claims) who = "That does not look like a JWT";
  else if (claims) {
    const name = claims.name || claims.sub || "?";
    who = `Signed in as ${name} (${claims.role || "user"}), ${expiresIn(claims)}`;
    if (fromUrl) who += " · from the URL, not saved";
  }
  const expired = claims && expiresIn(claims) === "expired";

  return (
    <header className="tp-bar">
      <a className="tp-brand" href="/">
        <span className="tp-logo" aria-hidden="true">
          T
        </span>
        Tidings
      </a>
      <nav className="tp-nav" aria-label="Pages">
        <a href="/">Chat</a>
        <a href="/playground" aria-current="page">
          Playground
        </a>
      </nav>
      <form
        className="tp-token"
        onSubmit={(e) => {
          e.preventDefault();
          onApply(draft.trim());
        }}
      >
        <label htmlFor={inputId}>Token</label>
        <input
          id={inputId}
          data-testid="token-input"
          type="password"
          autoComplete="off"
          spellCheck={false}
          placeholder="Paste a JWT"
          value={draft}
          onChange={(e) => setDraft(e.target.value)}
        />
        <button type="submit" data-testid="token-apply">
          Use token
        </button>
        {token ? (
          <button type="button" className="tp-secondary" onClick={() => onApply("")}>
            Sign out
          </button>
        ) : null}
      </form>
      <TransportSwitch transport={transport} onChange={onTransport} />
      <p
        className={expired ? "tp-who tp-warn" : "tp-who"}
        data-testid="token-status"
        aria-live="polite"
      >
        {who}
      </p>
    </header>
  );
}

function Playground() {
  const fromUrl = urlToken();
  const [token, setToken] = useState(fromUrl || storedToken());
  const [tokenFromUrl, setTokenFromUrl] = useState(Boolean(fromUrl));
  const [transport, setTransport] = useState(storedTransport());

  // One fetcher per token: HTTP requests carry it as a header, and each subscription's
  // WebSocket sends it in connection_init (the toolkit opens one graphql-ws client per
  // subscription, so a new token takes effect on the next run).
  // With SSE chosen, subscriptions stream from /graphql/stream instead.
  const fetcher = useMemo(() => {
    const http = createGraphiQLFetcher({
      url: graphqlUrl(),
      subscriptionUrl: subscriptionUrl(),
      headers: token ? { Authorization: `Bearer ${token}` } : {},
      wsConnectionParams: token ? { authToken: token } : {},
      enableIncrementalDelivery: false,
    });
    return transport === "sse" ? sseFetcher(http, token) : http;
  }, [token, transport]);

  const chooseTransport = (next) => {
    setTransport(next);
    try {
      window.localStorage.setItem(TRANSPORT_KEY, next);
    } catch {
      // storage disabled: the choice lasts as long as the page
    }
  };

  const apply = (next) => {
    setToken(next);
    setTokenFromUrl(false);
    storeToken(next);
  };

  return (
    <div className="tp-app">
      <TokenBar
        token={token}
        fromUrl={tokenFromUrl}
        onApply={apply}
        transport={transport}
        onTransport={chooseTransport}
      />
      <main className="tp-ide" aria-label="GraphiQL">
        <GraphiQL fetcher={fetcher} defaultQuery={DEFAULT_QUERY} />
      </main>
    </div>
  );
}

createRoot(document.getElementById("graphiql-root")).render(<Playground />);

// The Node reference of the Tidings benchmarks: what users pick today. graphql-js 16 schema,
// graphql-ws 6 over ws 8 for subscriptions, an EventEmitter for pub/sub, and a plain HTTP
// endpoint for queries and mutations. Same messageAdded subscription and sendMessage mutation
// as Tidings (no database, no auth): every subscriber's selection set is executed per event,
// as graphql-js does.
//
//   PORT=8200 node server.mjs
import http from "node:http";
import { EventEmitter, on } from "node:events";
import { buildSchema, graphql } from "graphql";
import { WebSocketServer } from "ws";
import { useServer } from "graphql-ws/use/ws";

const port = Number(process.env.PORT || 8200);
const host = "127.0.0.1";

const schema = buildSchema(`
  type Message { id: ID! roomId: ID! body: String! }
  type ChannelEvent { channel: String! data: String }
  type Room { id: ID! }
  type Query { ok: Boolean }
  type Mutation {
    sendMessage(roomId: ID!, body: String!): Message!
    joinRoom(roomId: ID!): Room!
  }
  type Subscription {
    messageAdded(roomId: ID!): Message!
    events(channels: [String!]): ChannelEvent!
  }
`);

const bus = new EventEmitter();
bus.setMaxListeners(0);
let nextId = 0;

// An async iterator over one topic, as graphql-ws expects from `subscribe`.
function subscribeTo(topic, field) {
  const ac = new AbortController();
  const it = on(bus, topic, { signal: ac.signal });
  return {
    [Symbol.asyncIterator]() {
      return this;
    },
    async next() {
      try {
        const r = await it.next();
        if (r.done) return r;
        return { done: false, value: { [field]: r.value[0] } };
      } catch (e) {
        if (e.name === "AbortError") return { done: true, value: undefined };
        throw e;
      }
    },
    async return() {
      ac.abort();
      return { done: true, value: undefined };
    },
  };
}

const root = {
  ok: () => true,
  joinRoom: ({ roomId }) => ({ id: roomId }),
  sendMessage: ({ roomId, body }) => {
    const message = { id: String(++nextId), roomId, body };
    bus.emit(`room:${roomId}`, message);
    return message;
  },
  messageAdded: ({ roomId }) => subscribeTo(`room:${roomId}`, "messageAdded"),
  events: ({ channels }) => subscribeTo(`channel:${(channels || [])[0]}`, "events"),
};

const server = http.createServer((req, res) => {
  if (req.method === "POST" && (req.url === "/graphql" || req.url === "/api/publish")) {
    let chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
      } catch {
        res.writeHead(400).end();
        return;
      }
      if (req.url === "/api/publish") {
        bus.emit(`channel:${body.channel}`, { channel: body.channel, data: body.data });
        res.writeHead(200, { "content-type": "application/json" }).end('{"ok":true}');
        return;
      }
      const result = await graphql({
        schema,
        source: body.query,
        rootValue: root,
        variableValues: body.variables,
      });
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(result));
    });
    return;
  }
  res.writeHead(404).end();
});

const wss = new WebSocketServer({ server, path: "/graphql" });
useServer(
  {
    schema,
    roots: { subscription: root, mutation: root, query: root },
    onConnect: () => true,
  },
  wss,
);

server.listen({ port, host, backlog: 4096 }, () => {
  console.log(`node reference listening on http://${host}:${port}`);
});

// What an open operator console asks of a Tidings server, for `bench/run.sh admin`: the
// `serverStats` subscription (a snapshot a second) and the console's table queries every 5 s.
//
//   node bench/node-ref/console.mjs URL ADMIN_TOKEN SECONDS
//
// Prints how many snapshots and table answers it got, and fails when it got no snapshot (a
// console that saw nothing measured nothing).
import { createClient } from "graphql-ws";
import WebSocket from "ws";

const [base, token, seconds = "60"] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node console.mjs URL ADMIN_TOKEN [SECONDS]");
  process.exit(2);
}
const STATS = `subscription { serverStats { at total { connections { name value }
  publishedPerSecond deliveredPerSecond latencyP50Ms latencyP99Ms sockets { userId queued } }
  instances { instance stale } } }`;
const TABLES = `{ roomLoads(first: 10) { byMembersOnline { roomId membersOnline }
  byMessages { roomId messagesLastMinute } } onlineUsers { user { id } connections }
  adminActions(last: 50) { id } }`;

let snapshots = 0;
let tables = 0;
const client = createClient({
  url: base.replace(/^http/, "ws") + "/graphql",
  webSocketImpl: WebSocket,
  connectionParams: { authToken: token },
});
const stop = client.subscribe(
  { query: STATS },
  {
    next: (r) => {
      if (r.errors) console.error(JSON.stringify(r.errors));
      else snapshots += 1;
    },
    error: (e) => console.error("serverStats:", e),
    complete: () => {},
  },
);
const poll = setInterval(async () => {
  try {
    const r = await fetch(`${base}/graphql`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify({ query: TABLES }),
    });
    if (r.ok) tables += 1;
  } catch (e) {
    console.error("tables:", e.message);
  }
}, 5000);
const finish = () => {
  clearInterval(poll);
  stop();
  client.dispose();
  console.log(`console: ${snapshots} snapshots, ${tables} table answers`);
  process.exit(snapshots > 0 ? 0 : 1);
};
setTimeout(finish, Number(seconds) * 1000);
process.on("SIGTERM", finish);

//! Beyond one Redis: instances on a Redis Cluster (sharded pub/sub) and on a Sentinel-watched
//! master. Each test starts its own Redis processes on free ports (a 3-master cluster with one
//! replica each, or a master, a replica and three Sentinels) and kills a master to make them
//! fail over: delivery resumes and every numbered message arrives, none lost.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const MESSAGES: &str = "subscription($r: ID!) { messageAdded(roomId: $r) { id body } }";

/// A port that is free, and whose cluster bus port (+10000) is free too, both below the
/// system's ephemeral range when it leaves room: the instances' outgoing connections (which
/// retry while a node is down) take their local ports from that range, and one that took a
/// node's port or bus port before the node started would keep the node from starting.
fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let bindable = |port: u16| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok();
    if ephemeral_low >= 21_000 {
        // Ports in 10,000..(low - 10,000), tried from a place of this process's own, spread
        // between the calls of its tests.
        let span = u64::from(ephemeral_low - 20_000);
        let start = u64::from(std::process::id()) * 7_919;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let port = 10_000 + ((start + n * 613) % span) as u16;
            if bindable(port) && bindable(port + 10_000) {
                return port;
            }
        }
    }
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if port < 55_000 && bindable(port + 10_000) {
            return port;
        }
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server did not start on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One `redis-server` process (a cluster node, a master, a replica or a Sentinel).
struct Node {
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn spawn(port: u16, args: &[String]) -> Self {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start redis-server ({e}): install it (scripts/test.sh does: apt-get install redis-server)")
            });
        wait_for_port(port);
        Node {
            port,
            child: Some(child),
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: the node vanishes mid-stream.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn alive(&self) -> bool {
        self.child.is_some()
    }

    async fn query(&self, cmd: &mut redis::Cmd) -> redis::RedisResult<redis::Value> {
        let client = redis::Client::open(self.url())?;
        let mut conn = tokio::time::timeout(
            Duration::from_secs(2),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connect timed out")))??;
        cmd.query_async(&mut conn).await
    }

    async fn text(&self, cmd: &mut redis::Cmd) -> String {
        match self.query(cmd).await {
            Ok(v) => redis::from_redis_value::<String>(v).unwrap_or_default(),
            Err(e) => format!("error: {e}"),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A Redis Cluster of 3 masters and 3 replicas, made with `redis-cli --cluster create`.
struct TestCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    async fn start() -> Self {
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        Self::start_on(&ports).await
    }

    /// The cluster's seed nodes on `ports`, before it runs.
    fn seeds_on(ports: &[u16]) -> String {
        ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// A cluster on these 6 ports.
    async fn start_on(ports: &[u16]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for &port in ports {
            let node_dir = dir.path().join(port.to_string());
            std::fs::create_dir_all(&node_dir).expect("node dir");
            let mut args = base_args(port, &node_dir);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    // A dead master is noticed, and its replica promoted, within seconds.
                    "--cluster-node-timeout",
                    "2000",
                    // A replica takes over however long it was apart from its master.
                    "--cluster-replica-validity-factor",
                    "0",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            nodes.push(Node::spawn(port, &args));
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run redis-cli ({e}): install it (scripts/test.sh does: apt-get install redis-server redis-tools)")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = TestCluster { nodes, _dir: dir };
        cluster.wait_healthy().await;
        cluster
    }

    /// Until every live node says the cluster is ok and there are 3 masters with their slots.
    async fn wait_healthy(&self) {
        eventually(Duration::from_secs(30), "the cluster is ok", || async {
            for node in self.nodes.iter().filter(|n| n.alive()) {
                let info = node.text(redis::cmd("CLUSTER").arg("INFO")).await;
                if !info.contains("cluster_state:ok") {
                    return false;
                }
            }
            self.masters().await.len() == 3
        })
        .await;
    }

    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The port of each master, by the first slot it serves, as a live node sees it.
    async fn masters(&self) -> Vec<(i64, u16)> {
        let Some(node) = self.nodes.iter().find(|n| n.alive()) else {
            return Vec::new();
        };
        let Ok(value) = node.query(redis::cmd("CLUSTER").arg("SLOTS")).await else {
            return Vec::new();
        };
        let ranges: Vec<Vec<redis::Value>> = redis::from_redis_value(value).unwrap_or_default();
        let mut masters: Vec<(i64, u16)> = ranges
            .iter()
            .filter_map(|r| {
                let start: i64 = redis::from_redis_value(r.first()?.clone()).ok()?;
                let master: Vec<redis::Value> = redis::from_redis_value(r.get(2)?.clone()).ok()?;
                let port: u16 = redis::from_redis_value(master.get(1)?.clone()).ok()?;
                Some((start, port))
            })
            .collect();
        masters.sort();
        masters.dedup_by_key(|m| m.1);
        masters
    }

    async fn slot(&self, key: &str) -> i64 {
        let node = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        let value = node
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await
            .expect("CLUSTER KEYSLOT");
        redis::from_redis_value(value).expect("a slot")
    }

    /// The port of the master serving `key`'s slot.
    async fn master_of(&self, key: &str) -> u16 {
        let slot = self.slot(key).await;
        let node = self.nodes.iter().find(|n| n.alive()).expect("a live node");
        let value = node
            .query(redis::cmd("CLUSTER").arg("SLOTS"))
            .await
            .expect("CLUSTER SLOTS");
        let ranges: Vec<Vec<redis::Value>> = redis::from_redis_value(value).expect("slots");
        for r in ranges {
            let start: i64 = redis::from_redis_value(r[0].clone()).expect("start");
            let end: i64 = redis::from_redis_value(r[1].clone()).expect("end");
            if (start..=end).contains(&slot) {
                let master: Vec<redis::Value> =
                    redis::from_redis_value(r[2].clone()).expect("master");
                return redis::from_redis_value(master[1].clone()).expect("port");
            }
        }
        panic!("no master serves slot {slot}")
    }

    fn node(&mut self, port: u16) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.port == port)
            .expect("a node on that port")
    }
}

/// The Redis channel of a room's messages (the bridge's `tidings:` and the topic).
fn message_channel(room: &str) -> String {
    format!("tidings:room:{room}:messages")
}

/// Two instances on one database and the cluster, once both bridges are connected.
async fn pair_on(db: &TestDb, env: &[(&str, &str)]) -> (TestServer, TestServer) {
    let a = TestServer::start(db, env);
    let b = TestServer::start(db, env);
    for s in [&a, &b] {
        eventually(Duration::from_secs(15), "the bridge connects", || async {
            health(s).await["redis"] == "ok"
        })
        .await;
    }
    (a, b)
}

/// Reads `messageAdded` results for operation `id` until every body in `expected` came, or
/// `within` passes; returns the bodies seen, in order, duplicates included.
async fn collect_bodies(
    ws: &mut GqlSocket,
    id: &str,
    expected: &BTreeSet<String>,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(frame) = ws.read_frame(left).await else {
            break;
        };
        if frame["id"] != id {
            continue;
        }
        assert_eq!(frame["type"], "next", "{frame}");
        if let Some(body) = frame["payload"]["data"]["messageAdded"]["body"].as_str() {
            seen.push(body.to_owned());
        }
        if expected.iter().all(|b| seen.contains(b)) {
            break;
        }
    }
    seen
}

fn assert_all_once_in_order(seen: &[String], sent: &[String]) {
    let missing: Vec<&String> = sent.iter().filter(|b| !seen.contains(b)).collect();
    assert!(
        missing.is_empty(),
        "lost {} messages: {missing:?}",
        missing.len()
    );
    let unique: BTreeSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "duplicates: {seen:?}");
    let order: Vec<&String> = seen.iter().filter(|b| sent.contains(b)).collect();
    let expected: Vec<&String> = sent.iter().collect();
    assert_eq!(order, expected, "in order");
}

#[tokio::test]
async fn events_cross_instances_over_every_shard() {
    let cluster = TestCluster::start().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let seeds = cluster.seeds();
    let (a, b) = pair_on(&db, &[("TIDINGS_REDIS_CLUSTER", seeds.as_str())]).await;
    // One room whose channel lives on each master.
    let masters = cluster.masters().await;
    assert_eq!(masters.len(), 3, "{masters:?}");
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let room = format!("shard-{i}");
        let owner = cluster.master_of(&message_channel(&room)).await;
        if !rooms.iter().any(|(_, o)| *o == owner) {
            rooms.push((room, owner));
        }
        if rooms.len() == 3 {
            break;
        }
        assert!(i < 1000, "no room name found for every shard");
    }
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    let mut ws = GqlSocket::user(&a, &alice).await;
    for (room, _) in &rooms {
        join(&a, &alice, room).await;
        join(&b, &bob, room).await;
        ws.subscribe(room, MESSAGES, json!({ "r": room })).await;
    }
    // Each channel is a sharded subscription on its own master, and on no other.
    for (room, owner) in &rooms {
        let channel = message_channel(room);
        eventually(
            Duration::from_secs(10),
            "subscribed on its shard",
            || async {
                let mut followed_on = Vec::new();
                for (_, port) in &masters {
                    let node = cluster
                        .nodes
                        .iter()
                        .find(|n| n.port == *port)
                        .expect("master");
                    let listed = node
                        .query(redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg(&channel))
                        .await
                        .ok()
                        .and_then(|v| redis::from_redis_value::<Vec<String>>(v).ok())
                        .unwrap_or_default();
                    if !listed.is_empty() {
                        followed_on.push(*port);
                    }
                }
                followed_on == vec![*owner]
            },
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (room, _) in &rooms {
        let body = format!("hello {room} from b");
        send(&b, &bob, room, &body).await;
        let got = ws.data(room).await;
        assert_eq!(got["messageAdded"]["body"], body.as_str());
    }
    // Nothing travels over classic pub/sub, which a cluster broadcasts to every node.
    for (_, port) in &masters {
        let node = cluster
            .nodes
            .iter()
            .find(|n| n.port == *port)
            .expect("master");
        let classic = node
            .query(redis::cmd("PUBSUB").arg("CHANNELS").arg("tidings:*"))
            .await
            .ok()
            .and_then(|v| redis::from_redis_value::<Vec<String>>(v).ok())
            .unwrap_or_default();
        assert!(
            classic.is_empty(),
            "classic channels on {port}: {classic:?}"
        );
    }
}

#[tokio::test]
async fn a_master_failover_loses_no_message() {
    let mut cluster = TestCluster::start().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let seeds = cluster.seeds();
    let (a, b) = pair_on(
        &db,
        &[
            ("TIDINGS_REDIS_CLUSTER", seeds.as_str()),
            ("TIDINGS_RATE_LIMITS", "off"),
        ],
    )
    .await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    let room = "failover";
    join(&a, &alice, room).await;
    join(&b, &bob, room).await;
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe("m", MESSAGES, json!({ "r": room })).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&b, &bob, room, "before").await;
    assert_eq!(ws.data("m").await["messageAdded"]["body"], "before");

    let owner = cluster.master_of(&message_channel(room)).await;
    cluster.node(owner).kill();
    // Sent while the shard has no master: their publishes fail or wait, and nothing is sent
    // after them, so only the resync after the failover can bring them.
    let sent: Vec<String> = (0..20).map(|i| format!("during {i}")).collect();
    for body in &sent {
        send(&b, &bob, room, body).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: BTreeSet<String> = sent.iter().cloned().collect();
    let seen = collect_bodies(&mut ws, "m", &expected, Duration::from_secs(30)).await;
    assert_all_once_in_order(&seen, &sent);
    // The instances may have resynced before every node heard of the promotion: a node
    // that has not yet answers CLUSTER SLOTS with the dead master, so this waits for it.
    eventually(
        Duration::from_secs(30),
        "a replica took over the shard",
        || async { cluster.master_of(&message_channel(room)).await != owner },
    )
    .await;

    // Live delivery resumed on the new master, and both instances say Redis is up.
    cluster.wait_healthy().await;
    for s in [&a, &b] {
        eventually(
            Duration::from_secs(15),
            "the bridge is up again",
            || async { health(s).await["redis"] == "ok" },
        )
        .await;
    }
    send(&b, &bob, room, "after").await;
    assert_eq!(ws.data("m").await["messageAdded"]["body"], "after");
    let resyncs = sample(&metrics(&a).await, "tidings_redis_resyncs_total").unwrap_or(0.0);
    assert!(
        resyncs >= 2.0,
        "the first subscription and the failover: {resyncs}"
    );
}

#[tokio::test]
async fn instances_started_before_their_cluster_use_it_once_it_runs() {
    let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
    let seeds = TestCluster::seeds_on(&ports);
    let db = TestDb::new(&Backend::Sqlite).await;
    let env = [
        ("TIDINGS_REDIS_CLUSTER", seeds.as_str()),
        ("TIDINGS_RATE_MESSAGES", "1/1h"),
        ("TIDINGS_BURST_MESSAGES", "2"),
    ];
    let a = TestServer::start(&db, &env);
    let b = TestServer::start(&db, &env);
    assert_eq!(health(&a).await["redis"], "down", "no cluster yet");
    let _cluster = TestCluster::start_on(&ports).await;
    for s in [&a, &b] {
        eventually(Duration::from_secs(20), "the bridge connects", || async {
            health(s).await["redis"] == "ok"
        })
        .await;
    }
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "late").await;
    join(&b, &bob, "late").await;
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe("m", MESSAGES, json!({ "r": "late" })).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&b, &bob, "late", "over the late cluster").await;
    assert_eq!(
        ws.data("m").await["messageAdded"]["body"],
        "over the late cluster"
    );
    // The commands' connection found the cluster too: one bucket for both instances.
    send(&a, &bob, "late", "second").await;
    let refused = a
        .err_code(
            Some(&bob),
            "mutation { sendMessage(roomId: \"late\", body: \"third\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(refused, "RATE_LIMITED");
}

#[tokio::test]
async fn rate_limits_and_presence_are_shared_on_the_cluster() {
    let cluster = TestCluster::start().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let seeds = cluster.seeds();
    let (a, b) = pair_on(
        &db,
        &[
            ("TIDINGS_REDIS_CLUSTER", seeds.as_str()),
            ("TIDINGS_RATE_MESSAGES", "1/1h"),
            ("TIDINGS_BURST_MESSAGES", "3"),
            ("TIDINGS_MAX_CONNECTIONS_PER_USER", "2"),
            ("TIDINGS_PRESENCE_TTL", "1s"),
        ],
    )
    .await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "lobby").await;
    join(&b, &bob, "lobby").await;

    // One bucket for both instances: a burst of 3 (joins post no user message).
    send(&a, &alice, "lobby", "one").await;
    send(&b, &alice, "lobby", "two").await;
    send(&a, &alice, "lobby", "three").await;
    let refused = b
        .err_code(
            Some(&alice),
            "mutation { sendMessage(roomId: \"lobby\", body: \"four\") { id } }",
            json!({}),
        )
        .await;
    assert_eq!(
        refused, "RATE_LIMITED",
        "the burst is shared by both instances"
    );
    // The bucket is a key of the cluster, under its hash tag.
    let client =
        redis::cluster::ClusterClient::new(cluster.nodes.iter().map(Node::url).collect::<Vec<_>>())
            .expect("cluster client");
    let mut conn = client
        .get_async_connection()
        .await
        .expect("cluster connection");
    let bucket: Option<String> = redis::cmd("GET")
        .arg("tidings:rate:{message:alice}")
        .query_async(&mut conn)
        .await
        .expect("GET the bucket");
    assert!(bucket.is_some(), "the bucket lives in the cluster");

    // Presence: counted across instances.
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe(
        "p",
        "subscription { presence(roomId: \"lobby\") { status connections user { username } } }",
        json!({}),
    )
    .await;
    assert_eq!(ws.data("p").await["presence"]["user"]["username"], "alice");
    let _bob_on_b = GqlSocket::user(&b, &bob).await;
    let p = ws.data("p").await;
    assert_eq!(
        (
            p["presence"]["user"]["username"].as_str(),
            p["presence"]["status"].as_str()
        ),
        (Some("bob"), Some("ONLINE")),
        "bob, on B, is seen on A"
    );
    let online = a
        .ok(
            Some(&alice),
            "{ onlineUsers { user { username } connections } }",
            json!({}),
        )
        .await;
    assert_eq!(
        online["onlineUsers"].as_array().map(Vec::len),
        Some(2),
        "{online}"
    );
    // The per-user connection limit counts both instances: alice has one on A, one on B, and
    // a third anywhere is refused.
    let _alice_on_b = GqlSocket::user(&b, &alice).await;
    let mut third = GqlSocket::open(&a, TRANSPORT_WS, "").await;
    third
        .send(json!({ "type": "connection_init", "payload": { "authToken": alice } }))
        .await;
    assert_eq!(
        third.closed().await.code,
        1008,
        "a third connection over two instances"
    );

    // An instance that dies stops counting within the TTL (alice's count changes on the way).
    let killed_at = Instant::now();
    b.stop();
    loop {
        let p = ws.data("p").await;
        if p["presence"]["user"]["username"] == "bob" {
            assert_eq!(p["presence"]["status"], "OFFLINE", "{p}");
            break;
        }
    }
    assert!(
        killed_at.elapsed() < Duration::from_secs(8),
        "offline within the TTL: {:?}",
        killed_at.elapsed()
    );
}

/// A master, its replica and three Sentinels watching them as `tidings`.
struct TestSentinels {
    master: Node,
    _replica: Node,
    sentinels: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl TestSentinels {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let master_port = free_port();
        let master = Node::spawn(master_port, &base_args(master_port, dir.path()));
        let replica_port = free_port();
        let replica_dir = dir.path().join("replica");
        std::fs::create_dir_all(&replica_dir).expect("replica dir");
        let mut args = base_args(replica_port, &replica_dir);
        args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            master_port.to_string(),
        ]);
        let replica = Node::spawn(replica_port, &args);
        eventually(Duration::from_secs(10), "the replica syncs", || async {
            replica
                .text(redis::cmd("INFO").arg("replication"))
                .await
                .contains("master_link_status:up")
        })
        .await;
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.path().join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor tidings 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds tidings 1000\n\
                     sentinel failover-timeout tidings 5000\n\
                     sentinel parallel-syncs tidings 1\n",
                    dir.path().display()
                ),
            )
            .expect("sentinel.conf");
            sentinels.push(Node::spawn(
                port,
                &[conf.display().to_string(), "--sentinel".into()],
            ));
        }
        let watching = TestSentinels {
            master,
            _replica: replica,
            sentinels,
            _dir: dir,
        };
        // Every Sentinel knows the replica and the other Sentinels before anything fails.
        eventually(
            Duration::from_secs(20),
            "the Sentinels see everyone",
            || async {
                for s in &watching.sentinels {
                    let Ok(v) = s
                        .query(redis::cmd("SENTINEL").arg("MASTER").arg("tidings"))
                        .await
                    else {
                        return false;
                    };
                    let fields: Vec<String> = redis::from_redis_value(v).unwrap_or_default();
                    let get = |name: &str| {
                        fields
                            .iter()
                            .position(|f| f == name)
                            .and_then(|i| fields.get(i + 1))
                            .cloned()
                            .unwrap_or_default()
                    };
                    if get("num-slaves") != "1" || get("num-other-sentinels") != "2" {
                        return false;
                    }
                }
                true
            },
        )
        .await;
        watching
    }

    fn urls(&self) -> String {
        self.sentinels
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The master's port, as the first live Sentinel says.
    async fn master_port(&self) -> Option<u16> {
        let v = self.sentinels[0]
            .query(
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg("tidings"),
            )
            .await
            .ok()?;
        let addr: Vec<String> = redis::from_redis_value(v).ok()?;
        addr.get(1)?.parse().ok()
    }
}

#[tokio::test]
async fn a_sentinel_failover_loses_no_message() {
    let mut redis = TestSentinels::start().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let sentinels = redis.urls();
    let (a, b) = pair_on(
        &db,
        &[
            ("TIDINGS_REDIS_SENTINELS", sentinels.as_str()),
            ("TIDINGS_REDIS_SENTINEL_MASTER", "tidings"),
            ("TIDINGS_RATE_LIMITS", "off"),
        ],
    )
    .await;
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");
    join(&a, &alice, "watched").await;
    join(&b, &bob, "watched").await;
    let mut ws = GqlSocket::user(&a, &alice).await;
    ws.subscribe("m", MESSAGES, json!({ "r": "watched" })).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&b, &bob, "watched", "before").await;
    assert_eq!(ws.data("m").await["messageAdded"]["body"], "before");

    let old = redis.master.port;
    redis.master.kill();
    let sent: Vec<String> = (0..20).map(|i| format!("during {i}")).collect();
    for body in &sent {
        send(&b, &bob, "watched", body).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected: BTreeSet<String> = sent.iter().cloned().collect();
    let seen = collect_bodies(&mut ws, "m", &expected, Duration::from_secs(40)).await;
    assert_all_once_in_order(&seen, &sent);
    let now = redis.master_port().await;
    assert!(
        now.is_some() && now != Some(old),
        "the Sentinels promoted the replica: {now:?}"
    );
    for s in [&a, &b] {
        eventually(
            Duration::from_secs(20),
            "the bridge is up again",
            || async { health(s).await["redis"] == "ok" },
        )
        .await;
    }
    send(&b, &bob, "watched", "after").await;
    assert_eq!(ws.data("m").await["messageAdded"]["body"], "after");
}

#[tokio::test]
async fn two_kinds_of_redis_at_once_stop_the_start() {
    let db = TestDb::new(&Backend::Sqlite).await;
    let cases: [&[(&str, &str)]; 3] = [
        &[
            ("TIDINGS_REDIS_URL", "redis://127.0.0.1:1"),
            ("TIDINGS_REDIS_CLUSTER", "redis://127.0.0.1:2"),
        ],
        &[
            ("TIDINGS_REDIS_CLUSTER", "redis://127.0.0.1:2"),
            ("TIDINGS_REDIS_SENTINELS", "redis://127.0.0.1:3"),
            ("TIDINGS_REDIS_SENTINEL_MASTER", "m"),
        ],
        &[("TIDINGS_REDIS_SENTINELS", "redis://127.0.0.1:3")],
    ];
    for env in cases {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env_remove("TIDINGS_REDIS_URL")
            .env("TIDINGS_BIND", "127.0.0.1:0")
            .env("TIDINGS_DATABASE_URL", &db.url)
            .env("TIDINGS_JWT_SECRET", SECRET);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::task::spawn_blocking(move || cmd.output()),
        )
        .await
        .expect("tidings exits")
        .expect("task")
        .expect("run tidings");
        assert!(!out.status.success(), "{env:?}: started");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let named = if env.len() == 1 {
            "TIDINGS_REDIS_SENTINEL_MASTER"
        } else {
            "TIDINGS_REDIS_CLUSTER"
        };
        assert!(
            stderr.contains(named),
            "{env:?}: the message names {named}: {stderr}"
        );
    }
}

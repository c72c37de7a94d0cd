//! The read receipts scenario: `--members` users in one room, each subscribed to `roomEvents`
//! over graphql-ws, each marking the room read up to its latest message once a second, while
//! one member posts a few messages a second (so every receipt moves). The server announces a
//! member's receipts at most once per second; the report says how many receipt events the room
//! got per second, how many deliveries that made, the markRead latency, and the server's CPU.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::load::{latency_of, open, token, ws_base, Latency};
use crate::proc_stats;

#[derive(Clone, Debug, Args)]
pub struct ReceiptsArgs {
    /// Base HTTP URL of the server (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Members of the room; each subscribes and marks read.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// The room.
    #[arg(long, default_value = "receipts")]
    pub room: String,
    /// Messages per second one member posts (each moves every receipt on).
    #[arg(long, default_value_t = 2.0)]
    pub messages_per_second: f64,
    /// Seconds of marking read.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// HS256 secret the server verifies tokens with.
    #[arg(
        long,
        env = "TIDINGS_JWT_SECRET",
        default_value = "tidings-bench-secret-0123456789abcdef"
    )]
    pub secret: String,
    /// The server's process id, for its CPU time.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// `markRead` requests in flight at most.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Write the JSON report here (else stdout).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct ReceiptsReport {
    pub members: usize,
    pub seconds: f64,
    pub mark_read_sent: u64,
    pub mark_read_failed: u64,
    pub mark_read_per_second: f64,
    pub mark_read_latency_ms: Latency,
    /// Distinct receipt events (positions) the room got, per second.
    pub receipt_events_per_second: f64,
    /// Receipt events handed to subscribers, per second (events × subscribers).
    pub receipt_deliveries_per_second: f64,
    /// Every room event handed to subscribers, per second.
    pub deliveries_per_second: f64,
    /// The server's CPU over the run, in cores (1.0: one core busy).
    pub server_cpu_cores: Option<f64>,
}

const EVENTS: &str = "subscription($r: ID!) { roomEvents(roomId: $r) { __typename position } }";

async fn graphql(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    query: &str,
    vars: Value,
) -> anyhow::Result<Value> {
    let body: Value = client
        .post(format!("{url}/graphql"))
        .bearer_auth(token)
        .json(&json!({ "query": query, "variables": vars }))
        .send()
        .await?
        .json()
        .await?;
    if let Some(errors) = body.get("errors") {
        anyhow::bail!("{errors}");
    }
    Ok(body["data"].clone())
}

struct Tally {
    receipts: AtomicU64,
    all: AtomicU64,
    /// Highest receipt position seen by any subscriber, and how many distinct ones.
    receipt_positions: std::sync::Mutex<std::collections::BTreeSet<i64>>,
}

async fn subscriber(
    url: String,
    token: String,
    room: String,
    tally: Arc<Tally>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let mut ws = open(
        &format!("{}/graphql", ws_base(&url)),
        Some("graphql-transport-ws"),
    )
    .await?;
    ws.send(Message::text(
        json!({ "type": "connection_init", "payload": { "authToken": token } }).to_string(),
    ))
    .await?;
    ws.next().await.context("no connection_ack")??;
    ws.send(Message::text(
        json!({ "id": "r", "type": "subscribe", "payload": { "query": EVENTS, "variables": { "r": room } } }).to_string(),
    ))
    .await?;
    let _ = ready.send(()).await;
    while let Some(frame) = ws.next().await {
        let Message::Text(text) = frame? else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else {
            continue;
        };
        let event = &v["payload"]["data"]["roomEvents"];
        if event.is_null() {
            continue;
        }
        tally.all.fetch_add(1, Ordering::Relaxed);
        if event["__typename"] == "ReadReceiptMoved" {
            tally.receipts.fetch_add(1, Ordering::Relaxed);
            if let Some(p) = event["position"].as_str().and_then(|p| p.parse().ok()) {
                if let Ok(mut set) = tally.receipt_positions.lock() {
                    set.insert(p);
                }
            }
        }
    }
    Ok(())
}

pub async fn run(args: ReceiptsArgs) -> anyhow::Result<ReceiptsReport> {
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..args.members)
        .map(|i| token(&args.secret, &format!("r{i}"), "user"))
        .collect();
    // Join, a few at a time.
    futures_util::stream::iter(tokens.iter())
        .map(|t| {
            graphql(
                &client,
                &args.url,
                t,
                "mutation($r: ID!) { joinRoom(roomId: $r) { id } }",
                json!({ "r": args.room }),
            )
        })
        .buffer_unordered(args.concurrency)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let tally = Arc::new(Tally {
        receipts: AtomicU64::new(0),
        all: AtomicU64::new(0),
        receipt_positions: Default::default(),
    });
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.members.max(1));
    let mut subs = Vec::new();
    for t in &tokens {
        subs.push(tokio::spawn(subscriber(
            args.url.clone(),
            t.clone(),
            args.room.clone(),
            tally.clone(),
            ready_tx.clone(),
        )));
    }
    drop(ready_tx);
    for _ in 0..args.members {
        if ready_rx.recv().await.is_none() {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let latest = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The poster: a few messages a second, whose id every member then marks read.
    let poster = {
        let (client, url, token, room, latest, stop) = (
            client.clone(),
            args.url.clone(),
            tokens[0].clone(),
            args.room.clone(),
            latest.clone(),
            stop.clone(),
        );
        let every = Duration::from_secs_f64(1.0 / args.messages_per_second.max(0.1));
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = graphql(
                    &client,
                    &url,
                    &token,
                    "mutation($r: ID!, $b: String!) { sendMessage(roomId: $r, body: $b) { id } }",
                    json!({ "r": room, "b": format!("m{n}") }),
                )
                .await;
                if let Ok(data) = sent {
                    if let Some(id) = data["sendMessage"]["id"]
                        .as_str()
                        .and_then(|i| i.parse().ok())
                    {
                        latest.store(id, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    while latest.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_before = args.server_pid.and_then(proc_stats::cpu_seconds);
    let (all_before, receipts_before) = (
        tally.all.load(Ordering::Relaxed),
        tally.receipts.load(Ordering::Relaxed),
    );
    let positions_before = tally.receipt_positions.lock().map(|s| s.len()).unwrap_or(0);
    let started = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let slots = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut markers = Vec::new();
    // Member i marks read at offset i/members of every second.
    for (i, t) in tokens.iter().enumerate() {
        let (client, url, token, room) = (
            client.clone(),
            args.url.clone(),
            t.clone(),
            args.room.clone(),
        );
        let (latest, sent, failed, latencies, slots) = (
            latest.clone(),
            sent.clone(),
            failed.clone(),
            latencies.clone(),
            slots.clone(),
        );
        let offset = Duration::from_secs_f64(i as f64 / args.members as f64);
        let duration = Duration::from_secs_f64(args.duration);
        markers.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now() + offset;
            let mut tick = tokio::time::interval_at(start, Duration::from_secs(1));
            loop {
                let at = tick.tick().await;
                if at.duration_since(start) >= duration {
                    return;
                }
                let Ok(_slot) = slots.acquire().await else {
                    return;
                };
                let id = latest.load(Ordering::Relaxed).to_string();
                let t0 = Instant::now();
                let r = graphql(
                    &client,
                    &url,
                    &token,
                    "mutation($r: ID!, $m: ID!) { markRead(roomId: $r, messageId: $m) { id } }",
                    json!({ "r": room, "m": id }),
                )
                .await;
                sent.fetch_add(1, Ordering::Relaxed);
                match r {
                    Ok(_) => {
                        if let Ok(mut h) = latencies.lock() {
                            let _ = h.record(t0.elapsed().as_micros() as u64);
                        }
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for m in markers {
        let _ = m.await;
    }
    // Receipts deferred to the end of their second still arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = args.server_pid.and_then(proc_stats::cpu_seconds);
    stop.store(true, Ordering::Relaxed);
    let _ = poster.await;
    for s in subs {
        s.abort();
    }
    let receipts = tally.receipts.load(Ordering::Relaxed) - receipts_before;
    let all = tally.all.load(Ordering::Relaxed) - all_before;
    let positions = tally.receipt_positions.lock().map(|s| s.len()).unwrap_or(0) - positions_before;
    let sent = sent.load(Ordering::Relaxed);
    let latency = latencies.lock().map(|h| latency_of(&h)).unwrap_or_default();
    let report = ReceiptsReport {
        members: args.members,
        seconds,
        mark_read_sent: sent,
        mark_read_failed: failed.load(Ordering::Relaxed),
        mark_read_per_second: sent as f64 / seconds,
        mark_read_latency_ms: latency,
        receipt_events_per_second: positions as f64 / seconds,
        receipt_deliveries_per_second: receipts as f64 / seconds,
        deliveries_per_second: all as f64 / seconds,
        server_cpu_cores: cpu_before.zip(cpu_after).map(|(a, b)| (b - a) / seconds),
    };
    let text = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(report)
}

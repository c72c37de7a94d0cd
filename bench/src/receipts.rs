//! The read receipts scenario: `--members` users in one room, each subscribed to `roomEvents`
//! over graphql-ws, each marking the room read up to its latest message `--marks-per-second`
//! times a second (default once), while one member posts a few messages a second (so receipts
//! move). The server announces a member's receipts at most once per second, folding the ones in
//! between into the next; the report says how many receipt events the room got per second and
//! per member, how many receipts the server folded (`deferred`), how many deliveries that made,
//! the markRead latency, and the server's CPU.
//!
//! Like 1,000 separate clients, each member sends its `markRead` on its own schedule whether or
//! not the others (or its own previous one) have been answered: the load is offered open loop,
//! bounded in flight only by `--in-flight` (default: the members). The report gives the rate
//! offered and the rate answered separately, the failures, and how many receipt events did not
//! reach every subscriber.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
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
    /// `markRead` calls each member makes per second, evenly spaced.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub marks_per_second: u32,
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
    /// `joinRoom` requests in flight at most while the members join.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// `markRead` requests in flight at most (default: the members, so each member's
    /// `markRead` goes out on its own schedule whatever the others wait for).
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Write the JSON report here (else stdout).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct ReceiptsReport {
    pub members: usize,
    /// `markRead` calls each member makes per second.
    pub marks_per_second: u32,
    /// `markRead` requests in flight at most.
    pub in_flight: usize,
    /// The marking window: from the first scheduled `markRead` to the last answer.
    pub seconds: f64,
    /// `markRead` requests sent (each member `marks_per_second` times a second, on its own
    /// schedule).
    pub mark_read_sent: u64,
    /// `markRead` requests answered without an error.
    pub mark_read_answered: u64,
    /// `markRead` requests that failed (an error, or no answer).
    pub mark_read_failed: u64,
    /// `markRead` requests sent per second of the schedule (`--duration`).
    pub mark_read_offered_per_second: f64,
    /// `markRead` requests answered without an error per second of the marking window.
    pub mark_read_answered_per_second: f64,
    /// From when each `markRead` was due to its answer (a request that waits for a slot
    /// counts its wait).
    pub mark_read_latency_ms: Latency,
    /// Distinct receipt events (positions) the room got.
    pub receipt_events: u64,
    /// Receipt events that did not reach every subscriber (1.5 s after the last answer).
    pub receipt_events_incomplete: u64,
    /// Distinct receipt events (positions) the room got, per second.
    pub receipt_events_per_second: f64,
    /// Receipt events per member per second, over the marking and the one interval after it
    /// in which the receipts its last second folded are announced: at most 1 when the server
    /// announces each member's receipts at most once a second, whatever `marks_per_second`.
    pub receipt_events_per_member_per_second: f64,
    /// Receipts the server stored without announcing them at once, folded into the member's
    /// next announcement (`tidings_read_receipts_total{outcome="deferred"}` over the run;
    /// `None` when the server's `/metrics` cannot be read).
    pub deferred: Option<u64>,
    /// Receipt events handed to subscribers, per second (events × subscribers).
    pub receipt_deliveries_per_second: f64,
    /// Every room event handed to subscribers, per second.
    pub deliveries_per_second: f64,
    /// The server's CPU over the run, in cores (1.0: one core busy).
    pub server_cpu_cores: Option<f64>,
}

const EVENTS: &str = "subscription($r: ID!) { roomEvents(roomId: $r) { __typename position } }";

/// The receipts the server folded so far: `tidings_read_receipts_total{outcome="deferred"}`
/// from its `/metrics`.
async fn deferred_receipts(client: &reqwest::Client, url: &str) -> Option<u64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .error_for_status()
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines().find_map(|line| {
        let value = line.strip_prefix("tidings_read_receipts_total{outcome=\"deferred\"} ")?;
        value.trim().parse::<f64>().ok().map(|v| v as u64)
    })
}

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

/// The part of a graphql-ws `next` frame the tally reads (parsed without building a `Value`:
/// a million frames a second go through here).
#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow)]
    payload: Option<FramePayload<'a>>,
}

#[derive(Deserialize)]
struct FramePayload<'a> {
    #[serde(borrow)]
    data: Option<FrameData<'a>>,
}

#[derive(Deserialize)]
struct FrameData<'a> {
    #[serde(borrow, rename = "roomEvents")]
    room_events: Option<FrameEvent<'a>>,
}

#[derive(Deserialize)]
struct FrameEvent<'a> {
    #[serde(borrow, rename = "__typename")]
    typename: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    position: std::borrow::Cow<'a, str>,
}

struct Tally {
    receipts: AtomicU64,
    all: AtomicU64,
    /// How many subscribers saw each receipt position, indexed by position (a fresh room's
    /// positions stay far below `POSITIONS`; those beyond are counted in `beyond`).
    receipt_positions: Vec<AtomicU32>,
    beyond: AtomicU64,
}

/// Receipt positions tallied per position.
const POSITIONS: usize = 1 << 20;

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
        let Ok(frame) = serde_json::from_str::<Frame<'_>>(text.as_str()) else {
            continue;
        };
        let Some(event) = frame
            .payload
            .and_then(|p| p.data)
            .and_then(|d| d.room_events)
        else {
            continue;
        };
        tally.all.fetch_add(1, Ordering::Relaxed);
        if event.typename == "ReadReceiptMoved" {
            tally.receipts.fetch_add(1, Ordering::Relaxed);
            if let Ok(p) = event.position.parse::<i64>() {
                match usize::try_from(p)
                    .ok()
                    .and_then(|p| tally.receipt_positions.get(p))
                {
                    Some(seen) => {
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        tally.beyond.fetch_add(1, Ordering::Relaxed);
                    }
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
        receipt_positions: (0..POSITIONS).map(|_| AtomicU32::new(0)).collect(),
        beyond: AtomicU64::new(0),
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
    let deferred_before = deferred_receipts(&client, &args.url).await;
    let (all_before, receipts_before) = (
        tally.all.load(Ordering::Relaxed),
        tally.receipts.load(Ordering::Relaxed),
    );
    let positions_before: Vec<bool> = tally
        .receipt_positions
        .iter()
        .map(|n| n.load(Ordering::Relaxed) > 0)
        .collect();
    let in_flight = args.in_flight.unwrap_or(args.members).max(1);
    let calls = Arc::new(Calls {
        sent: AtomicU64::new(0),
        answered: AtomicU64::new(0),
        last_answer_us: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        latencies: std::sync::Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?),
        slots: tokio::sync::Semaphore::new(in_flight),
    });
    let duration = Duration::from_secs_f64(args.duration);
    let started = tokio::time::Instant::now();
    let mut markers = Vec::new();
    // Member i marks read at offset i/members of every period (a second over
    // `marks_per_second`), whether or not its previous `markRead` has been answered (open
    // loop): each one is a request of its own.
    let period = Duration::from_secs_f64(1.0 / f64::from(args.marks_per_second));
    let most = (args.duration * f64::from(args.marks_per_second) - 1e-6).ceil();
    for (i, t) in tokens.iter().enumerate() {
        let (client, url, token, room) = (
            client.clone(),
            args.url.clone(),
            t.clone(),
            args.room.clone(),
        );
        let (latest, calls) = (latest.clone(), calls.clone());
        let offset = period.mul_f64(i as f64 / args.members as f64);
        markers.push(tokio::spawn(async move {
            let first = started + offset;
            let mut tick = tokio::time::interval_at(first, period);
            let mut requests = Vec::new();
            loop {
                let due = tick.tick().await;
                // Past the window, or as many marks as it holds (a period of a third of a
                // second is rounded down to the nanosecond: without the count, nine of them
                // end before three seconds and a tenth would go out).
                if due.duration_since(started) >= duration || requests.len() as f64 >= most {
                    break;
                }
                let (client, url, token, room) =
                    (client.clone(), url.clone(), token.clone(), room.clone());
                let (latest, calls) = (latest.clone(), calls.clone());
                requests.push(tokio::spawn(async move {
                    let Ok(_slot) = calls.slots.acquire().await else {
                        return;
                    };
                    let id = latest.load(Ordering::Relaxed).to_string();
                    calls.sent.fetch_add(1, Ordering::Relaxed);
                    let r = graphql(
                        &client,
                        &url,
                        &token,
                        "mutation($r: ID!, $m: ID!) { markRead(roomId: $r, messageId: $m) { id } }",
                        json!({ "r": room, "m": id }),
                    )
                    .await;
                    match r {
                        Ok(_) => {
                            calls.answered.fetch_add(1, Ordering::Relaxed);
                            calls
                                .last_answer_us
                                .fetch_max(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                            if let Ok(mut h) = calls.latencies.lock() {
                                let _ = h.record(due.elapsed().as_micros() as u64);
                            }
                        }
                        Err(_) => {
                            calls.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
            for r in requests {
                if r.await.is_err() {
                    calls.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for m in markers {
        let _ = m.await;
    }
    // Each member's loop ends at its first tick past the window (up to a period after it), so
    // the window is the marking's, stretched only by answers that came after it.
    let seconds =
        (calls.last_answer_us.load(Ordering::Relaxed) as f64 / 1e6).max(duration.as_secs_f64());
    let cpu_after = args.server_pid.and_then(proc_stats::cpu_seconds);
    let cpu_seconds = started.elapsed().as_secs_f64();
    let (all_window, receipts_window) = (
        tally.all.load(Ordering::Relaxed) - all_before,
        tally.receipts.load(Ordering::Relaxed) - receipts_before,
    );
    // Receipts deferred to the end of their second, and deliveries still on their way, arrive.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let _ = poster.await;
    let deferred_after = deferred_receipts(&client, &args.url).await;
    for s in subs {
        s.abort();
    }
    let (mut events, mut incomplete) = (0u64, 0u64);
    for (seen, before) in tally.receipt_positions.iter().zip(&positions_before) {
        let subscribers = seen.load(Ordering::Relaxed);
        if *before || subscribers == 0 {
            continue;
        }
        events += 1;
        if (subscribers as usize) < args.members {
            incomplete += 1;
        }
    }
    if tally.beyond.load(Ordering::Relaxed) > 0 {
        anyhow::bail!("receipt positions beyond {POSITIONS}: the room is not fresh");
    }
    let sent = calls.sent.load(Ordering::Relaxed);
    let answered = calls.answered.load(Ordering::Relaxed);
    let latency = calls
        .latencies
        .lock()
        .map(|h| latency_of(&h))
        .unwrap_or_default();
    // A member's receipts of the marking's last second are announced up to one interval
    // after it.
    let announcing = args.duration + 1.0;
    let report = ReceiptsReport {
        members: args.members,
        marks_per_second: args.marks_per_second,
        in_flight,
        seconds,
        mark_read_sent: sent,
        mark_read_answered: answered,
        mark_read_failed: calls.failed.load(Ordering::Relaxed),
        mark_read_offered_per_second: sent as f64 / args.duration,
        mark_read_answered_per_second: answered as f64 / seconds,
        mark_read_latency_ms: latency,
        receipt_events: events,
        receipt_events_incomplete: incomplete,
        receipt_events_per_second: events as f64 / seconds,
        receipt_events_per_member_per_second: events as f64
            / args.members.max(1) as f64
            / announcing,
        deferred: deferred_before
            .zip(deferred_after)
            .map(|(a, b)| b.saturating_sub(a)),
        receipt_deliveries_per_second: receipts_window as f64 / seconds,
        deliveries_per_second: all_window as f64 / seconds,
        server_cpu_cores: cpu_before
            .zip(cpu_after)
            .map(|(a, b)| (b - a) / cpu_seconds),
    };
    let text = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(path) => std::fs::write(path, text + "\n")?,
        None => println!("{text}"),
    }
    Ok(report)
}

/// The `markRead` calls' counts and latencies, shared by every member's loop and call.
struct Calls {
    sent: AtomicU64,
    answered: AtomicU64,
    /// When the last answer came, in µs from the start: the rate's window ends there (or at
    /// the end of the marking, if every call was answered before it).
    last_answer_us: AtomicU64,
    failed: AtomicU64,
    latencies: std::sync::Mutex<Histogram<u64>>,
    /// Calls in flight at most.
    slots: tokio::sync::Semaphore,
}

//! `tidings-bench abuse`: the attacks of the budgets' threat model, one after another, against
//! a server run with its default budgets. For each attack it reports the server's peak RSS
//! growth over the attack (sampled every 50 ms from /proc) and the latency an honest client
//! sees meanwhile: a signed-in graphql-ws subscriber of `public:honest`, to which an admin
//! publishes every 20 ms over `POST /api/publish`. What the server answered the attacker is
//! counted too (accepted, refused by a budget, failed).
//!
//! Every attack is bounded in count and time and talks to loopback only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{latency_of, open, token, ws_base, Latency};
use crate::proc_stats::rss_kib;

#[derive(clap::Args, Clone, Debug)]
pub struct AbuseArgs {
    /// The server, e.g. http://127.0.0.1:8000 (loopback only).
    #[arg(long)]
    pub url: String,
    /// The server's process id, for its memory.
    #[arg(long)]
    pub server_pid: u32,
    /// The server's JWT secret (for the honest client's and the admin's tokens).
    #[arg(long, env = "TIDINGS_JWT_SECRET")]
    pub secret: String,
    /// The attacks to run, in order.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "flood3,flood300,batch,sockets,guess"
    )]
    pub attacks: Vec<String>,
    /// Longest any one attack may run.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Where to write the JSON report (one entry per attack).
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// One attack's outcome.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AttackReport {
    pub attack: String,
    pub seconds: f64,
    /// Requests or frames the server accepted.
    pub accepted: u64,
    /// Answered with a budget's refusal (RATE_LIMITED, 429, 503, a 400 for a batch over the cap).
    pub refused: u64,
    /// Failed otherwise (connection errors, other codes).
    pub failed: u64,
    pub server_rss_before_kib: u64,
    pub server_rss_peak_kib: u64,
    pub server_rss_growth_kib: u64,
    pub honest_received: u64,
    pub honest_latency: Latency,
}

#[derive(Default)]
struct Tally {
    accepted: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

fn ws_url(url: &str, path: &str) -> String {
    format!("{}{path}", ws_base(url))
}

/// The honest client: subscribes, then records the latency of every tick until `stop`.
async fn honest(args: &AbuseArgs, stop: Arc<AtomicBool>) -> anyhow::Result<Histogram<u64>> {
    let user = token(&args.secret, "honest", "user");
    let admin = token(&args.secret, "abuse-admin", "admin");
    let mut ws = open(&ws_url(&args.url, "/graphql"), Some("graphql-transport-ws")).await?;
    ws.send(Message::Text(
        json!({ "type": "connection_init", "payload": { "authToken": user } })
            .to_string()
            .into(),
    ))
    .await?;
    ws.send(Message::Text(
        json!({ "id": "h", "type": "subscribe", "payload": {
            "query": "subscription { events(channels: [\"public:honest\"]) { data } }" } })
        .to_string()
        .into(),
    ))
    .await?;
    let started = Instant::now();
    let client = reqwest::Client::new();
    let publish_url = format!("{}/api/publish", args.url.trim_end_matches('/'));
    let publisher_stop = stop.clone();
    let publisher = tokio::spawn(async move {
        while !publisher_stop.load(Ordering::Relaxed) {
            let sent = started.elapsed().as_micros() as u64;
            let _ = client
                .post(&publish_url)
                .bearer_auth(&admin)
                .json(
                    &json!({ "channel": "public:honest", "type": "tick", "data": { "us": sent } }),
                )
                .timeout(Duration::from_secs(5))
                .send()
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    while !stop.load(Ordering::Relaxed) {
        let frame = match tokio::time::timeout(Duration::from_millis(200), ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t,
            Ok(Some(Ok(_))) | Err(_) => continue,
            Ok(Some(Err(_))) | Ok(None) => break,
        };
        let Ok(v) = serde_json::from_str::<Value>(frame.as_str()) else {
            continue;
        };
        if let Some(us) = v["payload"]["data"]["events"]["data"]["us"].as_u64() {
            let now = started.elapsed().as_micros() as u64;
            let _ = latency.record(now.saturating_sub(us).max(1));
        }
    }
    publisher.abort();
    Ok(latency)
}

/// Anonymous `/ws/game` sockets, each subscribing to `frames` distinct public channels as fast
/// as it can while reading the answers.
async fn flood(args: &AbuseArgs, sockets: usize, frames: usize, tally: Arc<Tally>) {
    let tasks = (0..sockets).map(|s| {
        let url = ws_url(&args.url, "/ws/game");
        let tally = tally.clone();
        tokio::spawn(async move {
            let Ok(ws) = open(&url, None).await else {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let (mut tx, mut rx) = ws.split();
            let reader_tally = tally.clone();
            let reader = tokio::spawn(async move {
                while let Some(Ok(Message::Text(t))) = rx.next().await {
                    let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
                        continue;
                    };
                    match v["type"].as_str() {
                        Some("subscribed") => &reader_tally.accepted,
                        Some("error") if v["code"] == "RATE_LIMITED" => &reader_tally.refused,
                        Some("error") => &reader_tally.failed,
                        _ => continue,
                    }
                    .fetch_add(1, Ordering::Relaxed);
                }
            });
            for i in 0..frames {
                let frame = json!({ "type": "subscribe", "channel": format!("public:f{s}-{i}") });
                if tx
                    .send(Message::Text(frame.to_string().into()))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            // Let the answers drain, then leave.
            tokio::time::sleep(Duration::from_secs(2)).await;
            reader.abort();
        })
    });
    futures_util::future::join_all(tasks).await;
}

async fn graphql(
    client: &reqwest::Client,
    args: &AbuseArgs,
    token: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = client
        .post(format!("{}/graphql", args.url.trim_end_matches('/')))
        .json(&body)
        .timeout(Duration::from_secs(args.timeout));
    if let Some(t) = token {
        request = request.bearer_auth(t);
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

fn codes(value: &Value) -> Vec<String> {
    let items = match value {
        Value::Array(items) => items.clone(),
        other => vec![other.clone()],
    };
    items
        .iter()
        .flat_map(|r| r["errors"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e["extensions"]["code"].as_str().map(str::to_owned))
        .collect()
}

/// A user creates what rooms its budget allows, then sends one batch that lists every room's
/// members 29 times over, 20 times.
async fn heavy_batch(args: &AbuseArgs, tally: Arc<Tally>) {
    let client = reqwest::Client::new();
    let owner = token(&args.secret, "batcher", "user");
    for r in 0..200 {
        let (_, v) = graphql(
            &client,
            args,
            Some(&owner),
            json!({ "query": format!("mutation {{ createRoom(id: \"heavy-{r}\") {{ id }} }}") }),
        )
        .await;
        if !codes(&v).is_empty() {
            break;
        }
    }
    let fields: String = (1..=29)
        .map(|a| format!("a{a}: members {{ id }} "))
        .collect();
    let item = json!({ "query": format!("{{ rooms {{ {fields} }} }}") });
    let batch = Value::Array(vec![item; 20]);
    let (status, v) = graphql(&client, args, Some(&owner), batch).await;
    let refused = codes(&v)
        .iter()
        .any(|c| c == "TOO_COMPLEX" || c == "BAD_USER_INPUT" || c == "RATE_LIMITED");
    match status {
        200 if !refused => &tally.accepted,
        400 | 413 | 429 | 200 => &tally.refused,
        _ => &tally.failed,
    }
    .fetch_add(1, Ordering::Relaxed);
}

/// 2,000 anonymous sockets from this one address, held for a few seconds.
async fn many_sockets(args: &AbuseArgs, tally: Arc<Tally>) {
    let gate = Arc::new(tokio::sync::Semaphore::new(200));
    let held = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..2000).map(|_| {
        let (gate, held, tally) = (gate.clone(), held.clone(), tally.clone());
        let url = ws_url(&args.url, "/ws/game");
        tokio::spawn(async move {
            let Ok(_permit) = gate.acquire().await else {
                return;
            };
            let Ok(request) = url.as_str().into_client_request() else {
                return;
            };
            match tokio_tungstenite::connect_async(request).await {
                Ok((ws, _)) => {
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                    held.lock().unwrap_or_else(|p| p.into_inner()).push(ws);
                }
                Err(tokio_tungstenite::tungstenite::Error::Http(r))
                    if r.status() == 429 || r.status() == 503 =>
                {
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    });
    futures_util::future::join_all(tasks).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(held);
}

/// A thousand password guesses for one account in one unauthenticated batch, then a hundred
/// one by one.
async fn guessing(args: &AbuseArgs, tally: Arc<Tally>) {
    let client = reqwest::Client::new();
    let register = json!({ "query": "mutation { register(username: \"victim\", password: \"correct horse battery\") { token } }" });
    graphql(&client, args, None, register).await;
    let guess = |i: usize| json!({ "query": format!("mutation {{ login(username: \"victim\", password: \"guess-{i}\") {{ token }} }}") });
    let count = |v: &Value, tally: &Tally| {
        let items = match v {
            Value::Array(items) => items.clone(),
            other => vec![other.clone()],
        };
        for item in items {
            let code = codes(&item).into_iter().next();
            match code.as_deref() {
                Some("RATE_LIMITED") | Some("TOO_COMPLEX") => &tally.refused,
                Some("UNAUTHENTICATED") => &tally.accepted,
                _ => &tally.failed,
            }
            .fetch_add(1, Ordering::Relaxed);
        }
    };
    let (status, v) = graphql(
        &client,
        args,
        None,
        Value::Array((0..1000).map(guess).collect()),
    )
    .await;
    if status == 400 {
        tally.refused.fetch_add(1, Ordering::Relaxed);
    } else {
        count(&v, &tally);
    }
    for i in 0..100 {
        let (_, v) = graphql(&client, args, None, guess(1000 + i)).await;
        count(&v, &tally);
    }
}

async fn run_attack(args: &AbuseArgs, name: &str) -> anyhow::Result<AttackReport> {
    let pid = args.server_pid;
    let before = rss_kib(pid).context("the server's RSS")?;
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(rss) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let honest_task = {
        let (args, stop) = (args.clone(), stop.clone());
        tokio::spawn(async move { honest(&args, stop).await })
    };
    // The honest client is live before the attack starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let attack = async {
        match name {
            "flood3" => flood(args, 3, 25_000, tally.clone()).await,
            "flood300" => flood(args, 300, 250, tally.clone()).await,
            "batch" => heavy_batch(args, tally.clone()).await,
            "sockets" => many_sockets(args, tally.clone()).await,
            "guess" => guessing(args, tally.clone()).await,
            other => anyhow::bail!("unknown attack {other}"),
        }
        Ok(())
    };
    let outcome = tokio::time::timeout(Duration::from_secs(args.timeout), attack).await;
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let latency = honest_task.await??;
    sampler.abort();
    if let Ok(result) = outcome {
        result?;
    }
    let peak = peak.load(Ordering::Relaxed);
    Ok(AttackReport {
        attack: name.to_owned(),
        seconds,
        accepted: tally.accepted.load(Ordering::Relaxed),
        refused: tally.refused.load(Ordering::Relaxed),
        failed: tally.failed.load(Ordering::Relaxed),
        server_rss_before_kib: before,
        server_rss_peak_kib: peak,
        server_rss_growth_kib: peak.saturating_sub(before),
        honest_received: latency.len(),
        honest_latency: latency_of(&latency),
    })
}

pub async fn run(args: AbuseArgs) -> anyhow::Result<Vec<AttackReport>> {
    let host = args.url.split("://").nth(1).unwrap_or("");
    anyhow::ensure!(
        host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]"),
        "{}: the generator drives loopback servers only",
        args.url
    );
    let mut reports = Vec::new();
    for name in &args.attacks {
        let report = run_attack(&args, name).await?;
        println!(
            "abuse {}: {:.1}s, accepted {}, refused {}, failed {}; server RSS +{:.1} MiB (peak {:.1} MiB); honest client {} received, p99 {:.1} ms",
            report.attack,
            report.seconds,
            report.accepted,
            report.refused,
            report.failed,
            report.server_rss_growth_kib as f64 / 1024.0,
            report.server_rss_peak_kib as f64 / 1024.0,
            report.honest_received,
            report.honest_latency.p99_ms,
        );
        reports.push(report);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&reports)?)?;
    }
    Ok(reports)
}

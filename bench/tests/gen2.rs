//! Keeps the second generator working: a second of open-loop publishing to a few subscribers
//! over its own WebSocket client, against a Tidings server in this process (fresh SQLite, rate
//! limits off) and against the floor; every delivery arrives once. Then a few connects.

use std::net::SocketAddr;

mod common;

use clap::Parser;
use common::*;
use tidings_bench::gen2::{self, Gen2Args, Gen2Report, Mode};

const SECRET: &str = "tidings-bench-gen2-secret-0123456789";

#[derive(Parser)]
struct Gen2 {
    #[command(flatten)]
    args: Gen2Args,
}

fn args(addr: SocketAddr, extra: &[&str]) -> Gen2Args {
    let url = format!("http://{addr}");
    let mut argv = vec![
        "gen2",
        "--url",
        &url,
        "--secret",
        SECRET,
        "--subscribers",
        "6",
        "--rooms",
        "2",
        "--rate",
        "40",
        "--window",
        "100",
        "--duration",
        "1",
        "--drain",
        "10",
        "--timeout",
        "60",
        "--quiet",
    ];
    argv.extend_from_slice(extra);
    Gen2::parse_from(argv).args
}

/// Forty subscribers of `events`, connected and held, nothing published.
fn forty_idle(addr: SocketAddr, extra: &[&str]) -> Gen2Args {
    let mut a = args(addr, extra);
    a.subscribers = 40;
    a.sub = gen2::Subscription::Events;
    a
}

fn assert_every_delivery_once(report: &Gen2Report, what: &str) {
    assert_eq!(report.connected, report.subscribers, "{what}: {report:?}");
    assert!(report.published > 10, "{what}: {report:?}");
    assert_eq!(report.publish_errors, 0, "{what}: {report:?}");
    // Three subscribers per room: every message is expected three times.
    assert_eq!(
        report.expected_deliveries,
        report.published * 3,
        "{what}: {report:?}"
    );
    assert!(report.deliveries > 0, "{what}: {report:?}");
    assert_eq!(
        report.deliveries, report.expected_deliveries,
        "{what}: {report:?}"
    );
    assert_eq!(report.lost, 0, "{what}: {report:?}");
    assert_eq!(report.duplicated, 0, "{what}: {report:?}");
    assert_eq!(report.subscriber_errors, 0, "{what}: {report:?}");
    assert!(report.drained, "{what}: {report:?}");
    assert!(report.latency.p99_ms > 0.0, "{what}: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen2_against_tidings_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let addr = start_tidings(&dir, SECRET).await;
    let pid = std::process::id().to_string();

    let push = gen2::run(
        Mode::Push,
        args(addr, &["--server-pid", &pid, "--room-prefix", "g"]),
    )
    .await
    .expect("push on messageAdded");
    assert_every_delivery_once(&push, "messageAdded, sendMessage");
    assert!(push.server_rss_after_kib > 0);

    let mut events = args(addr, &["--room-prefix", "e", "--skip-join"]);
    events.sub = gen2::Subscription::Events;
    events.publish = gen2::Publishing::Api;
    let events = gen2::run(Mode::Push, events).await.expect("push on events");
    assert_every_delivery_once(&events, "events, /api/publish");

    let connects = gen2::run(Mode::Connects, forty_idle(addr, &["--room-prefix", "c"]))
        .await
        .expect("connects");
    assert_eq!(connects.connected, 40, "{connects:?}");
    assert_eq!(connects.subscriber_errors, 0, "{connects:?}");
    assert!(connects.connects_per_second > 0.0, "{connects:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gen2_against_the_floor_loses_nothing() {
    let addr = start_floor().await;
    let push = gen2::run(Mode::Push, args(addr, &["--skip-join"]))
        .await
        .expect("push");
    assert_every_delivery_once(&push, "floor");

    let connects = gen2::run(Mode::Connects, forty_idle(addr, &[]))
        .await
        .expect("connects");
    assert_eq!(connects.connected, 40, "{connects:?}");
    assert_eq!(connects.subscriber_errors, 0, "{connects:?}");
}

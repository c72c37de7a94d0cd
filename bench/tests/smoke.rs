//! Keeps the load generator working: a Tidings server in this process (fresh SQLite, rate
//! limits off), a second of publishing to a few subscribers on each protocol, and not one
//! delivery lost or duplicated. Also the floor, which the benchmarks compare against.

use std::net::SocketAddr;

mod common;

use clap::Parser;
use common::*;
use tidings_bench::load::{self, LoadArgs, Proto, Publish, Sub};

const SECRET: &str = "tidings-bench-smoke-secret-0123456789";

#[derive(Parser)]
struct Load {
    #[command(flatten)]
    args: LoadArgs,
}

fn args(addr: SocketAddr, extra: &[&str]) -> LoadArgs {
    let url = format!("http://{addr}");
    let mut argv = vec![
        "load",
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
        "--duration",
        "1",
        "--drain",
        "10",
        "--timeout",
        "60",
        "--quiet",
    ];
    argv.extend_from_slice(extra);
    Load::parse_from(argv).args
}

fn assert_clean(report: &load::Report, what: &str) {
    assert_eq!(report.connected, report.subscribers, "{what}: {report:?}");
    assert!(report.published > 10, "{what}: {report:?}");
    assert_eq!(report.publish_errors, 0, "{what}: {report:?}");
    assert_eq!(
        report.expected_deliveries,
        report.published * 3,
        "{what}: {report:?}"
    );
    assert_eq!(report.lost, 0, "{what}: {report:?}");
    assert_eq!(report.duplicated, 0, "{what}: {report:?}");
    assert!(report.latency.p99_ms > 0.0, "{what}: {report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_against_tidings_loses_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let addr = start_tidings(&dir, SECRET).await;
    let pid = std::process::id().to_string();

    let gql = load::run(args(addr, &["--server-pid", &pid, "--room-prefix", "g"]))
        .await
        .expect("graphql-ws run");
    assert_clean(&gql, "graphql-ws");
    assert!(gql.server_rss_after_kib > 0);

    let mut legacy = args(addr, &["--room-prefix", "l", "--publish", "ws"]);
    legacy.proto = Proto::Legacy;
    let legacy = load::run(legacy).await.expect("legacy run");
    assert_clean(&legacy, "legacy /ws");

    let mut events = args(addr, &["--room-prefix", "e", "--skip-join"]);
    events.sub = Sub::Events;
    events.publish = Publish::Api;
    let events = load::run(events).await.expect("events run");
    assert_clean(&events, "events");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generator_against_the_floor_loses_nothing() {
    let bind = start_floor().await;
    let report = load::run(args(bind, &["--skip-join"]))
        .await
        .expect("floor run");
    assert_clean(&report, "floor");
}

#[derive(Parser)]
struct Receipts {
    #[command(flatten)]
    args: tidings_bench::receipts::ReceiptsArgs,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_generator_offers_every_call_and_counts_every_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = start_tidings(&dir, SECRET).await;
    let url = format!("http://{addr}");
    let args = Receipts::parse_from([
        "receipts",
        "--url",
        &url,
        "--secret",
        SECRET,
        "--members",
        "20",
        "--duration",
        "3",
    ])
    .args;
    let report = tidings_bench::receipts::run(args)
        .await
        .expect("receipts run");
    assert_eq!(report.in_flight, 20, "in flight: the members");
    assert_eq!(report.mark_read_sent, 60, "each member once a second");
    assert_eq!(report.mark_read_failed, 0);
    assert_eq!(report.mark_read_answered, 60);
    assert!(report.receipt_events > 0, "{report:?}");
    assert_eq!(report.receipt_events_incomplete, 0, "{report:?}");
    assert_eq!(report.marks_per_second, 1);
    assert!(report.deferred.is_some(), "{report:?}");
    assert!(
        report.receipt_events_per_member_per_second <= 1.0,
        "{report:?}"
    );

    // Three marks a second each: all offered and answered, folded by the server so that the
    // room still hears each member at most once a second. (After the first run, in the same
    // test: the server's counters are this process's, shared by every server it starts.)
    let args = Receipts::parse_from([
        "receipts",
        "--url",
        &url,
        "--secret",
        SECRET,
        "--members",
        "20",
        "--duration",
        "3",
        "--marks-per-second",
        "3",
        "--room",
        "receipts3",
    ])
    .args;
    let report = tidings_bench::receipts::run(args)
        .await
        .expect("receipts run, three marks a second");
    assert_eq!(report.marks_per_second, 3);
    assert_eq!(
        report.mark_read_sent, 180,
        "each member three times a second"
    );
    assert_eq!(report.mark_read_failed, 0, "{report:?}");
    assert_eq!(report.mark_read_answered, 180);
    assert!(report.receipt_events > 0, "{report:?}");
    assert_eq!(report.receipt_events_incomplete, 0, "{report:?}");
    assert!(
        report.receipt_events_per_member_per_second <= 1.0,
        "each member's receipts reach the room at most once a second: {report:?}"
    );
    assert!(
        report.deferred.is_some_and(|d| d > 0),
        "marks within a second are folded: {report:?}"
    );
}

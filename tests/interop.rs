//! Real npm clients against the server: graphql-ws, Apollo Client 3 and the legacy
//! subscriptions-transport-ws, driven by `tests/interop/run.mjs` (node:test). The Rust side
//! only starts the server, makes two users' tokens and runs the script.

mod common;

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The script bounds each of its tests at 15 s; this bounds the whole run, so that a client
/// left holding Node's event loop open fails the test instead of hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(180);

#[tokio::test]
async fn npm_graphql_clients_interoperate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let interop = root.join("tests/interop");
    assert!(
        interop.join("node_modules").is_dir(),
        "{} is missing: run `npm ci --prefix tests/interop` first (scripts/test.sh does)",
        interop.join("node_modules").display()
    );

    // The wire protocols do not depend on the storage backend, which the other suites cover
    // on both databases: SQLite alone keeps this (Node-heavy) test short.
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    let alice = cli_token("alice", "user");
    let bob = cli_token("bob", "user");

    let mut child = Command::new("node")
        .arg("tests/interop/run.mjs")
        .current_dir(root)
        .env("TIDINGS_URL", &server.base)
        .env("ALICE_TOKEN", &alice)
        .env("BOB_TOKEN", &bob)
        // The token renewal tests mint short-lived tokens of alice's.
        .env("TIDINGS_JWT_SECRET", SECRET)
        // A fresh database per run: the fixed room names cannot clash.
        .env_remove("ROOM_SUFFIX")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install Node.js 20+ (scripts/test.sh does)")
        });

    // Drain both pipes on their own threads so the script never blocks on a full pipe.
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            text
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("stderr")));

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for node") {
            break Some(status);
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let report = format!("--- node stdout ---\n{stdout}\n--- node stderr ---\n{stderr}");

    match status {
        None => panic!("run.mjs did not finish within {RUN_LIMIT:?}\n{report}"),
        Some(status) if !status.success() => panic!("run.mjs failed ({status})\n{report}"),
        Some(_) => println!("{report}"),
    }
}

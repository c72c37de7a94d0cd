//! The pages in a real browser: Debian's chromium, driven by playwright-core from
//! `tests/browser/run.mjs` (node:test), against a server each test starts. A test runs one
//! scenario of the script; the Rust side starts the server (and for `restart` stops it, and
//! later starts a new one on the same address and database, when the script asks), makes the
//! tokens, and fails with the script's output when the script fails.
//!
//! Every scenario also checks that no request of any page left 127.0.0.1, and that no page
//! logged an error (a Content-Security-Policy violation would).
//!
//! Screenshots land in `<target>/tmp/screenshots`; with `TIDINGS_UPDATE_SCREENSHOTS=1` they
//! replace the README's, in `docs/screenshots`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;

/// The script bounds each of its tests; this bounds a whole run, so that a browser left open
/// fails the test instead of hanging it.
const RUN_LIMIT: Duration = Duration::from_secs(240);
const CHROMIUM: &str = "/usr/bin/chromium";

/// One browser at a time: four Chromiums at once on a two-core machine would make every
/// timing in the scenarios a coin toss.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn graphiql_renders_its_docs_and_runs_a_query_and_a_subscription() {
    let _browser = ONE_BROWSER.lock().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    run_scenario("graphiql", &server.base, |_| None);
}

#[tokio::test]
async fn two_people_chat_and_see_each_other_typing_and_online() {
    let _browser = ONE_BROWSER.lock().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    run_scenario("chat", &server.base, |_| None);
}

#[tokio::test]
async fn the_chat_edits_deletes_reacts_shows_receipts_and_unread_counts_and_searches() {
    let _browser = ONE_BROWSER.lock().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    run_scenario("features", &server.base, |_| None);
}

#[tokio::test]
async fn the_chat_pages_back_through_history() {
    let _browser = ONE_BROWSER.lock().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    // The scenario seeds 60 messages as fast as it can.
    let server = TestServer::start(&db, &[("TIDINGS_RATE_LIMITS", "off")]);
    run_scenario("history", &server.base, |_| None);
}

#[tokio::test]
async fn the_chat_reconnects_after_a_server_restart_and_shows_what_was_missed() {
    let _browser = ONE_BROWSER.lock().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let first = TestServer::start(&db, &[]);
    let addr = first.addr.clone();
    let base = first.base.clone();
    let mut server = Some(first);
    // While the page's server is down, messages go through another server on the same
    // database, as they would through another instance: the page cannot be connected then.
    let mut other: Option<TestServer> = None;
    run_scenario("restart", &base, |command| match command {
        "stop" => {
            if let Some(running) = server.take() {
                running.stop();
            }
            Some("stopped".to_owned())
        }
        "start" => {
            server = Some(TestServer::start_at(&db, &addr, &[]));
            Some("started".to_owned())
        }
        "start-other" => {
            let started = TestServer::start(&db, &[]);
            let base = started.base.clone();
            other = Some(started);
            Some(base)
        }
        "stop-other" => {
            if let Some(running) = other.take() {
                running.stop();
            }
            Some("stopped".to_owned())
        }
        _ => None,
    });
}

#[tokio::test]
async fn the_chat_renews_its_token_on_its_socket_and_keeps_receiving_past_its_expiry() {
    let _browser = ONE_BROWSER.lock().await;
    let db = TestDb::new(&Backend::Sqlite).await;
    let server = TestServer::start(&db, &[]);
    run_scenario("renewal", &server.base, |_| None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_every_instance_and_their_sum_and_disconnects_a_user_on_both() {
    let _browser = ONE_BROWSER.lock().await;
    let redis = TestRedis::start();
    // The harness's clients stay unread until the disconnect: no ping may close them first.
    let quiet = [
        ("TIDINGS_WS_PING_INTERVAL", "120s"),
        ("TIDINGS_WS_IDLE_TIMEOUT", "600s"),
    ];
    let (a, b, _db) = bridged_pair(&Backend::Sqlite, &redis, &quiet).await;
    let alice = cli_token("alice", "user");
    let mut alices = [
        GqlSocket::user(&a, &alice).await,
        GqlSocket::user(&a, &alice).await,
        GqlSocket::user(&b, &alice).await,
    ];
    let _bob = LegacyClient::user(&b, &cli_token("bob", "user")).await;
    let admin = cli_token("root", "admin");
    let mut other = Some(b);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        run_scenario_with(
            "admin",
            &a.base,
            &[
                (
                    "OTHER_URL",
                    other.as_ref().map(|b| b.base.clone()).unwrap_or_default(),
                ),
                ("ADMIN_TOKEN", admin),
            ],
            |command| match command {
                "alice-closed" => {
                    let codes: Vec<String> = alices
                        .iter_mut()
                        .map(|ws| runtime.block_on(ws.closed()).code.to_string())
                        .collect();
                    Some(codes.join(" "))
                }
                "stop-other" => {
                    if let Some(running) = other.take() {
                        running.stop();
                    }
                    Some("stopped".to_owned())
                }
                _ => None,
            },
        )
    });
}

/// Runs `node tests/browser/run.mjs <scenario>` against `base`. A line `@@tidings COMMAND` from
/// the script goes to `control`, whose answer is written to the script's standard input.
fn run_scenario(scenario: &str, base: &str, control: impl FnMut(&str) -> Option<String>) {
    run_scenario_with(scenario, base, &[], control)
}

/// `run_scenario`, with more variables in the script's environment.
fn run_scenario_with(
    scenario: &str,
    base: &str,
    env: &[(&str, String)],
    mut control: impl FnMut(&str) -> Option<String>,
) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scripts = root.join("tests/browser");
    assert!(
        scripts.join("node_modules/playwright-core").is_dir(),
        "{} is missing: run `npm ci --prefix tests/browser` first (scripts/test.sh does)",
        scripts.join("node_modules").display()
    );
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (scripts/test.sh does: apt-get install chromium)"
    );

    let mut child = Command::new("node")
        .arg("tests/browser/run.mjs")
        .arg(scenario)
        .current_dir(root)
        .env("TIDINGS_URL", base)
        .env("ALICE_TOKEN", cli_token("alice", "user"))
        .env("BOB_TOKEN", cli_token("bob", "user"))
        // Signs the chat in for two minutes in the `renewal` scenario.
        .env("ALICE_SHORT_TOKEN", cli_token_ttl("alice", "user", "2m"))
        .env("SCREENSHOT_DIR", screenshot_dir())
        .env("CHROMIUM", CHROMIUM)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        // A fresh database per test: the fixed room names cannot clash.
        .env_remove("ROOM_SUFFIX")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run `node` ({e}): install Node.js 20+ (scripts/test.sh does)")
        });

    let mut stdin = child.stdin.take().expect("stdin");
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = BufReader::new(child.stdout.take().expect("stdout"));
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });

    let started = Instant::now();
    let mut output = String::new();
    let status = loop {
        match lines.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                if let Some(command) = line.strip_prefix("@@tidings ") {
                    let answer = control(command.trim())
                        .unwrap_or_else(|| format!("unknown command {command}"));
                    output.push_str(&format!("[harness] {command} -> {answer}\n"));
                    let _ = writeln!(stdin, "{answer}");
                    let _ = stdin.flush();
                } else {
                    output.push_str(&line);
                    output.push('\n');
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Output is over: the process is ending.
                break child.wait().ok();
            }
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    let stderr = stderr.join().unwrap_or_default();
    let report = format!("--- node stdout ---\n{output}\n--- node stderr ---\n{stderr}");
    match status {
        None => panic!("run.mjs {scenario} did not finish within {RUN_LIMIT:?}\n{report}"),
        Some(status) if !status.success() => {
            panic!("run.mjs {scenario} failed ({status})\n{report}")
        }
        Some(_) => println!("{report}"),
    }
}

fn screenshot_dir() -> PathBuf {
    if std::env::var("TIDINGS_UPDATE_SCREENSHOTS").is_ok_and(|v| v == "1") {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots")
    } else {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
    }
}

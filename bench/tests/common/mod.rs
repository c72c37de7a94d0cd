//! What the generators' tests start: a Tidings server in this process (fresh SQLite, rate
//! limits off) and the floor.

use std::net::SocketAddr;

use clap::Parser;
use tidings_bench::floor::FloorArgs;

#[derive(Parser)]
struct Serve {
    #[command(flatten)]
    config: tidings::config::Config,
}

/// A Tidings server on a free port, its database in `dir`, signing tokens with `secret`.
pub async fn start_tidings(dir: &tempfile::TempDir, secret: &str) -> SocketAddr {
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let config = Serve::parse_from([
        "tidings",
        "--bind",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--jwt-secret",
        secret,
        "--rate-limits",
        "off",
    ])
    .config;
    let listener = tidings::bind(config.bind).expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = tidings::App::build(config).await.expect("app");
    tokio::spawn(app.serve(listener, std::future::pending()));
    addr
}

/// The floor on a free port.
pub async fn start_floor() -> SocketAddr {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    let bind: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    tokio::spawn(tidings_bench::floor::serve(FloorArgs {
        bind,
        threads: 1,
        buffer: 1024,
    }));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    bind
}

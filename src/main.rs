//! The `tidings` command: `serve` (the default), `schema`, `migrate`, `token`.

/// jemalloc: small objects of one size packed together, so thousands of long-lived connections
/// fragment the heap less than with the system allocator. The `system-allocator` feature
/// leaves it out, for heap profilers that see only `malloc` (`heaptrack`).
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main` (a C string at the symbol jemalloc looks for): a
/// background thread gives the pages freed after a burst (a storm of connects, a wide
/// fan-out) back to the system within about a second, so the process's memory follows what
/// is in use rather than its peak.
#[cfg(not(feature = "system-allocator"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use migration::{Migrator, MigratorTrait};
use tidings::config::{parse_duration, Config};

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Realtime API server over GraphQL subscriptions"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// `tidings` with no subcommand serves with the settings from the environment.
#[derive(Parser)]
struct ServeDefaults {
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve(Config),
    /// Print the GraphQL schema (SDL), as introspection serves it.
    Schema {
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Apply, revert or list database migrations.
    Migrate {
        #[command(subcommand)]
        action: MigrateAction,
        #[arg(
            long,
            env = "TIDINGS_DATABASE_URL",
            default_value = "sqlite://tidings.db?mode=rwc"
        )]
        database_url: String,
    },
    /// Print a token for a user (for integrations and tests).
    Token {
        /// The user's id and name (`sub` and `name`).
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "user")]
        role: String,
        /// How long the token is valid, e.g. 30m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
        #[command(flatten)]
        config: Config,
    },
}

#[derive(Subcommand)]
enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Revert the last N migrations.
    Down {
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List migrations and whether each is applied.
    Status,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("tidings=info,warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let cli = Cli::parse();
    match cli.command {
        None => serve(ServeDefaults::parse_from(["tidings"]).config).await,
        Some(Command::Serve(config)) => serve(config).await,
        Some(Command::Schema { out }) => {
            let sdl = tidings::graphql::sdl();
            match out {
                Some(path) => std::fs::write(path, sdl)?,
                None => print!("{sdl}"),
            }
            Ok(())
        }
        Some(Command::Migrate {
            action,
            database_url,
        }) => migrate(action, &database_url).await,
        Some(Command::Token {
            user,
            role,
            ttl,
            config,
        }) => {
            // The configured secret needs no database; the generated one lives there.
            let db = match config.jwt_secret.as_deref() {
                Some(s) if !s.is_empty() => None,
                _ => Some(tidings::db::connect(&config.database_url).await?),
            };
            let keys = tidings::auth::TokenKeys::load(&config, db.as_ref()).await?;
            println!("{}", keys.mint(&user, &user, &role, ttl)?);
            Ok(())
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let bind = config.bind;
    let app = tidings::App::build(config).await?;
    let listener =
        tidings::bind(bind).map_err(|e| anyhow::anyhow!("cannot listen on {bind}: {e}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Tidings {} serving on http://{addr}",
            env!("CARGO_PKG_VERSION")
        )?;
        writeln!(out, "  chat:       http://{addr}/")?;
        writeln!(out, "  playground: http://{addr}/playground")?;
        writeln!(
            out,
            "  GraphQL:    http://{addr}/graphql  (ws:// for subscriptions)"
        )?;
        writeln!(out, "  /ws:        ws://{addr}/ws  (legacy JSON protocol)")?;
        writeln!(out, "  health:     http://{addr}/health")?;
        writeln!(out, "  metrics:    http://{addr}/metrics")?;
        out.flush()?;
    }
    app.serve(listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutting down");
}

async fn migrate(action: MigrateAction, url: &str) -> anyhow::Result<()> {
    let db = tidings::db::open(url).await?;
    match action {
        MigrateAction::Up => Migrator::up(&db, None).await?,
        MigrateAction::Down { steps } => Migrator::down(&db, Some(steps)).await?,
        MigrateAction::Status => {
            for m in Migrator::get_migration_with_status(&db).await? {
                println!("{}\t{}", m.name(), m.status());
            }
        }
    }
    Ok(())
}

//! Storage: the sea-orm entities and the connection. SQLite is the embedded default; a
//! `postgres://` URL selects PostgreSQL. Migrations (the `migration` crate) run on connect.

pub mod counter;
pub mod message;
pub mod notification;
pub mod points_ledger;
pub mod room;
pub mod room_member;
pub mod setting;
pub mod user;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr};

/// Opens the database and brings its schema up to date.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let db = open(url).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Opens the database without touching its schema (for `tidings migrate`).
pub async fn open(url: &str) -> Result<DatabaseConnection, DbErr> {
    let sqlite = url.starts_with("sqlite:");
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    if sqlite {
        // SQLite allows one writer at a time; a small pool with WAL and a busy timeout keeps
        // concurrent writers waiting rather than failing with "database is locked".
        opts.max_connections(4).min_connections(1);
        // Set on every connection of the pool (a PRAGMA run once reaches only one of them):
        // NORMAL sync, which in WAL mode keeps every commit across a crash of the process and
        // syncs at checkpoints; a busy timeout; foreign keys.
        opts.map_sqlx_sqlite_opts(|o| {
            o.synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true)
        });
    } else {
        opts.max_connections(32).min_connections(2);
    }
    let db = Database::connect(opts).await?;
    if sqlite {
        // WAL is a property of the database file: set once, every connection then uses it.
        db.execute_unprepared("PRAGMA journal_mode=WAL").await?;
    }
    Ok(db)
}

/// Whether the database answers a trivial query (for `/health`).
pub async fn ping(db: &DatabaseConnection) -> bool {
    tokio::time::timeout(Duration::from_secs(2), db.ping())
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false)
}

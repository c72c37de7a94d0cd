//! Storage: the sea-orm entities and the connection. SQLite is the embedded default; a
//! `postgres://` URL selects PostgreSQL. Migrations (the `migration` crate) run on connect.
//!
//! A SQLite file holds the generated JWT secret (`settings`): whoever reads it mints tokens.
//! So Tidings creates it readable by its owner only (SQLite gives the `-wal` and `-shm` files
//! the database file's permissions), and warns when an existing one is readable by others.

pub mod admin_action;
pub mod counter;
pub mod message;
pub mod notification;
pub mod points_ledger;
pub mod reaction;
pub mod read_receipt;
pub mod room;
pub mod room_change;
pub mod room_member;
pub mod setting;
pub mod user;

use std::path::{Path, PathBuf};
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
    if let Some(file) = sqlite_file(url) {
        protect_sqlite_file(&file);
    }
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

/// The file a `sqlite:` URL names (as the driver reads it: `sqlite://PATH?PARAMS`, the path
/// percent-decoded) and whether the driver may create it (`mode=rwc`); `None` for an
/// in-memory database or another scheme.
#[derive(Debug, PartialEq, Eq)]
struct SqliteFile {
    path: PathBuf,
    create: bool,
}

fn sqlite_file(url: &str) -> Option<SqliteFile> {
    let rest = url.strip_prefix("sqlite:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
    let mode = params
        .split('&')
        .find_map(|kv| kv.strip_prefix("mode="))
        .unwrap_or("rw");
    if path.is_empty() || path == ":memory:" || mode == "memory" {
        return None;
    }
    Some(SqliteFile {
        path: PathBuf::from(percent_decode(path)?),
        create: mode == "rwc",
    })
}

/// `%XX` sequences decoded; `None` when the result is not UTF-8 (the driver refuses it too).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Creates a missing database file with mode 0600 before the driver would create it with the
/// umask's (usually 0644); warns about an existing one, or its `-wal`/`-shm`, that other users
/// of the machine can read.
#[cfg(unix)]
fn protect_sqlite_file(file: &SqliteFile) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if file.create && !file.path.exists() {
        let created = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file.path);
        match created {
            Ok(_) => return,
            // Another instance created it first: check it below like any existing file.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            // The driver reports the problem (a missing directory, say) in its own words.
            Err(e) => {
                tracing::debug!(path = %file.path.display(), error = %e, "cannot create the database file");
                return;
            }
        }
    }
    for path in [
        file.path.clone(),
        with_suffix(&file.path, "-wal"),
        with_suffix(&file.path, "-shm"),
    ] {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o044 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "the database file is readable by other users of this machine, and it holds \
                 the JWT secret when TIDINGS_JWT_SECRET is unset: `chmod 600` it"
            );
        }
    }
}

#[cfg(not(unix))]
fn protect_sqlite_file(_file: &SqliteFile) {}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Whether the database answers a trivial query (for `/health`).
pub async fn ping(db: &DatabaseConnection) -> bool {
    tokio::time::timeout(Duration::from_secs(2), db.ping())
        .await
        .map(|r| r.is_ok())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_name_their_file_and_whether_it_may_be_created() {
        let file = |path: &str, create| {
            Some(SqliteFile {
                path: PathBuf::from(path),
                create,
            })
        };
        assert_eq!(
            sqlite_file("sqlite://tidings.db?mode=rwc"),
            file("tidings.db", true)
        );
        assert_eq!(
            sqlite_file("sqlite:///var/lib/t%3Fx.db"),
            file("/var/lib/t?x.db", false)
        );
        assert_eq!(
            sqlite_file("sqlite:data.db?mode=ro"),
            file("data.db", false)
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://?mode=memory"), None);
        assert_eq!(sqlite_file("sqlite://x.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[cfg(unix)]
    #[test]
    fn a_new_database_file_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("new.db");
        protect_sqlite_file(&SqliteFile {
            path: path.clone(),
            create: true,
        });
        let mode = std::fs::metadata(&path)
            .expect("created")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

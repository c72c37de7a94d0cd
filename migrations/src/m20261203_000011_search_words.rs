//! Search finds the same messages in the same order on both backends: both index the words the
//! query is cut into (runs of letters and digits, see `src/domain/search.rs`), and both keep
//! accents (`café` is not `cafe`).
//!
//! SQLite's FTS5 table is rebuilt with `unicode61 remove_diacritics 0`: by default it folds
//! accents away, which PostgreSQL's `simple` configuration does not do. PostgreSQL's `tsvector`
//! is rebuilt over the body with every run of other characters turned into a space: its own
//! parser keeps `v1.2`, `alice@example.com` and URLs as single tokens (and adds the parts of
//! hyphenated words on top), which a query cut into words never matches, and which makes its
//! documents longer than FTS5's for the length-aware rank.
//!
//! `[:alnum:]` follows the database's character type; under a `C` ctype only ASCII letters
//! and digits are word characters, so a database for Tidings uses a UTF-8 ctype (`C.UTF-8`,
//! `en_US.UTF-8`), as `initdb` gives by default.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

const SQLITE_DROP: [&str; 4] = [
    "DROP TRIGGER IF EXISTS messages_fts_update",
    "DROP TRIGGER IF EXISTS messages_fts_delete",
    "DROP TRIGGER IF EXISTS messages_fts_insert",
    "DROP TABLE IF EXISTS messages_fts",
];

/// The FTS5 table with `tokenize`, filled from `messages`, and the triggers that keep it.
fn sqlite_create(tokenize: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE VIRTUAL TABLE messages_fts USING fts5(body, content='messages', \
             content_rowid='id', tokenize='{tokenize}')"
        ),
        "INSERT INTO messages_fts(messages_fts) VALUES ('rebuild')".to_owned(),
        "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN \
           INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body); END"
            .to_owned(),
        "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN \
           INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body); END"
            .to_owned(),
        "CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN \
           INSERT INTO messages_fts(messages_fts, rowid, body) VALUES ('delete', old.id, old.body); \
           INSERT INTO messages_fts(rowid, body) VALUES (new.id, new.body); END"
            .to_owned(),
    ]
}

/// The generated `search` column over `document` and its GIN index.
fn postgres_create(document: &str) -> Vec<String> {
    vec![
        "DROP INDEX IF EXISTS idx_messages_search".to_owned(),
        "ALTER TABLE messages DROP COLUMN IF EXISTS search".to_owned(),
        format!(
            "ALTER TABLE messages ADD COLUMN search tsvector \
             GENERATED ALWAYS AS (to_tsvector('simple', {document})) STORED"
        ),
        "CREATE INDEX idx_messages_search ON messages USING GIN (search)".to_owned(),
    ]
}

async fn run(m: &SchemaManager<'_>, up: bool) -> Result<(), DbErr> {
    let db = m.get_connection();
    let statements: Vec<String> = match (db.get_database_backend(), up) {
        (DbBackend::Postgres, true) => {
            postgres_create("regexp_replace(body, '[^[:alnum:]]+', ' ', 'g')")
        }
        (DbBackend::Postgres, false) => postgres_create("body"),
        (_, up) => SQLITE_DROP
            .iter()
            .map(|s| (*s).to_owned())
            .chain(sqlite_create(if up {
                "unicode61 remove_diacritics 0"
            } else {
                "unicode61"
            }))
            .collect(),
    };
    // One batch, so one connection of the pool runs it all. SQLite migrations run outside a
    // transaction, each statement on whichever pooled connection is free, and a connection
    // that has not seen the `DROP TRIGGER` yet fails the `CREATE TRIGGER` that follows it.
    db.execute_unprepared(&statements.join(";\n")).await?;
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, true).await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        run(m, false).await
    }
}

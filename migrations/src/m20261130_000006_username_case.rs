//! Usernames are unique regardless of case: `Alice` cannot sign up while `alice` exists (two
//! accounts that look the same to other people). A unique index on the lower-cased name
//! keeps it so, and serves the case-blind lookups of `login` and `register`.
//!
//! A database from before may hold names that differ only in case. The earliest account
//! (by creation, then id) keeps its name; each later one is renamed with the first free
//! numbered suffix (`Alice-2`, `Alice-3`, …), as provisioning names a token's user whose name is
//! taken, and the renaming is logged. Its id, password and everything else stay.

use std::collections::HashSet;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
}

const CREATE_INDEX: &str =
    "CREATE UNIQUE INDEX idx_users_username_lower ON users (lower(username))";
const DROP_INDEX: &str = "DROP INDEX IF EXISTS idx_users_username_lower";

/// Holders of a name another account also holds in another case, grouped by the name as the
/// database lower-cases it, earliest first.
const CASE_DUPLICATES: &str = "SELECT id, username, lower(username) AS folded FROM users \
     WHERE lower(username) IN \
       (SELECT lower(username) FROM users GROUP BY lower(username) HAVING count(*) > 1) \
     ORDER BY lower(username), created_at, id";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        let backend = db.get_database_backend();
        let sql = |s: &str| Statement::from_string(backend, s.to_owned());
        let duplicates = db.query_all_raw(sql(CASE_DUPLICATES)).await?;
        if !duplicates.is_empty() {
            // Every name in use, lower-cased by the database, so a new name is free in every
            // case. A suffix of digits lower-cases to itself.
            let mut in_use: HashSet<String> = HashSet::new();
            for row in db
                .query_all_raw(sql("SELECT lower(username) AS folded FROM users"))
                .await?
            {
                in_use.insert(row.try_get::<String>("", "folded")?);
            }
            let mut kept: HashSet<String> = HashSet::new();
            for row in duplicates {
                let id: String = row.try_get("", "id")?;
                let username: String = row.try_get("", "username")?;
                let folded: String = row.try_get("", "folded")?;
                if kept.insert(folded.clone()) {
                    continue;
                }
                let Some(n) = (2u64..).find(|n| !in_use.contains(&format!("{folded}-{n}"))) else {
                    return Err(DbErr::Custom(format!("no free name for user {id}")));
                };
                in_use.insert(format!("{folded}-{n}"));
                let renamed = format!("{username}-{n}");
                db.execute(
                    &Query::update()
                        .table(Users::Table)
                        .value(Users::Username, renamed.clone())
                        .and_where(Expr::col(Users::Id).eq(id.clone()))
                        .to_owned(),
                )
                .await?;
                tracing::warn!(
                    user = %id, from = %username, to = %renamed,
                    "user renamed: usernames are now unique regardless of case"
                );
            }
        }
        db.execute_unprepared(CREATE_INDEX).await?;
        Ok(())
    }

    /// Drops the index; renamed users keep their new names.
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection().execute_unprepared(DROP_INDEX).await?;
        Ok(())
    }
}

//! Full-text search over the messages of the rooms the viewer reads, best match first.
//!
//! SQLite searches its FTS5 index, ranked by bm25; PostgreSQL its `tsvector` column through the
//! GIN index, ranked by `ts_rank` (both kept by migrations). A query is cut into words here —
//! runs of letters and digits — and only those words reach the database: each one quoted as an
//! FTS5 string, or handed to `plainto_tsquery` as a bound value. Operators, quotes, column
//! filters and any other query syntax a user types are separators, never syntax, and every
//! word must match (AND) on both backends.
//!
//! Both backends give the same results in the same order for simple queries: both index the
//! body cut into the same words, accents kept (migration `m20261203_000011_search_words`), and
//! both rank shorter messages and more occurrences higher. bm25 divides by the length;
//! `ts_rank` does so with normalisation 1 (by 1 + log of the length). bm25 adds up each word's
//! score, whatever the distance between the words, so PostgreSQL ranks with the query's words
//! joined by OR (`ts_rank` then averages their scores) while it matches with all of them;
//! with AND it would rank by proximity. Ties: newest first, on both. What still differs: bm25
//! weighs rare words higher (its IDF) and saturates repeated words a little more slowly.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, Statement, Value,
};

use super::records::{validate_room_id, MessageView};
use super::{require_user, Domain, DomainError, DomainResult};
use crate::auth::Viewer;
use crate::db::message;

/// The longest query, in characters.
pub const QUERY_MAX_CHARS: usize = 200;
/// Words one query may hold.
pub const TERMS_MAX: usize = 16;
/// Results per page when the client asks for none, and at most.
pub const SEARCH_DEFAULT: i32 = 20;
pub const SEARCH_MAX: i32 = 50;
/// How far into the results a page may start.
pub const OFFSET_MAX: i32 = 1000;

/// The words of a query, lower-cased: runs of letters and digits. BAD_USER_INPUT for a query
/// that is too long, has too many words, or none.
pub fn search_terms(query: &str) -> DomainResult<Vec<String>> {
    if query.chars().count() > QUERY_MAX_CHARS {
        return Err(DomainError::bad_input(format!(
            "a search query is at most {QUERY_MAX_CHARS} characters"
        )));
    }
    let terms: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect();
    if terms.is_empty() {
        return Err(DomainError::bad_input(
            "a search query needs at least one word (letters or digits)",
        ));
    }
    if terms.len() > TERMS_MAX {
        return Err(DomainError::bad_input(format!(
            "a search query has at most {TERMS_MAX} words"
        )));
    }
    Ok(terms)
}

impl Domain {
    /// Messages matching every word of `query` in the rooms the viewer belongs to (admins:
    /// every room), or in `room_id` only, best match first (then newest): `first` (at most
    /// `SEARCH_MAX`) from `offset` on. Deleted messages and SYSTEM messages are not found.
    pub async fn search_messages(
        &self,
        viewer: &Viewer,
        query: &str,
        room_id: Option<&str>,
        first: Option<i32>,
        offset: Option<i32>,
    ) -> DomainResult<Vec<MessageView>> {
        let user = require_user(viewer)?;
        let first = first.unwrap_or(SEARCH_DEFAULT);
        if !(0..=SEARCH_MAX).contains(&first) {
            crate::metrics::graphql_refused("page");
            return Err(DomainError::bad_input(format!(
                "first must be between 0 and {SEARCH_MAX}"
            )));
        }
        let offset = offset.unwrap_or(0);
        if !(0..=OFFSET_MAX).contains(&offset) {
            return Err(DomainError::bad_input(format!(
                "offset must be between 0 and {OFFSET_MAX}"
            )));
        }
        let terms = search_terms(query)?;
        if let Some(room_id) = room_id {
            validate_room_id(room_id)?;
            self.require_member(viewer, room_id).await?;
        }
        let backend = self.db.get_database_backend();
        let (matching, rank, mut values): (&str, &str, Vec<Value>) = match backend {
            DbBackend::Postgres => (
                "FROM messages m, plainto_tsquery('simple', $1) q, \
                 CAST(replace(q::text, '&', '|') AS tsquery) any_word \
                 WHERE m.search @@ q",
                "ts_rank(m.search, any_word, 1) DESC",
                vec![terms.join(" ").into()],
            ),
            _ => (
                "FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid \
                 WHERE messages_fts MATCH $1",
                "bm25(messages_fts)",
                vec![fts5_query(&terms).into()],
            ),
        };
        let mut sql =
            format!("SELECT m.id AS id {matching} AND m.deleted_at IS NULL AND m.kind = 'USER'");
        if let Some(room_id) = room_id {
            values.push(room_id.to_owned().into());
            sql.push_str(&format!(" AND m.room_id = ${}", values.len()));
        } else if !user.is_admin() {
            values.push(user.id.clone().into());
            sql.push_str(&format!(
                " AND m.room_id IN (SELECT room_id FROM room_members WHERE user_id = ${})",
                values.len()
            ));
        }
        values.push(i64::from(first).into());
        values.push(i64::from(offset).into());
        sql.push_str(&format!(
            " ORDER BY {rank}, m.id DESC LIMIT ${} OFFSET ${}",
            values.len() - 1,
            values.len()
        ));
        let rows = self
            .db
            .query_all_raw(Statement::from_sql_and_values(backend, &sql, values))
            .await?;
        let ids = rows
            .iter()
            .map(|row| row.try_get::<i64>("", "id"))
            .collect::<Result<Vec<_>, _>>()?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut found = message::Entity::find()
            .filter(message::Column::Id.is_in(ids.clone()))
            .all(&self.db)
            .await?;
        // Back in rank order.
        found.sort_by_key(|m| ids.iter().position(|id| *id == m.id));
        self.with_senders(found).await
    }
}

/// The words as an FTS5 query: each a quoted string (a quote inside doubled, though words hold
/// none), all of them required.
fn fts5_query(terms: &[String]) -> String {
    terms
        .iter()
        .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_syntax_is_cut_into_plain_words() {
        assert_eq!(
            search_terms(r#"body:"hello" OR NEAR(x* -y) ^z"#).expect("words"),
            ["body", "hello", "or", "near", "x", "y", "z"]
        );
        assert_eq!(fts5_query(&["a".into(), "b".into()]), r#""a" "b""#);
        assert!(search_terms("\"' *:()").is_err(), "no words");
        assert!(search_terms(&"a".repeat(10_000)).is_err(), "too long");
        assert!(search_terms(&"a ".repeat(17)).is_err(), "too many words");
    }
}

//! Tidings' database schema, one file per migration. Migrations run at server start-up and
//! through `tidings migrate`; each one works on SQLite and on PostgreSQL.

pub use sea_orm_migration::prelude::*;

mod m20261126_000001_initial;
mod m20261126_000002_counters;
mod m20261126_000003_notification_seq;
mod m20261126_000004_token_revocation;
mod m20261130_000005_membership_messages;
mod m20261130_000006_username_case;
mod m20261201_000007_message_changes;
mod m20261201_000008_message_search;
mod m20261202_000009_admin_actions;
mod m20261202_000010_replay_and_receipts;
mod m20261203_000011_search_words;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261126_000001_initial::Migration),
            Box::new(m20261126_000002_counters::Migration),
            Box::new(m20261126_000003_notification_seq::Migration),
            Box::new(m20261126_000004_token_revocation::Migration),
            Box::new(m20261130_000005_membership_messages::Migration),
            Box::new(m20261130_000006_username_case::Migration),
            Box::new(m20261201_000007_message_changes::Migration),
            Box::new(m20261201_000008_message_search::Migration),
            Box::new(m20261202_000009_admin_actions::Migration),
            Box::new(m20261202_000010_replay_and_receipts::Migration),
            Box::new(m20261203_000011_search_words::Migration),
        ]
    }
}

//! Replays render each change as it was, and receipts are announced in batches.
//!
//! A room's changes are read per message as well as per position: replaying a message as it
//! was posted reads the body its first edit or delete replaced, and a reaction change says
//! whether the viewer had reacted by then from the viewer's own earlier reaction changes to
//! that message. Both look up `room_changes` by message and position.
//!
//! `read_receipts.announced_at` is when the room last heard of a member's receipt: an instance
//! claims the next announcement by moving it forward, so a member's receipts reach a room at
//! most once per interval whichever instances store them.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum RoomChanges {
    Table,
    MessageId,
    Seq,
}

#[derive(DeriveIden)]
enum ReadReceipts {
    Table,
    AnnouncedAt,
}

const INDEX: &str = "ix_room_changes_message_seq";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_index(
            Index::create()
                .name(INDEX)
                .table(RoomChanges::Table)
                .col(RoomChanges::MessageId)
                .col(RoomChanges::Seq)
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(ReadReceipts::Table)
                .add_column(
                    ColumnDef::new(ReadReceipts::AnnouncedAt)
                        .timestamp_with_time_zone()
                        .null(),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(ReadReceipts::Table)
                .drop_column(ReadReceipts::AnnouncedAt)
                .to_owned(),
        )
        .await?;
        m.drop_index(
            Index::drop()
                .name(INDEX)
                .table(RoomChanges::Table)
                .to_owned(),
        )
        .await
    }
}

//! Messages change after they are sent: edits and deletes (a deleted message keeps its row as a
//! tombstone), reactions, and how far each member has read. Every such change also gets a row in
//! `room_changes`, numbered on its room's one sequence (the counter messages are numbered by),
//! so a subscriber that resumes after a position reads every change after it, in order.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    EditedAt,
    DeletedAt,
}

#[derive(DeriveIden)]
enum Rooms {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Reactions {
    Table,
    MessageId,
    UserId,
    Emoji,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ReadReceipts {
    Table,
    RoomId,
    UserId,
    MessageId,
    ReadAt,
}

#[derive(DeriveIden)]
enum RoomChanges {
    Table,
    Id,
    RoomId,
    Seq,
    Kind,
    MessageId,
    UserId,
    Payload,
    CreatedAt,
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        for column in [Messages::EditedAt, Messages::DeletedAt] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .add_column(ts_null(column))
                    .to_owned(),
            )
            .await?;
        }
        // One row per user, message and emoji; the key's prefix reads a message's reactions.
        m.create_table(
            Table::create()
                .table(Reactions::Table)
                .col(
                    ColumnDef::new(Reactions::MessageId)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(Reactions::UserId).string_len(128).not_null())
                .col(ColumnDef::new(Reactions::Emoji).string_len(32).not_null())
                .col(ts(Reactions::CreatedAt))
                .primary_key(
                    Index::create()
                        .col(Reactions::MessageId)
                        .col(Reactions::UserId)
                        .col(Reactions::Emoji),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(Reactions::Table, Reactions::MessageId)
                        .to(Messages::Table, Messages::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // Where each member has read a room up to; one row per member at most.
        m.create_table(
            Table::create()
                .table(ReadReceipts::Table)
                .col(
                    ColumnDef::new(ReadReceipts::RoomId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ReadReceipts::UserId)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(ReadReceipts::MessageId)
                        .big_integer()
                        .not_null(),
                )
                .col(ts(ReadReceipts::ReadAt))
                .primary_key(
                    Index::create()
                        .col(ReadReceipts::RoomId)
                        .col(ReadReceipts::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(ReadReceipts::Table, ReadReceipts::RoomId)
                        .to(Rooms::Table, Rooms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(RoomChanges::Table)
                .col(
                    ColumnDef::new(RoomChanges::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(RoomChanges::RoomId)
                        .string_len(64)
                        .not_null(),
                )
                .col(ColumnDef::new(RoomChanges::Seq).big_integer().not_null())
                .col(ColumnDef::new(RoomChanges::Kind).string_len(16).not_null())
                .col(
                    ColumnDef::new(RoomChanges::MessageId)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(RoomChanges::UserId).string_len(128).null())
                .col(ColumnDef::new(RoomChanges::Payload).text().not_null())
                .col(ts(RoomChanges::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(RoomChanges::Table, RoomChanges::RoomId)
                        .to(Rooms::Table, Rooms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // Resume reads a room's changes by position; a position holds one change.
        m.create_index(
            Index::create()
                .name("uq_room_changes_room_seq")
                .table(RoomChanges::Table)
                .col(RoomChanges::RoomId)
                .col(RoomChanges::Seq)
                .unique()
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            RoomChanges::Table.into_iden(),
            ReadReceipts::Table.into_iden(),
            Reactions::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        for column in [Messages::DeletedAt, Messages::EditedAt] {
            m.alter_table(
                Table::alter()
                    .table(Messages::Table)
                    .drop_column(column)
                    .to_owned(),
            )
            .await?;
        }
        Ok(())
    }
}

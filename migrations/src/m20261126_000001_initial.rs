//! The initial schema: users, rooms and their members, messages, notifications, the points
//! ledger, and server settings (the generated JWT secret lives there).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Users {
    Table,
    Id,
    Username,
    PasswordHash,
    Role,
    Points,
    Status,
    LastSeenAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Rooms {
    Table,
    Id,
    Title,
    IsPrivate,
    CreatedBy,
    LastSeq,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RoomMembers {
    Table,
    RoomId,
    UserId,
    JoinedAt,
}

#[derive(DeriveIden)]
enum Messages {
    Table,
    Id,
    RoomId,
    Seq,
    Kind,
    SenderId,
    Body,
    ClientMessageId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Notifications {
    Table,
    Id,
    UserId,
    Kind,
    Level,
    Title,
    Body,
    Data,
    CreatedAt,
    ReadAt,
}

#[derive(DeriveIden)]
enum PointsLedger {
    Table,
    Id,
    UserId,
    Points,
    Reason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Settings {
    Table,
    Key,
    Value,
}

fn ts(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .not_null()
        .to_owned()
}

fn ts_null(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .timestamp_with_time_zone()
        .null()
        .to_owned()
}

fn id_pk(col: impl IntoIden) -> ColumnDef {
    ColumnDef::new(col)
        .big_integer()
        .not_null()
        .auto_increment()
        .primary_key()
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Users::Table)
                .col(
                    ColumnDef::new(Users::Id)
                        .string_len(128)
                        .not_null()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(Users::Username)
                        .string_len(128)
                        .not_null()
                        .unique_key(),
                )
                .col(ColumnDef::new(Users::PasswordHash).string().null())
                .col(ColumnDef::new(Users::Role).string_len(32).not_null())
                .col(
                    ColumnDef::new(Users::Points)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(ColumnDef::new(Users::Status).string_len(16).not_null())
                .col(ts_null(Users::LastSeenAt))
                .col(ts(Users::CreatedAt))
                .to_owned(),
        )
        .await?;
        // The leaderboard reads users by points descending, then id.
        m.create_index(
            Index::create()
                .name("idx_users_points")
                .table(Users::Table)
                .col((Users::Points, IndexOrder::Desc))
                .col(Users::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_users_role")
                .table(Users::Table)
                .col(Users::Role)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Rooms::Table)
                .col(
                    ColumnDef::new(Rooms::Id)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Rooms::Title).string_len(200).not_null())
                .col(
                    ColumnDef::new(Rooms::IsPrivate)
                        .boolean()
                        .not_null()
                        .default(false),
                )
                .col(ColumnDef::new(Rooms::CreatedBy).string_len(128).null())
                // The room's message counter: bumping it in the message's transaction locks the
                // room row, so writers to one room are serialised and commit order is id order.
                .col(
                    ColumnDef::new(Rooms::LastSeq)
                        .big_integer()
                        .not_null()
                        .default(0),
                )
                .col(ts(Rooms::CreatedAt))
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(RoomMembers::Table)
                .col(
                    ColumnDef::new(RoomMembers::RoomId)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(RoomMembers::UserId)
                        .string_len(128)
                        .not_null(),
                )
                .col(ts(RoomMembers::JoinedAt))
                .primary_key(
                    Index::create()
                        .col(RoomMembers::RoomId)
                        .col(RoomMembers::UserId),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(RoomMembers::Table, RoomMembers::RoomId)
                        .to(Rooms::Table, Rooms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .foreign_key(
                    ForeignKey::create()
                        .from(RoomMembers::Table, RoomMembers::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_room_members_user")
                .table(RoomMembers::Table)
                .col(RoomMembers::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Messages::Table)
                .col(id_pk(Messages::Id))
                .col(ColumnDef::new(Messages::RoomId).string_len(64).not_null())
                .col(ColumnDef::new(Messages::Seq).big_integer().not_null())
                .col(ColumnDef::new(Messages::Kind).string_len(16).not_null())
                .col(ColumnDef::new(Messages::SenderId).string_len(128).null())
                .col(ColumnDef::new(Messages::Body).text().not_null())
                .col(
                    ColumnDef::new(Messages::ClientMessageId)
                        .string_len(128)
                        .null(),
                )
                .col(ts(Messages::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Messages::Table, Messages::RoomId)
                        .to(Rooms::Table, Rooms::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        // History and resume read a room's messages by id.
        m.create_index(
            Index::create()
                .name("idx_messages_room_id")
                .table(Messages::Table)
                .col(Messages::RoomId)
                .col(Messages::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("uq_messages_room_seq")
                .table(Messages::Table)
                .col(Messages::RoomId)
                .col(Messages::Seq)
                .unique()
                .to_owned(),
        )
        .await?;
        // A retried send finds its first message by (sender, client message id).
        m.create_index(
            Index::create()
                .name("uq_messages_sender_client_id")
                .table(Messages::Table)
                .col(Messages::SenderId)
                .col(Messages::ClientMessageId)
                .unique()
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Notifications::Table)
                .col(id_pk(Notifications::Id))
                .col(
                    ColumnDef::new(Notifications::UserId)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Notifications::Kind)
                        .string_len(64)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Notifications::Level)
                        .string_len(16)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(Notifications::Title)
                        .string_len(500)
                        .not_null(),
                )
                .col(ColumnDef::new(Notifications::Body).text().null())
                .col(ColumnDef::new(Notifications::Data).json().null())
                .col(ts(Notifications::CreatedAt))
                .col(ts_null(Notifications::ReadAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(Notifications::Table, Notifications::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_notifications_user_id")
                .table(Notifications::Table)
                .col(Notifications::UserId)
                .col(Notifications::Id)
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_notifications_user_unread")
                .table(Notifications::Table)
                .col(Notifications::UserId)
                .col(Notifications::ReadAt)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(PointsLedger::Table)
                .col(id_pk(PointsLedger::Id))
                .col(
                    ColumnDef::new(PointsLedger::UserId)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(PointsLedger::Points)
                        .big_integer()
                        .not_null(),
                )
                .col(ColumnDef::new(PointsLedger::Reason).string_len(200).null())
                .col(ts(PointsLedger::CreatedAt))
                .foreign_key(
                    ForeignKey::create()
                        .from(PointsLedger::Table, PointsLedger::UserId)
                        .to(Users::Table, Users::Id)
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("idx_points_ledger_user")
                .table(PointsLedger::Table)
                .col(PointsLedger::UserId)
                .to_owned(),
        )
        .await?;

        m.create_table(
            Table::create()
                .table(Settings::Table)
                .col(
                    ColumnDef::new(Settings::Key)
                        .string_len(64)
                        .not_null()
                        .primary_key(),
                )
                .col(ColumnDef::new(Settings::Value).text().not_null())
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Settings::Table.into_iden(),
            PointsLedger::Table.into_iden(),
            Notifications::Table.into_iden(),
            Messages::Table.into_iden(),
            RoomMembers::Table.into_iden(),
            Rooms::Table.into_iden(),
            Users::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

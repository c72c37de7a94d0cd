//! The log of what administrators did to a running deployment (disconnecting a user,
//! publishing to a channel, sending a notification): who, what, when. Read newest first.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AdminActions {
    Table,
    Id,
    AdminId,
    AdminName,
    Action,
    Target,
    Detail,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Read by id descending (the primary key): no other index is needed.
        m.create_table(
            Table::create()
                .table(AdminActions::Table)
                .col(
                    ColumnDef::new(AdminActions::Id)
                        .big_integer()
                        .not_null()
                        .auto_increment()
                        .primary_key(),
                )
                .col(
                    ColumnDef::new(AdminActions::AdminId)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AdminActions::AdminName)
                        .string_len(128)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AdminActions::Action)
                        .string_len(32)
                        .not_null(),
                )
                .col(
                    ColumnDef::new(AdminActions::Target)
                        .string_len(160)
                        .not_null(),
                )
                .col(ColumnDef::new(AdminActions::Detail).text().null())
                .col(
                    ColumnDef::new(AdminActions::CreatedAt)
                        .timestamp_with_time_zone()
                        .not_null(),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(AdminActions::Table).to_owned())
            .await
    }
}

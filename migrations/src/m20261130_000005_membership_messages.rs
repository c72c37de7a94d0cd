//! A room's "joined" and "left" announcements say whom they are about. A leave is then a point
//! of the room's own sequence: every stream of the room ends for the leaver exactly there,
//! whether it reads the message live or catches up from the database.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Messages {
    Table,
    /// The user a SYSTEM message is about (who joined or left); null otherwise.
    SubjectId,
    /// `joined` or `left` for membership announcements; null otherwise.
    Action,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(ColumnDef::new(Messages::SubjectId).string().null())
                .to_owned(),
        )
        .await?;
        m.alter_table(
            Table::alter()
                .table(Messages::Table)
                .add_column(ColumnDef::new(Messages::Action).string().null())
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for column in [Messages::Action, Messages::SubjectId] {
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

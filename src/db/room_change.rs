use sea_orm::entity::prelude::*;

/// A change to a room other than a new message (an edit, a delete, reactions, a read receipt),
/// numbered `seq` on the room's one sequence, beside its messages' numbers.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "room_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub room_id: String,
    pub seq: i64,
    /// `edited`, `deleted`, `reactions` or `read`.
    pub kind: String,
    pub message_id: i64,
    /// Who made the change (the reader, for `read`).
    pub user_id: Option<String>,
    /// The change as it was then, as JSON (see `domain::changes`).
    pub payload: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

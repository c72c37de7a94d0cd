use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub room_id: String,
    /// 1, 2, 3… within the room, without gaps: a subscriber that sees a jump knows it missed
    /// something and catches up from the database.
    pub seq: i64,
    /// `USER` or `SYSTEM`.
    pub kind: String,
    pub sender_id: Option<String>,
    pub body: String,
    pub client_message_id: Option<String>,
    pub created_at: DateTimeUtc,
    /// For a SYSTEM membership announcement: the user who joined or left.
    pub subject_id: Option<String>,
    /// For a SYSTEM membership announcement: `joined` or `left`.
    pub action: Option<String>,
    /// When the body was last edited; null if never.
    pub edited_at: Option<DateTimeUtc>,
    /// When the message was deleted (its body is then ""); null while it stands.
    pub deleted_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

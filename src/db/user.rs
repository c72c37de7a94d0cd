use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub username: String,
    /// Never leaves the server: not part of the hub's wire format.
    #[serde(skip)]
    pub password_hash: Option<String>,
    pub role: String,
    pub points: i64,
    /// The status the user chose (`ONLINE`, `AWAY`, `BUSY`); whether they are connected at all
    /// is live state, not stored.
    pub status: String,
    pub last_seen_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    /// Sequence number of the user's last notification (see `notifications.seq`).
    #[serde(default)]
    pub notification_seq: i64,
    /// Tokens issued at or before this instant are refused (an admin disconnected the user).
    #[serde(default)]
    pub tokens_revoked_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

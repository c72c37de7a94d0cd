use sea_orm::entity::prelude::*;

/// One thing an administrator did: `action` (`disconnect`, `publish`, `notify`) to `target`
/// (a user id, a channel, an audience), with what was sent in `detail`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, serde::Serialize, serde::Deserialize)]
#[sea_orm(table_name = "admin_actions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub admin_id: String,
    pub admin_name: String,
    pub action: String,
    pub target: String,
    pub detail: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

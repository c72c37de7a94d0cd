//! Whether this instance can serve: what the transports' health probe asks.

use super::Domain;

impl Domain {
    /// Whether the database answers a ping within two seconds.
    pub async fn database_ok(&self) -> bool {
        crate::db::ping(&self.db).await
    }
}

//! Leases: one replica at a time runs a background duty (garbage collection, retention).

use std::time::Duration;

use crate::storage::{MetadataStore, StoreError};
use crate::timestamp::Timestamp;

/// Takes or renews the cluster-wide lease `name` for `holder` for `ttl`: whether this
/// process should run that duty now.
pub async fn take(
    meta: &dyn MetadataStore,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<bool, StoreError> {
    let now = Timestamp::now();
    let until = Timestamp::from_millis(now.as_millis().saturating_add(ttl.as_millis() as i64));
    meta.lease(name, holder, now, until).await
}

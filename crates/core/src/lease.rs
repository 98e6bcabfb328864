//! Leases: one replica at a time runs a background duty (garbage collection, retention).

use std::time::Duration;

use crate::storage::{MetadataStore, StoreError};

/// Takes or renews the cluster-wide lease `name` for `holder` for `ttl`, by the database's
/// clock: the lease's generation if this process should run that duty now.
pub async fn take(
    meta: &dyn MetadataStore,
    name: &str,
    holder: &str,
    ttl: Duration,
) -> Result<Option<u64>, StoreError> {
    meta.lease(name, holder, ttl).await
}

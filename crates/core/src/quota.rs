//! Quotas: what each tenant may store, and the checks a write makes before its bytes are
//! taken (the stores check again in the transaction that records it).

use std::collections::BTreeMap;

use crate::error::{RegistryError, Result};
use crate::model::Usage;
use crate::storage::MetadataReads;

/// A tenant's quotas; `None` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Sizes of the tenant's files plus the offsets of its open uploads.
    pub max_bytes: Option<u64>,
    pub max_open_uploads: Option<u64>,
}

/// Quotas by tenant (a tenant not listed has none).
pub type Quotas = BTreeMap<String, Quota>;

/// How many more bytes a tenant may store now, if it has a byte quota.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ByteRoom {
    pub limit: u64,
    pub used: u64,
}

impl ByteRoom {
    pub(crate) fn left(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }

    pub(crate) fn exceeded(&self) -> RegistryError {
        RegistryError::QuotaExceeded {
            quota: "max_bytes",
            limit: self.limit,
            used: self.used,
        }
    }

    /// The quota, if it (and not `other`, the size limit it stands beside) is what cuts a
    /// body: a body refused as too large was refused by this quota.
    pub(crate) fn binding(room: Option<Self>, other: u64) -> Option<Self> {
        room.filter(|room| room.left() < other)
    }
}

/// The checks of one request against the quotas.
pub(crate) struct QuotaCheck<'a> {
    pub reads: &'a dyn MetadataReads,
    pub quotas: &'a Quotas,
}

impl QuotaCheck<'_> {
    /// What `tenant` uses, and its quotas.
    pub(crate) async fn usage(&self, tenant: &str) -> Result<(Usage, Quota)> {
        let usage = self.reads.usage(tenant).await?;
        let quota = self.quotas.get(tenant).copied().unwrap_or_default();
        Ok((usage, quota))
    }

    /// `tenant`'s byte quota, if any.
    pub(crate) fn max_bytes(&self, tenant: &str) -> Option<u64> {
        self.quotas.get(tenant).and_then(|q| q.max_bytes)
    }

    /// The room `tenant`'s byte quota leaves, `None` without one; already full → `507`.
    pub(crate) async fn byte_room(&self, tenant: &str) -> Result<Option<ByteRoom>> {
        let Some(limit) = self.max_bytes(tenant) else {
            return Ok(None);
        };
        let used = self.reads.usage(tenant).await?.bytes;
        let room = ByteRoom { limit, used };
        if used > limit {
            return Err(room.exceeded());
        }
        Ok(Some(room))
    }

    /// Refuses a new upload session past `max_open_uploads`, or one whose declared size
    /// would pass `max_bytes`.
    pub(crate) async fn check_new_upload(&self, tenant: &str, size: Option<u64>) -> Result<()> {
        let Some(quota) = self.quotas.get(tenant).copied() else {
            return Ok(());
        };
        let usage = self.reads.usage(tenant).await?;
        if let Some(limit) = quota.max_open_uploads
            && usage.open_uploads >= limit
        {
            return Err(RegistryError::QuotaExceeded {
                quota: "max_open_uploads",
                limit,
                used: usage.open_uploads,
            });
        }
        if let (Some(limit), Some(size)) = (quota.max_bytes, size) {
            let room = ByteRoom {
                limit,
                used: usage.bytes,
            };
            if size > room.left() {
                return Err(room.exceeded());
            }
        }
        Ok(())
    }
}

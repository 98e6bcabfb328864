//! Quotas: what each tenant may store, and the checks a write makes before its bytes are
//! taken (the stores check again in the transaction that records it).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::error::{RegistryError, Result};
use crate::model::Usage;
use crate::storage::{ByteStream, MetadataReads, StoreError};

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

/// The bytes each tenant's writes under way have taken so far in this process, charged
/// against its byte quota as they arrive: two bodies sent at once share the room their
/// tenant has left instead of each getting all of it. (Replicas do not share this count; the
/// transaction that records a write checks the quota again, so a tenant on N replicas can at
/// most briefly hold N times its room in bytes under way.)
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<String, u64>>>);

/// What a body failed with when its bytes passed the room its tenant's byte quota left.
#[derive(Debug, thiserror::Error)]
#[error("byte quota exceeded: {used} of {limit} used")]
pub(crate) struct QuotaReached {
    pub limit: u64,
    pub used: u64,
}

impl QuotaReached {
    /// The quota refusal inside `e`, if that is what ended the body.
    pub(crate) fn within(e: &StoreError) -> Option<RegistryError> {
        let StoreError::Body(e) = e else { return None };
        let reached = e.get_ref()?.downcast_ref::<QuotaReached>()?;
        Some(
            ByteRoom {
                limit: reached.limit,
                used: reached.used,
            }
            .exceeded(),
        )
    }
}

impl InFlight {
    /// `body`, each chunk charged to `tenant` before it is passed on: once the tenant's
    /// stored bytes (`room.used`, read when the write began) and every byte its writes under
    /// way have taken would pass `room.limit`, the body fails with [`QuotaReached`]. What it
    /// took is given back when the stream is dropped (the write then is recorded, or failed).
    pub(crate) fn meter(
        &self,
        tenant: &str,
        room: Option<ByteRoom>,
        body: ByteStream,
    ) -> ByteStream {
        let Some(room) = room else { return body };
        let mut charge = Charge {
            counts: self.0.clone(),
            tenant: tenant.to_string(),
            taken: 0,
        };
        body.map(move |chunk| {
            let chunk = chunk?;
            charge.take(room, chunk.len() as u64)?;
            Ok(chunk)
        })
        .boxed()
    }
}

/// The bytes one body has charged to its tenant; given back on drop.
struct Charge {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    tenant: String,
    taken: u64,
}

impl Charge {
    fn take(&mut self, room: ByteRoom, len: u64) -> std::io::Result<()> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let under_way = counts.entry(self.tenant.clone()).or_default();
        if room.used.saturating_add(*under_way).saturating_add(len) > room.limit {
            // What the tenant uses besides this write: stored, and its other writes' bytes.
            let used = room.used.saturating_add(*under_way - self.taken);
            return Err(std::io::Error::other(QuotaReached {
                limit: room.limit,
                used,
            }));
        }
        *under_way += len;
        self.taken += len;
        Ok(())
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(under_way) = counts.get_mut(&self.tenant) {
            *under_way = under_way.saturating_sub(self.taken);
            if *under_way == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(chunks: &[usize]) -> ByteStream {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|&n| Ok(Bytes::from(vec![0u8; n])))
            .collect();
        futures::stream::iter(chunks).boxed()
    }

    #[tokio::test]
    async fn two_bodies_share_the_room_and_give_it_back() {
        let inflight = InFlight::default();
        let room = Some(ByteRoom {
            limit: 100,
            used: 40,
        });
        let mut first = inflight.meter("acme", room, body(&[30, 30]));
        let mut second = inflight.meter("acme", room, body(&[20, 20]));
        assert!(first.next().await.unwrap().is_ok()); // 70 of 100
        assert!(second.next().await.unwrap().is_ok()); // 90
        let refused = second.next().await.unwrap().unwrap_err();
        let reached = refused
            .get_ref()
            .unwrap()
            .downcast_ref::<QuotaReached>()
            .unwrap();
        assert_eq!(
            (reached.limit, reached.used),
            (100, 70),
            "stored and the other's"
        );
        drop(second); // its 20 given back
        assert!(first.next().await.unwrap().is_ok()); // 100
        let other = inflight.meter("beta", room, body(&[60]));
        assert_eq!(
            other.collect::<Vec<_>>().await.len(),
            1,
            "another tenant's room"
        );
        drop(first);
        assert!(inflight.0.lock().unwrap().is_empty());
    }
}

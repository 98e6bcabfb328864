//! The end of a package's life: deletion by request, holds, and the retention rules that
//! delete packages by age or count (the registry's methods for them live here).

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;

use crate::error::{RegistryError, Resource, Result};
use crate::ids::PackageId;
use crate::model::*;
use crate::registry::{Registry, new_event};
use crate::storage::StoreError;
use crate::timestamp::Timestamp;

/// The retention rule of one class; a part that is `None` deletes nothing. A class with no
/// rule keeps its packages forever.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionRule {
    /// A finalized package is deleted this long after `finalized_at`.
    pub max_age: Option<Duration>,
    /// Only the newest N finalized packages of one tenant, class and subject are kept.
    pub keep_last: Option<u32>,
    /// An open package not finalized this long after `created_at` is deleted.
    pub open_max_age: Option<Duration>,
}

impl RetentionRule {
    pub fn is_empty(&self) -> bool {
        self.max_age.is_none() && self.keep_last.is_none() && self.open_max_age.is_none()
    }
}

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

/// Retention rules by class.
pub type RetentionRules = BTreeMap<String, RetentionRule>;

/// Parses `90s`, `15m`, `36h`, `14d`, `2w` (a bare number is seconds).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return None,
    };
    number.checked_mul(seconds).map(Duration::from_secs)
}

/// The largest whole unit [`parse_duration`] reads back.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    for (unit, size) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

fn after(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millis(t.as_millis().saturating_add(d.as_millis() as i64))
}

fn before(t: Timestamp, d: Duration) -> Timestamp {
    Timestamp::from_millis(t.as_millis().saturating_sub(d.as_millis() as i64))
}

impl Registry {
    /// What `tenant` uses, and its quotas.
    pub async fn usage(&self, tenant: &str) -> Result<(Usage, Quota)> {
        let usage = self.meta().usage(tenant).await?;
        let quota = self
            .config()
            .quotas
            .get(tenant)
            .copied()
            .unwrap_or_default();
        Ok((usage, quota))
    }

    /// `tenant`'s byte quota, if any.
    pub(crate) fn max_bytes(&self, tenant: &str) -> Option<u64> {
        self.config().quotas.get(tenant).and_then(|q| q.max_bytes)
    }

    /// The room `tenant`'s byte quota leaves, `None` without one; already full → `507`.
    pub(crate) async fn byte_room(&self, tenant: &str) -> Result<Option<ByteRoom>> {
        let Some(limit) = self.max_bytes(tenant) else {
            return Ok(None);
        };
        let used = self.meta().usage(tenant).await?.bytes;
        let room = ByteRoom { limit, used };
        if used > limit {
            return Err(room.exceeded());
        }
        Ok(Some(room))
    }

    /// Refuses a new upload session past `max_open_uploads`, or one whose declared size
    /// would pass `max_bytes`.
    pub(crate) async fn check_new_upload(&self, tenant: &str, size: Option<u64>) -> Result<()> {
        let Some(quota) = self.config().quotas.get(tenant).copied() else {
            return Ok(());
        };
        let usage = self.meta().usage(tenant).await?;
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

    /// The package as clients see it: with `expires_at` from the rules.
    pub(crate) fn present(&self, package: Package) -> Package {
        present_with(&self.config().retention, package)
    }

    /// Deletes a package (open or finalized) that is not held; its files answer `404` from
    /// then on, and bytes no remaining file references are left to garbage collection.
    pub async fn delete_package(&self, tenant: &str, id: PackageId) -> Result<()> {
        self.delete(tenant, id, DeleteReason::Request).await
    }

    async fn delete(&self, tenant: &str, id: PackageId, reason: DeleteReason) -> Result<()> {
        let event: EventFor = Box::new(move |p: &Package| {
            let mut event = new_event(EventType::PackageDeleted, &p.tenant, p.id, &());
            event.data = serde_json::json!({
                "reason": reason.as_str(),
                "file_count": p.file_count,
                "total_size": p.total_size,
            });
            event
        });
        match self.meta().delete_package(tenant, id, event).await {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Package)),
            Err(StoreError::Held) => Err(RegistryError::PackageHeld),
            Err(e) => Err(e.into()),
        }
    }

    /// Holds (`true`) or releases a package. Idempotent: only a change has an event.
    pub async fn set_hold(&self, tenant: &str, id: PackageId, held: bool) -> Result<Package> {
        let kind = if held {
            EventType::PackageHeld
        } else {
            EventType::PackageReleased
        };
        let rules = self.config().retention.clone();
        let present = move |p: &Package| present_with(&rules, p.clone());
        let event: EventFor =
            Box::new(move |p: &Package| new_event(kind, &p.tenant, p.id, &present(p)));
        match self.meta().set_hold(tenant, id, held, event).await {
            Ok(package) => Ok(self.present(package)),
            Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Package)),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes or renews the cluster-wide lease `name` for `holder` for `ttl`: whether this
    /// process should run that duty now.
    pub async fn lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = Timestamp::now();
        Ok(self
            .meta()
            .lease(name, holder, now, after(now, ttl))
            .await?)
    }

    /// Applies every retention rule once, the whole backlog: each package a rule selects is
    /// deleted with `reason: "retention"` (once, however many sweeps race: the store deletes
    /// each package once). A held package is never selected. Returns how many were deleted.
    pub async fn sweep_retention(&self) -> Result<u64> {
        const BATCH: u32 = 1000;
        const DELETIONS: usize = 16;
        let now = Timestamp::now();
        let mut deleted = 0;
        for (class, rule) in &self.config().retention {
            if rule.is_empty() {
                continue;
            }
            let query = RetentionQuery {
                class: class.clone(),
                finalized_before: rule.max_age.map(|d| before(now, d)),
                keep_last: rule.keep_last,
                open_created_before: rule.open_max_age.map(|d| before(now, d)),
            };
            loop {
                let batch = self.meta().retention_candidates(&query, BATCH).await?;
                // Several at once: on SQLite they share group commits, on PostgreSQL the pool.
                let taken = batch.len();
                let outcomes: Vec<_> = futures::stream::iter(batch)
                    .map(|(tenant, id)| async move {
                        match self.delete(&tenant, id, DeleteReason::Retention).await {
                            Ok(()) => (1, true),
                            // Deleted by someone else, or held since it was selected.
                            Err(RegistryError::NotFound(_) | RegistryError::PackageHeld) => {
                                (0, true)
                            }
                            Err(e) => {
                                tracing::warn!(package = %id, error = %e, "retention could not delete a package");
                                (0, false)
                            }
                        }
                    })
                    .buffer_unordered(DELETIONS)
                    .collect()
                    .await;
                deleted += outcomes.iter().map(|(n, _)| n).sum::<u64>();
                let progressed = outcomes.iter().any(|(_, p)| *p);
                if taken < BATCH as usize || !progressed {
                    break;
                }
            }
        }
        Ok(deleted)
    }
}

/// `package` with `expires_at` from `rules` (`None` while held or with no rule for it).
fn present_with(rules: &RetentionRules, mut package: Package) -> Package {
    let rule = rules.get(&package.retention_class);
    package.expires_at = match (rule, package.state, package.finalized_at) {
        _ if package.held => None,
        (Some(rule), PackageState::Finalized, Some(at)) => rule.max_age.map(|d| after(at, d)),
        (Some(rule), PackageState::Open, _) => {
            rule.open_max_age.map(|d| after(package.created_at, d))
        }
        _ => None,
    };
    package
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_and_print_back() {
        assert_eq!(
            parse_duration("14d"),
            Some(Duration::from_secs(14 * 86_400))
        );
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2w"), Some(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_duration("5y"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(format_duration(Duration::from_secs(14 * 86_400)), "2w");
        assert_eq!(format_duration(Duration::from_secs(36 * 3600)), "36h");
        assert_eq!(format_duration(Duration::from_secs(61)), "61s");
    }
}

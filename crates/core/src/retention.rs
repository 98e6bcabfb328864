//! Retention: the rules that delete packages by age or count, the `expires_at` they give a
//! package, and the sweep that applies them (a service of its own beside the registry).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use crate::error::{RegistryError, Result};
use crate::lifecycle;
use crate::model::*;
use crate::storage::MetadataStore;
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

/// Applies the retention rules to the packages of a metadata store.
pub struct Retention {
    meta: Arc<dyn MetadataStore>,
    rules: RetentionRules,
}

impl Retention {
    pub fn new(meta: Arc<dyn MetadataStore>, rules: RetentionRules) -> Self {
        Self { meta, rules }
    }

    /// Applies every retention rule once, the whole backlog: each package a rule selects is
    /// deleted with `reason: "retention"` (once, however many sweeps race: the store deletes
    /// each package once). A held package is never selected. Returns how many were deleted.
    pub async fn sweep(&self) -> Result<u64> {
        const BATCH: u32 = 1000;
        const DELETIONS: usize = 16;
        let meta = &*self.meta;
        let now = Timestamp::now();
        let mut deleted = 0;
        for (class, rule) in &self.rules {
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
                let batch = meta.reads().retention_candidates(&query, BATCH).await?;
                // Several at once: on SQLite they share group commits, on PostgreSQL the pool.
                let taken = batch.len();
                let outcomes: Vec<_> = futures::stream::iter(batch)
                    .map(|(tenant, id)| async move {
                        match lifecycle::delete(meta, &tenant, id, DeleteReason::Retention).await {
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
pub(crate) fn present_with(rules: &RetentionRules, mut package: Package) -> Package {
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

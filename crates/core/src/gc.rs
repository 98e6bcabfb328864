//! Online garbage collection: blob bytes no file uses, inline bytes no file uses, staged bytes
//! of uploads that are gone, and what crashes left behind — with no read-only window and no
//! lock that uploads or downloads wait for. The argument is in ARCHITECTURE.md ("Garbage
//! collection"); in short, a writer claims a digest in the metadata store before it publishes
//! or dedups onto those bytes, and a collection deletes bytes only after dooming the digest
//! in the metadata store, which succeeds only if no file uses it and no claim is younger
//! than the grace period. A file is recorded only if its claim still stands undoomed.

use std::time::Duration;

use crate::digest::Sha256Digest;
use crate::error::Result;
use crate::lease;
use crate::storage::{StoreError, Stores};
use crate::timestamp::Timestamp;

/// Blobs, uploads and digests handled per step.
const PAGE: usize = 1000;
/// Digests doomed per metadata-store call.
const DOOM_BATCH: usize = 100;

/// What one collection reclaimed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs looked at.
    pub scanned: u64,
    /// Blobs looked at and kept: what the store holds once the collection is done.
    pub kept: u64,
    /// Blobs whose bytes were deleted.
    pub blobs: u64,
    /// Inline byte rows deleted.
    pub inline: u64,
    /// Uploads whose staged bytes were deleted.
    pub staged: u64,
    /// Leftovers of crashes and lost races deleted.
    pub orphans: u64,
    /// Stopped early: the lease went to another replica.
    pub interrupted: bool,
}

/// How one collection runs.
#[derive(Clone, Copy, Debug)]
pub struct GcOptions<'a> {
    /// Bytes written or claimed more recently than this are kept.
    pub grace: Duration,
    /// Who holds the `gc` lease, renewed for `lease_ttl` as the collection goes.
    pub holder: &'a str,
    pub lease_ttl: Duration,
    /// The share of its time the collection works (1.0: flat out); after each page it pauses
    /// for the rest, so that traffic keeps the machine (a small one has two cores).
    pub duty: f64,
}

/// Garbage collection over a pair of stores: a service of its own beside the registry,
/// sharing nothing with it but the stores.
pub struct Collector {
    stores: Stores,
}

impl Collector {
    pub fn new(stores: Stores) -> Self {
        Self { stores }
    }

    /// One garbage collection: bytes no file uses and that no write claimed within the grace
    /// period are deleted. Renews its lease as it goes and stops if it is lost. Safe at any
    /// moment beside any traffic, on any number of replicas.
    pub async fn collect(&self, options: GcOptions<'_>) -> Result<GcReport> {
        let (meta, blobs) = (&*self.stores.meta, &*self.stores.blobs);
        let GcOptions {
            grace,
            holder,
            lease_ttl,
            duty,
        } = options;
        let mut report = GcReport::default();
        // Every time compared below is the database's (leases, claims, dooms), and every doom
        // is tagged with the lease's generation: a replica whose clock runs ahead, or a
        // process paused past its lease, can neither take the lease early nor doom, release or
        // (having checked the lease just before) delete bytes of a later holder's time.
        let lease = || lease::take(meta, "gc", holder, lease_ttl);
        let Some(generation) = lease().await? else {
            report.interrupted = true;
            return Ok(report);
        };
        let held = || async move { Ok::<_, StoreError>(lease().await? == Some(generation)) };
        // A digest doomed by another generation belongs to a collection that stopped mid-way
        // (killed, or its lease lapsed): adopt it and finish it.
        loop {
            let stale = meta.reads().doomed_blobs(generation).await?;
            let found = stale.len();
            let adopted = meta.doom_blobs(&stale, grace, generation).await?;
            let deleted = self.delete_doomed(adopted, generation, held).await?;
            report.blobs += deleted;
            if found < PAGE || deleted == 0 {
                break;
            }
        }

        let cutoff =
            Timestamp::from_millis(Timestamp::now().as_millis() - grace.as_millis() as i64);
        let mut after = None;
        loop {
            let started = tokio::time::Instant::now();
            // Still the one collection, before anything of this page is doomed or deleted.
            if after.is_some() && !held().await? {
                report.interrupted = true;
                return Ok(report);
            }
            let page = blobs.list_blobs(after, PAGE).await?;
            let Some(&(last, _)) = page.last() else { break };
            after = Some(last);
            report.scanned += page.len() as u64;
            // A first sieve by the blob store's dates (this replica's clock may be off: the
            // doom decides, by the database's clock and the claims).
            let old: Vec<_> = page
                .iter()
                .filter(|(_, written)| *written < cutoff)
                .map(|(digest, _)| *digest)
                .collect();
            let unused = meta.reads().unreferenced(&old).await?;
            let before = report.blobs;
            // Small batches: on SQLite a batch is one job of the only writer, which writes
            // wait behind.
            for batch in unused.chunks(DOOM_BATCH) {
                let doomed = meta.doom_blobs(batch, grace, generation).await?;
                report.blobs += self.delete_doomed(doomed, generation, held).await?;
            }
            report.kept += page.len() as u64 - (report.blobs - before);
            if page.len() < PAGE {
                break;
            }
            if duty < 1.0 {
                let worked = started.elapsed().as_secs_f64();
                let rest = worked * (1.0 - duty.max(0.01)) / duty.max(0.01);
                tokio::time::sleep(Duration::from_secs_f64(rest.min(10.0))).await;
            }
        }

        loop {
            let deleted = meta.collect_inline(PAGE as u32).await?;
            report.inline += deleted;
            if deleted < PAGE as u64 {
                break;
            }
        }

        // An upload's row is written before anything is staged for it, so staged bytes of
        // an upload that is not open are no one's (expired, cancelled, or completed and
        // recorded before its leftovers could be removed).
        let staged = blobs.list_staged().await?;
        for ids in staged.chunks(PAGE) {
            let open = meta.reads().open_uploads(ids).await?;
            for id in ids.iter().filter(|id| !open.contains(id)) {
                match blobs.stage_discard(id).await {
                    Ok(()) => report.staged += 1,
                    Err(e) => {
                        tracing::warn!(upload = %id, error = %e, "could not discard staged bytes")
                    }
                }
            }
        }

        // Pushed blobs past the grace are a manifest's files by now, or unused bytes.
        meta.forget_oci_blobs(grace).await?;
        report.orphans = blobs.collect_orphans(grace).await?;
        Ok(report)
    }

    /// Deletes the bytes of digests this generation doomed, then releases them, checking the
    /// lease (`held`) just before the deletion; if the blob store fails, they stay doomed for
    /// the next collection (deleting is idempotent).
    async fn delete_doomed<F, Fut>(
        &self,
        doomed: Vec<Sha256Digest>,
        generation: u64,
        held: F,
    ) -> Result<u64>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<bool, StoreError>>,
    {
        let (meta, blobs) = (&*self.stores.meta, &*self.stores.blobs);
        if doomed.is_empty() {
            return Ok(0);
        }
        if !held().await? {
            return Ok(0);
        }
        if let Err(e) = blobs.delete_blobs(&doomed).await {
            tracing::warn!(blobs = doomed.len(), error = %e, "could not delete unused blobs");
            return Ok(0);
        }
        meta.release_blobs(&doomed, generation).await?;
        Ok(doomed.len() as u64)
    }
}

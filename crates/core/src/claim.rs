//! The writers' side of garbage collection: a write claims its digest in the metadata store
//! after hashing and before it publishes or dedups onto the bytes (ARCHITECTURE.md,
//! "Garbage collection"); the file is recorded only while that claim stands.

use std::sync::OnceLock;
use std::time::Duration;

use async_trait::async_trait;

use crate::digest::Sha256Digest;
use crate::storage::{BlobInfo, BlobStore, Claim, MetadataStore, StoreError};

/// What a writer answers when a collection took the bytes it was about to record.
pub(crate) const GC_TOOK_THE_BYTES: &str =
    "the blob store (a garbage collection took these bytes meanwhile; send them again)";
/// How long a writer waits for a collection that is deleting the digest it wants.
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// The registry's [`Claim`]: claims a digest for one write and keeps the generation that
/// [`MetadataStore::add_file`] checks.
pub(crate) struct BlobClaimer<'a> {
    meta: &'a dyn MetadataStore,
    generation: OnceLock<i64>,
}

impl<'a> BlobClaimer<'a> {
    pub(crate) fn new(meta: &'a dyn MetadataStore) -> Self {
        Self {
            meta,
            generation: OnceLock::new(),
        }
    }

    /// The claim's generation, once [`claim`](Claim::claim) has run.
    pub(crate) fn generation(&self) -> Option<i64> {
        self.generation.get().copied()
    }
}

#[async_trait]
impl Claim for BlobClaimer<'_> {
    async fn claim(&self, blob: &BlobInfo) -> Result<(), StoreError> {
        let candidate = (ulid::Ulid::new().random() as i64) & i64::MAX;
        let deadline = tokio::time::Instant::now() + CLAIM_WAIT;
        loop {
            let claimed = self.meta.claim_blob(&blob.digest, candidate).await?;
            if let Some(generation) = claimed {
                // Each write claims once, after hashing.
                let _ = self.generation.set(generation);
                return Ok(());
            }
            // A collection is deleting these bytes right now: once it is done, they are
            // written anew.
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Unavailable(
                    "the blob store (a garbage collection is deleting these bytes)",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Gives up a write's claim (`generation`) of `digest` after its file was refused at the
/// record (a race with another writer of the path, a finalize, a quota filled meanwhile): if
/// no other writer is under way with the digest and no file uses it, the bytes this write
/// published are deleted now rather than left to a collection. The doom is the writer's own
/// (a negative token), checked just before the deletion; a collection adopts it only once it
/// is a minute old, so a writer paused after its check is the one window, as for a
/// collection paused after checking its lease. Failures only leave the bytes to the
/// collection: they are logged, and the refusal stands as it was.
pub(crate) async fn abandon(
    meta: &dyn MetadataStore,
    blobs: &dyn BlobStore,
    digest: &Sha256Digest,
    generation: i64,
) {
    let token = -((ulid::Ulid::new().random() as i64) & i64::MAX) - 1;
    let outcome = async {
        if !meta.abandon_blob(digest, generation, token).await? {
            return Ok(false);
        }
        if !meta.reads().abandoned_stands(digest, token).await? {
            return Ok(false);
        }
        blobs.delete_blobs(std::slice::from_ref(digest)).await?;
        meta.release_abandoned(digest, token).await?;
        Ok::<_, StoreError>(true)
    };
    match outcome.await {
        Ok(deleted) => tracing::debug!(%digest, deleted, "a refused write gave up its claim"),
        Err(e) => tracing::warn!(%digest, error = %e, "a refused write's bytes are left to GC"),
    }
}

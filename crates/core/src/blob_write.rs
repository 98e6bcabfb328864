//! The blob-write protocol, once for every blob store: the bytes are staged out of sight
//! while a thread of their own hashes them, the digest is checked against what the client
//! expected, the digest is claimed against garbage collection, and only then does the store
//! publish the staged bytes (or find them present). That order is what garbage collection's
//! safety rests on (ARCHITECTURE.md, "Garbage collection"); a store only stages and publishes.

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::digest::Sha256Hasher;
use crate::storage::{
    BlobInfo, BlobStore, ByteStream, Claim, Head, StoreError, check_digest, read_head,
};
use crate::{Sha256Digest, limits};

/// Chunks in flight between a body and the thread that hashes it.
const HASH_QUEUE: usize = 16;

/// Stores `body` as a blob in `blobs`: at most `max_len` bytes ([`StoreError::TooLarge`]
/// past that), hashing to `expected` when that is given ([`StoreError::DigestMismatch`]),
/// claimed with `claim` before it is published. On any failure nothing becomes visible.
pub async fn write_blob(
    blobs: &dyn BlobStore,
    body: ByteStream,
    expected: Option<Sha256Digest>,
    max_len: u64,
    claim: &dyn Claim,
) -> Result<BlobInfo, StoreError> {
    // A small body is gathered whole and hashed here (a trip to another thread would cost
    // more than the hash); the store then writes it in one go.
    let body = match read_head(body, limits::SMALL_BLOB_BYTES, max_len).await? {
        Head::Whole(chunks) => {
            let mut hasher = Sha256Hasher::new();
            chunks.iter().for_each(|chunk| hasher.update(chunk));
            let blob = info(hasher);
            check_digest(expected, blob.digest)?;
            claim.claim(&blob).await?;
            blobs.store_small(blob, chunks).await?;
            return Ok(blob);
        }
        Head::Partial(body) => body,
    };
    let (body, hashed) = hash_alongside(body, Sha256Hasher::new());
    let staged = blobs.stage(body, max_len).await;
    // The hash of every byte the store took (a failed stage has taken only some).
    let hasher = hashed.await;
    let staged = staged?;
    let blob = info(hasher?);
    let admitted = match check_digest(expected, blob.digest) {
        Ok(()) => claim.claim(&blob).await,
        Err(e) => Err(e),
    };
    if let Err(e) = admitted {
        blobs.discard(staged).await;
        return Err(e);
    }
    blobs.publish(staged, blob).await?;
    Ok(blob)
}

fn info(hasher: Sha256Hasher) -> BlobInfo {
    BlobInfo {
        size: hasher.len(),
        digest: hasher.finish(),
    }
}

/// `body` as it is, while a blocking thread folds every chunk it yields into `hasher`: the
/// hash and whatever the store does with the bytes (write, upload) run on two cores. The
/// hasher comes back once the returned stream has ended or been dropped.
pub fn hash_alongside(
    body: ByteStream,
    hasher: Sha256Hasher,
) -> (
    ByteStream,
    impl Future<Output = Result<Sha256Hasher, StoreError>> + Send,
) {
    let (to_hasher, mut chunks) = mpsc::channel::<Bytes>(HASH_QUEUE);
    let hashing = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        while let Some(chunk) = chunks.blocking_recv() {
            hasher.update(&chunk);
        }
        hasher
    });
    let body = body
        .then(move |chunk| {
            let to_hasher = to_hasher.clone();
            async move {
                if let Ok(chunk) = &chunk
                    && !chunk.is_empty()
                {
                    // The hasher lives as long as its channel: it cannot be gone here.
                    let _ = to_hasher.send(chunk.clone()).await;
                }
                chunk
            }
        })
        .boxed();
    let hashed = async move {
        hashing
            .await
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))
    };
    (body, hashed)
}

//! Blobs and upload staging in an S3-compatible object store (`s3://bucket/prefix`): what
//! many replicas share. Nothing is kept on a replica's disk.
//!
//! Layout under the prefix:
//! - `data/<ulid>` — a blob's bytes, one object each, written under a key no other request
//!   uses (so racing writers never touch each other's objects);
//! - `blobs/sha256/<hex>` — the blob's *pointer*, a small JSON `{key, size}` naming its data
//!   object, written with `If-None-Match: *` only after every byte was hashed to that digest:
//!   the pointer is what makes a blob visible. The first writer of a digest wins; a loser
//!   deletes its own data object. So a blob's bytes are never copied inside S3 to reach their
//!   content address, whatever their size (a single CopyObject stops at 5 GiB);
//! - `uploads/<upload>/<offset>-<ulid>` — one object per append of an upload session, again
//!   under a key of its own. The upload's [`Staging`] (saved by the metadata store with its
//!   offset and hash state in one compare-and-set) lists the objects that make up its bytes;
//!   an append that loses the compare-and-set leaves an object no list names. Complete
//!   streams the listed objects, re-hashing them, into a new data object, then writes the
//!   pointer; discard deletes everything under the upload's prefix.
//!
//! Objects of at most [`PART`] bytes are one PUT; longer ones a multipart upload of
//! [`PART`]-byte parts (S3 wants non-last parts of 5 MiB or more; 8 MiB parts fit 64 GiB in
//! 8,192 parts), two in flight: memory per request stays near three parts, whatever the
//! file's size.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::storage::{
    BlobInfo, BlobStore, ByteStream, Claim, StoreError, check_digest,
};
use artifactstore_core::{Sha256Digest, Sha256Hasher, Staging, Timestamp, UploadId};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutMode,
    PutOptions, PutPayload, RetryConfig, WriteMultipart,
};
use serde::{Deserialize, Serialize};

/// Bytes per PUT, and per part of a multipart upload.
const PART: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// Objects one upload session may stage (one per append); S3's own part limit.
const MAX_STAGED: usize = 10_000;
/// Pointers kept in memory (they never change once written).
const POINTER_CACHE: usize = 16 * 1024;

const WHAT: &str = "the blob store (S3)";

pub struct S3BlobStore {
    store: Arc<AmazonS3>,
    prefix: Path,
    pointers: std::sync::Mutex<std::collections::HashMap<Sha256Digest, Pointer>>,
}

/// What `blobs/sha256/<hex>` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pointer {
    key: String,
    size: u64,
}

/// One staged object of an upload: its key under the prefix and its length.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Staged {
    key: String,
    len: u64,
}

impl S3BlobStore {
    /// Opens `url` (`s3://bucket/prefix`), with the endpoint, region and keys from the
    /// standard `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …). Requests are retried twice within 5 s
    /// at most, connects give up after 2 s, and a read that stalls for 30 s fails: an
    /// unreachable store answers `Unavailable` instead of holding requests.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| StoreError::Database(format!("blob url {url:?} is not s3://…")))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // The client settings of the environment (AWS_ALLOW_HTTP, proxies, …), then ours:
        // `with_client_options` replaces what `from_env` read.
        let mut options = ClientOptions::new();
        for (key, value) in std::env::vars() {
            if let Ok(AmazonS3ConfigKey::Client(key)) = key.to_ascii_lowercase().parse() {
                options = options.with_config(key, value);
            }
        }
        let options = options
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout_disabled()
            .with_read_timeout(Duration::from_secs(30));
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(5),
        };
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_client_options(options)
            .with_retry(retry)
            .build()
            .map_err(|e| StoreError::Database(format!("blob url {url:?}: {e}")))?;
        Ok(Self {
            store: Arc::new(store),
            prefix: Path::from(prefix),
            pointers: Default::default(),
        })
    }

    fn key(&self, rest: &str) -> Path {
        rest.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    fn pointer_key(&self, digest: &Sha256Digest) -> Path {
        self.key(&format!("blobs/sha256/{}", digest.hex()))
    }

    fn upload_prefix(&self, upload: &UploadId) -> Path {
        self.key(&format!("uploads/{upload}"))
    }

    async fn pointer(&self, digest: &Sha256Digest) -> Result<Option<Pointer>, StoreError> {
        if let Some(p) = self.cached(digest) {
            return Ok(Some(p));
        }
        let bytes = match self.store.get(&self.pointer_key(digest)).await {
            Ok(got) => got.bytes().await.map_err(s3)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(s3(e)),
        };
        let pointer: Pointer = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("pointer of {digest}: {e}")))?;
        let mut cache = self.pointers.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= POINTER_CACHE {
            cache.clear();
        }
        cache.insert(*digest, pointer.clone());
        Ok(Some(pointer))
    }

    fn cached(&self, digest: &Sha256Digest) -> Option<Pointer> {
        let cache = self.pointers.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(digest).cloned()
    }

    fn forget(&self, digest: &Sha256Digest) {
        let mut cache = self.pointers.lock().unwrap_or_else(|p| p.into_inner());
        cache.remove(digest);
    }

    /// Makes the data object `key` (already complete, `blob.size` bytes hashed to
    /// `blob.digest`) the blob, unless the digest has a pointer already: then the new object
    /// is no one's and goes.
    async fn publish(&self, key: &Path, blob: BlobInfo) -> Result<(), StoreError> {
        let pointer = Pointer {
            key: key.to_string(),
            size: blob.size,
        };
        let body = serde_json::to_vec(&pointer).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let created = self
            .store
            .put_opts(
                &self.pointer_key(&blob.digest),
                PutPayload::from(body),
                PutOptions::from(PutMode::Create),
            )
            .await;
        match created {
            // Some S3 servers (s3s-fs among them) check `If-None-Match` apart from the write,
            // so two racing writers can both succeed and the later overwrites. Reading the
            // pointer back tells the overwritten one that its object is no one's. (Either
            // object holds the digest's bytes: a file is never at risk, only space.)
            Ok(_) => {
                self.forget(&blob.digest);
                if let Some(winner) = self.pointer(&blob.digest).await?
                    && winner.key != pointer.key
                {
                    self.delete_quietly(key).await;
                }
                Ok(())
            }
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {
                self.delete_quietly(key).await;
                Ok(())
            }
            Err(e) => {
                self.delete_quietly(key).await;
                Err(s3(e))
            }
        }
    }

    /// The pointers of `digests` as the bucket has them now, 16 lookups at once; digests
    /// without one are left out. Never from the cache: a cached pointer may name an object
    /// that a collection on another replica deleted, and the digest's bytes since live in
    /// another.
    async fn fresh_pointers(
        &self,
        digests: Vec<Sha256Digest>,
    ) -> Result<Vec<(Sha256Digest, Pointer)>, StoreError> {
        let found: Vec<_> = futures::stream::iter(digests)
            .map(|digest| async move {
                self.forget(&digest);
                Ok::<_, StoreError>(self.pointer(&digest).await?.map(|p| (digest, p)))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }

    /// Deletes `keys` (DeleteObjects, 1,000 a request); keys that are gone already are no
    /// error.
    async fn delete_all(
        &self,
        keys: futures::stream::BoxStream<'static, object_store::Result<Path>>,
    ) -> Result<(), StoreError> {
        let mut deleted = self.store.delete_stream(keys);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(s3(e)),
            }
        }
        Ok(())
    }

    /// Deletes an object no one refers to; failing only costs space (a later sweep finds it).
    async fn delete_quietly(&self, key: &Path) {
        if let Err(e) = self.store.delete(key).await
            && !matches!(e, object_store::Error::NotFound { .. })
        {
            tracing::warn!(key = %key, error = %e, "could not delete an unreferenced object");
        }
    }

    /// Streams `body` into a new object at `key`, hashing it with `hasher`; at most
    /// `max_len` bytes. On failure nothing is left at `key` (a multipart upload is aborted).
    async fn write_object(
        &self,
        key: &Path,
        mut body: ByteStream,
        mut hasher: Sha256Hasher,
        max_len: u64,
    ) -> Result<Sha256Hasher, StoreError> {
        let start = hasher.len();
        let taken = |chunk: &Bytes, hasher: &mut Sha256Hasher| {
            hasher.update(chunk);
            if hasher.len() - start > max_len {
                Err(StoreError::TooLarge { limit: max_len })
            } else {
                Ok(())
            }
        };
        // The first part decides: a body that ends within it is one PUT.
        let mut head = Vec::new();
        let mut gathered = 0;
        while gathered < PART {
            match body.next().await {
                Some(chunk) => {
                    let chunk = chunk.map_err(StoreError::Body)?;
                    taken(&chunk, &mut hasher)?;
                    gathered += chunk.len();
                    head.push(chunk);
                }
                None => {
                    self.store
                        .put(key, PutPayload::from_iter(head))
                        .await
                        .map_err(s3)?;
                    return Ok(hasher);
                }
            }
        }
        let upload = self.store.put_multipart(key).await.map_err(s3)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        for chunk in head {
            writer.put(chunk);
        }
        let streamed = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StoreError::Body)?;
                taken(&chunk, &mut hasher)?;
                writer
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(s3)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        match streamed {
            Ok(()) => {
                writer.finish().await.map_err(s3)?;
                Ok(hasher)
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(key = %key, error = %abort, "could not abort a multipart upload");
                }
                Err(e)
            }
        }
    }

    /// The bytes `range` of the object `key`, streamed.
    async fn read_object(&self, key: &Path, range: Range<u64>) -> Result<ByteStream, StoreError> {
        if range.is_empty() {
            return Ok(futures::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(range)),
            ..Default::default()
        };
        let got = self.store.get_opts(key, options).await.map_err(s3)?;
        Ok(got
            .into_stream()
            .map_err(|e| std::io::Error::other(s3(e)))
            .boxed())
    }
}

/// When an object was last written.
fn written(meta: &object_store::ObjectMeta) -> Timestamp {
    Timestamp::from_millis(meta.last_modified.timestamp_millis())
}

fn parse_staging(staging: &Staging) -> Result<Vec<Staged>, StoreError> {
    if staging.0.is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&staging.0).map_err(|e| StoreError::Corrupt(format!("staging: {e}")))
}

/// A store error from an object store error: the ones that mean "cannot reach it now" (no
/// connection, timeouts, 5xx after the retries) are [`StoreError::Unavailable`], answered
/// `503` with `Retry-After`.
fn s3(e: object_store::Error) -> StoreError {
    use object_store::client::{HttpError, HttpErrorKind};
    if let object_store::Error::NotFound { .. } = e {
        return StoreError::NotFound;
    }
    let mut unreachable = false;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(error) = source {
        if let Some(http) = error.downcast_ref::<HttpError>() {
            unreachable |= matches!(
                http.kind(),
                HttpErrorKind::Connect
                    | HttpErrorKind::Request
                    | HttpErrorKind::Timeout
                    | HttpErrorKind::Interrupted
            );
        }
        // object_store names no type for a final 5xx answer; its text does.
        unreachable |= error.to_string().contains("status code: 5");
        source = error.source();
    }
    if unreachable {
        tracing::warn!(error = %e, "blob store unreachable");
        StoreError::Unavailable(WHAT)
    } else {
        StoreError::Io(std::io::Error::other(e))
    }
}

#[async_trait]
impl BlobStore for S3BlobStore {
    async fn ping(&self) -> Result<(), StoreError> {
        match self.store.head(&self.key("ping")).await {
            Ok(_) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(s3(e)),
        }
    }

    async fn put(
        &self,
        body: ByteStream,
        expected: Option<Sha256Digest>,
        max_len: u64,
        claim: &dyn Claim,
    ) -> Result<BlobInfo, StoreError> {
        if let Some(expected) = expected
            && let Some(pointer) = self.pointer(&expected).await?
        {
            // Stored already: the body only has to prove it is those bytes.
            let mut hasher = Sha256Hasher::new();
            let mut body = body;
            while let Some(chunk) = body.next().await {
                hasher.update(&chunk.map_err(StoreError::Body)?);
                if hasher.len() > max_len {
                    return Err(StoreError::TooLarge { limit: max_len });
                }
            }
            let blob = BlobInfo {
                size: hasher.len(),
                digest: hasher.finish(),
            };
            check_digest(Some(expected), blob.digest)?;
            if blob.size != pointer.size {
                return Err(StoreError::Corrupt(format!("size of blob {expected}")));
            }
            // Claimed, the bytes can no longer go; were they still there when it was made?
            claim.claim(&blob).await?;
            self.forget(&expected);
            if self.pointer(&expected).await?.is_none() {
                return Err(StoreError::Unavailable(
                    "the blob store (a garbage collection took these bytes meanwhile; send them again)",
                ));
            }
            return Ok(blob);
        }
        let key = self.key(&format!("data/{}", ulid::Ulid::new()));
        let hasher = self
            .write_object(&key, body, Sha256Hasher::new(), max_len)
            .await?;
        let blob = BlobInfo {
            size: hasher.len(),
            digest: hasher.finish(),
        };
        if let Err(e) = check_digest(expected, blob.digest).and(claim.claim(&blob).await) {
            self.delete_quietly(&key).await;
            return Err(e);
        }
        self.publish(&key, blob).await?;
        Ok(blob)
    }

    async fn size(&self, digest: &Sha256Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.pointer(digest).await?.map(|p| p.size))
    }

    async fn read(
        &self,
        digest: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<ByteStream, StoreError> {
        let pointer = self.pointer(digest).await?.ok_or(StoreError::NotFound)?;
        match self
            .read_object(&Path::from(pointer.key), range.clone())
            .await
        {
            // A cached pointer may name an object since collected and written anew: look once
            // more, never serve a stale name twice.
            Err(StoreError::NotFound) => {
                self.forget(digest);
                let pointer = self.pointer(digest).await?.ok_or(StoreError::NotFound)?;
                self.read_object(&Path::from(pointer.key), range).await
            }
            other => other,
        }
    }

    async fn stage_append(
        &self,
        upload: &UploadId,
        staging: &Staging,
        offset: u64,
        hasher: Sha256Hasher,
        body: ByteStream,
        max_len: u64,
    ) -> Result<(Sha256Hasher, Staging), StoreError> {
        let mut staged = parse_staging(staging)?;
        let staged_len: u64 = staged.iter().map(|s| s.len).sum();
        if staged_len != offset {
            return Err(StoreError::Corrupt(format!(
                "upload {upload}: {staged_len} bytes staged, offset {offset}"
            )));
        }
        if staged.len() >= MAX_STAGED {
            return Err(StoreError::TooLarge { limit: 0 });
        }
        let rest = format!("uploads/{upload}/{offset:020}-{}", ulid::Ulid::new());
        let key = self.key(&rest);
        let hasher = self.write_object(&key, body, hasher, max_len).await?;
        let len = hasher.len() - offset;
        if len == 0 {
            self.delete_quietly(&key).await;
        } else {
            staged.push(Staged {
                key: key.to_string(),
                len,
            });
        }
        let staging =
            serde_json::to_string(&staged).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok((hasher, Staging(staging)))
    }

    async fn stage_commit(
        &self,
        upload: &UploadId,
        staging: &Staging,
        blob: BlobInfo,
    ) -> Result<(), StoreError> {
        // The caller has claimed the digest: a pointer found now stays; a cached one may
        // predate a collection.
        self.forget(&blob.digest);
        if self.pointer(&blob.digest).await?.is_some() {
            return Ok(());
        }
        let staged = parse_staging(staging)?;
        // The staged objects, in order, as one stream; each is read only when reached.
        let store = self.store.clone();
        let parts = futures::stream::iter(staged)
            .then(move |part| {
                let store = store.clone();
                async move {
                    let got = store.get(&Path::from(part.key)).await.map_err(s3)?;
                    Ok::<_, StoreError>(got.into_stream().map_err(|e| std::io::Error::other(s3(e))))
                }
            })
            .map_err(std::io::Error::other)
            .try_flatten()
            .boxed();
        let key = self.key(&format!("data/{}", ulid::Ulid::new()));
        let hasher = match self
            .write_object(&key, parts, Sha256Hasher::new(), blob.size)
            .await
        {
            Ok(hasher) => hasher,
            Err(StoreError::Body(e)) => {
                return Err(StoreError::Corrupt(format!(
                    "upload {upload}: staged bytes: {e}"
                )));
            }
            Err(e) => return Err(e),
        };
        let written = BlobInfo {
            size: hasher.len(),
            digest: hasher.finish(),
        };
        if written != blob {
            self.delete_quietly(&key).await;
            return Err(StoreError::Corrupt(format!(
                "upload {upload}: staged bytes are {written:?}, expected {blob:?}"
            )));
        }
        self.publish(&key, blob).await
    }

    async fn stage_discard(&self, upload: &UploadId) -> Result<(), StoreError> {
        let prefix = self.upload_prefix(upload);
        let keys = self.store.list(Some(&prefix)).map_ok(|meta| meta.location);
        self.delete_all(keys.boxed()).await
    }

    async fn list_blobs(
        &self,
        after: Option<Sha256Digest>,
        limit: usize,
    ) -> Result<Vec<(Sha256Digest, Timestamp)>, StoreError> {
        let prefix = self.key("blobs/sha256");
        let listing = match after {
            Some(after) => self
                .store
                .list_with_offset(Some(&prefix), &self.pointer_key(&after)),
            None => self.store.list(Some(&prefix)),
        };
        let metas: Vec<_> = listing.take(limit).try_collect().await.map_err(s3)?;
        Ok(metas
            .iter()
            .filter_map(|meta| {
                let digest = Sha256Digest::from_hex(meta.location.filename()?)?;
                Some((digest, written(meta)))
            })
            .collect())
    }

    /// Every pointer first, then their data objects, each kind in DeleteObjects batches: a
    /// collection stopped in between leaves objects no pointer names, which
    /// [`collect_orphans`](BlobStore::collect_orphans) finds.
    async fn delete_blobs(&self, digests: &[Sha256Digest]) -> Result<(), StoreError> {
        let found = self.fresh_pointers(digests.to_vec()).await?;
        let (mut keys, mut data) = (Vec::new(), Vec::new());
        for (digest, pointer) in found {
            self.forget(&digest);
            keys.push(Ok(self.pointer_key(&digest)));
            data.push(Ok(Path::from(pointer.key)));
        }
        for batch in [keys, data] {
            self.delete_all(futures::stream::iter(batch).boxed())
                .await?;
        }
        Ok(())
    }

    async fn list_staged(&self) -> Result<Vec<UploadId>, StoreError> {
        let metas: Vec<_> = self
            .store
            .list(Some(&self.key("uploads")))
            .try_collect()
            .await
            .map_err(s3)?;
        // `uploads/<id>/<offset>-<ulid>`: the id is the segment before the last.
        let staged: std::collections::BTreeSet<UploadId> = metas
            .iter()
            .filter_map(|meta| {
                let parts: Vec<_> = meta.location.parts().collect();
                parts
                    .get(parts.len().checked_sub(2)?)?
                    .as_ref()
                    .parse()
                    .ok()
            })
            .collect();
        Ok(staged.into_iter().collect())
    }

    /// Data objects written before `before` that no pointer names: a writer that crashed
    /// before publishing, a collection stopped between pointer and object, the loser of a
    /// pointer race that could not delete its own. (An S3 multipart upload that a crash left
    /// unfinished is not listed by object_store; the bucket's AbortIncompleteMultipartUpload
    /// rule reclaims those.)
    async fn collect_orphans(&self, before: Timestamp) -> Result<u64, StoreError> {
        let data: Vec<_> = self
            .store
            .list(Some(&self.key("data")))
            .try_filter(|meta| futures::future::ready(written(meta) < before))
            .try_collect()
            .await
            .map_err(s3)?;
        if data.is_empty() {
            return Ok(0);
        }
        // Listed after the data objects: a pointer published meanwhile is seen.
        let mut named = std::collections::HashSet::new();
        let mut after = None;
        loop {
            let page = self.list_blobs(after, 1000).await?;
            let Some(&(last, _)) = page.last() else { break };
            after = Some(last);
            let digests = page.iter().map(|(digest, _)| *digest).collect();
            let pointers = self.fresh_pointers(digests).await?;
            named.extend(pointers.into_iter().map(|(_, p)| p.key));
        }
        let orphans: Vec<_> = data
            .into_iter()
            .filter(|meta| !named.contains(meta.location.as_ref()))
            .map(|meta| Ok(meta.location))
            .collect();
        let removed = orphans.len() as u64;
        self.delete_all(futures::stream::iter(orphans).boxed())
            .await?;
        Ok(removed)
    }
}

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
//! - `multipart/<ulid>` — the journal of a blob's multipart upload (its key and upload id),
//!   written before its first part, rewritten every minute, and deleted only once the blob's
//!   pointer exists (or the write failed): S3 dates a multipart object from when its upload
//!   *began*, so a long upload's object looks old the moment it is complete, and its journal
//!   is what keeps a sweep off it until it is named. A collection aborts the uploads whose
//!   journal grew old (a crash left them). An append's journal is
//!   `uploads/<upload>/journal-<offset>-<ulid>`, so that whatever ends the upload (complete,
//!   cancel, expiry, a collection of uploads no longer open) aborts its multipart uploads
//!   with its other objects;
//! - `clock/now` — rewritten by each sweep to read the S3 server's time: every age a sweep
//!   compares is the server's, never a replica's;
//! - `sweep/mark` — the ULID from which the next sweep judges data objects (see
//!   `collect_orphans`).
//!
//! A sweep deletes a data object only if it is older than the grace, no pointer names it and
//! no live journal does. A writer publishes only within half the grace of the last moment its
//! object was protected (its PUT, or its journal's last refresh): a process paused longer is
//! refused rather than acknowledged. A pointer is never trusted without its object: a
//! writer finding one whose object is gone replaces it (conditionally on its ETag), and a
//! read of it fails rather than answering as if the blob were absent.
//!
//! Objects of at most [`PART`] bytes are one PUT; longer ones a multipart upload of
//! [`PART`]-byte parts (S3 wants non-last parts of 5 MiB or more; 8 MiB parts fit 64 GiB in
//! 8,192 parts), two in flight: memory per request stays near three parts, whatever the
//! file's size.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::blob_write::hash_alongside;
use artifactstore_core::storage::{
    BlobInfo, BlobStore, ByteStream, Staged as StagedBlob, StoreError,
};
use artifactstore_core::{Sha256Digest, Sha256Hasher, Staging, Timestamp, UploadId};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, GetOptions, GetRange, MultipartId, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};

/// Bytes per PUT, and per part of a multipart upload.
const PART: usize = 8 * 1024 * 1024;
/// Parts of one multipart upload in flight at once.
const PARTS_IN_FLIGHT: usize = 2;
/// How the journal of an append's multipart upload begins its name, under the upload's prefix.
const JOURNAL: &str = "journal-";
/// Objects one upload session may stage (one per append); S3's own part limit.
const MAX_STAGED: usize = 10_000;
/// Pointers kept in memory (they never change once written).
const POINTER_CACHE: usize = 16 * 1024;

const WHAT: &str = "the blob store (S3)";

pub struct S3BlobStore {
    store: Arc<AmazonS3>,
    prefix: Path,
    pointers: std::sync::Mutex<std::collections::HashMap<Sha256Digest, Pointer>>,
    /// Garbage collection's grace period: an unnamed data object older than it (by the S3
    /// server's clock) and named by no live journal is an orphan. A writer whose object could
    /// have grown that old unprotected (a process paused half of it) does not publish it.
    grace: Duration,
}

/// A data object written for a blob and not yet named by a pointer, with what keeps a sweep
/// from taking it meanwhile: its journal, still refreshed, when it was a multipart upload (S3
/// dates such an object from when its upload *began*, so it may look old the moment it is
/// complete); otherwise its youth. `since` is the moment from which its protection is
/// counted: the last journal write, or the start of its PUT.
struct Unpublished {
    key: Path,
    journal: Option<LiveJournal>,
    since: tokio::time::Instant,
}

/// A journal kept fresh by a task of its own until it is dropped (which stops the task).
struct LiveJournal {
    path: Path,
    /// When the journal was last written, as the refresher last managed it.
    written: Arc<std::sync::Mutex<tokio::time::Instant>>,
    _refresher: tokio::task::JoinSet<()>,
}

impl Unpublished {
    /// Since when the object has been protected: a stalled refresher (a paused process)
    /// shows here.
    fn protected_since(&self) -> tokio::time::Instant {
        match &self.journal {
            Some(journal) => *journal.written.lock().unwrap_or_else(|p| p.into_inner()),
            None => self.since,
        }
    }
}

/// What `blobs/sha256/<hex>` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Pointer {
    key: String,
    size: u64,
}

/// What `multipart/<ulid>` holds while a multipart upload is under way: object_store cannot
/// list the multipart uploads of a bucket, so this is how a collection finds the ones a crash
/// left, with their parts' bytes, and aborts them.
#[derive(Debug, Serialize, Deserialize)]
struct Journal {
    key: String,
    id: MultipartId,
}

/// The parts of one multipart upload: chunks cut at `PART` bytes, each part a task of its own,
/// at most `PARTS_IN_FLIGHT` at once. Dropped, it aborts the parts' tasks (the upload itself
/// is left to its journal).
struct Parts {
    store: Arc<AmazonS3>,
    key: Path,
    id: MultipartId,
    pending: Vec<Bytes>,
    pending_len: usize,
    next: usize,
    sent: tokio::task::JoinSet<object_store::Result<(usize, PartId)>>,
    done: Vec<(usize, PartId)>,
}

impl Parts {
    fn new(store: Arc<AmazonS3>, key: Path, id: MultipartId) -> Self {
        Self {
            store,
            key,
            id,
            pending: Vec::new(),
            pending_len: 0,
            next: 0,
            sent: tokio::task::JoinSet::new(),
            done: Vec::new(),
        }
    }

    async fn push(&mut self, mut chunk: Bytes) -> Result<(), StoreError> {
        while self.pending_len + chunk.len() >= PART {
            let cut = chunk.split_to(PART - self.pending_len);
            self.pending.push(cut);
            self.send().await?;
        }
        if !chunk.is_empty() {
            self.pending_len += chunk.len();
            self.pending.push(chunk);
        }
        Ok(())
    }

    /// Sends what is pending as the next part, once fewer than `PARTS_IN_FLIGHT` are.
    async fn send(&mut self) -> Result<(), StoreError> {
        while self.sent.len() >= PARTS_IN_FLIGHT {
            self.settle_one().await?;
        }
        let payload = PutPayload::from_iter(std::mem::take(&mut self.pending));
        self.pending_len = 0;
        let (store, key, id, index) = (
            self.store.clone(),
            self.key.clone(),
            self.id.clone(),
            self.next,
        );
        self.next += 1;
        self.sent.spawn(async move {
            let part = store.put_part(&key, &id, index, payload).await?;
            Ok((index, part))
        });
        Ok(())
    }

    async fn settle_one(&mut self) -> Result<(), StoreError> {
        let Some(joined) = self.sent.join_next().await else {
            return Ok(());
        };
        let part = joined
            .map_err(|e| StoreError::Io(std::io::Error::other(e)))?
            .map_err(s3)?;
        self.done.push(part);
        Ok(())
    }

    /// Sends the last part and waits for all: the part ids in order.
    async fn finish(mut self) -> Result<Vec<PartId>, StoreError> {
        if self.pending_len > 0 {
            self.send().await?;
        }
        while !self.sent.is_empty() {
            self.settle_one().await?;
        }
        self.done.sort_unstable_by_key(|(index, _)| *index);
        Ok(self.done.into_iter().map(|(_, part)| part).collect())
    }
}

/// One staged object of an upload: its key under the prefix and its length.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Staged {
    key: String,
    len: u64,
}

impl S3BlobStore {
    /// How often a live multipart upload rewrites its journal. A collection's grace period
    /// must be well longer, or it may abort uploads still under way (the server warns).
    pub const JOURNAL_REFRESH: Duration = Duration::from_secs(60);

    /// Opens `url` (`s3://bucket/prefix`), with the endpoint, region and keys from the
    /// standard `AWS_*` variables (`AWS_ENDPOINT`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …). Requests are retried twice within 5 s
    /// at most, connects give up after 2 s, and a read that stalls for 30 s fails: an
    /// unreachable store answers `Unavailable` instead of holding requests.
    pub fn open(url: &str, grace: Duration) -> Result<Self, StoreError> {
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
            grace,
        })
    }

    fn key(&self, rest: &str) -> Path {
        rest.split('/')
            .fold(self.prefix.clone(), |path, part| path.join(part))
    }

    fn pointer_key(&self, digest: &Sha256Digest) -> Path {
        self.key(&format!("blobs/sha256/{}", digest.hex()))
    }

    /// Where a blob's multipart upload is journaled.
    fn blob_journal(&self) -> Path {
        self.key(&format!("multipart/{}", ulid::Ulid::new()))
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
    /// `blob.digest`) the blob, unless the digest has a pointer already whose object exists:
    /// then the new object is no one's and goes. A pointer whose object is gone (written by
    /// an older version that trusted pointers blindly, or a bucket edited by hand) is never
    /// taken for the blob: it is replaced by one to the new object, conditionally on its ETag
    /// so that two repairers cannot undo each other.
    async fn point(&self, key: &Path, blob: BlobInfo) -> Result<(), StoreError> {
        let pointer = Pointer {
            key: key.to_string(),
            size: blob.size,
        };
        let body = serde_json::to_vec(&pointer).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut mode = PutMode::Create;
        for _ in 0..3 {
            let written = self
                .store
                .put_opts(
                    &self.pointer_key(&blob.digest),
                    PutPayload::from(body.clone()),
                    PutOptions::from(mode),
                )
                .await;
            match written {
                // Some S3 servers (s3s-fs among them) check `If-None-Match` apart from the
                // write, so two racing writers can both succeed and the later overwrites.
                // Reading the pointer back tells the overwritten one that its object is no
                // one's. (Either object holds the digest's bytes: a file is never at risk,
                // only space.)
                Ok(_) => {
                    self.forget(&blob.digest);
                    if let Some(winner) = self.pointer(&blob.digest).await?
                        && winner.key != pointer.key
                    {
                        self.delete_quietly(key).await;
                    }
                    return Ok(());
                }
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. },
                ) => match self.tagged_pointer(&blob.digest).await? {
                    // Gone meanwhile (a collection took it): create it again.
                    None => mode = PutMode::Create,
                    Some((winner, _)) if self.object_exists(&winner.key).await? => {
                        self.delete_quietly(key).await;
                        return Ok(());
                    }
                    Some((winner, e_tag)) => {
                        tracing::warn!(digest = %blob.digest, key = %winner.key,
                            "a pointer names a missing object: replacing it");
                        mode = PutMode::Update(object_store::UpdateVersion {
                            e_tag,
                            version: None,
                        });
                    }
                },
                Err(e) => {
                    self.delete_quietly(key).await;
                    return Err(s3(e));
                }
            }
        }
        self.delete_quietly(key).await;
        Err(StoreError::Unavailable(WHAT))
    }

    /// The digest's pointer as the bucket has it now, with its ETag (never from the cache).
    async fn tagged_pointer(
        &self,
        digest: &Sha256Digest,
    ) -> Result<Option<(Pointer, Option<String>)>, StoreError> {
        self.forget(digest);
        let got = match self.store.get(&self.pointer_key(digest)).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(s3(e)),
        };
        let e_tag = got.meta.e_tag.clone();
        let bytes = got.bytes().await.map_err(s3)?;
        let pointer = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("pointer of {digest}: {e}")))?;
        Ok(Some((pointer, e_tag)))
    }

    /// Whether the data object `key` exists.
    async fn object_exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(s3(e)),
        }
    }

    /// Publishes a data object written for `blob`, unless it may have been unprotected for
    /// half the grace or more (a process paused between writing and publishing): a sweep takes
    /// an unnamed object only once it is older than the whole grace, so one published within
    /// half of it is safe, whatever the two clocks say about the time of day. The journal
    /// goes once the pointer exists, never before.
    async fn publish_object(&self, object: Unpublished, blob: BlobInfo) -> Result<(), StoreError> {
        let fence = self.grace / 2;
        if object.protected_since().elapsed() >= fence {
            self.discard_object(object).await;
            tracing::warn!(digest = %blob.digest, "a write stalled for half the collection grace: refused");
            return Err(StoreError::Unavailable(WHAT));
        }
        let pointed = self.point(&object.key, blob).await;
        let late = object.protected_since().elapsed() >= fence;
        if let Some(journal) = object.journal {
            let path = journal.path.clone();
            drop(journal);
            self.delete_quietly(&path).await;
        }
        pointed?;
        // Stalled while the pointer was written: the pointer stays (it is right if its object
        // survived, and is replaced by the next writer of the digest if not), but the write is
        // not acknowledged.
        if late {
            return Err(StoreError::Unavailable(WHAT));
        }
        Ok(())
    }

    /// Deletes an unpublished object, then its journal.
    async fn discard_object(&self, object: Unpublished) {
        self.delete_quietly(&object.key).await;
        if let Some(journal) = object.journal {
            let path = journal.path.clone();
            drop(journal);
            self.delete_quietly(&path).await;
        }
    }

    /// Where the orphan sweep starts (see `collect_orphans`), if a sweep has run.
    async fn sweep_mark(&self) -> Result<Option<ulid::Ulid>, StoreError> {
        match self.store.get(&self.key("sweep/mark")).await {
            Ok(got) => {
                let bytes = got.bytes().await.map_err(s3)?;
                let text = String::from_utf8_lossy(&bytes);
                Ok(ulid::Ulid::from_string(text.trim()).ok())
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(s3(e)),
        }
    }

    async fn set_sweep_mark(&self, mark: ulid::Ulid) -> Result<(), StoreError> {
        self.store
            .put(&self.key("sweep/mark"), PutPayload::from(mark.to_string()))
            .await
            .map_err(s3)
            .map(drop)
    }

    /// The S3 server's time now: the `Last-Modified` of an object written for the purpose.
    /// The ages a sweep compares are all the server's, so no replica's clock enters them.
    async fn server_now(&self) -> Result<Timestamp, StoreError> {
        let key = self.key("clock/now");
        self.store
            .put(&key, PutPayload::from_static(b"now"))
            .await
            .map_err(s3)?;
        // Read back by listing, not HEAD: a listing's dates carry milliseconds where the
        // server keeps them, a `Last-Modified` header only seconds.
        let listed: Vec<_> = self
            .store
            .list(Some(&self.key("clock")))
            .try_collect()
            .await
            .map_err(s3)?;
        let meta = listed
            .iter()
            .find(|meta| meta.location == key)
            .ok_or(StoreError::Unavailable(WHAT))?;
        Ok(written(meta))
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

    /// Streams `body` into a new object at `key`; at most `max_len` bytes. On failure nothing
    /// is left at `key` (a multipart upload is aborted). With `keep_journal`, a multipart
    /// upload's journal outlives it, still refreshed, in the [`Unpublished`] returned (see
    /// there); otherwise it goes once the upload is complete.
    async fn write_object(
        &self,
        key: &Path,
        journal: &Path,
        mut body: ByteStream,
        max_len: u64,
        keep_journal: bool,
    ) -> Result<(u64, Unpublished), StoreError> {
        let mut len = 0;
        let mut taken = |chunk: &Bytes| {
            len += chunk.len() as u64;
            if len > max_len {
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
                    taken(&chunk)?;
                    gathered += chunk.len();
                    head.push(chunk);
                }
                None => {
                    drop(body);
                    let since = tokio::time::Instant::now();
                    self.store
                        .put(key, PutPayload::from_iter(head))
                        .await
                        .map_err(s3)?;
                    let object = Unpublished {
                        key: key.clone(),
                        journal: None,
                        since,
                    };
                    return Ok((gathered as u64, object));
                }
            }
        }
        let object = self
            .write_multipart(key, journal, head, body, &mut taken, keep_journal)
            .await?;
        Ok((len, object))
    }

    /// Streams `head` and then the rest of `body` into a multipart upload of `PART`-byte
    /// parts at `key`, `PARTS_IN_FLIGHT` parts in flight; `taken` sees every chunk of the rest
    /// first. Journaled (see [`Journal`]) from before its first part until it is complete or
    /// aborted, or with `keep_journal` until the returned [`Unpublished`] is published or
    /// discarded.
    async fn write_multipart(
        &self,
        key: &Path,
        journal: &Path,
        head: Vec<Bytes>,
        mut body: ByteStream,
        mut taken: impl FnMut(&Bytes) -> Result<(), StoreError>,
        keep_journal: bool,
    ) -> Result<Unpublished, StoreError> {
        let started = tokio::time::Instant::now();
        let id = self.store.create_multipart(key).await.map_err(s3)?;
        let record = Journal {
            key: key.to_string(),
            id: id.clone(),
        };
        let record = Bytes::from(
            serde_json::to_vec(&record).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        if let Err(e) = self.store.put(journal, record.clone().into()).await {
            self.abort_multipart(key, &id).await;
            return Err(s3(e));
        }
        // Rewritten while the upload lives (and, kept, until its object is published), so
        // that only a dead writer's journal grows old: in a set of its own, which stops it
        // when dropped (the upload is then the collection's). A rewrite that lands after the
        // journal was deleted only costs a needless abort.
        let written = Arc::new(std::sync::Mutex::new(started));
        let mut refresher = tokio::task::JoinSet::new();
        {
            let (store, journal, written) = (self.store.clone(), journal.clone(), written.clone());
            refresher.spawn(async move {
                loop {
                    tokio::time::sleep(Self::JOURNAL_REFRESH).await;
                    let attempt = tokio::time::Instant::now();
                    match store.put(&journal, record.clone().into()).await {
                        Ok(_) => *written.lock().unwrap_or_else(|p| p.into_inner()) = attempt,
                        Err(e) => {
                            tracing::warn!(journal = %journal, error = %e, "could not refresh a multipart journal")
                        }
                    }
                }
            });
        }
        let mut parts = Parts::new(self.store.clone(), key.clone(), id.clone());
        let streamed = async {
            for chunk in head {
                parts.push(chunk).await?;
            }
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(StoreError::Body)?;
                taken(&chunk)?;
                parts.push(chunk).await?;
            }
            let done = parts.finish().await?;
            self.store
                .complete_multipart(key, &id, done)
                .await
                .map_err(s3)
        }
        .await;
        if streamed.is_ok() && keep_journal {
            return Ok(Unpublished {
                key: key.clone(),
                journal: Some(LiveJournal {
                    path: journal.clone(),
                    written,
                    _refresher: refresher,
                }),
                since: started,
            });
        }
        refresher.abort_all();
        if streamed.is_err() {
            self.abort_multipart(key, &id).await;
        }
        self.delete_quietly(journal).await;
        streamed.map(|_| Unpublished {
            key: key.clone(),
            journal: None,
            since: started,
        })
    }

    /// Aborts a multipart upload no one will complete; failing only costs space until a
    /// collection finds its journal.
    async fn abort_multipart(&self, key: &Path, id: &MultipartId) {
        if let Err(e) = self.store.abort_multipart(key, id).await {
            tracing::warn!(key = %key, error = %e, "could not abort a multipart upload");
        }
    }

    /// The objects under `under` last written before `before`.
    async fn written_before(
        &self,
        under: &str,
        before: Timestamp,
    ) -> Result<Vec<object_store::ObjectMeta>, StoreError> {
        self.store
            .list(Some(&self.key(under)))
            .try_filter(|meta| futures::future::ready(written(meta) < before))
            .try_collect()
            .await
            .map_err(s3)
    }

    /// Aborts the multipart uploads whose journal under `multipart/` was last written before
    /// `before` (their writer is gone: a live one rewrites it every
    /// [`Self::JOURNAL_REFRESH`]) and deletes the journals; returns how many.
    async fn collect_multipart(&self, before: Timestamp) -> Result<u64, StoreError> {
        let stale = self.written_before("multipart", before).await?;
        let count = stale.len() as u64;
        futures::stream::iter(stale)
            .map(|meta| async move { self.abort_journaled(&meta.location).await })
            .buffer_unordered(16)
            .try_collect::<()>()
            .await?;
        Ok(count)
    }

    /// The data objects that journals under `multipart/` written at or after `before` name:
    /// uploads under way, and objects whose writer has not published them yet.
    async fn journaled(
        &self,
        before: Timestamp,
    ) -> Result<std::collections::HashSet<String>, StoreError> {
        let live: Vec<_> = self
            .store
            .list(Some(&self.key("multipart")))
            .try_filter(|meta| futures::future::ready(written(meta) >= before))
            .try_collect()
            .await
            .map_err(s3)?;
        let keys: Vec<Option<String>> = futures::stream::iter(live)
            .map(|meta| async move {
                match self.store.get(&meta.location).await {
                    Ok(got) => {
                        let bytes = got.bytes().await.map_err(s3)?;
                        Ok(serde_json::from_slice::<Journal>(&bytes)
                            .ok()
                            .map(|j| j.key))
                    }
                    // Deleted since the listing: its pointer exists by now.
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(s3(e)),
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(keys.into_iter().flatten().collect())
    }

    /// Aborts the multipart upload the journal `journal` names, then deletes the journal.
    async fn abort_journaled(&self, journal: &Path) -> Result<(), StoreError> {
        let bytes = match self.store.get(journal).await {
            Ok(got) => got.bytes().await.map_err(s3)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(s3(e)),
        };
        match serde_json::from_slice::<Journal>(&bytes) {
            Ok(record) => match self
                .store
                .abort_multipart(&Path::from(record.key), &record.id)
                .await
                .map_err(s3)
            {
                // Gone already (completed by a writer that died before deleting its
                // journal, or aborted): S3 answers 404, some servers 403.
                Ok(()) | Err(StoreError::NotFound | StoreError::Io(_)) => {}
                Err(e) => return Err(e),
            },
            Err(e) => {
                tracing::warn!(journal = %journal, error = %e, "unreadable multipart journal");
            }
        }
        self.delete_quietly(journal).await;
        Ok(())
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

/// The data object behind a [`StagedBlob`] of this store.
fn own_staged(staged: StagedBlob) -> Result<Unpublished, StoreError> {
    staged
        .0
        .downcast::<Unpublished>()
        .map(|object| *object)
        .map_err(|_| StoreError::Corrupt("a staged blob of another store".into()))
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

    /// A data object `data/<ulid>` of its own, named by no pointer yet (a multipart one
    /// journaled until it is).
    async fn stage(&self, body: ByteStream, max_len: u64) -> Result<StagedBlob, StoreError> {
        let key = self.key(&format!("data/{}", ulid::Ulid::new()));
        let (_, object) = self
            .write_object(&key, &self.blob_journal(), body, max_len, true)
            .await?;
        Ok(StagedBlob(Box::new(object)))
    }

    /// The create-only pointer to the staged object; a loser deletes its object.
    async fn publish(&self, staged: StagedBlob, blob: BlobInfo) -> Result<(), StoreError> {
        self.publish_object(own_staged(staged)?, blob).await
    }

    async fn discard(&self, staged: StagedBlob) {
        if let Ok(object) = own_staged(staged) {
            self.discard_object(object).await;
        }
    }

    async fn store_small(&self, blob: BlobInfo, chunks: Vec<Bytes>) -> Result<(), StoreError> {
        let key = self.key(&format!("data/{}", ulid::Ulid::new()));
        let since = tokio::time::Instant::now();
        self.store
            .put(&key, PutPayload::from_iter(chunks))
            .await
            .map_err(s3)?;
        let object = Unpublished {
            key,
            journal: None,
            since,
        };
        self.publish_object(object, blob).await
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
            // more, never serve a stale name twice. A pointer whose object is gone is not a
            // blob: the next writer of the digest replaces it.
            Err(StoreError::NotFound) => {
                self.forget(digest);
                let pointer = self.pointer(digest).await?.ok_or(StoreError::NotFound)?;
                match self.read_object(&Path::from(pointer.key), range).await {
                    Err(StoreError::NotFound) => Err(StoreError::Corrupt(format!(
                        "the pointer of {digest} names a missing object"
                    ))),
                    other => other,
                }
            }
            other => other,
        }
    }

    async fn stage_append(
        &self,
        upload: &UploadId,
        staging: &Staging,
        offset: u64,
        body: ByteStream,
        max_len: u64,
    ) -> Result<Staging, StoreError> {
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
        let name = format!("{offset:020}-{}", ulid::Ulid::new());
        let key = self.key(&format!("uploads/{upload}/{name}"));
        // Beside the upload's objects: whatever ends the upload aborts it too.
        let journal = self.key(&format!("uploads/{upload}/{JOURNAL}{name}"));
        // An upload's objects are kept by its record, not by age: no journal outlives them.
        let (len, _) = self
            .write_object(&key, &journal, body, max_len, false)
            .await?;
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
        Ok(Staging(staging))
    }

    /// Deletes the objects `after` names that `before` does not: this append's own (an append
    /// racing on another replica writes objects of its own, which only its state names).
    async fn stage_revert(
        &self,
        upload: &UploadId,
        before: &Staging,
        after: &Staging,
        _offset: u64,
    ) -> Result<(), StoreError> {
        let kept: std::collections::HashSet<String> =
            parse_staging(before)?.into_iter().map(|s| s.key).collect();
        let own: Vec<_> = parse_staging(after)?
            .into_iter()
            .filter(|s| !kept.contains(&s.key))
            .map(|s| Ok(Path::from(s.key)))
            .collect();
        tracing::debug!(upload = %upload, objects = own.len(), "reverting a refused append");
        self.delete_all(futures::stream::iter(own).boxed()).await
    }

    async fn stage_commit(
        &self,
        upload: &UploadId,
        staging: &Staging,
        blob: BlobInfo,
    ) -> Result<(), StoreError> {
        // The caller has claimed the digest: a pointer found now stays; a cached one may
        // predate a collection. Trusted only with its object (else `point` replaces it).
        self.forget(&blob.digest);
        if let Some(found) = self.pointer(&blob.digest).await?
            && self.object_exists(&found.key).await?
        {
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
        // Hashed again as it is copied: what becomes the blob is checked, not assumed.
        let (parts, hashed) = hash_alongside(parts, Sha256Hasher::new());
        let key = self.key(&format!("data/{}", ulid::Ulid::new()));
        let copied = self
            .write_object(&key, &self.blob_journal(), parts, blob.size, true)
            .await;
        let hasher = hashed.await?;
        let object = match copied {
            Ok((_, object)) => object,
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
            self.discard_object(object).await;
            return Err(StoreError::Corrupt(format!(
                "upload {upload}: staged bytes are {written:?}, expected {blob:?}"
            )));
        }
        self.publish_object(object, blob).await
    }

    /// Aborts the upload's multipart uploads (an append under way or cut off by a crash),
    /// then deletes its objects.
    async fn stage_discard(&self, upload: &UploadId) -> Result<(), StoreError> {
        let prefix = self.upload_prefix(upload);
        let keys: Vec<Path> = self
            .store
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(s3)?;
        for journal in keys
            .iter()
            .filter(|key| key.filename().is_some_and(|name| name.starts_with(JOURNAL)))
        {
            self.abort_journaled(journal).await?;
        }
        self.delete_all(futures::stream::iter(keys.into_iter().map(Ok)).boxed())
            .await
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

    /// The data objects first, then their pointers, each kind in DeleteObjects batches: a
    /// collection stopped in between leaves pointers to nothing of digests still doomed,
    /// which the next collection adopts and deletes again (never a data object no pointer
    /// names, which the windowed sweep might not look at again).
    async fn delete_blobs(&self, digests: &[Sha256Digest]) -> Result<(), StoreError> {
        let found = self.fresh_pointers(digests.to_vec()).await?;
        let (mut keys, mut data) = (Vec::new(), Vec::new());
        for (digest, pointer) in found {
            self.forget(&digest);
            keys.push(Ok(self.pointer_key(&digest)));
            data.push(Ok(Path::from(pointer.key)));
        }
        for batch in [data, keys] {
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

    /// Data objects older than `grace` by the S3 server's clock that no pointer names and no
    /// live journal protects: a writer that crashed before publishing, the loser of a pointer
    /// race that could not delete its own; and multipart uploads a crash left (found by their
    /// journals).
    ///
    /// Paged by time: only data objects named from the sweep's mark on (`sweep/mark`, a
    /// ULID: every object older was judged by an earlier sweep) are looked at, and only the
    /// pointers written since shortly before the mark are read, since a pointer is written
    /// after its object. So a sweep holds the writes of one window (the interval since the
    /// last sweep, plus the grace), not the bucket. A bucket's first sweep has no mark and
    /// reads it all, once.
    async fn collect_orphans(&self, grace: Duration) -> Result<u64, StoreError> {
        let now = self.server_now().await?;
        let before = Timestamp::from_millis(now.as_millis() - grace.as_millis() as i64);
        let aborted = self.collect_multipart(before).await?;
        let mark = self.sweep_mark().await?;
        let data: Vec<_> = {
            let prefix = self.key("data");
            let listing = match mark {
                Some(mark) => self
                    .store
                    .list_with_offset(Some(&prefix), &self.key(&format!("data/{mark}"))),
                None => self.store.list(Some(&prefix)),
            };
            listing
                .try_filter(|meta| futures::future::ready(written(meta) < before))
                .try_collect()
                .await
                .map_err(s3)?
        };
        // Listed after the data objects, journals first and then pointers: a writer deletes
        // its journal only once its pointer exists, so an object published meanwhile is seen
        // in one or the other.
        let live = self.journaled(before).await?;
        let mut named = live.clone();
        if !data.is_empty() {
            // Pointers of objects named after the mark were written after it (give or take
            // the replicas' clocks, which the grace covers).
            let since = mark.map_or(Timestamp::from_millis(0), |mark| {
                Timestamp::from_millis(mark.timestamp_ms() as i64 - grace.as_millis() as i64)
            });
            let recent: Vec<Sha256Digest> = self
                .store
                .list(Some(&self.key("blobs/sha256")))
                .try_filter(|meta| futures::future::ready(written(meta) >= since))
                .try_filter_map(|meta| {
                    let digest = meta.location.filename().and_then(Sha256Digest::from_hex);
                    futures::future::ready(Ok(digest))
                })
                .try_collect()
                .await
                .map_err(s3)?;
            for page in recent.chunks(1000) {
                let pointers = self.fresh_pointers(page.to_vec()).await?;
                named.extend(pointers.into_iter().map(|(_, p)| p.key));
            }
        }
        let orphans: Vec<_> = data
            .into_iter()
            .filter(|meta| !named.contains(meta.location.as_ref()))
            .map(|meta| Ok(meta.location))
            .collect();
        let removed = orphans.len() as u64;
        self.delete_all(futures::stream::iter(orphans).boxed())
            .await?;
        // Every object named before `before - grace` (by a replica's clock) has now been
        // judged old enough: the next sweep starts there, or earlier at the object of a
        // multipart upload still under way (named when it began, however long ago), so that
        // it is judged once complete.
        let next = before.as_millis() - grace.as_millis() as i64;
        let next = ulid::Ulid::from_parts(next.max(0) as u64, 0);
        let under_way = live
            .iter()
            .filter_map(|key| key.rsplit('/').next()?.parse::<ulid::Ulid>().ok())
            .min();
        let next = under_way.map_or(next, |first| first.min(next));
        // Just before it: `list_with_offset` lists what comes after the mark.
        self.set_sweep_mark(ulid::Ulid(next.0.saturating_sub(1)))
            .await?;
        Ok(aborted + removed)
    }
}

//! The two storage traits the registry is written against — [`BlobStore`] for bytes and
//! [`MetadataStore`] for records and the event log — and their shared error type.
//!
//! Implementations live in `artifactstore-storage`. Nothing here assumes one process, one
//! machine or one database engine: every change that matters is one store call, atomic on its
//! own, and every cross-request invariant is checked inside the store (compare-and-set), not by
//! the registry holding a lock.

use std::io;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use tokio::sync::watch;

use crate::digest::{Sha256Digest, Sha256Hasher};
use crate::ids::{FileId, PackageId, UploadId};
use crate::model::*;
use crate::timestamp::Timestamp;

/// A stream of bytes going into or coming out of a store. Errors on an incoming stream are the
/// client's (reported as [`StoreError::Body`]); errors on an outgoing one are the store's.
pub type ByteStream = BoxStream<'static, io::Result<Bytes>>;

/// What [`read_head`] found: the whole body, or the start of a longer one.
pub enum Head {
    /// The body ended within the limit: all of its chunks.
    Whole(Vec<Bytes>),
    /// The body goes on: a stream of what was read, then the rest.
    Partial(ByteStream),
}

/// Reads `body` until it ends or passes `up_to` bytes (memory stays bounded by that), failing
/// with [`StoreError::TooLarge`] past `max_len`.
pub async fn read_head(mut body: ByteStream, up_to: u64, max_len: u64) -> Result<Head, StoreError> {
    use futures::StreamExt;
    let mut head = Vec::new();
    let mut gathered: u64 = 0;
    while gathered <= up_to {
        let Some(chunk) = body.next().await else {
            return Ok(Head::Whole(head));
        };
        let chunk = chunk.map_err(StoreError::Body)?;
        gathered += chunk.len() as u64;
        if gathered > max_len {
            return Err(StoreError::TooLarge { limit: max_len });
        }
        head.push(chunk);
    }
    let head = futures::stream::iter(head.into_iter().map(Ok));
    Ok(Head::Partial(head.chain(body).boxed()))
}

/// Fails with [`StoreError::DigestMismatch`] when an expected digest is given and differs.
pub fn check_digest(
    expected: Option<Sha256Digest>,
    actual: Sha256Digest,
) -> Result<(), StoreError> {
    match expected {
        Some(expected) if expected != actual => {
            Err(StoreError::DigestMismatch { expected, actual })
        }
        _ => Ok(()),
    }
}

/// The storage layer's error type.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("the package is finalized")]
    PackageFinalized,
    #[error("the package is not finalized")]
    NotFinalized,
    #[error("the package already has a file at path {0:?}")]
    PathTaken(String),
    #[error("the upload is not open")]
    UploadNotOpen,
    #[error("the package is held")]
    Held,
    /// A write would take the tenant past its byte quota; nothing changed.
    #[error("byte quota exceeded: {used} of {limit} used")]
    QuotaExceeded { limit: u64, used: u64 },
    /// The package holds [`AddChecks::max_files`] files already; nothing changed.
    #[error("the package holds the most files a package may")]
    TooManyFiles,
    /// A new upload would pass the tenant's open-upload quota; nothing changed.
    #[error("open-upload quota exceeded: {used} of {limit} open")]
    TooManyOpenUploads { limit: u64, used: u64 },
    /// A compare-and-set lost: the record is no longer in the state the caller read.
    #[error("the record changed concurrently")]
    Stale,
    #[error("request body failed: {0}")]
    Body(io::Error),
    #[error("body longer than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("sha256 mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    /// Stored data is not what it should be (a blob of the wrong size, an unreadable row).
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("blob store i/o failed: {0}")]
    Io(#[from] io::Error),
    #[error("metadata store failed: {0}")]
    Database(String),
    /// The store cannot be reached right now (connection refused or lost, restarting); the
    /// same request may succeed shortly, nothing was changed by this one.
    #[error("{0} is unavailable; retry shortly")]
    Unavailable(&'static str),
    /// A query ran past its time budget and was stopped; nothing was changed by it.
    #[error("a query of the metadata store ran past its time budget; retry shortly, or narrow it")]
    OverBudget,
}

/// A blob that is durably in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    pub digest: Sha256Digest,
    pub size: u64,
}

/// Bytes a blob store wrote where no reader looks ([`BlobStore::stage`]): the store's own
/// handle, published or discarded by the blob-write protocol (`blob_write`). A store removes
/// them when the handle is dropped unpublished, or leaves them to its collection of leftovers.
pub struct Staged(pub Box<dyn std::any::Any + Send + Sync>);

/// Called once a blob's bytes are hashed and checked, before the store makes them visible or
/// finds them stored already: the registry claims the digest there (in the metadata store),
/// so garbage collection cannot delete those bytes before the file that records them commits.
#[async_trait]
pub trait Claim: Send + Sync {
    async fn claim(&self, blob: &BlobInfo) -> Result<(), StoreError>;
}

/// The [`Claim`] of callers that collect no garbage (the blob stores' own unit tests).
pub struct NoClaim;

#[async_trait]
impl Claim for NoClaim {
    async fn claim(&self, _blob: &BlobInfo) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Content-addressed bytes, plus the staging area of upload sessions.
///
/// Architecture invariant: a blob is visible under its digest only once all its bytes are
/// written, made durable and hashed to that digest. Staged upload bytes are never visible as a
/// blob until [`stage_commit`](Self::stage_commit).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Answers when the store can be used (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes `body` durably where no reader looks: at most `max_len` bytes
    /// ([`StoreError::TooLarge`] past that). Nothing is hashed here: the caller hashes the
    /// stream as the store takes it (`blob_write::write_blob`). On failure, and when the
    /// [`Staged`] is dropped unpublished, the store removes what it wrote (or its collection
    /// of leftovers does).
    async fn stage(&self, body: ByteStream, max_len: u64) -> Result<Staged, StoreError>;

    /// Makes staged bytes the blob `blob` — hashed, checked and claimed by the caller — or,
    /// when that blob is present already, drops them. Whether it is present is looked up
    /// anew, never from a cache: the claim may postdate a collection.
    async fn publish(&self, staged: Staged, blob: BlobInfo) -> Result<(), StoreError>;

    /// Removes staged bytes that will not be published.
    async fn discard(&self, staged: Staged);

    /// [`stage`](Self::stage) and [`publish`](Self::publish) at once for a small blob whose
    /// bytes are all in `chunks` (hashed, checked and claimed by the caller).
    async fn store_small(&self, blob: BlobInfo, chunks: Vec<Bytes>) -> Result<(), StoreError>;

    /// The size of a stored blob, or `None`.
    async fn size(&self, digest: &Sha256Digest) -> Result<Option<u64>, StoreError>;

    /// Streams the bytes `range` of a blob (the caller clamps it to the blob's size).
    async fn read(
        &self,
        digest: &Sha256Digest,
        range: Range<u64>,
    ) -> Result<ByteStream, StoreError>;

    /// Writes `body` into the staging area of `upload` at `offset`, after the bytes `staging`
    /// describes (anything else staged past `offset` — the leftovers of a failed append — is
    /// not part of the upload), and returns the new staging state, which the caller saves
    /// with the offset and the hash state (the caller hashes the stream as the store takes
    /// it) in one compare-and-set. At most `max_len` bytes are taken ([`StoreError::TooLarge`]
    /// past that). On success the new bytes are durable. A store shared by replicas (S3)
    /// must let two appends racing on one upload both succeed here, each writing what only
    /// its own staging state describes: only the compare-and-set then decides. A store of
    /// one process (the blob directory) may instead rely on the caller never running two
    /// appends to one upload at once (the registry's upload lock).
    async fn stage_append(
        &self,
        upload: &UploadId,
        staging: &Staging,
        offset: u64,
        body: ByteStream,
        max_len: u64,
    ) -> Result<Staging, StoreError>;

    /// Takes back what an append staged (`after`, returned by
    /// [`stage_append`](Self::stage_append) on `before` at `offset`) when the append was then
    /// refused (its compare-and-set lost, a quota, a length that was not as declared): the
    /// bytes of a refused write go at once, not when the upload ends. Only what that append
    /// itself wrote goes.
    async fn stage_revert(
        &self,
        upload: &UploadId,
        before: &Staging,
        after: &Staging,
        offset: u64,
    ) -> Result<(), StoreError>;

    /// Makes the first `blob.size` staged bytes of `upload` (as `staging` describes them) the
    /// blob `blob.digest`, leaving the staged bytes in place (so a complete that fails later
    /// leaves the upload resumable).
    async fn stage_commit(
        &self,
        upload: &UploadId,
        staging: &Staging,
        blob: BlobInfo,
    ) -> Result<(), StoreError>;

    /// Removes whatever is staged for `upload`; no error if nothing is.
    async fn stage_discard(&self, upload: &UploadId) -> Result<(), StoreError>;

    // ---- garbage collection (see ARCHITECTURE.md, "Garbage collection") ----

    /// Digests of stored blobs after `after`, in ascending order, at most `limit`, with the
    /// time each was last written (ms).
    async fn list_blobs(
        &self,
        after: Option<Sha256Digest>,
        limit: usize,
    ) -> Result<Vec<(Sha256Digest, Timestamp)>, StoreError>;

    /// Deletes blobs' bytes, all of them or (on an error) maybe some; no error for bytes that
    /// are gone already. Only garbage collection calls it, for digests it has doomed in the
    /// metadata store.
    async fn delete_blobs(&self, digests: &[Sha256Digest]) -> Result<(), StoreError>;

    /// Uploads that have something staged.
    async fn list_staged(&self) -> Result<Vec<UploadId>, StoreError>;

    /// Deletes what a crash or a lost race left behind that no blob or upload names and
    /// that is older than `grace` by the store's own clock (an S3 server's, the disk's
    /// host's), never anything a write still means to publish; returns how many objects or
    /// files.
    async fn collect_orphans(&self, grace: std::time::Duration) -> Result<u64, StoreError>;
}

/// A manifest pushed through `/v2/`, as [`MetadataStore::record_pushed_manifest`] keeps it.
#[derive(Clone, Copy, Debug)]
pub struct PushedManifest<'a> {
    pub tenant: &'a str,
    pub repository: &'a str,
    pub digest: Sha256Digest,
    pub package: PackageId,
    pub media_type: &'a str,
    pub bytes: &'a [u8],
    pub subject: Option<Sha256Digest>,
    pub artifact_type: Option<&'a str>,
    /// The manifests it names (an index's children, a referrer's subject): retention keeps
    /// their packages while this one exists.
    pub references: &'a [Sha256Digest],
}

/// What [`MetadataStore::add_file`] checks besides the package and upload, in the same
/// transaction that adds the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddChecks {
    /// The generation [`MetadataStore::claim_blob`] gave: `Stale` unless that claim of the
    /// file's digest still stands undoomed.
    pub claim: Option<i64>,
    /// The tenant's byte quota: `QuotaExceeded` if the file's new bytes would pass it.
    pub max_bytes: Option<u64>,
    /// Files a package may hold: `TooManyFiles` if it holds that many already.
    pub max_files: u64,
}

/// An upload's move to a new offset ([`MetadataStore::advance_upload`]).
#[derive(Clone, Copy)]
pub struct Advance<'a> {
    pub tenant: &'a str,
    pub id: UploadId,
    /// The offset the caller read; the move is refused (`Stale`) if it is no longer that.
    pub from_offset: u64,
    /// The state of every byte up to the new offset (its length is the new offset).
    pub hasher: &'a Sha256Hasher,
    /// The blob store's staging state after the new bytes.
    pub staging: &'a Staging,
    /// The upload's size, saved when it was unknown.
    pub size: Option<u64>,
    pub expires_at: Timestamp,
    /// The tenant's byte quota: `QuotaExceeded` if the new bytes would pass it.
    pub max_bytes: Option<u64>,
}

/// A package's freeze ([`MetadataStore::finalize`]).
#[derive(Clone, Copy, Debug)]
pub struct Freeze<'a> {
    pub tenant: &'a str,
    pub package: PackageId,
    /// The number of files the manifest lists: `Stale` if the package has another.
    pub file_count: u64,
    pub finalized_at: Timestamp,
    pub manifest: &'a StoredManifest,
}

/// The reads of the metadata store: written once for every SQL engine (`Reads` in the
/// storage crate), reached through [`MetadataStore::reads`].
#[async_trait]
pub trait MetadataReads: Send + Sync {
    async fn ping(&self) -> Result<(), StoreError>;

    async fn package(&self, scope: &Scope, id: PackageId) -> Result<Option<Package>, StoreError>;

    /// Packages in `scope` matching `query`, newest first, with ids below `before` (the
    /// cursor), at most `limit`.
    async fn list_packages(
        &self,
        scope: &Scope,
        query: &PackageQuery,
        before: Option<PackageId>,
        limit: u32,
    ) -> Result<Vec<Package>, StoreError>;

    /// Digests doomed by a generation of the `gc` lease other than `lease` and never released
    /// (a collection that stopped, or lost its lease), or by a writer a minute ago or more
    /// (see [`MetadataStore::abandon_blob`]), at most 1,000.
    async fn doomed_blobs(&self, lease: u64) -> Result<Vec<Sha256Digest>, StoreError>;

    /// A file of `tenant` with these bytes, if any.
    async fn file_by_digest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<FileRecord>, StoreError>;

    /// The CBOR manifest of a finalized package of `tenant` whose manifest digest is `digest`.
    async fn manifest_by_digest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<Bytes>, StoreError>;

    /// The package whose manifest under `/v2/` has `digest`, in `repository` of `tenant` (see
    /// [`MetadataStore::remember_oci_manifest`]).
    async fn oci_manifest_package(
        &self,
        tenant: &str,
        repository: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<PackageId>, StoreError>;

    /// Whether `repository` of `tenant` has a tag or a pushed manifest (else, under `/v2/`, it
    /// is unknown).
    async fn repository_known(&self, tenant: &str, repository: &str) -> Result<bool, StoreError>;

    /// The size of a blob `tenant` pushed through `/v2/` (no manifest may reference it yet).
    async fn oci_blob(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<u64>, StoreError>;

    /// The bytes and media type of the manifest pushed for `package`, if it was pushed.
    async fn pushed_manifest(
        &self,
        package: PackageId,
    ) -> Result<Option<(String, Bytes)>, StoreError>;

    /// Manifests pushed to `repository` of `tenant` whose subject is `subject`, at most
    /// `limit`, by digest.
    async fn referrers(
        &self,
        tenant: &str,
        repository: &str,
        subject: &Sha256Digest,
        limit: u32,
    ) -> Result<Vec<crate::oci::Referrer>, StoreError>;

    /// Whether `token`'s doom of `digest` ([`MetadataStore::abandon_blob`]) still stands, not
    /// adopted by a collection.
    async fn abandoned_stands(&self, digest: &Sha256Digest, token: i64)
    -> Result<bool, StoreError>;

    /// The tag `repository:tag` of `tenant`.
    async fn tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Tag>, StoreError>;

    /// Tags of `tenant` (of one `repository`, if given) after `after` (repository, tag), in
    /// byte order of repository then tag, at most `limit`.
    async fn list_tags(
        &self,
        tenant: &str,
        repository: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<Tag>, StoreError>;

    /// Whether the package has a file at `path`.
    async fn path_taken(&self, package: PackageId, path: &str) -> Result<bool, StoreError>;

    /// Which of `digests` no file stored in the blob store uses.
    async fn unreferenced(&self, digests: &[Sha256Digest])
    -> Result<Vec<Sha256Digest>, StoreError>;

    /// What `tenant` uses now (every change keeps it, in its own transaction).
    async fn usage(&self, tenant: &str) -> Result<Usage, StoreError>;

    /// Which of `ids` are open uploads.
    async fn open_uploads(&self, ids: &[UploadId]) -> Result<Vec<UploadId>, StoreError>;

    /// Bytes kept by [`MetadataStore::add_file`] with `inline`, by their digest.
    async fn inline_blob(&self, digest: &Sha256Digest) -> Result<Option<Bytes>, StoreError>;

    /// Shared, not copied: a download looks its file up on every request, and a record never
    /// changes once added.
    async fn file(&self, scope: &Scope, id: FileId) -> Result<Option<Arc<FileRecord>>, StoreError>;

    /// Files of a package in UTF-8 byte order of their paths, after `after`, at most `limit`.
    async fn list_files(
        &self,
        scope: &Scope,
        package: PackageId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError>;

    async fn manifest(
        &self,
        scope: &Scope,
        package: PackageId,
    ) -> Result<Option<StoredManifest>, StoreError>;

    /// Packages of retention class `rule.class` that are not held, whose manifest no pushed
    /// index or referrer names (`oci_references`), and that one of the rule's parts would
    /// delete, at most `limit` (tenant and id).
    async fn retention_candidates(
        &self,
        rule: &RetentionQuery,
        limit: u32,
    ) -> Result<Vec<(String, PackageId)>, StoreError>;

    async fn upload(&self, scope: &Scope, id: UploadId)
    -> Result<Option<UploadRecord>, StoreError>;

    /// The events in `scope` with sequence above `since`, oldest first, at most `limit`.
    async fn events_since(
        &self,
        scope: &Scope,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError>;

    /// Changes after each commit of an event visible in `scope` (and only then); its value is
    /// the highest sequence committed in the whole store at that moment, so every event up to
    /// it is visible. [`EventWatches`] keeps such watches for a store.
    fn event_watch(&self, scope: &Scope) -> watch::Receiver<u64>;
}

/// Packages, files, upload sessions and the event log: the changes, each atomic, and the
/// [`MetadataReads`].
///
/// Architecture invariant: each call that changes a package, file or upload and emits an
/// event does both in one transaction; the event's sequence is assigned inside it, and
/// sequences become visible in the order they were assigned with no gaps.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    /// Every read.
    fn reads(&self) -> &dyn MetadataReads;

    /// Finishes queued changes and closes connections (at shutdown).
    async fn close(&self) {}

    /// Inserts a new package and its `package.created` event.
    async fn create_package(&self, package: &Package, event: NewEvent)
    -> Result<Event, StoreError>;

    /// Adds a file to its (open) package, updates the package's counts and appends the
    /// `file.added` event. With `upload`, also marks that open upload completed. Fails with
    /// `NotFound`, `PackageFinalized`, `PathTaken` or `UploadNotOpen` and then changes nothing.
    /// With `inline`, the file's bytes (a small file) are kept by this store, durable in the
    /// same commit as the record, instead of in the blob store. `checks` are made in the same
    /// transaction (see [`AddChecks`]).
    async fn add_file(
        &self,
        file: &FileRecord,
        upload: Option<UploadId>,
        inline: Option<Bytes>,
        checks: AddChecks,
        event: NewEvent,
    ) -> Result<Event, StoreError>;

    /// Claims `digest` against garbage collection (see [`Claim`]): records it as in use now
    /// (by the database's clock), with `generation` if it has no claim yet, and returns the
    /// claim's generation. `None` while a collection is deleting it (the caller waits and asks
    /// again).
    async fn claim_blob(
        &self,
        digest: &Sha256Digest,
        generation: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// Garbage collection, by the holder of generation `lease` of the `gc` lease (checked in
    /// the same transaction, by the database's clock): marks each of `digests` as being
    /// deleted by that generation, if no file uses it and no claim of it is younger than
    /// `grace`, or if it is doomed already (by a collection that stopped: this one adopts
    /// it); returns those it doomed. From then on [`claim_blob`](Self::claim_blob) answers
    /// `None` for them and [`add_file`](Self::add_file) refuses a claim of them, until
    /// [`release_blobs`](Self::release_blobs).
    async fn doom_blobs(
        &self,
        digests: &[Sha256Digest],
        grace: std::time::Duration,
        lease: u64,
    ) -> Result<Vec<Sha256Digest>, StoreError>;

    /// Garbage collection: the bytes of these digests, doomed by generation `lease`, are
    /// gone; they may be claimed again. Only while that generation still holds the `gc`
    /// lease (checked in the same transaction): a collection that lost it releases nothing,
    /// and its dooms wait for the next holder to adopt them.
    async fn release_blobs(&self, digests: &[Sha256Digest], lease: u64) -> Result<(), StoreError>;

    /// A writer whose file was refused at its record gives up its claim (`generation`) of
    /// `digest`: one writer fewer under way. If none is left and no file uses the digest,
    /// dooms it with `token` (a negative number of the writer's own) and answers `true`; the
    /// writer then deletes the bytes, having checked [`MetadataReads::abandoned_stands`] just
    /// before, and calls [`release_abandoned`](Self::release_abandoned). A collection adopts a
    /// writer's doom left unreleased for a minute.
    async fn abandon_blob(
        &self,
        digest: &Sha256Digest,
        generation: i64,
        token: i64,
    ) -> Result<bool, StoreError>;

    /// The bytes `token` doomed ([`abandon_blob`](Self::abandon_blob)) are gone: the digest
    /// may be claimed again. Nothing if a collection adopted the doom.
    async fn release_abandoned(&self, digest: &Sha256Digest, token: i64) -> Result<(), StoreError>;

    /// Remembers that the manifest served under `/v2/` for the finalized package `package` of
    /// `tenant` has `digest`, in every repository of the tenant; idempotent; nothing for a
    /// package that is gone. Deleted with the package.
    async fn remember_oci_manifest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
        package: PackageId,
    ) -> Result<(), StoreError>;

    /// Records a blob `tenant` pushed through `/v2/`, while the claim (`generation`) the push
    /// made of its digest still stands (`Stale` otherwise), taking the push off the claim's
    /// writers. Idempotent.
    async fn record_oci_blob(
        &self,
        tenant: &str,
        blob: BlobInfo,
        generation: i64,
    ) -> Result<(), StoreError>;

    /// Records the manifest pushed to a repository as `pushed.package`'s, unless that
    /// repository has one with that digest already: the package recorded for it, either way.
    async fn record_pushed_manifest(
        &self,
        pushed: PushedManifest<'_>,
    ) -> Result<PackageId, StoreError>;

    /// Forgets blobs pushed through `/v2/` longer ago than `grace` (by the database's clock):
    /// by then a manifest references them (they are files) or a collection may take them.
    /// Returns how many.
    async fn forget_oci_blobs(&self, grace: std::time::Duration) -> Result<u64, StoreError>;

    /// Deletes inline bytes no file uses, at most `limit`; returns how many.
    async fn collect_inline(&self, limit: u32) -> Result<u64, StoreError>;

    /// Freezes an open package that still has `freeze.file_count` files, storing its
    /// manifest and appending `event` (`package.finalized`). If the package is already
    /// finalized, returns it unchanged with no event. `Stale` if files were added since the
    /// manifest was built.
    async fn finalize(
        &self,
        freeze: Freeze<'_>,
        event: NewEvent,
    ) -> Result<(Package, Option<Event>), StoreError>;

    /// Deletes a package that is not held — its files, metadata, manifest and the tags naming
    /// it — and appends the event `event` builds from it, then one `tag.deleted`
    /// (`package_deleted`) per tag in byte order, in one transaction; returns the package as
    /// it was.
    /// `NotFound`, or `Held`, and then nothing changes. Each package is deleted (and its event
    /// appended) once, also when several callers race.
    async fn delete_package(
        &self,
        tenant: &str,
        id: PackageId,
        event: EventFor,
    ) -> Result<Package, StoreError>;

    /// Points `repository:tag` of `tenant` at the finalized package `package` (stamped `at`),
    /// appending `tag.set` in the same transaction unless it named that package already.
    /// `NotFound` for a package that is not the tenant's, `NotFinalized` for an open one.
    async fn set_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
        package: PackageId,
        at: Timestamp,
    ) -> Result<TagChange, StoreError>;

    /// Deletes the tag `repository:tag` of `tenant`, appending `tag.deleted` (`request`) in
    /// the same transaction; returns it as it was. `NotFound`.
    async fn delete_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Tag, StoreError>;

    /// Holds or releases a package; when that changes it, appends the event `event` builds
    /// from the changed package in the same transaction. `NotFound`.
    async fn set_hold(
        &self,
        tenant: &str,
        id: PackageId,
        held: bool,
        event: EventFor,
    ) -> Result<Package, StoreError>;

    /// Takes or renews the lease `name` for `holder` for `ttl`, by the database's clock (no
    /// replica's clock decides who holds a duty); the lease's generation while `holder`
    /// holds it, `None` while another holder's lease has not expired. The generation changes
    /// whenever the lease changes hands (or lapses and is taken again): a fencing token.
    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Option<u64>, StoreError>;

    /// Records a new open upload, unless its tenant would then have more than `max_open`
    /// open uploads (`TooManyOpenUploads`), checked in the same transaction: a burst of
    /// creations cannot pass the quota between a check and the inserts.
    async fn create_upload(
        &self,
        upload: &UploadRecord,
        max_open: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Moves an open upload as `advance` says — offset, hash state, staging state, expiry,
    /// and size when it was unknown — in one compare-and-set. `Stale` if the offset is no
    /// longer `from_offset`, `UploadNotOpen` if it is not open, `QuotaExceeded` if the new
    /// bytes would pass `max_bytes`.
    async fn advance_upload(&self, advance: Advance<'_>) -> Result<UploadRecord, StoreError>;

    /// Deletes an open upload's record. `UploadNotOpen` if it is completed.
    async fn delete_upload(&self, tenant: &str, id: UploadId) -> Result<(), StoreError>;

    /// Deletes open uploads whose expiry is before `now`, at most `limit`, and returns
    /// them. Each expired upload is taken by exactly one caller, also when several replicas
    /// sweep at once (none waits for another); the caller then discards its staged bytes.
    async fn take_expired_uploads(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, UploadId)>, StoreError>;
}

/// The two stores a registry runs on (`artifactstore_storage::open` opens them).
#[derive(Clone)]
pub struct Stores {
    pub meta: Arc<dyn MetadataStore>,
    pub blobs: Arc<dyn BlobStore>,
}

/// The watches behind [`MetadataStore::event_watch`]: one for the whole store and one per
/// tenant, so a commit wakes only the long-polls that can see its events.
pub struct EventWatches {
    all: watch::Sender<u64>,
    /// One entry per tenant that was ever watched: bounded by the configured tenants.
    tenants: std::sync::Mutex<std::collections::HashMap<String, watch::Sender<u64>>>,
}

impl EventWatches {
    /// Starts at `last`, the highest sequence committed so far.
    pub fn new(last: u64) -> Self {
        Self {
            all: watch::Sender::new(last),
            tenants: Default::default(),
        }
    }

    pub fn subscribe(&self, scope: &Scope) -> watch::Receiver<u64> {
        match scope {
            Scope::All => self.all.subscribe(),
            Scope::Tenant(tenant) => {
                let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
                tenants
                    .entry(tenant.clone())
                    .or_insert_with(|| watch::Sender::new(*self.all.borrow()))
                    .subscribe()
            }
        }
    }

    /// Call after events up to `last` committed, in commit order; `tenants` are theirs.
    pub fn publish<'a>(&self, last: u64, tenants: impl IntoIterator<Item = &'a str>) {
        let newer = self.all.send_if_modified(|seen| {
            let newer = last > *seen;
            if newer {
                *seen = last;
            }
            newer
        });
        if !newer {
            return;
        }
        let watched = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        for tenant in tenants {
            if let Some(sender) = watched.get(tenant) {
                sender.send_replace(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_wakes_only_the_watches_that_can_see_it() {
        let watches = EventWatches::new(7);
        let mut acme = watches.subscribe(&"acme".into());
        let mut beta = watches.subscribe(&"beta".into());
        let mut all = watches.subscribe(&Scope::All);
        assert_eq!(
            *acme.borrow_and_update(),
            7,
            "starts at the high-water mark"
        );
        beta.borrow_and_update();
        all.borrow_and_update();
        watches.publish(9, ["acme", "acme"]);
        assert!(acme.has_changed().unwrap() && all.has_changed().unwrap());
        assert!(!beta.has_changed().unwrap());
        assert_eq!(*acme.borrow_and_update(), 9);
        // A late subscriber starts at the mark; a repeated or older publish wakes nobody.
        assert_eq!(*watches.subscribe(&"gamma".into()).borrow(), 9);
        all.borrow_and_update();
        watches.publish(9, ["acme"]);
        assert!(!acme.has_changed().unwrap() && !all.has_changed().unwrap());
        watches.publish(12, ["beta"]);
        assert_eq!(*beta.borrow_and_update(), 12);
        assert!(!acme.has_changed().unwrap());
    }
}

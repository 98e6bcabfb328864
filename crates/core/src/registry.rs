//! The registry: the one facade through which the server (and anything else) does all of
//! artifactstore's work. It validates, orders the calls to the two stores, and turns their
//! outcomes into [`RegistryError`]s; it holds no state a second replica would need.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::OwnedMutexGuard;
use tokio::time::Instant;

use crate::blob_write::{hash_alongside, write_blob};
use crate::claim::{BlobClaimer, GC_TOOK_THE_BYTES, abandon};
use crate::digest::{Sha256Digest, Sha256Hasher};
use crate::error::{FieldError, RegistryError, Resource, Result};
use crate::ids::{FileId, PackageId, UploadId};
use crate::lifecycle;
use crate::limits::{self, *};
use crate::manifest::Manifest;
use crate::model::*;
use crate::oci;
use crate::quota::{ByteRoom, InFlight, Quota, QuotaCheck, QuotaReached, Quotas};
use crate::retention::{RetentionRules, present_with};
use crate::storage::{
    AddChecks, Advance, BlobInfo, BlobStore, ByteStream, Claim, Freeze, Head, MetadataReads,
    MetadataStore, PushedManifest, StoreError, Stores, check_digest, read_head,
};
use crate::timestamp::Timestamp;
use crate::validate::{self, Errors};

/// What a finalize answers once [`FINALIZE_ATTEMPTS`] manifests were outdated by files that
/// landed while each was built.
const FINALIZE_CONTENDED: &str = "finalizing (files kept arriving while the manifest was built)";

/// What the registry enforces beyond the fixed limits of [`limits`].
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Largest file, single-shot or assembled from an upload session.
    pub max_file_bytes: u64,
    /// How long an upload session lives after its last change.
    pub upload_ttl: Duration,
    /// Retention classes accepted; `None` accepts any well-formed class.
    pub retention_classes: Option<BTreeSet<String>>,
    /// Long-polls that may wait at once, in all and per scope (tenant).
    pub max_waiting: usize,
    pub max_waiting_per_scope: usize,
    /// Package listings one tenant may run at once (each may cost a scan its filters set).
    pub max_reads_per_tenant: usize,
    /// Files a package may hold, and the largest manifest finalize stores.
    pub max_files_per_package: u64,
    pub max_manifest_bytes: usize,
    /// Single-shot files of at most this many bytes ([`INLINE_FILE_BYTES`] at most) keep their
    /// bytes with their record in the metadata store, durable in the same commit.
    pub inline_max_bytes: u64,
    /// Retention rules by class (a class with none keeps its packages forever).
    pub retention: RetentionRules,
    /// Quotas by tenant.
    pub quotas: Quotas,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            upload_ttl: Duration::from_secs(DEFAULT_UPLOAD_TTL_SECS),
            retention_classes: None,
            max_waiting: 4096,
            max_waiting_per_scope: 1024,
            max_reads_per_tenant: limits::DEFAULT_MAX_READS_PER_TENANT,
            max_files_per_package: limits::DEFAULT_MAX_FILES_PER_PACKAGE,
            max_manifest_bytes: limits::DEFAULT_MAX_MANIFEST_BYTES,
            inline_max_bytes: INLINE_FILE_BYTES,
            retention: RetentionRules::new(),
            quotas: Quotas::new(),
        }
    }
}

/// Where a chunk of an upload session goes, as the client declared it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Chunk {
    /// The offset the client believes the upload is at; `None` appends at the current one.
    pub start: Option<u64>,
    /// The chunk's length, when declared up front.
    pub len: Option<u64>,
    /// The total size of the upload, when declared.
    pub total: Option<u64>,
}

/// What `complete` needs besides the staged bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompleteUpload {
    pub package_id: String,
    pub file: NewFile,
}

pub struct Registry {
    meta: Arc<dyn MetadataStore>,
    blobs: Arc<dyn BlobStore>,
    config: RegistryConfig,
    upload_locks: Arc<KeyedLocks>,
    /// Long-polls waiting, and package listings running (the reads whose cost filters set).
    waiting: Gate,
    listing: Gate,
    /// Bytes of writes under way, charged to their tenants' byte quotas as they arrive.
    inflight: InFlight,
    /// Digests of manifests served under `/v2/` that this process has remembered.
    oci_known: KnownDigests,
    /// The last readiness probe: when, and its answer.
    readiness: tokio::sync::Mutex<Option<(Instant, std::result::Result<(), String>)>>,
}

/// The producer of packages made by pushes through `/v2/`.
pub const OCI_PRODUCER: &str = "oci";
/// Files of a pushed manifest added at once.
const PUSHED_FILES_AT_ONCE: usize = 16;
/// The retention class of pushed packages, unless the configured classes lack it (then the
/// first of those).
pub const OCI_RETENTION_CLASS: &str = "standard";

/// How long a readiness probe's answer stands.
pub const READY_FRESH: Duration = Duration::from_secs(1);

impl Registry {
    pub fn new(stores: Stores, config: RegistryConfig) -> Self {
        let Stores { meta, blobs } = stores;
        Self {
            meta,
            blobs,
            config,
            upload_locks: Arc::default(),
            oci_known: KnownDigests::default(),
            waiting: Gate::default(),
            listing: Gate::default(),
            inflight: InFlight::default(),
            readiness: tokio::sync::Mutex::new(None),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// The quota checks of one request.
    fn quota(&self) -> QuotaCheck<'_> {
        QuotaCheck {
            reads: self.meta.reads(),
            quotas: &self.config.quotas,
        }
    }

    /// The package as clients see it: with `expires_at` from the retention rules.
    fn present(&self, package: Package) -> Package {
        present_with(&self.config.retention, package)
    }

    /// Both stores answer. Probed at most once per [`READY_FRESH`] whatever the request
    /// rate (anyone may ask, without a token): callers meanwhile get the last answer, and
    /// callers during a probe wait for it.
    pub async fn ready(&self) -> Result<()> {
        let mut last = self.readiness.lock().await;
        let fresh = last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < READY_FRESH)
            .map(|(_, answer)| answer.clone());
        let answer = match fresh {
            Some(answer) => answer,
            None => {
                let probed = async {
                    self.meta.reads().ping().await?;
                    self.blobs.ping().await
                }
                .await;
                let answer = probed.map_err(|e| e.to_string());
                *last = Some((Instant::now(), answer.clone()));
                answer
            }
        };
        answer.map_err(|e| RegistryError::Storage(StoreError::Database(e)))
    }

    // ---- packages ----------------------------------------------------------------------

    pub async fn create_package(&self, tenant: &str, new: NewPackage) -> Result<Package> {
        let mut errors = Errors::new();
        errors.check(
            "producer",
            validate::label(&new.producer, MAX_PRODUCER_BYTES),
        );
        errors.check("subject", validate::label(&new.subject, MAX_SUBJECT_BYTES));
        errors.check("retention_class", validate::slug(&new.retention_class));
        if let Some(allowed) = &self.config.retention_classes
            && validate::slug(&new.retention_class).is_ok()
            && !allowed.contains(&new.retention_class)
        {
            let list = allowed.iter().cloned().collect::<Vec<_>>().join(", ");
            errors.push("retention_class", format!("must be one of: {list}"));
        }
        errors.check("metadata", validate::metadata(&new.metadata));
        errors.into_result().map_err(RegistryError::Invalid)?;

        let package = Package {
            id: PackageId::generate(tenant),
            tenant: tenant.to_string(),
            producer: new.producer,
            subject: new.subject,
            retention_class: new.retention_class,
            metadata: new.metadata,
            state: PackageState::Open,
            created_at: Timestamp::now(),
            finalized_at: None,
            file_count: 0,
            total_size: 0,
            manifest_digest: None,
            held: false,
            expires_at: None,
        };
        let package = self.present(package);
        let event = new_event(
            EventType::PackageCreated,
            &package.tenant,
            package.id,
            &package,
        );
        self.meta.create_package(&package, event).await?;
        Ok(package)
    }

    pub async fn package(&self, scope: impl Into<Scope>, id: PackageId) -> Result<Package> {
        let package = self.meta.reads().package(&scope.into(), id).await?;
        Ok(self.present(package.ok_or(RegistryError::NotFound(Resource::Package))?))
    }

    /// Newest first. `cursor` is the `next_cursor` of the previous page.
    pub async fn list_packages(
        &self,
        scope: impl Into<Scope>,
        query: &PackageQuery,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Package>> {
        let before = match cursor {
            Some(c) => Some(c.parse::<PackageId>().map_err(|_| invalid_cursor())?),
            None => None,
        };
        validate::package_query(query).map_err(RegistryError::Invalid)?;
        let limit = limits::clamp_limit(limit, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT);
        let scope = scope.into();
        let _slot = self
            .listing
            .enter(&scope, self.config.max_reads_per_tenant, usize::MAX)
            .map_err(|_| RegistryError::TooManyReads)?;
        let mut items = self
            .meta
            .reads()
            .list_packages(&scope, query, before, limit + 1)
            .await?;
        let next_cursor = next_page(&mut items, limit, |p| p.id.to_string());
        let items = items.into_iter().map(|p| self.present(p)).collect();
        Ok(Page { items, next_cursor })
    }

    /// Freezes the package and stores its manifest. Idempotent: finalizing a finalized
    /// package returns it as it is.
    pub async fn finalize(&self, tenant: &str, id: PackageId) -> Result<Package> {
        for _ in 0..limits::FINALIZE_ATTEMPTS {
            let package = self.package(tenant, id).await?;
            if package.state == PackageState::Finalized {
                return Ok(package);
            }
            let files = self.all_files(tenant, id).await?;
            let finalized_at = Timestamp::now();
            let file_count = files.len() as u64;
            let manifest = Manifest::new(&package, finalized_at, files)
                .encode()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let size = manifest.cbor.len().max(manifest.json.len());
            let limit = self.config.max_manifest_bytes;
            if size > limit {
                return Err(RegistryError::ManifestTooLarge { size, limit });
            }
            let data = serde_json::json!({
                "manifest_digest": manifest.digest.content_address(),
                "file_count": file_count,
                "total_size": package.total_size,
            });
            let event = NewEvent {
                kind: EventType::PackageFinalized,
                occurred_at: finalized_at,
                tenant: tenant.to_string(),
                package_id: id,
                data,
            };
            match self
                .meta
                .finalize(
                    Freeze {
                        tenant,
                        package: id,
                        file_count,
                        finalized_at,
                        manifest: &manifest,
                    },
                    event,
                )
                .await
            {
                Ok((package, _)) => return Ok(self.present(package)),
                // A file landed while the manifest was being built: build it again.
                Err(StoreError::Stale) => continue,
                Err(StoreError::NotFound) => {
                    return Err(RegistryError::NotFound(Resource::Package));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Unavailable(FINALIZE_CONTENDED).into())
    }

    /// The stored manifest of a finalized package.
    pub async fn manifest(&self, scope: impl Into<Scope>, id: PackageId) -> Result<StoredManifest> {
        let scope = scope.into();
        match self.meta.reads().manifest(&scope, id).await? {
            Some(m) => Ok(m),
            None => {
                self.package(scope, id).await?;
                Err(RegistryError::NotFinalized)
            }
        }
    }

    // ---- files -------------------------------------------------------------------------

    /// Streams `body` into the blob store and adds it to the package at `new.path`.
    pub async fn add_file(
        &self,
        tenant: &str,
        package_id: PackageId,
        new: NewFile,
        body: ByteStream,
    ) -> Result<FileRecord> {
        let (media_type, expected) = self.check_new_file(&new)?;
        let (room, max_len, over) = self.body_room(tenant).await?;
        let explain = |e: StoreError| over(e, place_error);
        // A small body is taken whole and goes to the metadata store, which checks the package
        // in the same step that adds the file; a large one is refused before its bytes are
        // taken when the package is not open or the path taken, charged to the quota as it
        // arrives, and checked once more just before it is published (`Admission`): a write
        // refused leaves no bytes behind.
        let inline_max = self.config.inline_max_bytes.min(INLINE_FILE_BYTES);
        let claim = BlobClaimer::new(&*self.meta);
        let head = read_head(body, inline_max, max_len).await;
        let (blob, inline) = match head.map_err(explain)? {
            Head::Whole(chunks) => {
                let bytes = concat(chunks);
                let digest = Sha256Digest::of(&bytes);
                check_digest(expected, digest)?;
                let size = bytes.len() as u64;
                (BlobInfo { digest, size }, Some(bytes))
            }
            Head::Partial(body) => {
                let place = Place {
                    reads: self.meta.reads(),
                    tenant,
                    package: package_id,
                    path: &new.path,
                };
                place.check().await.map_err(place_error)?;
                let body = self.inflight.meter(tenant, room, body);
                let admission = Admission {
                    place,
                    max_bytes: self.quota().max_bytes(tenant),
                    claim: &claim,
                };
                let put = write_blob(&*self.blobs, body, expected, max_len, &admission).await;
                (put.map_err(explain)?, None)
            }
        };
        let mut file = FileRecord::new(
            tenant,
            package_id,
            new.path,
            blob.size,
            media_type,
            blob.digest,
        );
        file.inline = inline.is_some();
        self.record_file(&file, None, inline, claim.generation())
            .await?;
        Ok(file)
    }

    /// How much of a single-shot body the tenant's byte quota and the file limit let in: the
    /// room, the longest body, and what a refusal of the body means (the quota, when it was
    /// the tighter limit; else `other` of the store's error).
    async fn body_room(
        &self,
        tenant: &str,
    ) -> Result<(
        Option<ByteRoom>,
        u64,
        impl Fn(StoreError, fn(StoreError) -> RegistryError) -> RegistryError + use<>,
    )> {
        let max_file = self.config.max_file_bytes;
        let room = self.quota().byte_room(tenant).await?;
        let quota = ByteRoom::binding(room, max_file);
        let max_len = quota.map_or(max_file, |q| q.left());
        let over = move |e: StoreError, other: fn(StoreError) -> RegistryError| match (quota, e) {
            (Some(quota), StoreError::TooLarge { .. }) => quota.exceeded(),
            (_, e) => QuotaReached::within(&e).unwrap_or_else(|| other(e)),
        };
        Ok((room, max_len, over))
    }

    pub async fn file(&self, scope: impl Into<Scope>, id: FileId) -> Result<Arc<FileRecord>> {
        self.meta
            .reads()
            .file(&scope.into(), id)
            .await?
            .ok_or(RegistryError::NotFound(Resource::File))
    }

    /// A page of a package's files in UTF-8 byte order of their paths.
    pub async fn list_files(
        &self,
        scope: impl Into<Scope>,
        package_id: PackageId,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<FileRecord>> {
        let scope = scope.into();
        self.package(&scope, package_id).await?;
        let after = match cursor {
            Some(c) => Some(decode_path_cursor(c).ok_or_else(invalid_cursor)?),
            None => None,
        };
        let limit = limits::clamp_limit(limit, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT);
        let mut items = self
            .meta
            .reads()
            .list_files(&scope, package_id, after.as_deref(), limit + 1)
            .await?;
        let next_cursor = next_page(&mut items, limit, |f| hex::encode(f.path.as_bytes()));
        Ok(Page { items, next_cursor })
    }

    /// The file and a stream of its bytes in `range` (the whole file when `None`). The
    /// caller resolves the range against the file's size first.
    pub async fn open_file(
        &self,
        scope: impl Into<Scope>,
        id: FileId,
        range: Option<Range<u64>>,
    ) -> Result<(Arc<FileRecord>, ByteStream)> {
        let file = self.file(scope, id).await?;
        let stream = self.read_file(&file, range.unwrap_or(0..file.size)).await?;
        Ok((file, stream))
    }

    /// The bytes `range` of a blob the caller has looked up ([`Registry::oci_blob`]).
    pub async fn read_blob(&self, blob: BlobInfo, range: Range<u64>) -> Result<ByteStream> {
        if range.start > range.end || range.end > blob.size {
            return Err(RegistryError::invalid("range", "outside the blob"));
        }
        Ok(self.blobs.read(&blob.digest, range).await?)
    }

    /// The bytes `range` of a file the caller has looked up (and so was allowed to see).
    pub async fn read_file(&self, file: &FileRecord, range: Range<u64>) -> Result<ByteStream> {
        if range.start > range.end || range.end > file.size {
            return Err(RegistryError::invalid("range", "outside the file"));
        }
        if file.inline {
            let bytes = match self.meta.reads().inline_blob(&file.sha256()).await? {
                Some(bytes) if bytes.len() as u64 == file.size => bytes,
                _ => {
                    return Err(StoreError::Corrupt(format!("inline bytes of {}", file.id)).into());
                }
            };
            let part = bytes.slice(range.start as usize..range.end as usize);
            return Ok(futures::stream::once(async { Ok(part) }).boxed());
        }
        Ok(self.blobs.read(&file.sha256(), range).await?)
    }

    // ---- upload sessions ---------------------------------------------------------------

    pub async fn create_upload(&self, tenant: &str, size: Option<u64>) -> Result<Upload> {
        if let Some(size) = size
            && size > self.config.max_file_bytes
        {
            return Err(RegistryError::TooLarge {
                limit: self.config.max_file_bytes,
            });
        }
        self.quota().check_new_upload(tenant, size).await?;
        let now = Timestamp::now();
        let record = UploadRecord {
            upload: Upload {
                id: UploadId::generate(tenant),
                offset: 0,
                size,
                state: UploadState::Open,
                expires_at: self.expiry(now),
            },
            tenant: tenant.to_string(),
            created_at: now,
            hash_state: Sha256Hasher::new().save(),
            file_id: None,
            staging: Staging::default(),
        };
        let max_open = self
            .config
            .quotas
            .get(tenant)
            .and_then(|q| q.max_open_uploads);
        self.meta.create_upload(&record, max_open).await?;
        Ok(record.upload)
    }

    /// An upload that is open or completed; cancelled and expired ones are not found.
    pub async fn upload(&self, scope: impl Into<Scope>, id: UploadId) -> Result<Upload> {
        Ok(self.live_upload(&scope.into(), id).await?.upload)
    }

    /// Appends the chunk at the upload's offset. On any error the offset does not move.
    pub async fn append_upload(
        &self,
        tenant: &str,
        id: UploadId,
        chunk: Chunk,
        body: ByteStream,
    ) -> Result<Upload> {
        let (guard, record) = self.lock_open_upload(tenant, id).await?;
        let offset = record.upload.offset;
        let max_file = self.config.max_file_bytes;
        let (size, room) = append_room(offset, record.upload.size, &chunk, max_file)?;
        let byte_room = self.quota().byte_room(tenant).await?;
        let quota = ByteRoom::binding(byte_room, room);
        let max_len = chunk_limit(room, quota, chunk.len)?;
        let hasher = restore_hasher(&record)?;
        let body = self.inflight.meter(tenant, byte_room, body);
        // Writing the staged bytes and moving the offset run to their end under the lock even
        // if the request goes away: a half-finished append must not overlap the next one.
        let (blobs, meta) = (self.blobs.clone(), self.meta.clone());
        let (owned_tenant, ttl) = (tenant.to_string(), self.config.upload_ttl.as_secs());
        let declared_len = chunk.len;
        let max_bytes = self.quota().max_bytes(tenant);
        let appended = tokio::spawn(async move {
            let _guard = guard;
            let (body, hashed) = hash_alongside(body, hasher);
            let staged = blobs
                .stage_append(&id, &record.staging, offset, body, max_len)
                .await;
            let hasher = hashed.await.map_err(Append::Stage)?;
            let staging = match staged {
                Ok(staging) => staging,
                Err(e) => {
                    // What a failed append wrote past the offset (a directory's file) goes too.
                    let _ = blobs
                        .stage_revert(&id, &record.staging, &record.staging, offset)
                        .await;
                    return Err(Append::Stage(e));
                }
            };
            let refused = if let Some(len) = declared_len
                && hasher.len() - offset != len
            {
                Append::Length(len)
            } else {
                let expires_at = Timestamp::now().plus_secs(ttl);
                let advanced = meta
                    .advance_upload(Advance {
                        tenant: &owned_tenant,
                        id,
                        from_offset: offset,
                        hasher: &hasher,
                        staging: &staging,
                        size,
                        expires_at,
                        max_bytes,
                    })
                    .await;
                match advanced {
                    Ok(record) => return Ok(record),
                    Err(e) => Append::Advance(e),
                }
            };
            // Refused after its bytes were staged: they go now, not when the upload ends.
            if let Err(e) = blobs
                .stage_revert(&id, &record.staging, &staging, offset)
                .await
            {
                tracing::warn!(upload = %id, error = %e, "could not take back a refused append");
            }
            Err(refused)
        })
        .await
        .map_err(|e| StoreError::Database(format!("append failed: {e}")))?;
        match appended {
            Ok(record) => Ok(record.upload),
            Err(Append::Length(declared)) => Err(RegistryError::LengthMismatch { declared }),
            Err(Append::Advance(StoreError::Stale)) => Err(RegistryError::ConcurrentUpdate),
            Err(Append::Advance(e)) => Err(self.upload_error(e)),
            Err(Append::Stage(StoreError::TooLarge { .. })) => {
                Err(too_large(declared_len, quota, size, offset, max_file))
            }

            Err(Append::Stage(e)) => Err(QuotaReached::within(&e).unwrap_or_else(|| e.into())),
        }
    }

    /// Discards an open upload and its bytes.
    pub async fn cancel_upload(&self, tenant: &str, id: UploadId) -> Result<()> {
        let _guard = self.lock_open_upload(tenant, id).await?;
        self.meta
            .delete_upload(tenant, id)
            .await
            .map_err(|e| self.upload_error(e))?;
        self.blobs.stage_discard(&id).await?;
        Ok(())
    }

    /// Turns the upload's bytes into a file of a package. A failed complete changes nothing:
    /// the upload stays open at its offset.
    pub async fn complete_upload(
        &self,
        tenant: &str,
        id: UploadId,
        request: CompleteUpload,
    ) -> Result<FileRecord> {
        let (media_type, expected) = self.check_new_file(&request.file)?;
        let package_id: PackageId = request
            .package_id
            .parse()
            .map_err(|_| RegistryError::invalid("package_id", "not a package id (pkg_…)"))?;
        let (_guard, record) = self.lock_open_upload(tenant, id).await?;
        let offset = record.upload.offset;
        if let Some(size) = record.upload.size
            && offset < size
        {
            return Err(RegistryError::UploadIncomplete { offset, size });
        }
        let digest = restore_hasher(&record)?.finish();
        if let Some(expected) = expected
            && expected != digest
        {
            return Err(RegistryError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
        // Before the staged bytes become a blob (on S3, a copy): a refusal now leaves none.
        let place = Place {
            reads: self.meta.reads(),
            tenant,
            package: package_id,
            path: &request.file.path,
        };
        place.check().await.map_err(place_error)?;
        let blob = BlobInfo {
            digest,
            size: offset,
        };
        let claim = BlobClaimer::new(&*self.meta);
        claim.claim(&blob).await?;
        self.blobs.stage_commit(&id, &record.staging, blob).await?;
        let file = FileRecord::new(
            tenant,
            package_id,
            request.file.path,
            offset,
            media_type,
            digest,
        );
        self.record_file(&file, Some(id), None, claim.generation())
            .await?;
        if let Err(e) = self.blobs.stage_discard(&id).await {
            // The file is recorded; leftover staged bytes only cost space.
            tracing::warn!(upload = %id, error = %e, "could not discard staged bytes");
        }
        Ok(file)
    }

    /// Removes expired upload sessions and their staged bytes, the whole backlog in batches;
    /// returns how many. Safe on every replica at once: each upload is taken by one sweep.
    /// Staged bytes that cannot be discarded now are logged and left to garbage collection;
    /// the sweep goes on with the rest.
    pub async fn sweep_expired_uploads(&self) -> Result<usize> {
        const BATCH: u32 = 1000;
        let mut removed = 0;
        loop {
            let taken = self
                .meta
                .take_expired_uploads(Timestamp::now(), BATCH)
                .await?;
            for (_, id) in &taken {
                if let Err(e) = self.blobs.stage_discard(id).await {
                    tracing::warn!(upload = %id, error = %e, "could not discard an expired upload's bytes");
                }
            }
            removed += taken.len();
            if taken.len() < BATCH as usize {
                return Ok(removed);
            }
        }
    }

    // ---- lifecycle -----------------------------------------------------------------------

    /// What `tenant` uses, and its quotas.
    pub async fn usage(&self, tenant: &str) -> Result<(Usage, Quota)> {
        self.quota().usage(tenant).await
    }

    /// Deletes a package (open or finalized) that is not held; its files answer `404` from
    /// then on, and bytes no remaining file references are left to garbage collection.
    pub async fn delete_package(&self, tenant: &str, id: PackageId) -> Result<()> {
        lifecycle::delete(&*self.meta, tenant, id, DeleteReason::Request).await
    }

    /// Holds (`true`) or releases a package. Idempotent: only a change has an event.
    pub async fn set_hold(&self, tenant: &str, id: PackageId, held: bool) -> Result<Package> {
        let kind = if held {
            EventType::PackageHeld
        } else {
            EventType::PackageReleased
        };
        let rules = self.config.retention.clone();
        let present = move |p: &Package| present_with(&rules, p.clone());
        let event: EventFor =
            Box::new(move |p: &Package| new_event(kind, &p.tenant, p.id, &present(p)));
        match self.meta.set_hold(tenant, id, held, event).await {
            Ok(package) => Ok(self.present(package)),
            Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Package)),
            Err(e) => Err(e.into()),
        }
    }

    // ---- tags --------------------------------------------------------------------------

    /// Points `repository:tag` at a finalized package of the tenant. Idempotent: naming the
    /// package it names already changes nothing and has no event.
    pub async fn set_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
        package_id: &str,
    ) -> Result<TagChange> {
        const NOT_AN_ID: &str = "not a package id (pkg_…)";
        let package = package_id.parse::<PackageId>();
        let mut errors = tag_name_errors(repository, tag);
        if package.is_err() {
            errors.push("package_id", NOT_AN_ID);
        }
        errors.into_result().map_err(RegistryError::Invalid)?;
        let package = package.map_err(|_| RegistryError::invalid("package_id", NOT_AN_ID))?;
        let at = Timestamp::now();
        match self
            .meta
            .set_tag(tenant, repository, tag, package, at)
            .await
        {
            Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Package)),
            other => Ok(other?),
        }
    }

    pub async fn tag(&self, tenant: &str, repository: &str, tag: &str) -> Result<Tag> {
        check_tag_name(repository, tag)?;
        let found = self.meta.reads().tag(tenant, repository, tag).await?;
        found.ok_or(RegistryError::NotFound(Resource::Tag))
    }

    /// A page of the tenant's tags (of one repository, if given), by repository then tag.
    pub async fn list_tags(
        &self,
        tenant: &str,
        repository: Option<&str>,
        cursor: Option<&str>,
        limit: Option<u32>,
    ) -> Result<Page<Tag>> {
        if let Some(repository) = repository {
            validate::repository(repository)
                .map_err(|m| RegistryError::invalid("repository", m))?;
        }
        let after = match cursor {
            Some(c) => Some(decode_tag_cursor(c).ok_or_else(invalid_cursor)?),
            None => None,
        };
        let after = after.as_ref().map(|(r, t)| (r.as_str(), t.as_str()));
        let limit = limits::clamp_limit(limit, DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT);
        let reads = self.meta.reads();
        let mut items = reads
            .list_tags(tenant, repository, after, limit + 1)
            .await?;
        let next_cursor = next_page(&mut items, limit, |t| {
            hex::encode(format!("{}:{}", t.repository, t.tag))
        });
        Ok(Page { items, next_cursor })
    }

    pub async fn delete_tag(&self, tenant: &str, repository: &str, tag: &str) -> Result<Tag> {
        check_tag_name(repository, tag)?;
        match self.meta.delete_tag(tenant, repository, tag).await {
            Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Tag)),
            other => Ok(other?),
        }
    }

    // ---- the OCI distribution face --------------------------------------------------------

    /// The manifest `/v2/<tenant>/<repository>/manifests/<reference>` serves: a tag's
    /// package, a package named by its id (in any repository of its tenant), or one named by
    /// the digest of its manifest as served before. Every finalized package is served as its
    /// deterministic OCI artifact manifest ([`oci::artifact_manifest`]).
    pub async fn oci_manifest(
        &self,
        tenant: &str,
        repository: &str,
        reference: &oci::Reference,
    ) -> Result<oci::Served> {
        let unknown = || RegistryError::NotFound(Resource::Package);
        let reads = self.meta.reads();
        let package = match reference {
            oci::Reference::Tag(tag) => match reads.tag(tenant, repository, tag).await? {
                Some(tag) => tag.package_id,
                None => tag.parse::<PackageId>().map_err(|_| unknown())?,
            },
            oci::Reference::Digest(digest) => reads
                .oci_manifest_package(tenant, repository, digest)
                .await?
                .ok_or_else(unknown)?,
        };
        let served = self.served_manifest(tenant, package).await?;
        match reference {
            oci::Reference::Digest(digest) if *digest != served.digest => Err(unknown()),
            _ => Ok(served),
        }
    }

    /// A finalized package's manifest under `/v2/`, its digest remembered so that a client
    /// that read it by tag or id can read it again by digest (once per digest and process:
    /// a write only the first time a package is served).
    async fn served_manifest(&self, tenant: &str, package: PackageId) -> Result<oci::Served> {
        let reads = self.meta.reads();
        let package_of_tenant = reads
            .package(&Scope::Tenant(tenant.into()), package)
            .await?;
        if package_of_tenant.is_some()
            && let Some((media_type, bytes)) = reads.pushed_manifest(package).await?
        {
            let digest = Sha256Digest::of(&bytes);
            return Ok(oci::Served {
                bytes,
                media_type,
                digest,
                package,
            });
        }
        let scope = Scope::Tenant(tenant.to_string());
        let stored = self.meta.reads().manifest(&scope, package).await?;
        let stored = stored.ok_or(RegistryError::NotFound(Resource::Package))?;
        let manifest: Manifest = serde_json::from_str(&stored.json)
            .map_err(|_| StoreError::Corrupt(format!("the manifest of {package}")))?;
        let bytes = oci::artifact_manifest(&manifest, &stored);
        let digest = Sha256Digest::of(&bytes);
        if self.oci_known.remember(digest) {
            let remembered = self
                .meta
                .remember_oci_manifest(tenant, &digest, package)
                .await;
            if let Err(e) = remembered {
                self.oci_known.forget(&digest);
                return Err(e.into());
            }
        }
        Ok(oci::Served {
            bytes: bytes.into(),
            media_type: oci::IMAGE_MANIFEST.to_string(),
            digest,
            package,
        })
    }

    /// A blob of the tenant: a file's bytes, a package's CBOR manifest (the config of its
    /// artifact), or the empty JSON object. Never another tenant's, whoever has the same bytes.
    pub async fn oci_blob(&self, tenant: &str, digest: Sha256Digest) -> Result<oci::Blob> {
        if digest == oci::empty_json_digest() {
            return Ok(oci::Blob::Bytes(Bytes::from_static(oci::EMPTY_JSON_BYTES)));
        }
        let reads = self.meta.reads();
        if let Some(file) = reads.file_by_digest(tenant, &digest).await? {
            return Ok(oci::Blob::File(file));
        }
        if let Some(cbor) = reads.manifest_by_digest(tenant, &digest).await? {
            return Ok(oci::Blob::Bytes(cbor));
        }
        // No file has it (looked up above): only a pushed blob can be left.
        match self.pushed_blob_size(tenant, digest).await? {
            Some(size) => Ok(oci::Blob::Stored(BlobInfo { digest, size })),
            None => Err(RegistryError::NotFound(Resource::File)),
        }
    }

    /// `DELETE /v2/…/manifests/<reference>`: a tag deletes the tag only; a digest deletes the
    /// package it names (and its tags), refused while the package is held.
    pub async fn oci_delete(
        &self,
        tenant: &str,
        repository: &str,
        reference: &oci::Reference,
    ) -> Result<()> {
        match reference {
            oci::Reference::Tag(tag) => self.delete_tag(tenant, repository, tag).await.map(drop),
            oci::Reference::Digest(_) => {
                let served = self.oci_manifest(tenant, repository, reference).await?;
                self.delete_package(tenant, served.package).await
            }
        }
    }

    /// A blob pushed through `/v2/` in one request, with no upload session: streamed,
    /// hashed, checked against `expected`, claimed and published as a single-shot file's bytes
    /// are, then recorded as the tenant's. The byte quota bounds the body as it arrives.
    pub async fn oci_put_blob(
        &self,
        tenant: &str,
        expected: Sha256Digest,
        body: ByteStream,
    ) -> Result<BlobInfo> {
        let (room, max_len, over) = self.body_room(tenant).await?;
        let explain = |e: StoreError| over(e, RegistryError::from);
        let body = self.inflight.meter(tenant, room, body);
        let claim = BlobClaimer::new(&*self.meta);
        let blob = write_blob(&*self.blobs, body, Some(expected), max_len, &claim).await;
        let blob = blob.map_err(explain)?;
        self.record_pushed_blob(tenant, blob, claim.generation())
            .await?;
        Ok(blob)
    }

    /// Records a pushed blob with the claim its write made; a refusal gives the claim up
    /// (deleting the bytes if no one else wants them).
    async fn record_pushed_blob(
        &self,
        tenant: &str,
        blob: BlobInfo,
        generation: Option<i64>,
    ) -> Result<()> {
        let generation = generation.unwrap_or_default();
        match self.meta.record_oci_blob(tenant, blob, generation).await {
            Ok(()) => Ok(()),
            Err(e) => {
                abandon(&*self.meta, &*self.blobs, &blob.digest, generation).await;
                match e {
                    StoreError::Stale => Err(StoreError::Unavailable(GC_TOOK_THE_BYTES).into()),
                    e => Err(e.into()),
                }
            }
        }
    }

    /// Turns an upload session's bytes into a blob of the tenant, pushed through `/v2/`: the
    /// digest must be `expected`; the bytes are claimed and published, recorded as the
    /// tenant's, and the session is closed. Until a manifest references it, the blob lives at
    /// least the GC grace (its claim's age).
    pub async fn oci_complete_blob(
        &self,
        tenant: &str,
        id: UploadId,
        expected: Sha256Digest,
    ) -> Result<BlobInfo> {
        let (_guard, record) = self.lock_open_upload(tenant, id).await?;
        let digest = restore_hasher(&record)?.finish();
        if digest != expected {
            return Err(RegistryError::DigestMismatch {
                expected,
                actual: digest,
            });
        }
        let blob = BlobInfo {
            digest,
            size: record.upload.offset,
        };
        let claim = BlobClaimer::new(&*self.meta);
        claim.claim(&blob).await?;
        self.blobs.stage_commit(&id, &record.staging, blob).await?;
        self.record_pushed_blob(tenant, blob, claim.generation())
            .await?;
        self.meta
            .delete_upload(tenant, id)
            .await
            .map_err(|e| self.upload_error(e))?;
        if let Err(e) = self.blobs.stage_discard(&id).await {
            tracing::warn!(upload = %id, error = %e, "could not discard staged bytes");
        }
        Ok(blob)
    }

    /// Stores a manifest pushed to `repository` as a finalized package of the tenant (`oci`
    /// its producer, the repository its subject, the blobs it references its files), keeping
    /// its exact bytes; by tag, the tag is set too. Every referenced blob must be the
    /// tenant's and present, every manifest an index names already pushed to the repository
    /// (`ManifestBlobUnknown` lists those that are not; nothing is stored). Pushing the same
    /// manifest again changes nothing but the tag.
    pub async fn oci_put_manifest(
        &self,
        tenant: &str,
        repository: &str,
        reference: &oci::Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<oci::Pushed> {
        let parsed =
            oci::parse(media_type, &bytes).map_err(|m| RegistryError::invalid("manifest", m))?;
        let digest = Sha256Digest::of(&bytes);
        if let oci::Reference::Digest(named) = reference
            && *named != digest
        {
            return Err(RegistryError::DigestMismatch {
                expected: *named,
                actual: digest,
            });
        }
        let reads = self.meta.reads();
        let known = reads
            .oci_manifest_package(tenant, repository, &digest)
            .await?;
        let package = match known {
            Some(package) => package,
            None => {
                self.store_pushed(tenant, repository, media_type, &bytes, &parsed)
                    .await?
            }
        };
        if let oci::Reference::Tag(tag) = reference {
            self.set_tag(tenant, repository, tag, &package.to_string())
                .await?;
        }
        Ok(oci::Pushed {
            digest,
            package,
            subject: parsed.subject,
        })
    }

    /// The package of a newly pushed manifest: checked references, then the package, its
    /// files, its finalization and the manifest's record; a failure on the way deletes the
    /// package again.
    async fn store_pushed(
        &self,
        tenant: &str,
        repository: &str,
        media_type: &str,
        bytes: &[u8],
        parsed: &oci::Parsed,
    ) -> Result<PackageId> {
        let mut missing = Vec::new();
        for blob in &parsed.blobs {
            if self.oci_blob_size(tenant, blob.digest).await? != Some(blob.size) {
                missing.push(blob.digest);
            }
        }
        let reads = self.meta.reads();
        for child in &parsed.manifests {
            let found = reads.oci_manifest_package(tenant, repository, &child.digest);
            if found.await?.is_none() {
                missing.push(child.digest);
            }
        }
        if !missing.is_empty() {
            return Err(RegistryError::ManifestBlobUnknown(missing));
        }
        let class = match &self.config.retention_classes {
            Some(classes) if !classes.contains(OCI_RETENTION_CLASS) => {
                classes.iter().next().cloned().unwrap_or_default()
            }
            _ => OCI_RETENTION_CLASS.to_string(),
        };
        let new = NewPackage {
            producer: OCI_PRODUCER.into(),
            subject: repository.into(),
            retention_class: class,
            metadata: BTreeMap::new(),
        };
        let package = self.create_package(tenant, new).await?.id;
        let digest = Sha256Digest::of(bytes);
        let stored = async {
            let paths = oci::file_paths(&parsed.blobs);
            let mut seen = BTreeSet::new();
            let files: Vec<_> = parsed
                .blobs
                .iter()
                .zip(paths)
                .filter(|(_, path)| seen.insert(path.clone()))
                .collect();
            // Several at once, so that the metadata store commits them together (SQLite's
            // writer groups what is waiting) instead of one commit per layer.
            let adds: Vec<_> = files
                .into_iter()
                .map(|(blob, path)| self.add_pushed_blob(tenant, package, path, blob))
                .collect();
            futures::stream::iter(adds)
                .buffer_unordered(PUSHED_FILES_AT_ONCE)
                .try_collect::<Vec<()>>()
                .await?;
            self.finalize(tenant, package).await?;
            let references: Vec<Sha256Digest> = parsed
                .manifests
                .iter()
                .map(|m| m.digest)
                .chain(parsed.subject)
                .collect();
            let pushed = PushedManifest {
                tenant,
                repository,
                digest,
                package,
                media_type,
                bytes,
                subject: parsed.subject,
                artifact_type: parsed.artifact_type.as_deref(),
                references: &references,
            };
            Ok::<_, RegistryError>(self.meta.record_pushed_manifest(pushed).await?)
        };
        let recorded = stored.await;
        match recorded {
            Ok(winner) if winner == package => Ok(package),
            // A concurrent push of the same manifest recorded its package first.
            Ok(winner) => {
                self.delete_package(tenant, package).await?;
                Ok(winner)
            }
            Err(e) => {
                if let Err(undo) = self.delete_package(tenant, package).await {
                    tracing::warn!(%package, error = %undo, "a failed push left its package");
                }
                Err(e)
            }
        }
    }

    /// The size of a blob the tenant may reference: a file's, or one it pushed whose bytes
    /// are still there.
    async fn oci_blob_size(&self, tenant: &str, digest: Sha256Digest) -> Result<Option<u64>> {
        let reads = self.meta.reads();
        if let Some(file) = reads.file_by_digest(tenant, &digest).await? {
            return Ok(Some(file.size));
        }
        self.pushed_blob_size(tenant, digest).await
    }

    /// The size of a blob the tenant pushed and no file holds yet, while its bytes last.
    async fn pushed_blob_size(&self, tenant: &str, digest: Sha256Digest) -> Result<Option<u64>> {
        if self.meta.reads().oci_blob(tenant, &digest).await?.is_none() {
            return Ok(None);
        }
        Ok(self.blobs.size(&digest).await?)
    }

    /// Adds a blob already stored as a file of an open package: claimed, checked present
    /// after the claim (a collection may have taken it before), recorded with its claim.
    async fn add_pushed_blob(
        &self,
        tenant: &str,
        package: PackageId,
        path: String,
        blob: &oci::Descriptor,
    ) -> Result<()> {
        let media_type = if validate::media_type(&blob.media_type).is_ok() {
            blob.media_type.clone()
        } else {
            "application/octet-stream".to_string()
        };
        let mut file = FileRecord::new(tenant, package, path, blob.size, media_type, blob.digest);
        let reads = self.meta.reads();
        let existing = reads.file_by_digest(tenant, &blob.digest).await?;
        if let Some(existing) = existing.filter(|f| f.inline) {
            // Small bytes live beside their files in the metadata store.
            let bytes = reads.inline_blob(&existing.sha256()).await?;
            let bytes = bytes.ok_or(RegistryError::ManifestBlobUnknown(vec![blob.digest]))?;
            file.inline = true;
            return self.record_file(&file, None, Some(bytes), None).await;
        }
        let info = BlobInfo {
            digest: blob.digest,
            size: blob.size,
        };
        let claim = BlobClaimer::new(&*self.meta);
        claim.claim(&info).await?;
        if self.blobs.size(&blob.digest).await? != Some(blob.size) {
            return Err(RegistryError::ManifestBlobUnknown(vec![blob.digest]));
        }
        self.record_file(&file, None, None, claim.generation())
            .await
    }

    /// Manifests pushed to `repository` whose subject is `subject` (the referrers API), with
    /// those of `artifact_type` only, if given.
    pub async fn oci_referrers(
        &self,
        tenant: &str,
        repository: &str,
        subject: Sha256Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<oci::Referrer>> {
        let reads = self.meta.reads();
        let limit = oci::MAX_REFERENCES as u32;
        let mut found = reads.referrers(tenant, repository, &subject, limit).await?;
        if let Some(kind) = artifact_type {
            found.retain(|r| r.artifact_type.as_deref() == Some(kind));
        }
        Ok(found)
    }

    /// Whether the tenant has a blob (for a cross-repository mount).
    pub async fn oci_has_blob(&self, tenant: &str, digest: Sha256Digest) -> Result<bool> {
        Ok(self.oci_blob_size(tenant, digest).await?.is_some())
    }

    /// A page of a repository's tag names after `last`, at most `limit`, and whether more
    /// follow. `NotFound` for a repository with neither tags nor pushed manifests.
    pub async fn oci_tags(
        &self,
        tenant: &str,
        repository: &str,
        last: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<String>, bool)> {
        if limit == 0 {
            return Ok((Vec::new(), false));
        }
        let after = last.map(|tag| (repository, tag));
        let reads = self.meta.reads();
        let mut tags = reads
            .list_tags(tenant, Some(repository), after, limit + 1)
            .await?;
        if tags.is_empty() && !reads.repository_known(tenant, repository).await? {
            return Err(RegistryError::NotFound(Resource::Tag));
        }
        let more = tags.len() > limit as usize;
        tags.truncate(limit as usize);
        Ok((tags.into_iter().map(|t| t.tag).collect(), more))
    }

    // ---- events ------------------------------------------------------------------------

    /// The events in `scope` after `since`, oldest first; if there are none yet, waits up to
    /// `wait` for the first one. Only commits of events visible in `scope` wake the wait, and
    /// after one empty look the wait starts from the store's high-water mark, so a poller
    /// far behind the newest events does not query the whole log again on every wake-up.
    /// Beyond the caps on waiting polls, `TooManyWaiting` instead of a wait.
    pub async fn events(
        &self,
        scope: impl Into<Scope>,
        since: u64,
        limit: Option<u32>,
        wait: Duration,
    ) -> Result<Vec<Event>> {
        let scope = scope.into();
        let limit = limits::clamp_limit(limit, DEFAULT_EVENT_LIMIT, MAX_EVENT_LIMIT);
        let deadline = Instant::now() + wait;
        let mut watch = self.meta.reads().event_watch(&scope);
        let mut from = since;
        let mut waiting = None;
        loop {
            // Marking the value seen before querying means a commit after the query still
            // wakes us: no event can slip between the query and the wait.
            let mark = *watch.borrow_and_update();
            if mark > from {
                let events = self.meta.reads().events_since(&scope, from, limit).await?;
                if !events.is_empty() {
                    return Ok(events);
                }
                // Every event up to `mark` had committed, and none of them is in scope.
                from = mark;
            }
            if wait.is_zero() {
                return Ok(Vec::new());
            }
            if waiting.is_none() {
                let (per_scope, all) = (self.config.max_waiting_per_scope, self.config.max_waiting);
                let slot = self.waiting.enter(&scope, per_scope, all);
                waiting = Some(slot.map_err(|full| RegistryError::TooManyWaiting {
                    scope: full == Full::Scope,
                })?);
            }
            match tokio::time::timeout_at(deadline, watch.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the store is shutting down: answer with nothing.
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    // ---- helpers -----------------------------------------------------------------------

    fn expiry(&self, now: Timestamp) -> Timestamp {
        now.plus_secs(self.config.upload_ttl.as_secs())
    }

    /// Validates a file's path, media type and expected digest; guesses the media type.
    fn check_new_file(&self, new: &NewFile) -> Result<(String, Option<Sha256Digest>)> {
        let mut errors = Errors::new();
        errors.check("path", validate::path(&new.path));
        if let Some(media_type) = &new.media_type {
            errors.check("media_type", validate::media_type(media_type));
        }
        let expected = match &new.sha256 {
            Some(hex) => {
                let parsed =
                    Sha256Digest::from_hex(hex).or_else(|| Sha256Digest::from_content_address(hex));
                if parsed.is_none() {
                    errors.push("sha256", "must be 64 lowercase hex digits");
                }
                parsed
            }
            None => None,
        };
        errors.into_result().map_err(RegistryError::Invalid)?;
        let media_type = new
            .media_type
            .clone()
            .unwrap_or_else(|| guess_media_type(&new.path));
        Ok((media_type, expected))
    }

    async fn record_file(
        &self,
        file: &FileRecord,
        upload: Option<UploadId>,
        inline: Option<Bytes>,
        claim: Option<i64>,
    ) -> Result<()> {
        let event = new_event(EventType::FileAdded, &file.tenant, file.package_id, file);
        let checks = AddChecks {
            claim,
            max_bytes: self.quota().max_bytes(&file.tenant),
            max_files: self.config.max_files_per_package,
        };
        let added = self
            .meta
            .add_file(file, upload, inline, checks, event)
            .await;
        if let (Err(_), Some(generation)) = (&added, claim) {
            // Published for this file and refused: delete the bytes now if no one else
            // wants them.
            abandon(&*self.meta, &*self.blobs, &file.sha256(), generation).await;
        }
        match added {
            Ok(_) => Ok(()),
            Err(StoreError::NotFound) => Err(RegistryError::NotFound(Resource::Package)),
            // The claim lapsed (this write stalled longer than the grace period) and a
            // collection took the bytes: nothing was recorded; the client sends them again.
            Err(StoreError::Stale) => Err(StoreError::Unavailable(GC_TOOK_THE_BYTES).into()),
            Err(StoreError::TooManyFiles) => Err(RegistryError::TooManyFiles {
                limit: self.config.max_files_per_package,
            }),
            Err(e) => Err(self.upload_error(e)),
        }
    }

    /// Every file of a package, in path order (for the manifest).
    async fn all_files(&self, tenant: &str, id: PackageId) -> Result<Vec<FileRecord>> {
        let mut files = Vec::new();
        loop {
            let after = files.last().map(|f: &FileRecord| f.path.clone());
            let page = self
                .meta
                .reads()
                .list_files(&tenant.into(), id, after.as_deref(), MAX_PAGE_LIMIT)
                .await?;
            let done = page.len() < MAX_PAGE_LIMIT as usize;
            files.extend(page);
            if done {
                return Ok(files);
            }
        }
    }

    async fn live_upload(&self, scope: &Scope, id: UploadId) -> Result<UploadRecord> {
        let not_found = RegistryError::NotFound(Resource::Upload);
        let record = self
            .meta
            .reads()
            .upload(scope, id)
            .await?
            .ok_or(not_found)?;
        let expired =
            record.upload.state == UploadState::Open && record.upload.expires_at < Timestamp::now();
        if record.upload.state == UploadState::Cancelled || expired {
            return Err(RegistryError::NotFound(Resource::Upload));
        }
        Ok(record)
    }

    async fn open_upload(&self, tenant: &str, id: UploadId) -> Result<UploadRecord> {
        let record = self.live_upload(&tenant.into(), id).await?;
        if record.upload.state == UploadState::Completed {
            return Err(RegistryError::UploadCompleted);
        }
        Ok(record)
    }

    /// Takes the upload's in-process lock and reads it afresh under the lock, for the tenant
    /// only: the tenant's own read comes first, so another tenant's request for the id
    /// answers `404` at once, never waiting for (or holding up) the owner's append.
    async fn lock_open_upload(
        &self,
        tenant: &str,
        id: UploadId,
    ) -> Result<(KeyedGuard, UploadRecord)> {
        self.open_upload(tenant, id).await?;
        let guard = self.upload_locks.lock(id).await;
        Ok((guard, self.open_upload(tenant, id).await?))
    }

    fn upload_error(&self, e: StoreError) -> RegistryError {
        match e {
            StoreError::UploadNotOpen => RegistryError::UploadCompleted,
            StoreError::NotFound => RegistryError::NotFound(Resource::Upload),
            other => other.into(),
        }
    }
}

/// Where a new file is to go: checked before a single-shot body is taken (and again just
/// before its bytes are published), and before an upload's staged bytes become a blob.
struct Place<'a> {
    reads: &'a dyn MetadataReads,
    tenant: &'a str,
    package: PackageId,
    path: &'a str,
}

impl Place<'_> {
    /// The package is the tenant's and open, the path free.
    async fn check(&self) -> std::result::Result<(), StoreError> {
        let scope = Scope::from(self.tenant);
        let package = self.reads.package(&scope, self.package).await?;
        match package {
            None => Err(StoreError::NotFound),
            Some(p) if p.state == PackageState::Finalized => Err(StoreError::PackageFinalized),
            Some(_) if self.reads.path_taken(self.package, self.path).await? => {
                Err(StoreError::PathTaken(self.path.to_string()))
            }
            Some(_) => Ok(()),
        }
    }
}

/// A refusal of [`Place::check`] as the registry answers it (a package that is not there, or
/// another tenant's, is a `404`).
fn place_error(e: StoreError) -> RegistryError {
    match e {
        StoreError::NotFound => RegistryError::NotFound(Resource::Package),
        e => e.into(),
    }
}

/// The claim of a single-shot file's bytes, made just before they are published: the place
/// and the byte quota are checked once more first (the body may have taken hours), so that a
/// write refused then has its staged bytes discarded at once instead of published for garbage
/// collection to find. (A refusal between this and the record, a race of milliseconds, has
/// its bytes deleted by [`abandon`] instead.)
struct Admission<'a> {
    place: Place<'a>,
    max_bytes: Option<u64>,
    claim: &'a BlobClaimer<'a>,
}

#[async_trait::async_trait]
impl Claim for Admission<'_> {
    async fn claim(&self, blob: &BlobInfo) -> std::result::Result<(), StoreError> {
        self.place.check().await?;
        if let Some(limit) = self.max_bytes {
            let used = self.place.reads.usage(self.place.tenant).await?.bytes;
            if used.saturating_add(blob.size) > limit {
                return Err(StoreError::QuotaExceeded { limit, used });
            }
        }
        self.claim.claim(blob).await
    }
}

/// Counts requests of one kind under way, in all and per scope, to cap them: long-polls
/// waiting, listings running.
#[derive(Default)]
struct Gate {
    counts: Arc<Mutex<(usize, HashMap<Scope, usize>)>>,
}

/// Which cap a [`Gate`] refused at.
#[derive(Debug, PartialEq, Eq)]
enum Full {
    Scope,
    All,
}

/// One request counted by a [`Gate`]; dropping it (answer, timeout, client gone) leaves.
struct Slot {
    counts: Arc<Mutex<(usize, HashMap<Scope, usize>)>>,
    scope: Scope,
}

impl Gate {
    fn enter(&self, scope: &Scope, per_scope: usize, all: usize) -> Result<Slot, Full> {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *counts;
        let mine = per.get(scope).copied().unwrap_or(0);
        if mine >= per_scope {
            return Err(Full::Scope);
        }
        if *total >= all {
            return Err(Full::All);
        }
        *total += 1;
        per.insert(scope.clone(), mine + 1);
        Ok(Slot {
            counts: self.counts.clone(),
            scope: scope.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *counts;
        *total -= 1;
        if let Some(n) = per.get_mut(&self.scope) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.scope);
            }
        }
    }
}

/// Files up to this size that arrive in one request are kept by the metadata store, durable
/// in the same (grouped) commit as their record: one fsync shared with other writes instead
/// of a file fsync and a directory fsync followed by the commit's. Uploads by session always
/// go to the blob store; a read looks in the metadata store first for files this small.
pub const INLINE_FILE_BYTES: u64 = 64 * 1024;

fn concat(chunks: Vec<Bytes>) -> Bytes {
    match <[Bytes; 1]>::try_from(chunks) {
        Ok([one]) => one,
        Err(chunks) => {
            let mut all = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in chunks {
                all.extend_from_slice(&chunk);
            }
            all.freeze()
        }
    }
}

/// The size an upload will have and the room its next chunk has (bounded by that size and by
/// the file-size limit), or why the chunk is refused before a byte of it is read.
fn append_room(
    offset: u64,
    size: Option<u64>,
    chunk: &Chunk,
    max_file: u64,
) -> Result<(Option<u64>, u64)> {
    if let Some(start) = chunk.start
        && start != offset
    {
        return Err(RegistryError::OffsetMismatch { offset, start });
    }
    let size = match (size, chunk.total) {
        (Some(size), Some(declared)) if size != declared => {
            return Err(RegistryError::SizeMismatch { declared, size });
        }
        (size, declared) => size.or(declared),
    };
    if let Some(size) = size
        && size > max_file
    {
        return Err(RegistryError::TooLarge { limit: max_file });
    }
    let room = match size {
        Some(size) if size < offset => {
            return Err(RegistryError::BeyondDeclaredSize { size, offset });
        }
        Some(size) => size - offset,
        None => max_file.saturating_sub(offset),
    };
    if let Some(len) = chunk.len
        && len > room
    {
        return Err(match size {
            Some(size) => RegistryError::BeyondDeclaredSize { size, offset },
            None => RegistryError::TooLarge { limit: max_file },
        });
    }
    Ok((size, room))
}

/// The most bytes a chunk may bring: its declared length, else the room left, which the byte
/// quota narrows when it binds (a chunk of a declared length past it is refused at once).
fn chunk_limit(room: u64, quota: Option<ByteRoom>, len: Option<u64>) -> Result<u64> {
    if let (Some(quota), Some(len)) = (quota, len)
        && len > quota.left()
    {
        return Err(quota.exceeded());
    }
    let room = quota.map_or(room, |q| q.left());
    Ok(len.unwrap_or(room))
}

/// Why a chunk that ran past its limit was refused: longer than its declared length, past the
/// quota, past the upload's declared size, or past the file-size limit.
fn too_large(
    declared_len: Option<u64>,
    quota: Option<ByteRoom>,
    size: Option<u64>,
    offset: u64,
    max_file: u64,
) -> RegistryError {
    if let Some(declared) = declared_len {
        RegistryError::LengthMismatch { declared }
    } else if let Some(quota) = quota {
        quota.exceeded()
    } else if let Some(size) = size {
        RegistryError::BeyondDeclaredSize { size, offset }
    } else {
        RegistryError::TooLarge { limit: max_file }
    }
}

/// Where an append stopped, for [`Registry::append_upload`] to explain.
enum Append {
    Stage(StoreError),
    Length(u64),
    Advance(StoreError),
}

fn restore_hasher(record: &UploadRecord) -> Result<Sha256Hasher> {
    let hasher = Sha256Hasher::restore(&record.hash_state)
        .filter(|h| h.len() == record.upload.offset)
        .ok_or_else(|| StoreError::Corrupt(format!("hash state of {}", record.upload.id)))?;
    Ok(hasher)
}

fn guess_media_type(path: &str) -> String {
    mime_guess::from_path(path)
        .first_raw()
        .unwrap_or("application/octet-stream")
        .to_string()
}

fn invalid_cursor() -> RegistryError {
    RegistryError::Invalid(vec![FieldError {
        field: "cursor".into(),
        message: "not a cursor returned by this listing".into(),
    }])
}

/// Trims a `limit + 1` result to `limit` and names the cursor of the next page, if any.
fn next_page<T>(items: &mut Vec<T>, limit: u32, cursor: impl Fn(&T) -> String) -> Option<String> {
    if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(cursor)
    } else {
        None
    }
}

/// What is wrong with a tag's name, half by half.
fn tag_name_errors(repository: &str, tag: &str) -> validate::Errors {
    let mut errors = validate::Errors::new();
    errors.check("repository", validate::repository(repository));
    errors.check("tag", validate::tag(tag));
    errors
}

/// Both halves of a tag's name, or `Invalid`.
fn check_tag_name(repository: &str, tag: &str) -> Result<()> {
    tag_name_errors(repository, tag)
        .into_result()
        .map_err(RegistryError::Invalid)
}

/// A tags cursor: the hex of `repository:tag` (a tag holds no `:`).
fn decode_tag_cursor(cursor: &str) -> Option<(String, String)> {
    let text = String::from_utf8(hex::decode(cursor).ok()?).ok()?;
    let (repository, tag) = text.rsplit_once(':')?;
    Some((repository.to_string(), tag.to_string()))
}

/// Any hex is a cursor (the files after those bytes); ours are always a path's UTF-8.
fn decode_path_cursor(cursor: &str) -> Option<String> {
    Some(String::from_utf8_lossy(&hex::decode(cursor).ok()?).into_owned())
}

/// Digests this process has remembered in the metadata store, so that serving a manifest
/// writes only the first time; at most [`KnownDigests::MAX`], forgotten all at once beyond.
#[derive(Default)]
struct KnownDigests(Mutex<HashSet<Sha256Digest>>);

impl KnownDigests {
    const MAX: usize = 100_000;

    /// `true` if `digest` is new here (the caller remembers it in the store).
    fn remember(&self, digest: Sha256Digest) -> bool {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if known.contains(&digest) {
            return false;
        }
        if known.len() >= Self::MAX {
            known.clear();
        }
        known.insert(digest)
    }

    fn forget(&self, digest: &Sha256Digest) {
        let mut known = self.0.lock().unwrap_or_else(|e| e.into_inner());
        known.remove(digest);
    }
}

/// One async mutex per upload id in use, so two requests never write the same upload's
/// staging area at once in this process; entries vanish when no one holds or awaits them.
/// (Across replicas, the metadata store's compare-and-set on the offset decides.)
#[derive(Default)]
struct KeyedLocks {
    locks: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<()>>>>,
}

struct KeyedGuard {
    owner: Arc<KeyedLocks>,
    key: UploadId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    async fn lock(self: &Arc<Self>, key: UploadId) -> KeyedGuard {
        let mutex = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        KeyedGuard {
            owner: self.clone(),
            key,
            guard: Some(guard),
        }
    }
}

impl Drop for KeyedGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1000;

    #[test]
    fn a_gate_caps_each_scope_and_the_whole_and_frees_on_drop() {
        let gate = Gate::default();
        let (acme, beta) = (Scope::from("acme"), Scope::from("beta"));
        let two = [
            gate.enter(&acme, 2, 3).unwrap(),
            gate.enter(&acme, 2, 3).unwrap(),
        ];
        assert_eq!(gate.enter(&acme, 2, 3).err(), Some(Full::Scope));
        let third = gate.enter(&beta, 2, 3).unwrap();
        assert_eq!(gate.enter(&beta, 2, 3).err(), Some(Full::All));
        drop(two);
        assert!(gate.enter(&acme, 2, 3).is_ok());
        drop(third);
        let counts = gate.counts.lock().unwrap();
        assert_eq!(counts.0, 0);
        assert!(
            counts.1.is_empty(),
            "a scope with nothing running is forgotten"
        );
    }

    fn chunk(start: Option<u64>, len: Option<u64>, total: Option<u64>) -> Chunk {
        Chunk { start, len, total }
    }

    #[test]
    fn a_chunk_is_placed_against_the_offset_and_the_sizes() {
        let room = |offset, size, c: Chunk| append_room(offset, size, &c, MAX);
        // The room is what the declared size leaves, else what the file limit leaves.
        assert_eq!(
            room(10, None, chunk(None, None, None)).unwrap(),
            (None, 990)
        );
        assert_eq!(
            room(10, Some(50), chunk(Some(10), None, None)).unwrap(),
            (Some(50), 40)
        );
        assert_eq!(
            room(10, None, chunk(None, None, Some(30))).unwrap(),
            (Some(30), 20)
        );
        assert!(matches!(
            room(10, None, chunk(Some(9), None, None)),
            Err(RegistryError::OffsetMismatch {
                offset: 10,
                start: 9
            })
        ));
        assert!(matches!(
            room(10, Some(50), chunk(None, None, Some(60))),
            Err(RegistryError::SizeMismatch {
                declared: 60,
                size: 50
            })
        ));
        assert!(matches!(
            room(0, None, chunk(None, None, Some(MAX + 1))),
            Err(RegistryError::TooLarge { limit: MAX })
        ));
        assert!(matches!(
            room(40, Some(30), chunk(None, None, None)),
            Err(RegistryError::BeyondDeclaredSize {
                size: 30,
                offset: 40
            })
        ));
        assert!(matches!(
            room(10, Some(50), chunk(None, Some(41), None)),
            Err(RegistryError::BeyondDeclaredSize {
                size: 50,
                offset: 10
            })
        ));
        assert!(matches!(
            room(10, None, chunk(None, Some(991), None)),
            Err(RegistryError::TooLarge { limit: MAX })
        ));
        assert_eq!(
            room(10, None, chunk(None, Some(990), None)).unwrap(),
            (None, 990)
        );
    }

    #[test]
    fn the_quota_narrows_a_chunk_and_refuses_a_declared_one_past_it() {
        let quota = Some(ByteRoom {
            limit: 100,
            used: 70,
        });
        assert_eq!(chunk_limit(500, None, None).unwrap(), 500);
        assert_eq!(chunk_limit(500, None, Some(20)).unwrap(), 20);
        assert_eq!(chunk_limit(500, quota, None).unwrap(), 30);
        assert_eq!(chunk_limit(500, quota, Some(30)).unwrap(), 30);
        assert!(matches!(
            chunk_limit(500, quota, Some(31)),
            Err(RegistryError::QuotaExceeded {
                quota: "max_bytes",
                limit: 100,
                used: 70
            })
        ));
    }

    #[test]
    fn a_chunk_cut_off_is_explained_by_what_bound_it() {
        let quota = Some(ByteRoom {
            limit: 100,
            used: 70,
        });
        let why = |declared, quota, size| too_large(declared, quota, size, 10, MAX);
        assert!(matches!(
            why(Some(5), quota, Some(50)),
            RegistryError::LengthMismatch { declared: 5 }
        ));
        assert!(matches!(
            why(None, quota, Some(50)),
            RegistryError::QuotaExceeded { .. }
        ));
        assert!(matches!(
            why(None, None, Some(50)),
            RegistryError::BeyondDeclaredSize {
                size: 50,
                offset: 10
            }
        ));
        assert!(matches!(
            why(None, None, None),
            RegistryError::TooLarge { limit: MAX }
        ));
    }
}

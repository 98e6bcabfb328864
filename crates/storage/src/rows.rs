//! Rows to domain values, the same for every SQL metadata store: one column layout, one
//! decoder, whatever the engine.

use artifactstore_core::storage::StoreError;
use artifactstore_core::*;
#[cfg(feature = "postgres")]
use sqlx::Postgres;
#[cfg(feature = "sqlite")]
use sqlx::Sqlite;
#[cfg(feature = "postgres")]
use sqlx::postgres::PgRow;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqliteRow;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use sqlx::QueryBuilder;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// A column type every engine of this build decodes.
pub(crate) trait Value: SqliteValue + PostgresValue {}

impl<T: SqliteValue + PostgresValue> Value for T {}

/// A column type SQLite decodes (anything, when the build leaves SQLite out).
#[cfg(feature = "sqlite")]
pub(crate) trait SqliteValue: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite> {}
#[cfg(feature = "sqlite")]
impl<T: for<'r> sqlx::Decode<'r, Sqlite> + sqlx::Type<Sqlite>> SqliteValue for T {}
#[cfg(not(feature = "sqlite"))]
pub(crate) trait SqliteValue {}
#[cfg(not(feature = "sqlite"))]
impl<T> SqliteValue for T {}

/// A column type PostgreSQL decodes (anything, when the build leaves PostgreSQL out).
#[cfg(feature = "postgres")]
pub(crate) trait PostgresValue:
    for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>
{
}
#[cfg(feature = "postgres")]
impl<T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>> PostgresValue for T {}
#[cfg(not(feature = "postgres"))]
pub(crate) trait PostgresValue {}
#[cfg(not(feature = "postgres"))]
impl<T> PostgresValue for T {}

/// A row of either engine, read by column name.
pub(crate) trait Fields {
    fn field<T: Value>(&self, name: &str) -> Result<T, ()>;
}

#[cfg(feature = "sqlite")]
impl Fields for SqliteRow {
    fn field<T: Value>(&self, name: &str) -> Result<T, ()> {
        sqlx::Row::try_get(self, name).map_err(drop)
    }
}

#[cfg(feature = "postgres")]
impl Fields for PgRow {
    fn field<T: Value>(&self, name: &str) -> Result<T, ()> {
        sqlx::Row::try_get(self, name).map_err(drop)
    }
}

pub(crate) const PACKAGE_COLUMNS: &str = "id, tenant, producer, subject, retention_class, metadata, state, \
    created_at, finalized_at, file_count, total_size, manifest_digest, held";

/// Remembers the digest (`$2`) of the manifest served for a finalized package (`$3`) of a
/// tenant (`$1`), under every repository; nothing for a package gone meanwhile.
pub(crate) const REMEMBER_OCI_MANIFEST: &str = "INSERT INTO oci_manifests \
     (tenant, repository, digest, package_id) SELECT $1, '', $2, $3 WHERE EXISTS \
     (SELECT 1 FROM packages WHERE id = $3 AND tenant = $1 AND state = 'finalized') \
     ON CONFLICT (tenant, repository, digest) DO NOTHING";

/// Records a pushed blob (`$1` tenant, `$2` digest, `$3` size); its time is the database's.
pub(crate) const RECORD_OCI_BLOB: &str = "INSERT INTO oci_blobs (tenant, digest, size, pushed_at) \
     VALUES ($1, $2, $3, {now}) ON CONFLICT (tenant, digest) DO UPDATE SET \
     pushed_at = excluded.pushed_at";

/// Forgets pushed blobs older than the grace (`$1`, in ms).
pub(crate) const FORGET_OCI_BLOBS: &str = "DELETE FROM oci_blobs WHERE pushed_at < {now} - $1";

/// Records a pushed manifest ([`PushedManifest`]'s fields as `$1`…`$8`) unless its repository
/// has that digest already.
pub(crate) const RECORD_PUSHED_MANIFEST: &str = "INSERT INTO oci_manifests (tenant, repository, \
     digest, package_id, media_type, bytes, subject, artifact_type) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (tenant, repository, digest) DO NOTHING";

/// The package recorded for a digest (`$3`) in a repository (`$2`) of a tenant (`$1`).
pub(crate) const PUSHED_PACKAGE: &str = "SELECT package_id FROM oci_manifests \
     WHERE tenant = $1 AND repository = $2 AND digest = $3";

/// The columns of `tags`, in [`tag_from_row`]'s order.
pub(crate) const TAG_COLUMNS: &str =
    "tenant, repository, tag, package_id, manifest_digest, updated_at";

pub(crate) fn tag_from_row(row: &impl Fields) -> Result<Tag, StoreError> {
    let get_str = |name: &str| row.field::<String>(name).map_err(|_| corrupt("tag"));
    Ok(Tag {
        tenant: get_str("tenant")?,
        repository: get_str("repository")?,
        tag: get_str("tag")?,
        package_id: get_str("package_id")?.parse().map_err(|_| corrupt("tag"))?,
        manifest_digest: Sha256Digest::from_content_address(&get_str("manifest_digest")?)
            .map(ContentAddress)
            .ok_or(corrupt("tag digest"))?,
        updated_at: Timestamp::from_millis(row.field("updated_at").map_err(|_| corrupt("tag"))?),
    })
}

pub(crate) fn package_from_row(row: &impl Fields) -> Result<Package, StoreError> {
    let get_str = |name: &str| row.field::<String>(name).map_err(|_| corrupt("package"));
    let get_i64 = |name: &str| row.field::<i64>(name).map_err(|_| corrupt("package"));
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&get_str("metadata")?).map_err(|_| corrupt("package metadata"))?;
    let manifest_digest = row
        .field::<Option<String>>("manifest_digest")
        .map_err(|_| corrupt("package"))?
        .map(|d| {
            Sha256Digest::from_content_address(&d)
                .map(ContentAddress)
                .ok_or(corrupt("digest"))
        })
        .transpose()?;
    Ok(Package {
        id: get_str("id")?.parse().map_err(|_| corrupt("package id"))?,
        tenant: get_str("tenant")?,
        producer: get_str("producer")?,
        subject: get_str("subject")?,
        retention_class: get_str("retention_class")?,
        metadata,
        state: PackageState::parse(&get_str("state")?).ok_or(corrupt("package state"))?,
        created_at: Timestamp::from_millis(get_i64("created_at")?),
        finalized_at: row
            .field::<Option<i64>>("finalized_at")
            .map_err(|_| corrupt("package"))?
            .map(Timestamp::from_millis),
        file_count: get_i64("file_count")? as u64,
        total_size: get_i64("total_size")? as u64,
        manifest_digest,
        held: row.field("held").map_err(|_| corrupt("package"))?,
        expires_at: None,
    })
}

pub(crate) const FILE_COLUMNS: &str =
    "id, package_id, tenant, path, size, media_type, sha256, created_at, inline";

pub(crate) fn file_from_row(row: &impl Fields) -> Result<FileRecord, StoreError> {
    let get_str = |name: &str| row.field::<String>(name).map_err(|_| corrupt("file"));
    let sha256 = Sha256Digest::from_hex(&get_str("sha256")?).ok_or(corrupt("file digest"))?;
    Ok(FileRecord {
        id: get_str("id")?.parse().map_err(|_| corrupt("file id"))?,
        package_id: get_str("package_id")?
            .parse()
            .map_err(|_| corrupt("file package"))?,
        tenant: get_str("tenant")?,
        path: get_str("path")?,
        size: row.field::<i64>("size").map_err(|_| corrupt("file"))? as u64,
        media_type: get_str("media_type")?,
        digests: Digests { sha256 },
        content_address: ContentAddress(sha256),
        created_at: Timestamp::from_millis(row.field("created_at").map_err(|_| corrupt("file"))?),
        inline: row.field("inline").map_err(|_| corrupt("file"))?,
    })
}

pub(crate) const UPLOAD_COLUMNS: &str =
    "id, tenant, size, \"offset\", state, hash_state, created_at, expires_at, file_id, staging";

pub(crate) fn upload_from_row(row: &impl Fields) -> Result<UploadRecord, StoreError> {
    let bad = |_| corrupt("upload");
    let state: String = row.field("state").map_err(bad)?;
    let id: String = row.field("id").map_err(bad)?;
    let file_id: Option<String> = row.field("file_id").map_err(bad)?;
    Ok(UploadRecord {
        upload: Upload {
            id: id.parse().map_err(|_| corrupt("upload id"))?,
            offset: row.field::<i64>("offset").map_err(bad)? as u64,
            size: row
                .field::<Option<i64>>("size")
                .map_err(bad)?
                .map(|s| s as u64),
            state: UploadState::parse(&state).ok_or(corrupt("upload state"))?,
            expires_at: Timestamp::from_millis(row.field("expires_at").map_err(bad)?),
        },
        tenant: row.field("tenant").map_err(bad)?,
        created_at: Timestamp::from_millis(row.field("created_at").map_err(bad)?),
        hash_state: row.field("hash_state").map_err(bad)?,
        file_id: file_id
            .map(|f| f.parse().map_err(|_| corrupt("upload file id")))
            .transpose()?,
        staging: Staging(row.field("staging").map_err(bad)?),
    })
}

pub(crate) fn event_from_row(row: &impl Fields) -> Result<Event, StoreError> {
    let bad = |_| corrupt("event");
    let kind: String = row.field("type").map_err(bad)?;
    let package_id: String = row.field("package_id").map_err(bad)?;
    let data: String = row.field("data").map_err(bad)?;
    Ok(Event {
        sequence: row.field::<i64>("sequence").map_err(bad)? as u64,
        kind: EventType::parse(&kind).ok_or(corrupt("event type"))?,
        occurred_at: Timestamp::from_millis(row.field("occurred_at").map_err(bad)?),
        tenant: row.field("tenant").map_err(bad)?,
        package_id: package_id
            .parse()
            .map_err(|_| corrupt("event package id"))?,
        data: serde_json::from_str(&data).map_err(|_| corrupt("event data"))?,
    })
}

pub(crate) fn event_data(event: &NewEvent) -> Result<String, StoreError> {
    serde_json::to_string(&event.data).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn committed_event(event: NewEvent, sequence: i64) -> Event {
    Event {
        sequence: sequence as u64,
        kind: event.kind,
        occurred_at: event.occurred_at,
        tenant: event.tenant,
        package_id: event.package_id,
        data: event.data,
    }
}

/// A digest as the tables keep it (lowercase hex).
pub(crate) fn digest_of(hex: &str) -> Result<Sha256Digest, StoreError> {
    Sha256Digest::from_hex(hex).ok_or_else(|| corrupt("digest"))
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unreadable {what} in the metadata store"))
}

pub(crate) fn manifest_from_row(row: &impl Fields) -> Result<StoredManifest, StoreError> {
    let bad = |_| corrupt("manifest");
    let digest: String = row.field("manifest_digest").map_err(bad)?;
    Ok(StoredManifest {
        digest: Sha256Digest::from_content_address(&digest).ok_or(corrupt("manifest digest"))?,
        cbor: row.field("manifest_cbor").map_err(bad)?,
        json: row.field("manifest_json").map_err(bad)?,
    })
}

/// `GET /packages` as one query: each filter is an indexed condition (see the migrations).
pub(crate) fn list_packages_query<'a, DB>(
    scope: &Scope,
    q: &PackageQuery,
    before: Option<PackageId>,
    limit: u32,
) -> QueryBuilder<'a, DB>
where
    DB: sqlx::Database,
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut sql = QueryBuilder::<DB>::new(format!(
        "SELECT {PACKAGE_COLUMNS} FROM packages WHERE 1 = 1"
    ));
    let tenant = |sql: &mut QueryBuilder<'a, DB>| {
        if let Some(tenant) = scope.tenant() {
            sql.push(" AND tenant = ").push_bind(tenant.to_string());
        }
    };
    tenant(&mut sql);
    let columns = [
        ("producer", &q.producer),
        ("subject", &q.subject),
        ("retention_class", &q.retention_class),
    ];
    for (column, value) in columns {
        if let Some(value) = value {
            sql.push(format!(" AND {column} = "))
                .push_bind(value.clone());
        }
    }
    if let Some(state) = q.state {
        sql.push(" AND state = ").push_bind(state.as_str());
    }
    for (key, value) in &q.metadata {
        sql.push(" AND id IN (SELECT package_id FROM package_metadata WHERE key = ")
            .push_bind(key.clone())
            .push(" AND value = ")
            .push_bind(value.clone());
        tenant(&mut sql);
        sql.push(")");
    }
    for key in &q.has_metadata {
        sql.push(" AND id IN (SELECT package_id FROM package_metadata WHERE key = ")
            .push_bind(key.clone());
        tenant(&mut sql);
        sql.push(")");
    }
    if let Some(digest) = q.contains {
        sql.push(" AND id IN (SELECT package_id FROM files WHERE sha256 = ")
            .push_bind(digest.hex());
        tenant(&mut sql);
        sql.push(")");
    }
    if let Some(after) = q.created_after {
        sql.push(" AND created_at > ").push_bind(after.as_millis());
    }
    if let Some(before) = q.created_before {
        sql.push(" AND created_at < ").push_bind(before.as_millis());
    }
    if let Some(cursor) = before {
        sql.push(" AND id < ").push_bind(cursor.to_string());
    }
    sql.push(" ORDER BY id DESC LIMIT ").push_bind(limit as i64);
    sql
}

/// Migrations embedded in the binary, applied in order at start (under the engine's lock).
pub(crate) fn migrator(list: &[(i64, &'static str, &'static str)]) -> Migrator {
    let migrations = list
        .iter()
        .map(|(version, name, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                Cow::Borrowed(sql),
                false,
            )
        })
        .collect();
    Migrator {
        migrations: Cow::Owned(migrations),
        ignore_missing: false,
        locking: true,
        no_tx: false,
    }
}

/// File records by id, bounded: a file never changes once added, so a cached record is stale
/// only once its package is deleted, and [`evict_package`](Self::evict_package) (called after
/// that commit) removes it. A record read from the database while an eviction ran is not
/// kept: the generation tells (see [`generation`](Self::generation)).
pub(crate) struct FileCache {
    files: std::sync::Mutex<(u64, std::collections::HashMap<FileId, Arc<FileRecord>>)>,
    capacity: usize,
}

impl Default for FileCache {
    fn default() -> Self {
        Self::with_capacity(16 * 1024)
    }
}

impl FileCache {
    /// A cache of `capacity` records; 0 keeps none (a store whose deletions other processes
    /// make cannot know when a record goes stale).
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Self {
            files: Default::default(),
            capacity,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (u64, std::collections::HashMap<FileId, Arc<FileRecord>>)> {
        self.files.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn get(&self, id: &FileId) -> Option<Arc<FileRecord>> {
        self.lock().1.get(id).cloned()
    }

    /// Taken before reading a record from the database, handed to [`insert`](Self::insert).
    pub(crate) fn generation(&self) -> u64 {
        self.lock().0
    }

    /// Keeps `file`, read when the cache was at `generation`, unless an eviction ran since.
    pub(crate) fn insert(&self, file: &Arc<FileRecord>, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let mut cache = self.lock();
        if cache.0 != generation {
            return;
        }
        if cache.1.len() >= self.capacity {
            // Crude but bounded; hot files come straight back.
            cache.1.clear();
        }
        cache.1.insert(file.id, file.clone());
    }

    /// Forgets the files of a deleted package (after the deletion committed).
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) fn evict_package(&self, package: PackageId) {
        let mut cache = self.lock();
        cache.0 += 1;
        cache.1.retain(|_, f| f.package_id != package);
    }
}

/// The database's clock, in milliseconds since the epoch, as each engine writes it: every
/// time leases and garbage collection compare is the database's, never a replica's. The texts
/// below carry `{now}` where it goes ([`ClockTexts`]).
#[cfg(feature = "sqlite")]
pub(crate) const SQLITE_NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";
#[cfg(feature = "postgres")]
pub(crate) const POSTGRES_NOW: &str =
    "CAST(extract(epoch from clock_timestamp()) * 1000 AS BIGINT)";

/// The texts below with an engine's clock in place of `{now}`.
pub(crate) struct ClockTexts {
    pub(crate) lease: String,
    pub(crate) claim_blob: String,
    pub(crate) doom_blob: String,
    pub(crate) release_blob: String,
    pub(crate) abandon_doom: String,
    pub(crate) record_oci_blob: String,
    pub(crate) forget_oci_blobs: String,
    pub(crate) doomed_blobs: String,
}

impl ClockTexts {
    pub(crate) fn new(now: &str) -> Self {
        let with_now = |text: &str| {
            text.replace("{now}", now)
                .replace("{writer_doom_ms}", &WRITER_DOOM_MS.to_string())
        };
        Self {
            lease: with_now(LEASE),
            claim_blob: with_now(CLAIM_BLOB),
            doom_blob: with_now(DOOM_BLOB),
            release_blob: with_now(RELEASE_BLOB),
            abandon_doom: with_now(ABANDON_DOOM),
            record_oci_blob: with_now(RECORD_OCI_BLOB),
            forget_oci_blobs: with_now(FORGET_OCI_BLOBS),
            doomed_blobs: with_now(DOOMED_BLOBS),
        }
    }
}

/// Takes or renews a lease (`$1` name, `$2` holder, `$3` time to live in ms): a row comes back,
/// with the lease's generation, only if the lease is now the holder's. The generation moves on
/// whenever the lease changes hands or lapses.
pub(crate) const LEASE: &str = "INSERT INTO leases (name, holder, expires_at, generation) \
     VALUES ($1, $2, {now} + $3, 1) ON CONFLICT (name) DO UPDATE SET \
     generation = CASE WHEN leases.holder = excluded.holder AND leases.expires_at >= {now} \
     THEN leases.generation ELSE leases.generation + 1 END, \
     holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.holder = excluded.holder OR leases.expires_at < {now} RETURNING generation";

/// Claims a digest for a write (`$1` digest, `$2` generation if new), counting one more writer
/// under way: a row comes back, with the claim's generation, unless the digest is doomed.
pub(crate) const CLAIM_BLOB: &str = "INSERT INTO blob_claims (sha256, generation, touched_at, \
     writers) VALUES ($1, $2, {now}, 1) ON CONFLICT (sha256) DO UPDATE SET \
     touched_at = excluded.touched_at, writers = blob_claims.writers + 1 \
     WHERE blob_claims.doomed_at IS NULL RETURNING generation";

/// The record of a file whose claim (`$1` digest, `$2` generation) still stands undoomed: one
/// writer fewer. A row comes back only if the claim stood.
pub(crate) const RECORD_CLAIM: &str = "UPDATE blob_claims SET writers = \
     CASE WHEN writers > 0 THEN writers - 1 ELSE 0 END \
     WHERE sha256 = $1 AND generation = $2 AND doomed_at IS NULL RETURNING writers";

/// How long a writer's doom of bytes it alone claimed ([`ABANDON_DOOM`]) is left to that
/// writer before a collection adopts it. The writer deletes the bytes milliseconds after
/// dooming them: a doom older than this belongs to a writer that died or stalled, and adopting
/// one sooner could let a stalled writer delete bytes published after the adoption.
pub(crate) const WRITER_DOOM_MS: i64 = 60_000;

/// A writer refused at its record (`$1` digest, `$2` its claim's generation, `$3` its own
/// negative token) dooms bytes no other writer is under way with; the caller has taken one
/// writer away with [`RECORD_CLAIM`] in the same transaction, found zero and checked that no
/// file uses the digest. A row comes back if it is doomed by that token.
pub(crate) const ABANDON_DOOM: &str = "UPDATE blob_claims SET doomed_at = {now}, doomed_by = $3 \
     WHERE sha256 = $1 AND generation = $2 AND writers = 0 AND doomed_at IS NULL \
     RETURNING sha256";

/// A writer's doom (`$1` digest, `$2` its token) that no collection has adopted.
pub(crate) const ABANDONED_STANDS: &str =
    "SELECT 1 FROM blob_claims WHERE sha256 = $1 AND doomed_by = $2";

/// The bytes a writer doomed (`$1` digest, `$2` its token) are gone: the digest may be claimed
/// again. Nothing if a collection adopted the doom meanwhile.
pub(crate) const RELEASE_ABANDONED: &str =
    "DELETE FROM blob_claims WHERE sha256 = $1 AND doomed_by = $2";

/// Digests doomed and never released, by a `gc` generation other than `$1` (a collection that
/// stopped or lost its lease) or by a writer longer ago than [`WRITER_DOOM_MS`], at most 1,000.
pub(crate) const DOOMED_BLOBS: &str = "SELECT sha256 FROM blob_claims WHERE doomed_at IS NOT NULL \
     AND (doomed_by IS NULL OR (doomed_by >= 0 AND doomed_by <> $1) \
          OR doomed_at < {now} - {writer_doom_ms}) LIMIT 1000";

/// Dooms a digest (`$1` digest, `$2` grace in ms, `$3` the `gc` lease's generation) unless it
/// was claimed within the grace, or adopts it if it is doomed already; only while that
/// generation holds the lease. A row comes back if it is now doomed by that generation. The
/// caller checks in the same transaction that no file uses it.
pub(crate) const DOOM_BLOB: &str = "INSERT INTO blob_claims (sha256, generation, touched_at, \
     doomed_at, doomed_by) SELECT $1, 0, 0, {now}, $3 WHERE EXISTS (SELECT 1 FROM leases \
     WHERE name = 'gc' AND generation = $3 AND expires_at >= {now}) \
     ON CONFLICT (sha256) DO UPDATE SET doomed_at = excluded.doomed_at, \
     doomed_by = excluded.doomed_by WHERE (blob_claims.doomed_at IS NOT NULL \
     AND (COALESCE(blob_claims.doomed_by, 0) >= 0 OR blob_claims.doomed_at < {now} - {writer_doom_ms})) \
     OR (blob_claims.doomed_at IS NULL AND blob_claims.touched_at < {now} - $2) \
     RETURNING sha256";

/// Whether a file stored in the blob store uses a digest (`$1`).
pub(crate) const BLOB_IN_USE: &str = "SELECT 1 FROM files WHERE sha256 = $1 AND NOT inline LIMIT 1";

/// A claim (`$1` digest, `$2` generation) that still stands undoomed.
pub(crate) const CLAIM_STANDS: &str = "SELECT 1 FROM blob_claims WHERE sha256 = $1 \
     AND generation = $2 AND doomed_at IS NULL";

/// Releases a digest (`$1`) doomed by generation `$2` of the `gc` lease, while that
/// generation holds it.
pub(crate) const RELEASE_BLOB: &str = "DELETE FROM blob_claims WHERE sha256 = $1 \
     AND doomed_at IS NOT NULL AND doomed_by = $2 AND EXISTS (SELECT 1 FROM leases \
     WHERE name = 'gc' AND generation = $2 AND expires_at >= {now})";

/// `SELECT {column} FROM {table} WHERE {condition} AND {column} IN (…values…)`, for both
/// engines.
pub(crate) fn in_list<'a, DB: sqlx::Database>(
    select: &str,
    column: &str,
    values: impl IntoIterator<Item = String>,
) -> QueryBuilder<'a, DB>
where
    String: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut sql = QueryBuilder::new(format!("{select} AND {column} IN ("));
    let mut separated = sql.separated(", ");
    for value in values {
        separated.push_bind(value);
    }
    separated.push_unseparated(")");
    sql
}

/// Adds to a tenant's usage (`$1` tenant, `$2` bytes, `$3` packages, `$4` open uploads; any
/// may be negative), creating its row: every change that moves them runs it in its own
/// transaction.
pub(crate) const ADD_USAGE: &str = "INSERT INTO tenant_usage (tenant, bytes, packages, \
     open_uploads) VALUES ($1, $2, $3, $4) ON CONFLICT (tenant) DO UPDATE SET \
     bytes = tenant_usage.bytes + excluded.bytes, \
     packages = tenant_usage.packages + excluded.packages, \
     open_uploads = tenant_usage.open_uploads + excluded.open_uploads";

/// `QuotaExceeded` if `used` + `adding` passes `max_bytes` (adding nothing never does).
pub(crate) fn check_quota(
    max_bytes: Option<u64>,
    used: i64,
    adding: i64,
) -> Result<(), StoreError> {
    match max_bytes {
        Some(limit) if adding > 0 && used.saturating_add(adding) > limit as i64 => {
            Err(StoreError::QuotaExceeded {
                limit,
                used: used.max(0) as u64,
            })
        }
        _ => Ok(()),
    }
}

/// Which tags [`delete_tag_rows`] deletes: one by name, or every tag naming a package.
pub(crate) enum TagFilter<'a> {
    Named(&'a str, &'a str),
    Package(&'a str),
}

/// The steps both engines take the same way inside a change's transaction, defined once and
/// compiled per connection type (as `on_pool!` does for reads). `$lock` ends the statements
/// that read a row the transaction then relies on: ` FOR UPDATE` on PostgreSQL; nothing on
/// SQLite, whose single writer changes nothing behind a transaction's back.
macro_rules! transaction_steps {
    ($conn:ty, $lock:literal) => {
        /// The package `id` of `tenant`, locked to the transaction's end, or `NotFound`.
        async fn locked_package(
            conn: &mut $conn,
            tenant: &str,
            id: PackageId,
        ) -> Result<Package, StoreError> {
            let row = sqlx::query(&format!(
                "SELECT {PACKAGE_COLUMNS} FROM packages WHERE id = $1 AND tenant = $2{}",
                $lock
            ))
            .bind(id.to_string())
            .bind(tenant)
            .fetch_optional(&mut *conn)
            .await
            .map_err(sql_error)?
            .ok_or(StoreError::NotFound)?;
            package_from_row(&row)
        }

        /// A tenant's bytes (no row is 0), its usage row locked (after the package's and
        /// upload's rows, before the event counter: the one lock order of every transaction).
        async fn used_bytes(conn: &mut $conn, tenant: &str) -> Result<i64, StoreError> {
            let sql = concat!("SELECT bytes FROM tenant_usage WHERE tenant = $1", $lock);
            let used: Option<i64> = sqlx::query_scalar(sql)
                .bind(tenant)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
            Ok(used.unwrap_or(0))
        }

        async fn add_usage(
            conn: &mut $conn,
            tenant: &str,
            bytes: i64,
            packages: i64,
            open_uploads: i64,
        ) -> Result<(), StoreError> {
            sqlx::query(ADD_USAGE)
                .bind(tenant)
                .bind(bytes)
                .bind(packages)
                .bind(open_uploads)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            Ok(())
        }

        /// `TooManyOpenUploads` if `tenant` now has more than `max_open` open uploads (after
        /// [`add_usage`] counted the new one, which on PostgreSQL also locked the row).
        async fn check_open_uploads(
            conn: &mut $conn,
            tenant: &str,
            max_open: Option<u64>,
        ) -> Result<(), StoreError> {
            let Some(limit) = max_open else {
                return Ok(());
            };
            let open: i64 =
                sqlx::query_scalar("SELECT open_uploads FROM tenant_usage WHERE tenant = $1")
                    .bind(tenant)
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(sql_error)?;
            if open as u64 > limit {
                return Err(StoreError::TooManyOpenUploads {
                    limit,
                    used: open as u64 - 1,
                });
            }
            Ok(())
        }

        /// Deletes a (locked) package's rows and takes it off its tenant's usage.
        async fn delete_package_rows(
            conn: &mut $conn,
            package: &Package,
        ) -> Result<(), StoreError> {
            for sql in [
                "DELETE FROM package_metadata WHERE package_id = $1",
                "DELETE FROM oci_manifests WHERE package_id = $1",
                "DELETE FROM oci_references WHERE by_package = $1",
                "DELETE FROM files WHERE package_id = $1",
                "DELETE FROM packages WHERE id = $1",
            ] {
                sqlx::query(sql)
                    .bind(package.id.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
            }
            add_usage(conn, &package.tenant, -(package.total_size as i64), -1, 0).await
        }

        /// Sets a (locked) package's hold; the package as changed.
        async fn update_held(
            conn: &mut $conn,
            id: PackageId,
            held: bool,
        ) -> Result<Package, StoreError> {
            let row = sqlx::query(&format!(
                "UPDATE packages SET held = $1 WHERE id = $2 RETURNING {PACKAGE_COLUMNS}"
            ))
            .bind(held)
            .bind(id.to_string())
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_error)?;
            package_from_row(&row)
        }

        /// [`MetadataStore::set_tag`]'s steps, after which the caller appends the event of a
        /// change: the package locked and checked, then the tag inserted, or else locked and
        /// moved (an insert that lost a race waits for the winner and then moves its row).
        async fn set_tag_steps(
            conn: &mut $conn,
            tenant: &str,
            repository: &str,
            tag: &str,
            package: PackageId,
            at: Timestamp,
        ) -> Result<TagChange, StoreError> {
            let locked = locked_package(conn, tenant, package).await?;
            let Some(manifest_digest) = locked.manifest_digest else {
                return Err(StoreError::NotFinalized);
            };
            let new = Tag {
                tenant: tenant.to_string(),
                repository: repository.to_string(),
                tag: tag.to_string(),
                package_id: package,
                manifest_digest,
                updated_at: at,
            };
            let insert = format!(
                "INSERT INTO tags ({TAG_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (tenant, repository, tag) DO NOTHING"
            );
            let inserted = write_tag(conn, &insert, &new).await?;
            if inserted == 1 {
                return Ok(TagChange::Created(new));
            }
            let row = sqlx::query(&format!(
                "SELECT {TAG_COLUMNS} FROM tags WHERE tenant = $1 AND repository = $2 \
                 AND tag = $3{}",
                $lock
            ))
            .bind(tenant)
            .bind(repository)
            .bind(tag)
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_error)?;
            let old = tag_from_row(&row)?;
            if old.package_id == package {
                return Ok(TagChange::Unchanged(old));
            }
            let update = "UPDATE tags SET package_id = $4, manifest_digest = $5, \
                          updated_at = $6 WHERE tenant = $1 AND repository = $2 AND tag = $3";
            write_tag(conn, update, &new).await?;
            Ok(TagChange::Moved {
                tag: new,
                previous: old.package_id,
            })
        }

        /// Runs `sql` with a tag's six columns as `$1`…`$6`; how many rows it changed.
        async fn write_tag(conn: &mut $conn, sql: &str, tag: &Tag) -> Result<u64, StoreError> {
            let done = sqlx::query(sql)
                .bind(&tag.tenant)
                .bind(&tag.repository)
                .bind(&tag.tag)
                .bind(tag.package_id.to_string())
                .bind(tag.manifest_digest.to_string())
                .bind(tag.updated_at.as_millis())
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            Ok(done.rows_affected())
        }

        /// Deletes tags of `tenant` matching `filter`, returning them in byte order of
        /// repository and tag.
        async fn delete_tag_rows(
            conn: &mut $conn,
            tenant: &str,
            filter: TagFilter<'_>,
        ) -> Result<Vec<Tag>, StoreError> {
            let named = format!(
                "DELETE FROM tags WHERE tenant = $1 AND repository = $2 AND tag = $3 \
                 RETURNING {TAG_COLUMNS}"
            );
            let of_package = format!(
                "DELETE FROM tags WHERE tenant = $1 AND package_id = $2 RETURNING {TAG_COLUMNS}"
            );
            let query = match filter {
                TagFilter::Named(repository, tag) => {
                    sqlx::query(&named).bind(tenant).bind(repository).bind(tag)
                }
                TagFilter::Package(id) => sqlx::query(&of_package).bind(tenant).bind(id),
            };
            let rows = query.fetch_all(&mut *conn).await.map_err(sql_error)?;
            let mut tags = rows
                .iter()
                .map(tag_from_row)
                .collect::<Result<Vec<_>, _>>()?;
            tags.sort_by(|a, b| (&a.repository, &a.tag).cmp(&(&b.repository, &b.tag)));
            Ok(tags)
        }

        /// [`MetadataStore::record_oci_blob`]'s steps.
        async fn record_oci_blob_steps(
            conn: &mut $conn,
            tenant: &str,
            blob: BlobInfo,
            generation: i64,
        ) -> Result<(), StoreError> {
            let hex = blob.digest.hex();
            let stands = sqlx::query(RECORD_CLAIM)
                .bind(&hex)
                .bind(generation)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
            if stands.is_none() {
                return Err(StoreError::Stale);
            }
            sqlx::query(&SQL.record_oci_blob)
                .bind(tenant)
                .bind(blob.digest.content_address())
                .bind(blob.size as i64)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            Ok(())
        }

        /// [`MetadataStore::record_pushed_manifest`]'s steps.
        async fn record_pushed_steps(
            conn: &mut $conn,
            pushed: &PushedManifest<'_>,
        ) -> Result<PackageId, StoreError> {
            let digest = pushed.digest.content_address();
            sqlx::query(RECORD_PUSHED_MANIFEST)
                .bind(pushed.tenant)
                .bind(pushed.repository)
                .bind(&digest)
                .bind(pushed.package.to_string())
                .bind(pushed.media_type)
                .bind(pushed.bytes)
                .bind(pushed.subject.map(|s| s.content_address()))
                .bind(pushed.artifact_type)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            for named in pushed.references {
                sqlx::query(
                    "INSERT INTO oci_references (tenant, repository, digest, by_package) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                )
                .bind(pushed.tenant)
                .bind(pushed.repository)
                .bind(named.content_address())
                .bind(pushed.package.to_string())
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            }
            let id: String = sqlx::query_scalar(PUSHED_PACKAGE)
                .bind(pushed.tenant)
                .bind(pushed.repository)
                .bind(&digest)
                .fetch_one(&mut *conn)
                .await
                .map_err(sql_error)?;
            id.parse().map_err(|_| corrupt("oci manifest"))
        }

        /// [`MetadataStore::abandon_blob`]'s steps: one writer fewer (which locks the claim
        /// row on PostgreSQL), and at zero, if no file uses the digest (a statement of its
        /// own, so it sees a file that committed while the lock was awaited), the doom.
        async fn abandon_steps(
            conn: &mut $conn,
            digest: &Sha256Digest,
            generation: i64,
            token: i64,
        ) -> Result<bool, StoreError> {
            let hex = digest.hex();
            let left: Option<i64> = sqlx::query_scalar(RECORD_CLAIM)
                .bind(&hex)
                .bind(generation)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
            if left != Some(0) {
                return Ok(false);
            }
            let used = sqlx::query(BLOB_IN_USE)
                .bind(&hex)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
            if used.is_some() {
                return Ok(false);
            }
            let doomed = sqlx::query(&SQL.abandon_doom)
                .bind(&hex)
                .bind(generation)
                .bind(token)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
            Ok(doomed.is_some())
        }
    };
}
pub(crate) use transaction_steps;

/// Expired uploads' `(tenant, id, offset)` rows, and what they took from each tenant's usage:
/// `(tenant, bytes, uploads)`, in tenant order (so two sweeps lock usage rows in one order).
#[allow(clippy::type_complexity)]
pub(crate) fn expired_uploads(
    rows: &[impl Fields],
) -> Result<(Vec<(String, UploadId)>, Vec<(String, i64, i64)>), StoreError> {
    let taken = tenants_and_ids(rows)?;
    let mut per_tenant = BTreeMap::<String, (i64, i64)>::new();
    for (row, (tenant, _)) in rows.iter().zip(&taken) {
        let offset: i64 = row.field("offset").map_err(|_| corrupt("upload"))?;
        let entry = per_tenant.entry(tenant.clone()).or_default();
        entry.0 += offset;
        entry.1 += 1;
    }
    let per_tenant = per_tenant
        .into_iter()
        .map(|(tenant, (bytes, uploads))| (tenant, bytes, uploads))
        .collect();
    Ok((taken, per_tenant))
}

/// `(tenant, id)` rows of uploads or packages.
pub(crate) fn tenants_and_ids<Id: std::str::FromStr>(
    rows: &[impl Fields],
) -> Result<Vec<(String, Id)>, StoreError> {
    rows.iter()
        .map(|row| {
            let tenant: String = row.field("tenant").map_err(|_| corrupt("row"))?;
            let id: String = row.field("id").map_err(|_| corrupt("row"))?;
            Ok((tenant, id.parse().map_err(|_| corrupt("id"))?))
        })
        .collect()
}

/// A store error from a database error, the same for both engines: the ones that mean
/// "cannot reach it now" (connection lost or refused, no connection free in time, PostgreSQL's
/// shutdown and too-many-connections codes) are [`StoreError::Unavailable`], answered `503`
/// with `Retry-After`.
pub(crate) fn sql_error(e: sqlx::Error) -> StoreError {
    // 57014: PostgreSQL's statement_timeout; 9: SQLITE_INTERRUPT, from the budget's progress
    // handler (see `reads::Budget`).
    if let sqlx::Error::Database(d) = &e
        && d.code().is_some_and(|code| code == "57014" || code == "9")
    {
        tracing::warn!(error = %e, "a query ran past its time budget");
        return StoreError::OverBudget;
    }
    let unreachable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|code| {
            // 08: connection exceptions; 57P01-03: shutting down, crashed, starting up;
            // 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P") || code == "53300"
        }),
        _ => false,
    };
    if unreachable {
        tracing::warn!(error = %e, "metadata store unreachable");
        StoreError::Unavailable("the metadata store")
    } else {
        StoreError::Database(e.to_string())
    }
}

pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

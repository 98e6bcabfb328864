//! The reads of the metadata store, one SQL text for both engines (`$N` parameters, which
//! sqlx binds by number on SQLite too, and `CAST($N AS TEXT)` where a parameter may be NULL),
//! with the file-record cache and the in-memory event tail in front.

use std::sync::Arc;

use artifactstore_core::storage::{MetadataReads, StoreError};
use artifactstore_core::*;
use async_trait::async_trait;
use bytes::Bytes;
#[cfg(feature = "postgres")]
use sqlx::postgres::PgPool;
#[cfg(feature = "sqlite")]
use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;

use crate::rows::*;
use crate::tail::EventTail;

/// The pool reads go to.
pub(crate) enum Pool {
    #[cfg(feature = "sqlite")]
    Sqlite(SqlitePool),
    #[cfg(feature = "postgres")]
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the engine's own pool: the body is compiled once per
/// engine, so rows decode as that engine's rows.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($p) => $body,
            #[cfg(feature = "postgres")]
            Pool::Postgres($p) => $body,
        }
    };
}

/// Runs `$body` under the query budget, with `$p` the executor: on PostgreSQL the pool (whose
/// connections carry `statement_timeout`), on SQLite a connection of the pool that a
/// [`Budget`] interrupts once the budget is spent.
macro_rules! on_budget {
    ($reads:expr, |$p:ident| $body:expr) => {
        match &$reads.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(pool) => {
                let mut budget = Budget::start(pool, $reads.budget).await?;
                let $p = &mut *budget.connection;
                $body
            }
            #[cfg(feature = "postgres")]
            Pool::Postgres($p) => $body,
        }
    };
}

pub(crate) struct Reads {
    pub(crate) pool: Pool,
    /// File records by id (a file never changes once added).
    pub(crate) files: FileCache,
    pub(crate) tail: Arc<EventTail>,
    /// Longest a listing may run (see [`on_budget!`]).
    pub(crate) budget: std::time::Duration,
}

/// A SQLite reader connection whose statements fail with `SQLITE_INTERRUPT` once `budget`
/// has passed: a progress handler, set for this use of the connection and inert once the use
/// ends (SQLite has no statement timeout; the handler runs every few thousand VM steps, well
/// under a millisecond apart).
#[cfg(feature = "sqlite")]
struct Budget {
    connection: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    live: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(feature = "sqlite")]
impl Budget {
    async fn start(pool: &SqlitePool, budget: std::time::Duration) -> Result<Self, StoreError> {
        use std::sync::atomic::Ordering;
        let mut connection = pool.acquire().await.map_err(sql_error)?;
        let live = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let deadline = std::time::Instant::now() + budget;
        let still = live.clone();
        connection
            .lock_handle()
            .await
            .map_err(sql_error)?
            .set_progress_handler(4096, move || {
                !still.load(Ordering::Acquire) || std::time::Instant::now() < deadline
            });
        Ok(Self { connection, live })
    }
}

#[cfg(feature = "sqlite")]
impl Drop for Budget {
    fn drop(&mut self) {
        // The handler stays on the connection until the next budget replaces it: inert.
        self.live.store(false, std::sync::atomic::Ordering::Release);
    }
}

#[async_trait]
impl MetadataReads for Reads {
    async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| sqlx::query("SELECT 1")
            .execute(p)
            .await
            .map(drop))
        .map_err(sql_error)
    }

    async fn package(&self, scope: &Scope, id: PackageId) -> Result<Option<Package>, StoreError> {
        let sql = format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE id = $1");
        let package = on_pool!(&self.pool, |p| {
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(p)
                .await
                .map_err(sql_error)?;
            row.as_ref().map(package_from_row).transpose()?
        });
        Ok(package.filter(|p| scope.admits(&p.tenant)))
    }

    async fn list_packages(
        &self,
        scope: &Scope,
        q: &PackageQuery,
        before: Option<PackageId>,
        limit: u32,
    ) -> Result<Vec<Package>, StoreError> {
        on_budget!(self, |p| {
            let mut sql = list_packages_query(scope, q, before, limit);
            let rows = sql.build().fetch_all(p).await.map_err(sql_error)?;
            rows.iter().map(package_from_row).collect()
        })
    }

    async fn inline_blob(&self, digest: &Sha256Digest) -> Result<Option<Bytes>, StoreError> {
        let sql = "SELECT bytes FROM inline_blobs WHERE sha256 = $1";
        let bytes: Option<Vec<u8>> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(digest.hex())
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(bytes.map(Bytes::from))
    }

    async fn file(&self, scope: &Scope, id: FileId) -> Result<Option<Arc<FileRecord>>, StoreError> {
        // Another tenant's cached file takes the way an unknown id takes (the database), so
        // the time of a `404` tells no tenant which ids exist.
        if let Some(file) = self.files.get(&id)
            && scope.admits(&file.tenant)
        {
            return Ok(Some(file));
        }
        let generation = self.files.generation();
        let sql = format!("SELECT {FILE_COLUMNS} FROM files WHERE id = $1");
        let file = on_pool!(&self.pool, |p| {
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(p)
                .await
                .map_err(sql_error)?;
            row.as_ref().map(file_from_row).transpose()?
        });
        let Some(file) = file else { return Ok(None) };
        let file = Arc::new(file);
        self.files.insert(&file, generation);
        Ok(scope.admits(&file.tenant).then_some(file))
    }

    async fn list_files(
        &self,
        scope: &Scope,
        package: PackageId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let sql = format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE package_id = $1 \
             AND (CAST($2 AS TEXT) IS NULL OR tenant = $2) AND path > $3 ORDER BY path LIMIT $4"
        );
        on_pool!(&self.pool, |p| {
            let rows = sqlx::query(&sql)
                .bind(package.to_string())
                .bind(scope.tenant())
                .bind(after.unwrap_or(""))
                .bind(limit as i64)
                .fetch_all(p)
                .await
                .map_err(sql_error)?;
            rows.iter().map(file_from_row).collect()
        })
    }

    async fn manifest(
        &self,
        scope: &Scope,
        package: PackageId,
    ) -> Result<Option<StoredManifest>, StoreError> {
        let sql = "SELECT manifest_digest, manifest_cbor, manifest_json FROM packages \
                   WHERE id = $1 AND (CAST($2 AS TEXT) IS NULL OR tenant = $2) \
                   AND state = 'finalized'";
        on_pool!(&self.pool, |p| {
            let row = sqlx::query(sql)
                .bind(package.to_string())
                .bind(scope.tenant())
                .fetch_optional(p)
                .await
                .map_err(sql_error)?;
            row.as_ref().map(manifest_from_row).transpose()
        })
    }

    /// One SQL text for both engines; `newer` ranks a subject's finalized packages newest
    /// first (held ones count among the kept).
    async fn retention_candidates(
        &self,
        rule: &RetentionQuery,
        limit: u32,
    ) -> Result<Vec<(String, PackageId)>, StoreError> {
        let sql = "SELECT tenant, id FROM (SELECT tenant, id, held, state, finalized_at, \
                   created_at, ROW_NUMBER() OVER (PARTITION BY tenant, subject, state \
                   ORDER BY finalized_at DESC, id DESC) AS newer \
                   FROM packages WHERE retention_class = $1) p \
                   WHERE NOT held AND ((state = 'finalized' AND (finalized_at < CAST($2 AS BIGINT) \
                   OR newer > CAST($3 AS BIGINT))) \
                   OR (state = 'open' AND created_at < CAST($4 AS BIGINT))) \
                   AND NOT EXISTS (SELECT 1 FROM oci_manifests m JOIN oci_references r \
                   ON r.tenant = m.tenant AND r.repository = m.repository \
                   AND r.digest = m.digest WHERE m.package_id = p.id) LIMIT $5";
        let millis = |t: Option<Timestamp>| t.map(Timestamp::as_millis);
        on_pool!(&self.pool, |p| {
            let rows = sqlx::query(sql)
                .bind(&rule.class)
                .bind(millis(rule.finalized_before))
                .bind(rule.keep_last.map(i64::from))
                .bind(millis(rule.open_created_before))
                .bind(limit as i64)
                .fetch_all(p)
                .await
                .map_err(sql_error)?;
            tenants_and_ids(&rows)
        })
    }

    async fn doomed_blobs(&self, lease: u64) -> Result<Vec<Sha256Digest>, StoreError> {
        let sql = match &self.pool {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite(_) => &crate::sqlite::SQL.doomed_blobs,
            #[cfg(feature = "postgres")]
            Pool::Postgres(_) => &crate::postgres::SQL.doomed_blobs,
        };
        let hexes: Vec<String> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(lease as i64)
            .fetch_all(p)
            .await
            .map_err(sql_error)?);
        hexes.iter().map(|h| digest_of(h)).collect()
    }

    async fn tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Option<Tag>, StoreError> {
        let sql = format!(
            "SELECT {TAG_COLUMNS} FROM tags WHERE tenant = $1 AND repository = $2 AND tag = $3"
        );
        on_pool!(&self.pool, |p| {
            let row = sqlx::query(&sql)
                .bind(tenant)
                .bind(repository)
                .bind(tag)
                .fetch_optional(p)
                .await
                .map_err(sql_error)?;
            row.as_ref().map(tag_from_row).transpose()
        })
    }

    async fn list_tags(
        &self,
        tenant: &str,
        repository: Option<&str>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<Tag>, StoreError> {
        // A row-value comparison, so the primary key's order serves both the filter and the
        // sort.
        let sql = format!(
            "SELECT {TAG_COLUMNS} FROM tags WHERE tenant = $1 \
             AND (CAST($2 AS TEXT) IS NULL OR repository = $2) \
             AND (repository, tag) > ($3, $4) ORDER BY repository, tag LIMIT $5"
        );
        let (after_repository, after_tag) = after.unwrap_or(("", ""));
        on_pool!(&self.pool, |p| {
            let rows = sqlx::query(&sql)
                .bind(tenant)
                .bind(repository)
                .bind(after_repository)
                .bind(after_tag)
                .bind(limit as i64)
                .fetch_all(p)
                .await
                .map_err(sql_error)?;
            rows.iter().map(tag_from_row).collect()
        })
    }

    async fn file_by_digest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<FileRecord>, StoreError> {
        let sql =
            format!("SELECT {FILE_COLUMNS} FROM files WHERE tenant = $1 AND sha256 = $2 LIMIT 1");
        on_pool!(&self.pool, |p| {
            let row = sqlx::query(&sql)
                .bind(tenant)
                .bind(digest.hex())
                .fetch_optional(p)
                .await
                .map_err(sql_error)?;
            row.as_ref().map(file_from_row).transpose()
        })
    }

    async fn manifest_by_digest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<Bytes>, StoreError> {
        let sql = "SELECT manifest_cbor FROM packages WHERE tenant = $1 AND manifest_digest = $2 \
                   AND state = 'finalized' LIMIT 1";
        let cbor: Option<Vec<u8>> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(tenant)
            .bind(digest.content_address())
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(cbor.map(Bytes::from))
    }

    async fn oci_manifest_package(
        &self,
        tenant: &str,
        repository: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<PackageId>, StoreError> {
        let sql = "SELECT package_id FROM oci_manifests WHERE tenant = $1 AND digest = $2 \
                   AND repository IN ('', $3) LIMIT 1";
        let id: Option<String> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(tenant)
            .bind(digest.content_address())
            .bind(repository)
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        id.map(|id| id.parse().map_err(|_| corrupt("oci manifest")))
            .transpose()
    }

    async fn repository_known(&self, tenant: &str, repository: &str) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM tags WHERE tenant = $1 AND repository = $2 \
                   UNION ALL SELECT 1 FROM oci_manifests WHERE tenant = $1 AND repository = $2 \
                   LIMIT 1";
        let found: Option<i32> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(tenant)
            .bind(repository)
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(found.is_some())
    }

    async fn oci_blob(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
    ) -> Result<Option<u64>, StoreError> {
        let sql = "SELECT size FROM oci_blobs WHERE tenant = $1 AND digest = $2";
        let size: Option<i64> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(tenant)
            .bind(digest.content_address())
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(size.map(|s| s as u64))
    }

    async fn pushed_manifest(
        &self,
        package: PackageId,
    ) -> Result<Option<(String, Bytes)>, StoreError> {
        let sql = "SELECT media_type, bytes FROM oci_manifests WHERE package_id = $1 \
                   AND bytes IS NOT NULL LIMIT 1";
        let row: Option<(String, Vec<u8>)> = on_pool!(&self.pool, |p| sqlx::query_as(sql)
            .bind(package.to_string())
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(row.map(|(media_type, bytes)| (media_type, Bytes::from(bytes))))
    }

    async fn referrers(
        &self,
        tenant: &str,
        repository: &str,
        subject: &Sha256Digest,
        limit: u32,
    ) -> Result<Vec<artifactstore_core::oci::Referrer>, StoreError> {
        let sql = "SELECT digest, media_type, bytes, artifact_type FROM oci_manifests \
                   WHERE tenant = $1 AND repository = $2 AND subject = $3 \
                   AND bytes IS NOT NULL ORDER BY digest LIMIT $4";
        type Row = (String, String, Vec<u8>, Option<String>);
        let rows: Vec<Row> = on_pool!(&self.pool, |p| sqlx::query_as(sql)
            .bind(tenant)
            .bind(repository)
            .bind(subject.content_address())
            .bind(limit as i64)
            .fetch_all(p)
            .await
            .map_err(sql_error)?);
        rows.into_iter()
            .map(|(digest, media_type, bytes, artifact_type)| {
                Ok(artifactstore_core::oci::Referrer {
                    digest: Sha256Digest::from_content_address(&digest)
                        .ok_or(corrupt("oci manifest digest"))?,
                    media_type,
                    bytes: Bytes::from(bytes),
                    artifact_type,
                })
            })
            .collect()
    }

    async fn abandoned_stands(
        &self,
        digest: &Sha256Digest,
        token: i64,
    ) -> Result<bool, StoreError> {
        let found: Option<i32> = on_pool!(&self.pool, |p| sqlx::query_scalar(ABANDONED_STANDS)
            .bind(digest.hex())
            .bind(token)
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(found.is_some())
    }

    async fn path_taken(&self, package: PackageId, path: &str) -> Result<bool, StoreError> {
        let sql = "SELECT 1 FROM files WHERE package_id = $1 AND path = $2";
        let found: Option<i32> = on_pool!(&self.pool, |p| sqlx::query_scalar(sql)
            .bind(package.to_string())
            .bind(path)
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        Ok(found.is_some())
    }

    async fn unreferenced(
        &self,
        digests: &[Sha256Digest],
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let select = "SELECT DISTINCT sha256 FROM files WHERE NOT inline";
        let used = self
            .strings_in(select, "sha256", digests.iter().map(|d| d.hex()))
            .await?;
        let used: std::collections::HashSet<String> = used.into_iter().collect();
        Ok(digests
            .iter()
            .filter(|d| !used.contains(&d.hex()))
            .copied()
            .collect())
    }

    async fn open_uploads(&self, ids: &[UploadId]) -> Result<Vec<UploadId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let select = "SELECT id FROM uploads WHERE state = 'open'";
        let open = self
            .strings_in(select, "id", ids.iter().map(|id| id.to_string()))
            .await?;
        open.iter()
            .map(|id| id.parse().map_err(|_| corrupt("upload id")))
            .collect()
    }

    async fn usage(&self, tenant: &str) -> Result<Usage, StoreError> {
        let sql = "SELECT bytes, packages, open_uploads FROM tenant_usage WHERE tenant = $1";
        let row: Option<(i64, i64, i64)> = on_pool!(&self.pool, |p| sqlx::query_as(sql)
            .bind(tenant)
            .fetch_optional(p)
            .await
            .map_err(sql_error)?);
        let (bytes, packages, open_uploads) = row.unwrap_or_default();
        let count = |n: i64| n.max(0) as u64;
        Ok(Usage {
            bytes: count(bytes),
            packages: count(packages),
            open_uploads: count(open_uploads),
        })
    }

    /// A change is answered only after its commit, so a read sees every answered one.
    async fn upload(
        &self,
        scope: &Scope,
        id: UploadId,
    ) -> Result<Option<UploadRecord>, StoreError> {
        let sql = format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = $1 \
             AND (CAST($2 AS TEXT) IS NULL OR tenant = $2)"
        );
        on_pool!(&self.pool, |p| {
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .bind(scope.tenant())
                .fetch_optional(p)
                .await
                .map_err(sql_error)?;
            row.as_ref().map(upload_from_row).transpose()
        })
    }

    /// From the tail when it holds every event after `since`, else from the database, with
    /// a text per scope so that a tenant's read keeps its (tenant, sequence) index.
    async fn events_since(
        &self,
        scope: &Scope,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        if let Some(events) = self.tail.since(scope, since, limit) {
            return Ok(events);
        }
        let since = since.min(i64::MAX as u64) as i64;
        on_pool!(&self.pool, |p| {
            let query = match scope {
                Scope::Tenant(tenant) => sqlx::query(
                    "SELECT sequence, type, occurred_at, tenant, package_id, data FROM events \
                     WHERE tenant = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                )
                .bind(tenant.as_str()),
                Scope::All => sqlx::query(
                    "SELECT sequence, type, occurred_at, tenant, package_id, data FROM events \
                     WHERE sequence > $1 ORDER BY sequence LIMIT $2",
                ),
            };
            let rows = query
                .bind(since)
                .bind(limit as i64)
                .fetch_all(p)
                .await
                .map_err(sql_error)?;
            rows.iter().map(event_from_row).collect()
        })
    }

    fn event_watch(&self, scope: &Scope) -> watch::Receiver<u64> {
        self.tail.watch(scope)
    }
}

impl Reads {
    /// The one text column of `select … AND column IN (values)`.
    async fn strings_in(
        &self,
        select: &str,
        column: &str,
        values: impl Iterator<Item = String>,
    ) -> Result<Vec<String>, StoreError> {
        on_pool!(&self.pool, |p| {
            let mut sql = in_list(select, column, values);
            sql.build_query_scalar()
                .fetch_all(p)
                .await
                .map_err(sql_error)
        })
    }
}

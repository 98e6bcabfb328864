//! Metadata and the event log in PostgreSQL: what many stateless replicas share.
//!
//! Every change is one transaction from a pool, under READ COMMITTED. Refusals are decided
//! on rows locked `FOR UPDATE` (the package, then the upload), always in that order, so
//! concurrent writers on any replica serialize per package and never deadlock. An event's
//! sequence comes from the one `event_counter` row, updated as the transaction's last
//! statement: its lock is held to COMMIT, so sequences commit in their order, gap-free, and a
//! tailer reading `sequence > N` never skips one that commits late. The same statement
//! notifies `artifactstore_events`; a follower task per replica wakes on that notification
//! (or on a local commit, or on a fallback poll that survives a lost listener), reads the new
//! events once, and publishes them to the replica's in-memory tail and long-polls.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::storage::{
    AddChecks, Advance, BlobInfo, Freeze, MetadataReads, MetadataStore, PushedManifest, StoreError,
};
use artifactstore_core::*;
use async_trait::async_trait;
use bytes::Bytes;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres};
use tokio::sync::{Notify, watch};

use crate::open::OpenOptions;
use crate::reads::{Pool, Reads};
use crate::rows::*;
use crate::tail::EventTail;

/// The texts that read the database's clock, written for PostgreSQL.
pub(crate) static SQL: std::sync::LazyLock<ClockTexts> =
    std::sync::LazyLock::new(|| ClockTexts::new(POSTGRES_NOW));

static MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "lifecycle",
        include_str!("../migrations/common/lifecycle.sql"),
    ),
    (
        3,
        "blob claims",
        include_str!("../migrations/common/blob_claims.sql"),
    ),
    (
        4,
        "tenant usage",
        include_str!("../migrations/common/tenant_usage.sql"),
    ),
    (
        5,
        "gc fencing",
        include_str!("../migrations/common/gc_fencing.sql"),
    ),
    (
        6,
        "claim writers",
        include_str!("../migrations/common/claim_writers.sql"),
    ),
    (
        7,
        "tags",
        include_str!("../migrations/postgres/0007_tags.sql"),
    ),
    (
        8,
        "oci",
        include_str!("../migrations/postgres/0008_oci.sql"),
    ),
];

/// The channel a commit notifies, with its sequence as payload.
const CHANNEL: &str = "artifactstore_events";
/// Connections per replica.
const POOL: u32 = 16;
/// How long a request waits for a connection, or for one to be made (sqlx retries refused
/// connects meanwhile), before the store counts as unavailable: a request never hangs on a
/// database that is gone, and a burst beyond the pool is shed with `503` + `Retry-After`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the follower looks for new events with no notification: the fallback for a
/// listener connection that was lost or hangs half-open.
const FALLBACK_POLL: Duration = Duration::from_millis(500);
/// Events the follower reads per query.
const FOLLOW_BATCH: i64 = 1000;
/// Dooms of garbage collection in flight at once (each a transaction of its own).
const DOOMS_IN_FLIGHT: usize = 8;
/// How long a write waits for the follower to publish its own event before answering.
const OWN_EVENT_WAIT: Duration = Duration::from_secs(5);

pub struct PgStore {
    /// Writes take their connections here; reads (the same pool) go through `reads`.
    pool: PgPool,
    reads: Reads,
    /// Rung after each local commit of an event: the follower reads at once.
    committed: Arc<Notify>,
    stop: watch::Sender<bool>,
}

/// The TLS mode a URL that names none gets: libpq's default, `prefer`, would fall back to a
/// plain connection without a word, so a host reached over a network gets `verify-full`
/// (encrypted, the server's certificate checked against the system's roots or `sslrootcert`),
/// and only a loopback address or a Unix socket `prefer`. `None` when the URL says.
fn default_ssl_mode(url: &str, host: &str) -> Option<sqlx::postgres::PgSslMode> {
    use sqlx::postgres::PgSslMode;
    let query = url.split_once('?').map_or("", |(_, q)| q);
    if query
        .split('&')
        .any(|pair| pair.to_ascii_lowercase().starts_with("sslmode="))
    {
        return None;
    }
    let local = host.starts_with('/')
        || host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    Some(if local {
        PgSslMode::Prefer
    } else {
        PgSslMode::VerifyFull
    })
}

impl PgStore {
    /// Connects to `url` (`postgres://…`), applies pending migrations (under PostgreSQL's
    /// advisory lock, so replicas starting together do not race) and starts the follower;
    /// every request statement is stopped after `options.query_budget`.
    pub async fn open(url: &str, options: &OpenOptions) -> Result<Self, StoreError> {
        let (tail_events, budget) = (options.tail_events, options.query_budget);
        let options = PgConnectOptions::from_str(url).map_err(sql_error)?;
        let options = match default_ssl_mode(url, options.get_host()) {
            Some(mode) => {
                tracing::warn!(
                    sslmode = ?mode,
                    "the database URL names no sslmode: using {mode:?} (add ?sslmode=… to choose)"
                );
                options.ssl_mode(mode)
            }
            None => options,
        };
        // Migrations may rewrite a large table: no budget for them, on a connection of their
        // own (under PostgreSQL's advisory lock, so replicas starting together do not race).
        let mut migrating = PgConnection::connect_with(&options)
            .await
            .map_err(sql_error)?;
        migrator(MIGRATIONS)
            .run(&mut migrating)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        // Read on the same connection: what opening the store runs is never under the budget.
        let last: i64 = sqlx::query_scalar("SELECT last FROM event_counter")
            .fetch_one(&mut migrating)
            .await
            .map_err(sql_error)?;
        let _ = migrating.close().await;
        // A statement that runs past the budget fails instead of holding a request (and its
        // connection): a scan an attacker shaped, or a database that stopped answering.
        let budget_ms = budget.as_millis().max(1).to_string();
        let options = options.options([("statement_timeout", budget_ms.as_str())]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(sql_error)?;
        let tail = Arc::new(EventTail::new(last as u64, tail_events));
        let committed = Arc::new(Notify::new());
        let (stop, stopped) = watch::channel(false);
        let listen = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        tokio::spawn(follow(
            pool.clone(),
            listen,
            tail.clone(),
            committed.clone(),
            last as u64,
            stopped,
        ));
        Ok(Self {
            reads: Reads {
                pool: Pool::Postgres(pool.clone()),
                // Another replica's deletion would leave a cached record stale.
                files: FileCache::with_capacity(0),
                tail,
                budget,
            },
            pool,
            committed,
            stop,
        })
    }

    /// Dooms one digest (see [`MetadataStore::doom_blobs`]); `Some` if it is now doomed.
    async fn doom_one(
        &self,
        digest: Sha256Digest,
        grace: Duration,
        lease: u64,
    ) -> Result<Option<Sha256Digest>, StoreError> {
        let hex = digest.hex();
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        let marked = sqlx::query(&SQL.doom_blob)
            .bind(&hex)
            .bind(grace.as_millis() as i64)
            .bind(lease as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql_error)?;
        let used = match marked {
            None => true,
            Some(_) => sqlx::query(BLOB_IN_USE)
                .bind(&hex)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql_error)?
                .is_some(),
        };
        if used {
            tx.rollback().await.map_err(sql_error)?;
            return Ok(None);
        }
        tx.commit().await.map_err(sql_error)?;
        Ok(Some(digest))
    }

    /// Commits `tx`; answers after the change's event, if any, is visible to this replica's
    /// readers (so a client reads its own writes here).
    async fn commit(
        &self,
        tx: sqlx::Transaction<'_, Postgres>,
        sequence: Option<u64>,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(sql_error)?;
        if let Some(sequence) = sequence {
            self.committed.notify_one();
            let mut seen = self.reads.tail.watch(&Scope::All);
            // Past the wait the event is still committed; readers will see it shortly.
            let _ =
                tokio::time::timeout(OWN_EVENT_WAIT, seen.wait_for(|last| *last >= sequence)).await;
        }
        Ok(())
    }
}

/// Runs `$body` (yielding the value and the sequence of the event it appended, if any) in one
/// transaction on `$conn`, and commits it with [`PgStore::commit`]. An error, or a `return`
/// of one, rolls everything back.
macro_rules! in_transaction {
    ($store:expr, |$conn:ident| $body:block) => {{
        let mut tx = $store.pool.begin().await.map_err(sql_error)?;
        let $conn: &mut PgConnection = &mut tx;
        let result: Result<_, StoreError> = async { $body }.await;
        let (value, sequence) = result?;
        $store.commit(tx, sequence).await?;
        value
    }};
}

/// Reads committed events after `known` and publishes them, at every wake-up: a
/// notification, a local commit, or the fallback poll. One query per wake-up per replica,
/// however many long-polls wait.
async fn follow(
    pool: PgPool,
    listen: PgPool,
    tail: Arc<EventTail>,
    committed: Arc<Notify>,
    mut known: u64,
    mut stop: watch::Receiver<bool>,
) {
    let mut listener: Option<PgListener> = None;
    loop {
        if listener.is_none() {
            listener = subscribe(&listen).await;
        }
        loop {
            match events_after(&pool, known, FOLLOW_BATCH).await {
                Ok(events) => {
                    let full = events.len() as i64 >= FOLLOW_BATCH;
                    if let Some(last) = events.last() {
                        known = last.sequence;
                        tail.publish(events);
                    }
                    if full {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "could not read new events"),
            }
            break;
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => {
                    let got = l.try_recv().await;
                    // Every notification already received is covered by the next read.
                    while l.next_buffered().is_some() {}
                    got.map(|n| n.is_some())
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.changed() => return,
            () = committed.notified() => {}
            got = notified => match got {
                Ok(true) => {}
                // Lost: notifications sent meanwhile are gone; the next read catches up.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "event listener failed; polling until it is back");
                    listener = None;
                    tokio::time::sleep(FALLBACK_POLL).await;
                }
            },
            () = tokio::time::sleep(FALLBACK_POLL) => {}
        }
    }
}

async fn subscribe(listen: &PgPool) -> Option<PgListener> {
    let mut listener = match PgListener::connect_with(listen).await {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for events; polling");
            return None;
        }
    };
    match listener.listen(CHANNEL).await {
        Ok(()) => Some(listener),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for events; polling");
            None
        }
    }
}

const EVENT_COLUMNS: &str = "sequence, type, occurred_at, tenant, package_id, data";

async fn events_after(pool: &PgPool, since: u64, limit: i64) -> Result<Vec<Event>, StoreError> {
    let rows = sqlx::query(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE sequence > $1 ORDER BY sequence LIMIT $2"
    ))
    .bind(since.min(i64::MAX as u64) as i64)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(sql_error)?;
    rows.iter().map(event_from_row).collect()
}

/// Appends an event as the transaction's last statement: the counter row's lock, taken here,
/// is held only to COMMIT (see the module comment). The notification is delivered at commit.
async fn append_event(conn: &mut PgConnection, event: &NewEvent) -> Result<u64, StoreError> {
    let data = event_data(event)?;
    let sequence: i64 = sqlx::query_scalar(
        "WITH next AS (UPDATE event_counter SET last = last + 1 RETURNING last), \
         added AS (INSERT INTO events (sequence, type, occurred_at, tenant, package_id, data) \
                   SELECT last, $1, $2, $3, $4, $5 FROM next RETURNING sequence) \
         SELECT sequence, pg_notify($6, sequence::text)::text FROM added",
    )
    .bind(event.kind.as_str())
    .bind(event.occurred_at.as_millis())
    .bind(&event.tenant)
    .bind(event.package_id.to_string())
    .bind(data)
    .bind(CHANNEL)
    .fetch_one(&mut *conn)
    .await
    .map_err(sql_error)?;
    Ok(sequence as u64)
}

transaction_steps!(PgConnection, " FOR UPDATE");

/// The event builder of a change, taken once (the transaction's body is not retried).
fn take_event(event: &mut Option<EventFor>) -> Result<EventFor, StoreError> {
    event
        .take()
        .ok_or_else(|| StoreError::Database("an event was built twice".into()))
}

/// The state of a package or upload (`table`) of `tenant`, its row locked until the
/// transaction ends.
async fn lock_state(
    conn: &mut PgConnection,
    table: &str,
    tenant: &str,
    id: String,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar(&format!(
        "SELECT state FROM {table} WHERE id = $1 AND tenant = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut *conn)
    .await
    .map_err(sql_error)
}

#[async_trait]
impl MetadataStore for PgStore {
    fn reads(&self) -> &dyn MetadataReads {
        &self.reads
    }

    async fn close(&self) {
        self.stop.send_replace(true);
        self.pool.close().await;
    }

    async fn create_package(&self, p: &Package, event: NewEvent) -> Result<Event, StoreError> {
        let metadata =
            serde_json::to_string(&p.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let sequence = in_transaction!(self, |conn| {
            sqlx::query(
                "INSERT INTO packages (id, tenant, producer, subject, retention_class, \
                         metadata, state, created_at, file_count, total_size) \
                         VALUES ($1, $2, $3, $4, $5, $6, 'open', $7, 0, 0)",
            )
            .bind(p.id.to_string())
            .bind(&p.tenant)
            .bind(&p.producer)
            .bind(&p.subject)
            .bind(&p.retention_class)
            .bind(metadata)
            .bind(p.created_at.as_millis())
            .execute(&mut *conn)
            .await
            .map_err(sql_error)?;
            if !p.metadata.is_empty() {
                let (keys, values): (Vec<&str>, Vec<&str>) = p
                    .metadata
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .unzip();
                sqlx::query(
                    "INSERT INTO package_metadata (package_id, tenant, key, value) \
                             SELECT $1, $2, k, v FROM UNNEST($3::text[], $4::text[]) AS m (k, v)",
                )
                .bind(p.id.to_string())
                .bind(&p.tenant)
                .bind(keys)
                .bind(values)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            }
            add_usage(conn, &p.tenant, 0, 1, 0).await?;
            let sequence = append_event(conn, &event).await?;
            Ok((sequence, Some(sequence)))
        });
        Ok(committed_event(event, sequence as i64))
    }

    async fn add_file(
        &self,
        file: &FileRecord,
        upload: Option<UploadId>,
        inline: Option<Bytes>,
        checks: AddChecks,
        event: NewEvent,
    ) -> Result<Event, StoreError> {
        let sequence = in_transaction!(self, |conn| {
            match lock_state(conn, "packages", &file.tenant, file.package_id.to_string())
                .await?
                .as_deref()
            {
                None => return Err(StoreError::NotFound),
                Some("open") => {}
                Some(_) => return Err(StoreError::PackageFinalized),
            }
            if let Some(upload) = upload
                && lock_state(conn, "uploads", &file.tenant, upload.to_string())
                    .await?
                    .as_deref()
                    != Some("open")
            {
                return Err(StoreError::UploadNotOpen);
            }
            // A doom (a collection's or a refused writer's) waits for the claim row's lock
            // taken below, and then sees this file; a doom that came first leaves no claim
            // standing here.
            if checks.max_bytes.is_some() && upload.is_none() {
                let used = used_bytes(conn, &file.tenant).await?;
                check_quota(checks.max_bytes, used, file.size as i64)?;
            }
            if let Some(generation) = checks.claim {
                let stands = sqlx::query(RECORD_CLAIM)
                    .bind(file.sha256().hex())
                    .bind(generation)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                if stands.is_none() {
                    return Err(StoreError::Stale);
                }
            }
            let added = sqlx::query(&format!(
                "INSERT INTO files ({FILE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            ))
            .bind(file.id.to_string())
            .bind(file.package_id.to_string())
            .bind(&file.tenant)
            .bind(&file.path)
            .bind(file.size as i64)
            .bind(&file.media_type)
            .bind(file.sha256().hex())
            .bind(file.created_at.as_millis())
            .bind(file.inline)
            .execute(&mut *conn)
            .await;
            match added {
                Ok(_) => {}
                Err(e) if is_unique_violation(&e) => {
                    return Err(StoreError::PathTaken(file.path.clone()));
                }
                Err(e) => return Err(sql_error(e)),
            }
            if let Some(bytes) = inline.as_deref() {
                // DO UPDATE, not DO NOTHING: it locks the row, so a collection deleting it
                // either waits for this commit (and then sees the file) or went first (and
                // this inserts the bytes anew).
                sqlx::query(
                    "INSERT INTO inline_blobs (sha256, bytes) VALUES ($1, $2) \
                             ON CONFLICT (sha256) DO UPDATE SET sha256 = excluded.sha256",
                )
                .bind(file.sha256().hex())
                .bind(bytes)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
            }
            if let Some(upload) = upload {
                sqlx::query("UPDATE uploads SET state = 'completed', file_id = $1 WHERE id = $2")
                    .bind(file.id.to_string())
                    .bind(upload.to_string())
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
            }
            let count: i64 = sqlx::query_scalar(
                "UPDATE packages SET file_count = file_count + 1, \
                         total_size = total_size + $1 WHERE id = $2 RETURNING file_count",
            )
            .bind(file.size as i64)
            .bind(file.package_id.to_string())
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_error)?;
            if count as u64 > checks.max_files {
                return Err(StoreError::TooManyFiles);
            }
            // An upload's bytes were counted as it grew: completing it only closes it.
            match upload {
                Some(_) => add_usage(conn, &file.tenant, 0, 0, -1).await?,
                None => add_usage(conn, &file.tenant, file.size as i64, 0, 0).await?,
            }
            let sequence = append_event(conn, &event).await?;
            Ok((sequence, Some(sequence)))
        });
        Ok(committed_event(event, sequence as i64))
    }

    async fn claim_blob(
        &self,
        digest: &Sha256Digest,
        generation: i64,
    ) -> Result<Option<i64>, StoreError> {
        sqlx::query_scalar(&SQL.claim_blob)
            .bind(digest.hex())
            .bind(generation)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql_error)
    }

    /// Each in a transaction of its own, several at once: the doom first (its row lock waits
    /// for a file being added with a claim), then the check, in a statement of its own (so it
    /// sees whatever committed while it waited).
    async fn doom_blobs(
        &self,
        digests: &[Sha256Digest],
        grace: Duration,
        lease: u64,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        use futures::StreamExt;
        let outcomes: Vec<Result<Option<Sha256Digest>, StoreError>> =
            futures::stream::iter(digests.iter().copied())
                .map(|digest| self.doom_one(digest, grace, lease))
                .buffer_unordered(DOOMS_IN_FLIGHT)
                .collect()
                .await;
        outcomes.into_iter().filter_map(Result::transpose).collect()
    }

    async fn abandon_blob(
        &self,
        digest: &Sha256Digest,
        generation: i64,
        token: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        let doomed = abandon_steps(&mut tx, digest, generation, token).await?;
        tx.commit().await.map_err(sql_error)?;
        Ok(doomed)
    }

    async fn remember_oci_manifest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
        package: PackageId,
    ) -> Result<(), StoreError> {
        sqlx::query(REMEMBER_OCI_MANIFEST)
            .bind(tenant)
            .bind(digest.content_address())
            .bind(package.to_string())
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    async fn record_oci_blob(
        &self,
        tenant: &str,
        blob: BlobInfo,
        generation: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        record_oci_blob_steps(&mut tx, tenant, blob, generation).await?;
        tx.commit().await.map_err(sql_error)
    }

    async fn record_pushed_manifest(
        &self,
        pushed: PushedManifest<'_>,
    ) -> Result<PackageId, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        let package = record_pushed_steps(&mut tx, &pushed).await?;
        tx.commit().await.map_err(sql_error)?;
        Ok(package)
    }

    async fn forget_oci_blobs(&self, grace: Duration) -> Result<u64, StoreError> {
        let done = sqlx::query(&SQL.forget_oci_blobs)
            .bind(grace.as_millis() as i64)
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(done.rows_affected())
    }

    async fn release_abandoned(&self, digest: &Sha256Digest, token: i64) -> Result<(), StoreError> {
        sqlx::query(RELEASE_ABANDONED)
            .bind(digest.hex())
            .bind(token)
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    async fn release_blobs(&self, digests: &[Sha256Digest], lease: u64) -> Result<(), StoreError> {
        let hexes: Vec<String> = digests.iter().map(Sha256Digest::hex).collect();
        // RELEASE_BLOB for a whole array at once.
        let sql = SQL.release_blob.replace("sha256 = $1", "sha256 = ANY($1)");
        sqlx::query(&sql)
            .bind(hexes)
            .bind(lease as i64)
            .execute(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(())
    }

    /// Row by row: each candidate is locked first, then checked by a statement of its own,
    /// which sees a file that committed while the lock was awaited (see `add_file`).
    async fn collect_inline(&self, limit: u32) -> Result<u64, StoreError> {
        let candidates: Vec<String> = sqlx::query_scalar(
            "SELECT b.sha256 FROM inline_blobs b WHERE NOT EXISTS \
             (SELECT 1 FROM files f WHERE f.sha256 = b.sha256 AND f.inline) LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(sql_error)?;
        let mut deleted = 0;
        for hex in candidates {
            let mut tx = self.pool.begin().await.map_err(sql_error)?;
            sqlx::query("SELECT 1 FROM inline_blobs WHERE sha256 = $1 FOR UPDATE")
                .bind(&hex)
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql_error)?;
            let done = sqlx::query(
                "DELETE FROM inline_blobs WHERE sha256 = $1 AND NOT EXISTS \
                 (SELECT 1 FROM files WHERE sha256 = $1 AND inline)",
            )
            .bind(&hex)
            .execute(&mut *tx)
            .await
            .map_err(sql_error)?;
            tx.commit().await.map_err(sql_error)?;
            deleted += done.rows_affected();
        }
        Ok(deleted)
    }

    async fn finalize(
        &self,
        freeze: Freeze<'_>,
        event: NewEvent,
    ) -> Result<(Package, Option<Event>), StoreError> {
        let Freeze {
            tenant,
            package,
            file_count,
            finalized_at,
            manifest,
        } = freeze;
        let (updated, sequence) = in_transaction!(self, |conn| {
            let current = locked_package(conn, tenant, package).await?;
            if current.state == PackageState::Finalized {
                return Ok(((current, None), None));
            }
            if current.file_count != file_count {
                return Err(StoreError::Stale);
            }
            let row = sqlx::query(&format!(
                "UPDATE packages SET state = 'finalized', finalized_at = $1, \
                         manifest_digest = $2, manifest_cbor = $3, manifest_json = $4 \
                         WHERE id = $5 RETURNING {PACKAGE_COLUMNS}"
            ))
            .bind(finalized_at.as_millis())
            .bind(manifest.digest.content_address())
            .bind(&manifest.cbor)
            .bind(&manifest.json)
            .bind(package.to_string())
            .fetch_one(&mut *conn)
            .await
            .map_err(sql_error)?;
            let updated = package_from_row(&row)?;
            let sequence = append_event(conn, &event).await?;
            Ok(((updated, Some(sequence)), Some(sequence)))
        });
        let event = sequence.map(|s| committed_event(event, s as i64));
        Ok((updated, event))
    }

    async fn delete_package(
        &self,
        tenant: &str,
        id: PackageId,
        event: EventFor,
    ) -> Result<Package, StoreError> {
        let mut event = Some(event);
        let id_text = id.to_string();
        Ok(in_transaction!(self, |conn| {
            let package = locked_package(conn, tenant, id).await?;
            if package.held {
                return Err(StoreError::Held);
            }
            delete_package_rows(conn, &package).await?;
            let mut sequence = append_event(conn, &take_event(&mut event)?(&package)).await?;
            let named = TagFilter::Package(&id_text);
            for tag in delete_tag_rows(conn, tenant, named).await? {
                let gone = tag.deleted_event(TagDeleteReason::PackageDeleted);
                sequence = append_event(conn, &gone).await?;
            }
            Ok((package, Some(sequence)))
        }))
    }

    async fn set_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
        package: PackageId,
        at: Timestamp,
    ) -> Result<TagChange, StoreError> {
        Ok(in_transaction!(self, |conn| {
            let change = set_tag_steps(conn, tenant, repository, tag, package, at).await?;
            let sequence = match change.event() {
                Some(event) => Some(append_event(conn, &event).await?),
                None => None,
            };
            Ok((change, sequence))
        }))
    }

    async fn delete_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Tag, StoreError> {
        Ok(in_transaction!(self, |conn| {
            let named = TagFilter::Named(repository, tag);
            let tag = delete_tag_rows(conn, tenant, named).await?.pop();
            let tag = tag.ok_or(StoreError::NotFound)?;
            let gone = tag.deleted_event(TagDeleteReason::Request);
            let sequence = append_event(conn, &gone).await?;
            Ok((tag, Some(sequence)))
        }))
    }

    async fn set_hold(
        &self,
        tenant: &str,
        id: PackageId,
        held: bool,
        event: EventFor,
    ) -> Result<Package, StoreError> {
        let mut event = Some(event);
        Ok(in_transaction!(self, |conn| {
            let package = locked_package(conn, tenant, id).await?;
            if package.held == held {
                return Ok((package, None));
            }
            let package = update_held(conn, id, held).await?;
            let sequence = append_event(conn, &take_event(&mut event)?(&package)).await?;
            Ok((package, Some(sequence)))
        }))
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let taken: Option<i64> = sqlx::query_scalar(&SQL.lease)
            .bind(name)
            .bind(holder)
            .bind(ttl.as_millis() as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql_error)?;
        Ok(taken.map(|g| g as u64))
    }

    async fn create_upload(
        &self,
        u: &UploadRecord,
        max_open: Option<u64>,
    ) -> Result<(), StoreError> {
        in_transaction!(self, |conn| {
            sqlx::query(&format!(
                "INSERT INTO uploads ({UPLOAD_COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            ))
            .bind(u.upload.id.to_string())
            .bind(&u.tenant)
            .bind(u.upload.size.map(|s| s as i64))
            .bind(u.upload.offset as i64)
            .bind(u.upload.state.as_str())
            .bind(&u.hash_state)
            .bind(u.created_at.as_millis())
            .bind(u.upload.expires_at.as_millis())
            .bind(u.file_id.map(|f| f.to_string()))
            .bind(&u.staging.0)
            .execute(&mut *conn)
            .await
            .map_err(sql_error)?;
            add_usage(conn, &u.tenant, u.upload.offset as i64, 0, 1).await?;
            check_open_uploads(conn, &u.tenant, max_open).await?;
            Ok(((), None))
        });
        Ok(())
    }

    async fn advance_upload(&self, advance: Advance<'_>) -> Result<UploadRecord, StoreError> {
        let Advance {
            tenant,
            id,
            from_offset,
            hasher,
            staging,
            size,
            expires_at,
            max_bytes,
        } = advance;
        // One statement: under READ COMMITTED, a second updater of the row waits for the
        // first and then re-checks the offset against the committed row, so exactly one of
        // two racing replicas moves it.
        let mut tx = self.pool.begin().await.map_err(sql_error)?;
        let row = sqlx::query(&format!(
            "UPDATE uploads SET \"offset\" = $1, hash_state = $2, staging = $3, \
             size = COALESCE(size, $4), expires_at = $5 WHERE id = $6 AND tenant = $7 \
             AND state = 'open' AND \"offset\" = $8 RETURNING {UPLOAD_COLUMNS}"
        ))
        .bind(hasher.len() as i64)
        .bind(hasher.save())
        .bind(&staging.0)
        .bind(size.map(|s| s as i64))
        .bind(expires_at.as_millis())
        .bind(id.to_string())
        .bind(tenant)
        .bind(from_offset as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_error)?;
        if let Some(row) = row {
            let grown = hasher.len() as i64 - from_offset as i64;
            // After the upload's row, like `add_file`: one lock order.
            if max_bytes.is_some() {
                let used = used_bytes(&mut tx, tenant).await?;
                check_quota(max_bytes, used, grown)?;
            }
            add_usage(&mut tx, tenant, grown, 0, 0).await?;
            tx.commit().await.map_err(sql_error)?;
            return upload_from_row(&row);
        }
        drop(tx);
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM uploads WHERE id = $1 AND tenant = $2")
                .bind(id.to_string())
                .bind(tenant)
                .fetch_optional(&self.pool)
                .await
                .map_err(sql_error)?;
        Err(match state.as_deref() {
            None => StoreError::NotFound,
            Some("open") => StoreError::Stale,
            Some(_) => StoreError::UploadNotOpen,
        })
    }

    async fn delete_upload(&self, tenant: &str, id: UploadId) -> Result<(), StoreError> {
        in_transaction!(self, |conn| {
            match lock_state(conn, "uploads", tenant, id.to_string())
                .await?
                .as_deref()
            {
                None => return Err(StoreError::NotFound),
                Some("open") => {}
                Some(_) => return Err(StoreError::UploadNotOpen),
            }
            let offset: i64 =
                sqlx::query_scalar("DELETE FROM uploads WHERE id = $1 RETURNING \"offset\"")
                    .bind(id.to_string())
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(sql_error)?;
            add_usage(conn, tenant, -offset, 0, -1).await?;
            Ok(((), None))
        });
        Ok(())
    }

    async fn take_expired_uploads(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, UploadId)>, StoreError> {
        // SKIP LOCKED: replicas sweeping at once take disjoint uploads and never wait for
        // each other, nor for an upload a request holds.
        Ok(in_transaction!(self, |conn| {
            let rows = sqlx::query(
                "DELETE FROM uploads WHERE id IN (SELECT id FROM uploads \
                 WHERE state = 'open' AND expires_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING tenant, id, \"offset\"",
            )
            .bind(now.as_millis())
            .bind(limit as i64)
            .fetch_all(&mut *conn)
            .await
            .map_err(sql_error)?;
            let (taken, per_tenant) = expired_uploads(&rows)?;
            for (tenant, bytes, uploads) in per_tenant {
                add_usage(conn, &tenant, -bytes, 0, -uploads).await?;
            }
            Ok((taken, None))
        }))
    }
}

#[cfg(test)]
mod ssl_defaults {
    use super::default_ssl_mode;
    use sqlx::postgres::PgSslMode;

    #[test]
    fn a_url_without_sslmode_gets_verify_full_unless_it_stays_on_the_host() {
        let mode = |url: &str, host: &str| default_ssl_mode(url, host);
        let verified = |m| matches!(m, Some(PgSslMode::VerifyFull));
        let preferred = |m| matches!(m, Some(PgSslMode::Prefer));
        assert!(verified(mode("postgres://u@db.example/x", "db.example")));
        assert!(verified(mode("postgres://u@10.0.0.5/x", "10.0.0.5")));
        assert!(preferred(mode("postgres://u@127.0.0.1/x", "127.0.0.1")));
        assert!(preferred(mode("postgres://u@localhost/x", "localhost")));
        assert!(preferred(mode("postgres://u@[::1]/x", "[::1]")));
        assert!(preferred(mode("postgres:///x", "/var/run/postgresql")));
        assert!(mode("postgres://u@db/x?sslmode=disable", "db").is_none());
        assert!(mode("postgres://u@db/x?a=b&SSLMODE=require", "db").is_none());
    }
}

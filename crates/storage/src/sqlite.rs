//! Metadata and the event log in SQLite (WAL, `synchronous=FULL`): the embedded default.
//!
//! One connection writes, a small pool reads. With a single writer every transaction is
//! serialized, which is what makes `MAX(sequence) + 1` a gap-free, commit-ordered sequence.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::str::FromStr;
use std::time::Duration;

use artifactstore_core::storage::{MetadataStore, StoreError};
use artifactstore_core::*;
use async_trait::async_trait;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, Transaction};
use tokio::sync::watch;

const READERS: u32 = 4;

static MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "init",
    include_str!("../migrations/sqlite/0001_init.sql"),
)];

/// Events kept in memory after commit (see [`SqliteStore::tail`]).
const TAIL_EVENTS: usize = 4096;
/// File records kept in memory (see [`SqliteStore::files`]).
const FILE_CACHE: usize = 16 * 1024;

pub struct SqliteStore {
    writer: SqlitePool,
    readers: SqlitePool,
    /// Held from `BEGIN` until the commit's event is in `tail` and `events`, so those two see
    /// commits in commit order (the pool's one connection alone would not promise that: it is
    /// back in the pool, free for the next writer, as soon as `COMMIT` returns).
    write_turn: tokio::sync::Mutex<()>,
    /// The newest committed events, contiguous, in order. A thousand long-polls woken by one
    /// commit read them here instead of each querying the database.
    tail: std::sync::Mutex<VecDeque<Event>>,
    tail_events: usize,
    /// File records by id. A file never changes once added (and files are never removed), so
    /// a cached record is never stale; downloads and range reads skip the database.
    files: std::sync::Mutex<HashMap<FileId, FileRecord>>,
    events: watch::Sender<u64>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain path) and
    /// applies pending migrations.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with_tail(url, TAIL_EVENTS).await
    }

    /// [`open`](Self::open), keeping `tail_events` recent events in memory (tests use a few).
    pub async fn open_with_tail(url: &str, tail_events: usize) -> Result<Self, StoreError> {
        let url = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(db)?;
        migrator()
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.read_only(true))
            .await
            .map_err(db)?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM events")
            .fetch_one(&writer)
            .await
            .map_err(db)?;
        let (events, _) = watch::channel(last as u64);
        Ok(Self {
            writer,
            readers,
            write_turn: tokio::sync::Mutex::new(()),
            tail: std::sync::Mutex::new(VecDeque::with_capacity(tail_events)),
            tail_events: tail_events.max(1),
            files: std::sync::Mutex::new(HashMap::new()),
            events,
        })
    }

    /// Closes the pools, checkpointing the WAL.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    async fn begin(
        &self,
    ) -> Result<
        (
            tokio::sync::MutexGuard<'_, ()>,
            Transaction<'static, Sqlite>,
        ),
        StoreError,
    > {
        let turn = self.write_turn.lock().await;
        Ok((turn, self.writer.begin().await.map_err(db)?))
    }

    /// The tenant's events after `since` from memory, if memory holds all of them.
    fn recent_events(&self, tenant: &str, since: u64, limit: u32) -> Option<Vec<Event>> {
        let tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
        let first = tail.front()?.sequence;
        if first > since.saturating_add(1) {
            return None;
        }
        let events = tail
            .iter()
            .filter(|e| e.sequence > since && e.tenant == tenant)
            .take(limit as usize)
            .cloned()
            .collect();
        Some(events)
    }

    /// Commits and then tells waiting tailers about the new sequence.
    async fn commit(
        &self,
        tx: Transaction<'static, Sqlite>,
        event: Option<&Event>,
    ) -> Result<(), StoreError> {
        tx.commit().await.map_err(db)?;
        if let Some(event) = event {
            {
                let mut tail = self.tail.lock().unwrap_or_else(|p| p.into_inner());
                if tail.len() >= self.tail_events {
                    tail.pop_front();
                }
                tail.push_back(event.clone());
            }
            self.events.send_if_modified(|last| {
                let newer = event.sequence > *last;
                if newer {
                    *last = event.sequence;
                }
                newer
            });
        }
        Ok(())
    }
}

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
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

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("unreadable {what} in the metadata store"))
}

async fn append_event(
    tx: &mut Transaction<'static, Sqlite>,
    event: NewEvent,
) -> Result<Event, StoreError> {
    let data =
        serde_json::to_string(&event.data).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let sequence: i64 = sqlx::query_scalar(
        "INSERT INTO events (sequence, type, occurred_at, tenant, package_id, data) \
         VALUES ((SELECT COALESCE(MAX(sequence), 0) + 1 FROM events), ?, ?, ?, ?, ?) \
         RETURNING sequence",
    )
    .bind(event.kind.as_str())
    .bind(event.occurred_at.as_millis())
    .bind(&event.tenant)
    .bind(event.package_id.to_string())
    .bind(data)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    Ok(Event {
        sequence: sequence as u64,
        kind: event.kind,
        occurred_at: event.occurred_at,
        tenant: event.tenant,
        package_id: event.package_id,
        data: event.data,
    })
}

const PACKAGE_COLUMNS: &str = "id, tenant, producer, subject, retention_class, metadata, state, \
    created_at, finalized_at, file_count, total_size, manifest_digest";

fn package_from_row(row: &SqliteRow) -> Result<Package, StoreError> {
    let get_str = |name: &str| {
        row.try_get::<String, _>(name)
            .map_err(|_| corrupt("package"))
    };
    let get_i64 = |name: &str| row.try_get::<i64, _>(name).map_err(|_| corrupt("package"));
    let metadata: BTreeMap<String, String> =
        serde_json::from_str(&get_str("metadata")?).map_err(|_| corrupt("package metadata"))?;
    let manifest_digest = row
        .try_get::<Option<String>, _>("manifest_digest")
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
            .try_get::<Option<i64>, _>("finalized_at")
            .map_err(|_| corrupt("package"))?
            .map(Timestamp::from_millis),
        file_count: get_i64("file_count")? as u64,
        total_size: get_i64("total_size")? as u64,
        manifest_digest,
    })
}

const FILE_COLUMNS: &str = "id, package_id, tenant, path, size, media_type, sha256, created_at";

fn file_from_row(row: &SqliteRow) -> Result<FileRecord, StoreError> {
    let get_str = |name: &str| row.try_get::<String, _>(name).map_err(|_| corrupt("file"));
    let sha256 = Sha256Digest::from_hex(&get_str("sha256")?).ok_or(corrupt("file digest"))?;
    Ok(FileRecord {
        id: get_str("id")?.parse().map_err(|_| corrupt("file id"))?,
        package_id: get_str("package_id")?
            .parse()
            .map_err(|_| corrupt("file package"))?,
        tenant: get_str("tenant")?,
        path: get_str("path")?,
        size: row.try_get::<i64, _>("size").map_err(|_| corrupt("file"))? as u64,
        media_type: get_str("media_type")?,
        digests: Digests { sha256 },
        content_address: ContentAddress(sha256),
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(|_| corrupt("file"))?),
    })
}

const UPLOAD_COLUMNS: &str =
    "id, tenant, size, \"offset\", state, hash_state, created_at, expires_at, file_id";

fn upload_from_row(row: &SqliteRow) -> Result<UploadRecord, StoreError> {
    let bad = |_| corrupt("upload");
    let state: String = row.try_get("state").map_err(bad)?;
    let id: String = row.try_get("id").map_err(bad)?;
    let file_id: Option<String> = row.try_get("file_id").map_err(bad)?;
    Ok(UploadRecord {
        upload: Upload {
            id: id.parse().map_err(|_| corrupt("upload id"))?,
            offset: row.try_get::<i64, _>("offset").map_err(bad)? as u64,
            size: row
                .try_get::<Option<i64>, _>("size")
                .map_err(bad)?
                .map(|s| s as u64),
            state: UploadState::parse(&state).ok_or(corrupt("upload state"))?,
            expires_at: Timestamp::from_millis(row.try_get("expires_at").map_err(bad)?),
        },
        tenant: row.try_get("tenant").map_err(bad)?,
        created_at: Timestamp::from_millis(row.try_get("created_at").map_err(bad)?),
        hash_state: row.try_get("hash_state").map_err(bad)?,
        file_id: file_id
            .map(|f| f.parse().map_err(|_| corrupt("upload file id")))
            .transpose()?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event, StoreError> {
    let bad = |_| corrupt("event");
    let kind: String = row.try_get("type").map_err(bad)?;
    let package_id: String = row.try_get("package_id").map_err(bad)?;
    let data: String = row.try_get("data").map_err(bad)?;
    Ok(Event {
        sequence: row.try_get::<i64, _>("sequence").map_err(bad)? as u64,
        kind: EventType::parse(&kind).ok_or(corrupt("event type"))?,
        occurred_at: Timestamp::from_millis(row.try_get("occurred_at").map_err(bad)?),
        tenant: row.try_get("tenant").map_err(bad)?,
        package_id: package_id
            .parse()
            .map_err(|_| corrupt("event package id"))?,
        data: serde_json::from_str(&data).map_err(|_| corrupt("event data"))?,
    })
}

#[async_trait]
impl MetadataStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn create_package(&self, p: &Package, event: NewEvent) -> Result<Event, StoreError> {
        let metadata =
            serde_json::to_string(&p.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let (_turn, mut tx) = self.begin().await?;
        sqlx::query(
            "INSERT INTO packages (id, tenant, producer, subject, retention_class, metadata, \
             state, created_at, file_count, total_size) VALUES (?, ?, ?, ?, ?, ?, 'open', ?, 0, 0)",
        )
        .bind(p.id.to_string())
        .bind(&p.tenant)
        .bind(&p.producer)
        .bind(&p.subject)
        .bind(&p.retention_class)
        .bind(metadata)
        .bind(p.created_at.as_millis())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        for (key, value) in &p.metadata {
            sqlx::query(
                "INSERT INTO package_metadata (package_id, tenant, key, value) VALUES (?, ?, ?, ?)",
            )
            .bind(p.id.to_string())
            .bind(&p.tenant)
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        let event = append_event(&mut tx, event).await?;
        self.commit(tx, Some(&event)).await?;
        Ok(event)
    }

    async fn package(&self, tenant: &str, id: PackageId) -> Result<Option<Package>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {PACKAGE_COLUMNS} FROM packages WHERE id = ? AND tenant = ?"
        ))
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        row.as_ref().map(package_from_row).transpose()
    }

    async fn list_packages(
        &self,
        tenant: &str,
        q: &PackageQuery,
        before: Option<PackageId>,
        limit: u32,
    ) -> Result<Vec<Package>, StoreError> {
        let mut sql = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {PACKAGE_COLUMNS} FROM packages WHERE tenant = "
        ));
        sql.push_bind(tenant);
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
            sql.push(" AND id IN (SELECT package_id FROM package_metadata WHERE tenant = ")
                .push_bind(tenant)
                .push(" AND key = ")
                .push_bind(key.clone())
                .push(" AND value = ")
                .push_bind(value.clone())
                .push(")");
        }
        for key in &q.has_metadata {
            sql.push(" AND id IN (SELECT package_id FROM package_metadata WHERE tenant = ")
                .push_bind(tenant)
                .push(" AND key = ")
                .push_bind(key.clone())
                .push(")");
        }
        if let Some(digest) = q.contains {
            sql.push(" AND id IN (SELECT package_id FROM files WHERE tenant = ")
                .push_bind(tenant)
                .push(" AND sha256 = ")
                .push_bind(digest.hex())
                .push(")");
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
        let rows = sql.build().fetch_all(&self.readers).await.map_err(db)?;
        rows.iter().map(package_from_row).collect()
    }

    async fn add_file(
        &self,
        file: &FileRecord,
        upload: Option<UploadId>,
        event: NewEvent,
    ) -> Result<Event, StoreError> {
        let (_turn, mut tx) = self.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM packages WHERE id = ? AND tenant = ?")
                .bind(file.package_id.to_string())
                .bind(&file.tenant)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        match state.as_deref() {
            None => return Err(StoreError::NotFound),
            Some("open") => {}
            Some(_) => return Err(StoreError::PackageFinalized),
        }
        if let Some(upload) = upload {
            let done = sqlx::query(
                "UPDATE uploads SET state = 'completed', file_id = ? \
                 WHERE id = ? AND tenant = ? AND state = 'open'",
            )
            .bind(file.id.to_string())
            .bind(upload.to_string())
            .bind(&file.tenant)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::UploadNotOpen);
            }
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO files ({FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        ))
        .bind(file.id.to_string())
        .bind(file.package_id.to_string())
        .bind(&file.tenant)
        .bind(&file.path)
        .bind(file.size as i64)
        .bind(&file.media_type)
        .bind(file.sha256().hex())
        .bind(file.created_at.as_millis())
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::PathTaken(file.path.clone()));
            }
            Err(e) => return Err(db(e)),
        }
        sqlx::query("UPDATE packages SET file_count = file_count + 1, total_size = total_size + ? WHERE id = ?")
            .bind(file.size as i64)
            .bind(file.package_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let event = append_event(&mut tx, event).await?;
        self.commit(tx, Some(&event)).await?;
        Ok(event)
    }

    async fn file(&self, tenant: &str, id: FileId) -> Result<Option<FileRecord>, StoreError> {
        {
            let cache = self.files.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(file) = cache.get(&id) {
                return Ok((file.tenant == tenant).then(|| file.clone()));
            }
        }
        let row = sqlx::query(&format!("SELECT {FILE_COLUMNS} FROM files WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.readers)
            .await
            .map_err(db)?;
        let Some(file) = row.as_ref().map(file_from_row).transpose()? else {
            return Ok(None);
        };
        let mut cache = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= FILE_CACHE {
            // Crude but bounded; hot files come straight back.
            cache.clear();
        }
        cache.insert(id, file.clone());
        Ok((file.tenant == tenant).then_some(file))
    }

    async fn list_files(
        &self,
        tenant: &str,
        package: PackageId,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<FileRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {FILE_COLUMNS} FROM files WHERE package_id = ? AND tenant = ? AND path > ? \
             ORDER BY path LIMIT ?"
        ))
        .bind(package.to_string())
        .bind(tenant)
        .bind(after.unwrap_or(""))
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter().map(file_from_row).collect()
    }

    async fn finalize(
        &self,
        tenant: &str,
        package: PackageId,
        file_count: u64,
        finalized_at: Timestamp,
        manifest: &StoredManifest,
        event: NewEvent,
    ) -> Result<(Package, Option<Event>), StoreError> {
        let select = format!("SELECT {PACKAGE_COLUMNS} FROM packages WHERE id = ? AND tenant = ?");
        let (_turn, mut tx) = self.begin().await?;
        let row = sqlx::query(&select)
            .bind(package.to_string())
            .bind(tenant)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let current = package_from_row(&row)?;
        if current.state == PackageState::Finalized {
            return Ok((current, None));
        }
        if current.file_count != file_count {
            return Err(StoreError::Stale);
        }
        let row = sqlx::query(&format!(
            "UPDATE packages SET state = 'finalized', finalized_at = ?, manifest_digest = ?, \
             manifest_cbor = ?, manifest_json = ? WHERE id = ? RETURNING {PACKAGE_COLUMNS}"
        ))
        .bind(finalized_at.as_millis())
        .bind(manifest.digest.content_address())
        .bind(&manifest.cbor)
        .bind(&manifest.json)
        .bind(package.to_string())
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        let updated = package_from_row(&row)?;
        let event = append_event(&mut tx, event).await?;
        self.commit(tx, Some(&event)).await?;
        Ok((updated, Some(event)))
    }

    async fn manifest(
        &self,
        tenant: &str,
        package: PackageId,
    ) -> Result<Option<StoredManifest>, StoreError> {
        let row = sqlx::query(
            "SELECT manifest_digest, manifest_cbor, manifest_json FROM packages \
             WHERE id = ? AND tenant = ? AND state = 'finalized'",
        )
        .bind(package.to_string())
        .bind(tenant)
        .fetch_optional(&self.readers)
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let bad = |_| corrupt("manifest");
        let digest: String = row.try_get("manifest_digest").map_err(bad)?;
        Ok(Some(StoredManifest {
            digest: Sha256Digest::from_content_address(&digest)
                .ok_or(corrupt("manifest digest"))?,
            cbor: row.try_get("manifest_cbor").map_err(bad)?,
            json: row.try_get("manifest_json").map_err(bad)?,
        }))
    }

    async fn create_upload(&self, u: &UploadRecord) -> Result<(), StoreError> {
        let (_turn, mut tx) = self.begin().await?;
        sqlx::query(&format!(
            "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        self.commit(tx, None).await
    }

    async fn upload(&self, tenant: &str, id: UploadId) -> Result<Option<UploadRecord>, StoreError> {
        // From the writer: a client resuming right after a PATCH must see its new offset.
        let row = sqlx::query(&format!(
            "SELECT {UPLOAD_COLUMNS} FROM uploads WHERE id = ? AND tenant = ?"
        ))
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&self.writer)
        .await
        .map_err(db)?;
        row.as_ref().map(upload_from_row).transpose()
    }

    async fn advance_upload(
        &self,
        tenant: &str,
        id: UploadId,
        from_offset: u64,
        hasher: &Sha256Hasher,
        size: Option<u64>,
        expires_at: Timestamp,
    ) -> Result<UploadRecord, StoreError> {
        let (_turn, mut tx) = self.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE uploads SET \"offset\" = ?, hash_state = ?, size = COALESCE(size, ?), expires_at = ? \
             WHERE id = ? AND tenant = ? AND state = 'open' AND \"offset\" = ? RETURNING {UPLOAD_COLUMNS}"
        ))
        .bind(hasher.len() as i64)
        .bind(hasher.save())
        .bind(size.map(|s| s as i64))
        .bind(expires_at.as_millis())
        .bind(id.to_string())
        .bind(tenant)
        .bind(from_offset as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        match row {
            Some(row) => {
                let record = upload_from_row(&row)?;
                self.commit(tx, None).await?;
                Ok(record)
            }
            None => {
                let state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM uploads WHERE id = ? AND tenant = ?")
                        .bind(id.to_string())
                        .bind(tenant)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                Err(match state.as_deref() {
                    None => StoreError::NotFound,
                    Some("open") => StoreError::Stale,
                    Some(_) => StoreError::UploadNotOpen,
                })
            }
        }
    }

    async fn delete_upload(&self, tenant: &str, id: UploadId) -> Result<(), StoreError> {
        let (_turn, mut tx) = self.begin().await?;
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM uploads WHERE id = ? AND tenant = ?")
                .bind(id.to_string())
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        match state.as_deref() {
            None => return Err(StoreError::NotFound),
            Some("open") => {}
            Some(_) => return Err(StoreError::UploadNotOpen),
        }
        sqlx::query("DELETE FROM uploads WHERE id = ?")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        self.commit(tx, None).await
    }

    async fn expired_uploads(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, UploadId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT tenant, id FROM uploads WHERE state = 'open' AND expires_at < ? LIMIT ?",
        )
        .bind(now.as_millis())
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                let tenant: String = row.try_get("tenant").map_err(|_| corrupt("upload"))?;
                let id: String = row.try_get("id").map_err(|_| corrupt("upload"))?;
                Ok((tenant, id.parse().map_err(|_| corrupt("upload id"))?))
            })
            .collect()
    }

    async fn events_since(
        &self,
        tenant: &str,
        since: u64,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        if let Some(events) = self.recent_events(tenant, since, limit) {
            return Ok(events);
        }
        let rows = sqlx::query(
            "SELECT sequence, type, occurred_at, tenant, package_id, data FROM events \
             WHERE tenant = ? AND sequence > ? ORDER BY sequence LIMIT ?",
        )
        .bind(tenant)
        .bind(since.min(i64::MAX as u64) as i64)
        .bind(limit as i64)
        .fetch_all(&self.readers)
        .await
        .map_err(db)?;
        rows.iter().map(event_from_row).collect()
    }

    fn event_watch(&self) -> watch::Receiver<u64> {
        self.events.subscribe()
    }
}

//! Metadata and the event log in SQLite (WAL, `synchronous=FULL`): the embedded default.
//!
//! One task writes, through one connection, committing the changes queued at each moment
//! together (group commit); a small pool reads. With a single writer every transaction is
//! serialized, which is what makes `MAX(sequence) + 1` a gap-free, commit-ordered sequence.
//! Another task checkpoints the WAL into the database file, out of the writer's way.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use artifactstore_core::storage::{
    AddChecks, Advance, BlobInfo, Freeze, MetadataReads, MetadataStore, PushedManifest, StoreError,
};

use crate::open::OpenOptions;
use crate::reads::{Pool, Reads};
use crate::rows::*;
use crate::tail::EventTail;
use artifactstore_core::*;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, Sqlite};
use tokio::sync::{Notify, mpsc, oneshot};

const READERS: u32 = 4;

/// The texts that read the database's clock, written for SQLite.
pub(crate) static SQL: std::sync::LazyLock<ClockTexts> =
    std::sync::LazyLock::new(|| ClockTexts::new(SQLITE_NOW));

static MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "inline_blobs",
        include_str!("../migrations/sqlite/0002_inline_blobs.sql"),
    ),
    (
        3,
        "upload staging",
        include_str!("../migrations/sqlite/0003_upload_staging.sql"),
    ),
    (
        4,
        "file location",
        include_str!("../migrations/sqlite/0004_file_location.sql"),
    ),
    (
        5,
        "lifecycle",
        include_str!("../migrations/common/lifecycle.sql"),
    ),
    (
        6,
        "blob claims",
        include_str!("../migrations/common/blob_claims.sql"),
    ),
    (
        7,
        "tenant usage",
        include_str!("../migrations/common/tenant_usage.sql"),
    ),
    (
        8,
        "gc fencing",
        include_str!("../migrations/common/gc_fencing.sql"),
    ),
    (
        9,
        "claim writers",
        include_str!("../migrations/common/claim_writers.sql"),
    ),
    (
        10,
        "tags",
        include_str!("../migrations/sqlite/0010_tags.sql"),
    ),
    (11, "oci", include_str!("../migrations/sqlite/0011_oci.sql")),
];

/// Writes committed together at most (see [`run_writer`]).
const MAX_GROUP: usize = 256;
/// Writes waiting for the writer at most; more wait to be queued.
const WRITE_QUEUE: usize = 1024;
/// Pause between two background checkpoints (see [`run_checkpointer`]).
const CHECKPOINT_PAUSE: Duration = Duration::from_millis(100);
/// WAL frames (pages) past which the writer checkpoints once itself, so that the WAL starts
/// over from its beginning (see [`run_checkpointer`]).
const WAL_RESTART_FRAMES: i64 = 2048;
/// How long restarting the WAL waits for readers still inside it (see [`restart_wal`]).
const WAL_RESTART_WAIT: Duration = Duration::from_millis(50);
/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

pub struct SqliteStore {
    writer: SqlitePool,
    /// A small pool of read-only connections, the file cache and the event tail.
    reads: Reads,
    /// The writer task's queue: every change goes through it (see [`run_writer`]).
    jobs: mpsc::Sender<Message>,
    /// Stops the checkpointer; it answers once its connection is closed.
    stop_checkpoints: std::sync::Mutex<Option<oneshot::Sender<oneshot::Sender<()>>>>,
}

/// What the writer and the checkpointer tell each other.
#[derive(Default)]
struct Checkpoints {
    /// Rung after every commit.
    committed: Notify,
    /// The WAL has grown long: the writer should checkpoint once itself.
    restart: AtomicBool,
}

/// One change, run by the writer task on its connection inside the group's transaction.
struct Job {
    undo: Undo,
    run: Run,
}

type Run = Box<
    dyn for<'c> FnOnce(&'c mut SqliteConnection, &'c mut Savepoint) -> BoxFuture<'c, Outcome>
        + Send,
>;

/// The savepoint each job of a group takes before its first write. One at a time: each job
/// releases the one before it in the same trip (SQLite checks every open savepoint on every
/// page it writes, so 256 nested ones made a group's last jobs slow).
#[derive(Default)]
struct Savepoint {
    /// A savepoint of an earlier job of this group is open.
    open: bool,
    /// This job has taken its own.
    taken: bool,
}

impl Savepoint {
    /// What takes the first savepoint of a group.
    const TAKE: &str = "SAVEPOINT job; ";
    /// What releases an earlier job's savepoint and takes this job's, in one trip.
    const RETAKE: &str = "RELEASE job; SAVEPOINT job; ";

    /// What takes this job's savepoint, before (or as the start of) its first writing batch.
    fn sql(&self) -> &'static str {
        if self.open { Self::RETAKE } else { Self::TAKE }
    }
}

/// How a job that fails is undone: always back to a savepoint taken before its first write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Undo {
    /// The writer takes the savepoint before the job runs (one more statement, a trip to
    /// SQLite's thread).
    Writer,
    /// The job takes it at the start of its first writing batch ([`Savepoint::sql`]) and
    /// sets `taken`, writing nothing before: the hot path (a small file) saves the trip,
    /// which cost a third of its throughput (W3: 3,300 → 2,200 files/s measured).
    InJob,
}

enum Message {
    Job(Job),
    Close(oneshot::Sender<()>),
}

/// What a job did, and how to answer its caller.
struct Outcome {
    /// The events of its change, in order.
    events: Vec<Event>,
    /// It failed, at whatever step: the writer undoes whatever it changed (its savepoint)
    /// while the rest of the group goes on.
    failed: bool,
    /// Answers the caller once the group's fate is known: with the job's own result if the
    /// group committed, with the group's error if not. A refusal waits for the commit too:
    /// it may have been decided on changes of the same group (a file added just before, say)
    /// that are not visible to readers until then, and a caller answered earlier would look
    /// again, see none of them, and be refused again by the same open group.
    deliver: Box<dyn FnOnce(Result<(), StoreError>) + Send>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `url` (`sqlite://path` or a plain path) and
    /// applies pending migrations; listings are stopped after `options.query_budget`.
    pub async fn open(url: &str, options: &OpenOptions) -> Result<Self, StoreError> {
        let (tail_events, budget) = (options.tail_events, options.query_budget);
        let url = if url.starts_with("sqlite:") {
            url.to_string()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(sql_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit is on disk before it is acknowledged.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true)
            // Checkpoints run on their own connection (see `run_checkpointer`).
            .pragma("wal_autocheckpoint", "0")
            // A savepoint's sub-journal (one per writer job) in memory, not a temp file.
            .pragma("temp_store", "memory");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(sql_error)?;
        migrator(MIGRATIONS)
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.clone().read_only(true))
            .await
            .map_err(sql_error)?;
        let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM events")
            .fetch_one(&writer)
            .await
            .map_err(sql_error)?;
        let published = Arc::new(EventTail::new(last as u64, tail_events));
        let checkpoints = Arc::new(Checkpoints::default());
        let checkpointer = options.connect().await.map_err(sql_error)?;
        let (stop_checkpoints, stop) = oneshot::channel();
        tokio::spawn(run_checkpointer(checkpointer, checkpoints.clone(), stop));
        let connection = writer.acquire().await.map_err(sql_error)?;
        let (jobs, queue) = mpsc::channel(WRITE_QUEUE);
        tokio::spawn(run_writer(
            connection,
            queue,
            published.clone(),
            checkpoints,
        ));
        Ok(Self {
            writer,
            reads: Reads {
                pool: Pool::Sqlite(readers),
                files: FileCache::default(),
                budget,
                tail: published,
            },
            jobs,
            stop_checkpoints: std::sync::Mutex::new(Some(stop_checkpoints)),
        })
    }

    /// Finishes the queued writes, then closes the pools, checkpointing the WAL.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.jobs.send(Message::Close(ack)).await.is_ok() {
            let _ = done.await;
        }
        let stop = self
            .stop_checkpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(stop) = stop {
            let (ack, done) = oneshot::channel();
            if stop.send(ack).is_ok() {
                let _ = done.await;
            }
        }
        // Irrefutable in a build without PostgreSQL.
        #[allow(irrefutable_let_patterns)]
        if let Pool::Sqlite(readers) = &self.reads.pool {
            readers.close().await;
        }
        self.writer.close().await;
    }

    /// Runs `change` on the writer task and answers once it is committed (or refused). A
    /// change that returns an error, after any number of its statements, leaves no trace:
    /// the writer rolls back to the savepoint it took before the change (see [`run_writer`]).
    ///
    /// Once queued, a change is carried out even if the caller stops waiting, like a request
    /// a server received in full.
    async fn write<T: Send + 'static>(
        &self,
        undo: Undo,
        change: impl for<'c> FnOnce(
            &'c mut SqliteConnection,
            &'c mut Savepoint,
        ) -> BoxFuture<'c, Result<(T, Option<Event>), StoreError>>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        self.write_events(undo, move |conn, savepoint| {
            Box::pin(async move {
                let (value, event) = change(conn, savepoint).await?;
                Ok((value, event.into_iter().collect()))
            })
        })
        .await
    }

    /// [`write`](Self::write) for a change that appends several events.
    async fn write_events<T: Send + 'static>(
        &self,
        undo: Undo,
        change: impl for<'c> FnOnce(
            &'c mut SqliteConnection,
            &'c mut Savepoint,
        ) -> BoxFuture<'c, Result<(T, Vec<Event>), StoreError>>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let run: Run = Box::new(move |conn, savepoint| {
            Box::pin(async move {
                let (result, events) = match change(conn, savepoint).await {
                    Ok((value, events)) => (Ok(value), events),
                    Err(e) => (Err(e), Vec::new()),
                };
                Outcome {
                    events,
                    failed: result.is_err(),
                    deliver: Box::new(move |committed: Result<(), StoreError>| {
                        let _ = reply.send(committed.and(result));
                    }),
                }
            })
        });
        let job = Job { undo, run };
        let gone = || StoreError::Database("the metadata writer has stopped".into());
        self.jobs
            .send(Message::Job(job))
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// The one writer: takes queued changes, runs as many as are waiting (up to [`MAX_GROUP`]) in
/// one transaction, commits them with one fsync, publishes their events in order and only
/// then answers their callers. Grouping is what lets many small writes share the cost of a
/// durable commit; with a single writer, `MAX(sequence) + 1` stays gap-free and in commit
/// order.
async fn run_writer(
    mut conn: PoolConnection<Sqlite>,
    mut queue: mpsc::Receiver<Message>,
    published: Arc<EventTail>,
    checkpoints: Arc<Checkpoints>,
) {
    while let Some(first) = queue.recv().await {
        let mut next = Some(first);
        let mut staged: Staged = Vec::new();
        let mut savepoint = Savepoint::default();
        let mut broken: Option<String> = None;
        let mut closing = None;
        if let Err(e) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
            // Dropping the job answers its caller with an error.
            tracing::error!(error = %e, "metadata writer could not begin a transaction");
            continue;
        }
        let mut taken = 0;
        loop {
            let message = match next.take() {
                Some(message) => message,
                None if taken >= MAX_GROUP => break,
                None => match queue.try_recv() {
                    Ok(message) => message,
                    Err(_) => break,
                },
            };
            match message {
                Message::Close(ack) => {
                    closing = Some(ack);
                    break;
                }
                Message::Job(job) => {
                    taken += 1;
                    if let Err(e) = run_job(&mut conn, job, &mut savepoint, &mut staged).await {
                        broken = Some(e);
                        break;
                    }
                }
            }
        }
        let committed = match broken {
            None => sqlx::query("COMMIT")
                .execute(&mut *conn)
                .await
                .map(drop)
                .map_err(|e| e.to_string()),
            Some(e) => Err(e),
        };
        match committed {
            Ok(()) => {
                let events: Vec<Event> = staged.iter().flat_map(|(e, _)| e.clone()).collect();
                published.publish(events);
                for (_, deliver) in staged {
                    deliver(Ok(()));
                }
                checkpoints.committed.notify_one();
                if checkpoints.restart.swap(false, Ordering::Relaxed) {
                    restart_wal(&mut conn).await;
                }
            }
            Err(e) => {
                if let Err(rollback) = sqlx::query("ROLLBACK").execute(&mut *conn).await {
                    tracing::error!(error = %rollback, "metadata writer could not roll back");
                }
                let e = format!("a change committed together with this one failed: {e}");
                for (_, deliver) in staged {
                    deliver(Err(StoreError::Database(e.clone())));
                }
            }
        }
        if let Some(ack) = closing {
            drop(conn);
            let _ = ack.send(());
            return;
        }
    }
}

/// What the writer keeps of each job of a group until the commit: its events and its answer.
type Staged = Vec<(Vec<Event>, Box<dyn FnOnce(Result<(), StoreError>) + Send>)>;

/// Runs one job of a group inside a savepoint of the group's transaction, so that a job
/// failing after some of its writes undoes exactly those and the rest of the group still
/// commits; its caller is answered with the others, after the commit. Savepoints are not
/// released: the commit releases them all, and a job's `ROLLBACK TO` names the newest
/// savepoint of that name, its own. An
/// error here means the transaction itself is gone (SQLite rolls back the whole of it on some
/// failures, such as a full disk): the group must not commit.
async fn run_job(
    conn: &mut SqliteConnection,
    job: Job,
    savepoint: &mut Savepoint,
    staged: &mut Staged,
) -> Result<(), String> {
    savepoint.taken = false;
    if job.undo == Undo::Writer {
        sqlx::query(savepoint.sql())
            .execute(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        savepoint.taken = true;
    }
    let Outcome {
        events,
        failed,
        deliver,
    } = (job.run)(conn, savepoint).await;
    staged.push((events, deliver));
    savepoint.open |= savepoint.taken;
    // A job that failed before taking its own savepoint wrote nothing (its promise).
    if failed && savepoint.taken {
        sqlx::query("ROLLBACK TO job")
            .execute(&mut *conn)
            .await
            .map_err(|e| format!("a change failed and could not be undone: {e}"))?;
    }
    Ok(())
}

/// Starts the WAL over from its beginning, on the writer's connection between two groups.
/// Cheap: the checkpointer has copied nearly everything. A passive checkpoint alone is not
/// enough under steady reads: the WAL restarts only when no reader still reads a snapshot
/// inside it, and with readers always busy that moment may never come (a WAL of 34 MB was
/// seen on a loaded machine). RESTART waits for those readers, for
/// [`WAL_RESTART_WAIT`] at most, so a slow reader costs writes that long and no more; if it
/// does not finish in time, the checkpointer asks again after its next round.
async fn restart_wal(conn: &mut SqliteConnection) {
    let wait = WAL_RESTART_WAIT.as_millis();
    let restarted = async {
        sqlx::query(&format!("PRAGMA busy_timeout = {wait}"))
            .execute(&mut *conn)
            .await?;
        let (busy, _, _) = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(RESTART)")
            .fetch_one(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(busy == 0)
    }
    .await;
    let restored = sqlx::query(&format!(
        "PRAGMA busy_timeout = {}",
        BUSY_TIMEOUT.as_millis()
    ))
    .execute(&mut *conn)
    .await;
    match (restarted, restored) {
        (Ok(true), Ok(_)) => {}
        (Ok(false), Ok(_)) => tracing::debug!("a reader kept the metadata WAL from restarting"),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "metadata writer could not restart the WAL");
        }
    }
}

/// Copies committed pages from the WAL into the database file, at most every
/// [`CHECKPOINT_PAUSE`], on its own connection: a checkpoint copies and fsyncs many pages,
/// and SQLite's automatic one would do that inside the writer's commit, stalling every write
/// queued behind it. A passive checkpoint never waits for the writer or for readers; when the
/// WAL is found longer than [`WAL_RESTART_FRAMES`], the writer is asked to finish the job.
async fn run_checkpointer(
    mut conn: SqliteConnection,
    checkpoints: Arc<Checkpoints>,
    stop: oneshot::Receiver<oneshot::Sender<()>>,
) {
    tokio::pin!(stop);
    let ack = loop {
        tokio::select! {
            ack = &mut stop => break ack,
            () = checkpoints.committed.notified() => {}
        }
        let checkpoint = sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&mut conn)
            .await;
        match checkpoint {
            Ok((_, frames, _)) if frames > WAL_RESTART_FRAMES => {
                checkpoints.restart.store(true, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not checkpoint the metadata WAL"),
        }
        tokio::select! {
            ack = &mut stop => break ack,
            () = tokio::time::sleep(CHECKPOINT_PAUSE) => {}
        }
    };
    if let Err(e) = conn.close().await {
        tracing::warn!(error = %e, "could not close the checkpointer's connection");
    }
    if let Ok(ack) = ack {
        let _ = ack.send(());
    }
}

/// Appends an event; its sequence is the log's last plus one (see the module comment).
macro_rules! insert_event_sql {
    () => {
        "INSERT INTO events (sequence, type, occurred_at, tenant, package_id, data) \
         SELECT (SELECT COALESCE(MAX(sequence), 0) + 1 FROM events), ?, ?, ?, ?, ?"
    };
}
const INSERT_EVENT: &str = concat!(insert_event_sql!(), " RETURNING sequence");

/// [`SqliteStore::add_file`]'s one batch, the same text for every file (so one prepared
/// statement), opening with the job's savepoint ([`Undo::InJob`]): the first statement adds the file only if its package (and upload, when one is
/// given) is open, every later one runs only if the file was added. Anonymous parameters on
/// purpose: sqlx binds numbered ones (`?6`) wrongly when a statement of a batch skips numbers.
static ADD_FILE: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{}{}", Savepoint::TAKE, *ADD_FILE_BODY));
/// [`ADD_FILE`] after another job's savepoint (released first).
static ADD_FILE_AFTER_ANOTHER: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{}{}", Savepoint::RETAKE, *ADD_FILE_BODY));
static ADD_FILE_BODY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    const ADDED: &str = "EXISTS (SELECT 1 FROM files WHERE id = ?)";
    format!(
        "INSERT INTO files ({FILE_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? \
         WHERE EXISTS (SELECT 1 FROM packages WHERE id = ? AND tenant = ? AND state = 'open' \
              AND file_count < ?) \
         AND (? IS NULL OR EXISTS \
              (SELECT 1 FROM uploads WHERE id = ? AND tenant = ? AND state = 'open')) \
         AND (? IS NULL OR EXISTS (SELECT 1 FROM blob_claims \
              WHERE sha256 = ? AND generation = ? AND doomed_at IS NULL)); \
         INSERT OR IGNORE INTO inline_blobs (sha256, bytes) SELECT ?, ? \
         WHERE ? IS NOT NULL AND {ADDED}; \
         UPDATE uploads SET state = 'completed', file_id = ? WHERE id = ? AND {ADDED}; \
         UPDATE packages SET file_count = file_count + 1, total_size = total_size + ? \
         WHERE id = ? AND {ADDED}; \
         INSERT INTO tenant_usage (tenant, bytes, open_uploads) SELECT ?, ?, ? WHERE {ADDED} \
         ON CONFLICT (tenant) DO UPDATE SET bytes = bytes + excluded.bytes, \
         open_uploads = open_uploads + excluded.open_uploads; \
         UPDATE blob_claims SET writers = writers - 1 \
         WHERE sha256 = ? AND generation = ? AND writers > 0 AND {ADDED}; \
         {} WHERE {ADDED} RETURNING sequence",
        insert_event_sql!()
    )
});

/// Why [`SqliteStore::add_file`]'s batch added nothing when its path was free.
async fn add_refusal(
    conn: &mut SqliteConnection,
    file: &FileRecord,
    upload: Option<UploadId>,
    claim: Option<i64>,
    max_files: u64,
) -> StoreError {
    let state: Option<(String, i64)> =
        match sqlx::query_as("SELECT state, file_count FROM packages WHERE id = ? AND tenant = ?")
            .bind(file.package_id.to_string())
            .bind(&file.tenant)
            .fetch_optional(&mut *conn)
            .await
        {
            Ok(state) => state,
            Err(e) => return sql_error(e),
        };
    match state {
        None => return StoreError::NotFound,
        Some((state, _)) if state != "open" => return StoreError::PackageFinalized,
        Some((_, count)) if count as u64 >= max_files => {
            return StoreError::TooManyFiles;
        }
        Some(_) => {}
    }
    let upload_open = match upload {
        Some(upload) => match upload_state(conn, &file.tenant, upload).await {
            Ok(state) => state.as_deref() == Some("open"),
            Err(e) => return e,
        },
        None => true,
    };
    if !upload_open {
        return StoreError::UploadNotOpen;
    }
    if let Some(generation) = claim {
        match sqlx::query(CLAIM_STANDS)
            .bind(file.sha256().hex())
            .bind(generation)
            .fetch_optional(&mut *conn)
            .await
        {
            Ok(None) => return StoreError::Stale,
            Ok(Some(_)) => {}
            Err(e) => return sql_error(e),
        }
    }
    StoreError::Database("a file was refused for no known reason".into())
}

type SqliteQuery<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds the parameters of [`INSERT_EVENT`].
fn bind_event<'q>(query: SqliteQuery<'q>, event: &'q NewEvent, data: String) -> SqliteQuery<'q> {
    query
        .bind(event.kind.as_str())
        .bind(event.occurred_at.as_millis())
        .bind(&event.tenant)
        .bind(event.package_id.to_string())
        .bind(data)
}

async fn append_event(conn: &mut SqliteConnection, event: NewEvent) -> Result<Event, StoreError> {
    let data = event_data(&event)?;
    let row = bind_event(sqlx::query(INSERT_EVENT), &event, data)
        .fetch_one(&mut *conn)
        .await
        .map_err(sql_error)?;
    let sequence: i64 = row.try_get("sequence").map_err(|_| corrupt("event"))?;
    Ok(committed_event(event, sequence))
}

transaction_steps!(SqliteConnection, "");

async fn upload_state(
    conn: &mut SqliteConnection,
    tenant: &str,
    id: UploadId,
) -> Result<Option<String>, StoreError> {
    sqlx::query_scalar("SELECT state FROM uploads WHERE id = ? AND tenant = ?")
        .bind(id.to_string())
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await
        .map_err(sql_error)
}

#[async_trait]
impl MetadataStore for SqliteStore {
    fn reads(&self) -> &dyn MetadataReads {
        &self.reads
    }

    async fn close(&self) {
        SqliteStore::close(self).await
    }

    async fn create_package(&self, p: &Package, event: NewEvent) -> Result<Event, StoreError> {
        let metadata =
            serde_json::to_string(&p.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let p = p.clone();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO packages (id, tenant, producer, subject, retention_class, \
                     metadata, state, created_at, file_count, total_size) \
                     VALUES (?, ?, ?, ?, ?, ?, 'open', ?, 0, 0)",
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
                for (key, value) in &p.metadata {
                    sqlx::query(
                        "INSERT INTO package_metadata (package_id, tenant, key, value) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(p.id.to_string())
                    .bind(&p.tenant)
                    .bind(key)
                    .bind(value)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                }
                add_usage(conn, &p.tenant, 0, 1, 0).await?;
                let event = append_event(conn, event).await?;
                Ok((event.clone(), Some(event)))
            })
        })
        .await
    }

    async fn add_file(
        &self,
        file: &FileRecord,
        upload: Option<UploadId>,
        inline: Option<Bytes>,
        checks: AddChecks,
        event: NewEvent,
    ) -> Result<Event, StoreError> {
        let file = file.clone();
        let claim = checks.claim;
        self.write(Undo::InJob, move |conn, savepoint| {
            Box::pin(async move {
                // One batch, one trip to SQLite's thread: every statement is a hop, and the
                // writer runs jobs one after another. A refusal changes nothing (see `write`):
                // a taken path fails the first statement, a closed package or upload leaves
                // the batch without a row.
                let data = event_data(&event)?;
                if checks.max_bytes.is_some() && upload.is_none() {
                    let used = used_bytes(conn, &file.tenant).await?;
                    check_quota(checks.max_bytes, used, file.size as i64)?;
                }
                let (id, package) = (file.id.to_string(), file.package_id.to_string());
                let (sha256, upload_id) = (file.sha256().hex(), upload.map(|u| u.to_string()));
                let inline = inline.as_deref();
                // The parameters of ADD_FILE, statement by statement.
                // The batch opens with the job's savepoint (`Undo::InJob`); nothing was
                // written before it.
                let batch = if savepoint.open {
                    &*ADD_FILE_AFTER_ANOTHER
                } else {
                    &*ADD_FILE
                };
                savepoint.taken = true;
                let query = sqlx::query(batch)
                    .bind(&id)
                    .bind(&package)
                    .bind(&file.tenant)
                    .bind(&file.path)
                    .bind(file.size as i64)
                    .bind(&file.media_type)
                    .bind(&sha256)
                    .bind(file.created_at.as_millis())
                    .bind(file.inline)
                    .bind(&package)
                    .bind(&file.tenant)
                    .bind(checks.max_files as i64)
                    .bind(&upload_id)
                    .bind(&upload_id)
                    .bind(&file.tenant)
                    .bind(claim)
                    .bind(&sha256)
                    .bind(claim);
                let query = query.bind(&sha256).bind(inline).bind(inline).bind(&id);
                let query = query.bind(&id).bind(&upload_id).bind(&id);
                let query = query.bind(file.size as i64).bind(&package).bind(&id);
                // An upload's bytes were counted as it grew: completing it only closes it.
                let (bytes, uploads) = match upload {
                    Some(_) => (0, -1),
                    None => (file.size as i64, 0),
                };
                let query = query.bind(&file.tenant).bind(bytes).bind(uploads).bind(&id);
                let query = query.bind(&sha256).bind(claim).bind(&id);
                let query = bind_event(query, &event, data).bind(&id);
                let rows = match query.fetch_all(&mut *conn).await {
                    Ok(rows) => rows,
                    Err(e) if is_unique_violation(&e) => {
                        return Err(StoreError::PathTaken(file.path.clone()));
                    }
                    Err(e) => return Err(sql_error(e)),
                };
                let sequence = rows
                    .last()
                    .and_then(|row| row.try_get::<i64, _>("sequence").ok());
                let Some(sequence) = sequence else {
                    // Not added: find out why (nothing has changed).
                    return Err(add_refusal(conn, &file, upload, claim, checks.max_files).await);
                };
                let event = committed_event(event, sequence);
                Ok((event.clone(), Some(event)))
            })
        })
        .await
    }

    async fn claim_blob(
        &self,
        digest: &Sha256Digest,
        generation: i64,
    ) -> Result<Option<i64>, StoreError> {
        let hex = digest.hex();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let claimed = sqlx::query_scalar(&SQL.claim_blob)
                    .bind(hex)
                    .bind(generation)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                Ok((claimed, None))
            })
        })
        .await
    }

    /// One job on the writer for all of them: no file can be added between a check and its
    /// doom.
    async fn doom_blobs(
        &self,
        digests: &[Sha256Digest],
        grace: Duration,
        lease: u64,
    ) -> Result<Vec<Sha256Digest>, StoreError> {
        let digests = digests.to_vec();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let mut doomed = Vec::new();
                for digest in digests {
                    let hex = digest.hex();
                    let used = sqlx::query(BLOB_IN_USE)
                        .bind(&hex)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(sql_error)?;
                    if used.is_some() {
                        continue;
                    }
                    let done = sqlx::query(&SQL.doom_blob)
                        .bind(&hex)
                        .bind(grace.as_millis() as i64)
                        .bind(lease as i64)
                        .fetch_optional(&mut *conn)
                        .await
                        .map_err(sql_error)?;
                    if done.is_some() {
                        doomed.push(digest);
                    }
                }
                Ok((doomed, None))
            })
        })
        .await
    }

    /// One job on the writer: no file can be added between the count, the check and the doom.
    async fn abandon_blob(
        &self,
        digest: &Sha256Digest,
        generation: i64,
        token: i64,
    ) -> Result<bool, StoreError> {
        let digest = *digest;
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let doomed = abandon_steps(conn, &digest, generation, token).await?;
                Ok((doomed, None))
            })
        })
        .await
    }

    async fn remember_oci_manifest(
        &self,
        tenant: &str,
        digest: &Sha256Digest,
        package: PackageId,
    ) -> Result<(), StoreError> {
        let values = [
            tenant.to_string(),
            digest.content_address(),
            package.to_string(),
        ];
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let [tenant, digest, package] = &values;
                sqlx::query(REMEMBER_OCI_MANIFEST)
                    .bind(tenant)
                    .bind(digest)
                    .bind(package)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                Ok(((), None))
            })
        })
        .await
    }

    async fn record_oci_blob(
        &self,
        tenant: &str,
        blob: BlobInfo,
        generation: i64,
    ) -> Result<(), StoreError> {
        let tenant = tenant.to_string();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                record_oci_blob_steps(conn, &tenant, blob, generation).await?;
                Ok(((), None))
            })
        })
        .await
    }

    async fn record_pushed_manifest(
        &self,
        pushed: PushedManifest<'_>,
    ) -> Result<PackageId, StoreError> {
        let (tenant, repository, media_type) = (
            pushed.tenant.to_string(),
            pushed.repository.to_string(),
            pushed.media_type.to_string(),
        );
        let bytes = pushed.bytes.to_vec();
        let artifact_type = pushed.artifact_type.map(str::to_string);
        let (digest, package, subject) = (pushed.digest, pushed.package, pushed.subject);
        let references = pushed.references.to_vec();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let pushed = PushedManifest {
                    tenant: &tenant,
                    repository: &repository,
                    digest,
                    package,
                    media_type: &media_type,
                    bytes: &bytes,
                    subject,
                    artifact_type: artifact_type.as_deref(),
                    references: &references,
                };
                Ok((record_pushed_steps(conn, &pushed).await?, None))
            })
        })
        .await
    }

    async fn forget_oci_blobs(&self, grace: Duration) -> Result<u64, StoreError> {
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let done = sqlx::query(&SQL.forget_oci_blobs)
                    .bind(grace.as_millis() as i64)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                Ok((done.rows_affected(), None))
            })
        })
        .await
    }

    async fn release_abandoned(&self, digest: &Sha256Digest, token: i64) -> Result<(), StoreError> {
        let hex = digest.hex();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                sqlx::query(RELEASE_ABANDONED)
                    .bind(hex)
                    .bind(token)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                Ok(((), None))
            })
        })
        .await
    }

    async fn release_blobs(&self, digests: &[Sha256Digest], lease: u64) -> Result<(), StoreError> {
        let hexes: Vec<String> = digests.iter().map(Sha256Digest::hex).collect();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                for hex in hexes {
                    sqlx::query(&SQL.release_blob)
                        .bind(hex)
                        .bind(lease as i64)
                        .execute(&mut *conn)
                        .await
                        .map_err(sql_error)?;
                }
                Ok(((), None))
            })
        })
        .await
    }

    /// One statement on the writer: no inline file can be added meanwhile.
    async fn collect_inline(&self, limit: u32) -> Result<u64, StoreError> {
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let done = sqlx::query(
                    "DELETE FROM inline_blobs WHERE rowid IN (SELECT b.rowid FROM inline_blobs b \
                     WHERE NOT EXISTS (SELECT 1 FROM files f WHERE f.sha256 = b.sha256 \
                     AND f.inline) LIMIT ?)",
                )
                .bind(limit as i64)
                .execute(&mut *conn)
                .await
                .map_err(sql_error)?;
                Ok((done.rows_affected(), None))
            })
        })
        .await
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
        let (tenant, manifest) = (tenant.to_string(), manifest.clone());
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let current = locked_package(conn, &tenant, package).await?;
                if current.state == PackageState::Finalized {
                    return Ok(((current, None), None));
                }
                if current.file_count != file_count {
                    return Err(StoreError::Stale);
                }
                let row = sqlx::query(&format!(
                    "UPDATE packages SET state = 'finalized', finalized_at = ?, \
                     manifest_digest = ?, manifest_cbor = ?, manifest_json = ? \
                     WHERE id = ? RETURNING {PACKAGE_COLUMNS}"
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
                let event = append_event(conn, event).await?;
                Ok(((updated, Some(event.clone())), Some(event)))
            })
        })
        .await
    }

    async fn delete_package(
        &self,
        tenant: &str,
        id: PackageId,
        event: EventFor,
    ) -> Result<Package, StoreError> {
        let (tenant, id_text) = (tenant.to_string(), id.to_string());
        let deleted = self
            .write_events(Undo::Writer, move |conn, _| {
                Box::pin(async move {
                    let package = locked_package(conn, &tenant, id).await?;
                    if package.held {
                        return Err(StoreError::Held);
                    }
                    delete_package_rows(conn, &package).await?;
                    let mut events = vec![append_event(conn, event(&package)).await?];
                    let named = TagFilter::Package(&id_text);
                    for tag in delete_tag_rows(conn, &tenant, named).await? {
                        let gone = tag.deleted_event(TagDeleteReason::PackageDeleted);
                        events.push(append_event(conn, gone).await?);
                    }
                    Ok((package, events))
                })
            })
            .await?;
        self.reads.files.evict_package(id);
        Ok(deleted)
    }

    async fn set_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
        package: PackageId,
        at: Timestamp,
    ) -> Result<TagChange, StoreError> {
        let names = [tenant, repository, tag].map(str::to_string);
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let [tenant, repository, tag] = &names;
                let change = set_tag_steps(conn, tenant, repository, tag, package, at).await?;
                let event = match change.event() {
                    Some(event) => Some(append_event(conn, event).await?),
                    None => None,
                };
                Ok((change, event))
            })
        })
        .await
    }

    async fn delete_tag(
        &self,
        tenant: &str,
        repository: &str,
        tag: &str,
    ) -> Result<Tag, StoreError> {
        let names = [tenant, repository, tag].map(str::to_string);
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let [tenant, repository, tag] = &names;
                let named = TagFilter::Named(repository, tag);
                let tag = delete_tag_rows(conn, tenant, named).await?.pop();
                let tag = tag.ok_or(StoreError::NotFound)?;
                let event = append_event(conn, tag.deleted_event(TagDeleteReason::Request));
                let event = event.await?;
                Ok((tag, Some(event)))
            })
        })
        .await
    }

    async fn set_hold(
        &self,
        tenant: &str,
        id: PackageId,
        held: bool,
        event: EventFor,
    ) -> Result<Package, StoreError> {
        let tenant = tenant.to_string();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let package = locked_package(conn, &tenant, id).await?;
                if package.held == held {
                    return Ok((package, None));
                }
                let package = update_held(conn, id, held).await?;
                let event = append_event(conn, event(&package)).await?;
                Ok((package, Some(event)))
            })
        })
        .await
    }

    async fn lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<u64>, StoreError> {
        let (name, holder) = (name.to_string(), holder.to_string());
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let taken: Option<i64> = sqlx::query_scalar(&SQL.lease)
                    .bind(&name)
                    .bind(&holder)
                    .bind(ttl.as_millis() as i64)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                Ok((taken.map(|g| g as u64), None))
            })
        })
        .await
    }

    async fn create_upload(
        &self,
        u: &UploadRecord,
        max_open: Option<u64>,
    ) -> Result<(), StoreError> {
        let u = u.clone();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                sqlx::query(&format!(
                    "INSERT INTO uploads ({UPLOAD_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
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
            })
        })
        .await
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
        let (tenant, offset, hash_state) = (tenant.to_string(), hasher.len(), hasher.save());
        let staging = staging.0.clone();
        let grown = offset as i64 - from_offset as i64;
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                // Refused before any change (the writer is the only one: nothing moves the
                // usage between this read and the update).
                if max_bytes.is_some() {
                    check_quota(max_bytes, used_bytes(conn, &tenant).await?, grown)?;
                }
                let row = sqlx::query(&format!(
                    "UPDATE uploads SET \"offset\" = ?, hash_state = ?, staging = ?, \
                     size = COALESCE(size, ?), expires_at = ? WHERE id = ? AND tenant = ? AND state = 'open' \
                     AND \"offset\" = ? RETURNING {UPLOAD_COLUMNS}"
                ))
                .bind(offset as i64)
                .bind(hash_state)
                .bind(staging)
                .bind(size.map(|s| s as i64))
                .bind(expires_at.as_millis())
                .bind(id.to_string())
                .bind(&tenant)
                .bind(from_offset as i64)
                .fetch_optional(&mut *conn)
                .await
                .map_err(sql_error)?;
                if let Some(row) = row {
                    add_usage(conn, &tenant, grown, 0, 0).await?;
                    return Ok((upload_from_row(&row)?, None));
                }
                Err(match upload_state(conn, &tenant, id).await?.as_deref() {
                    None => StoreError::NotFound,
                    Some("open") => StoreError::Stale,
                    Some(_) => StoreError::UploadNotOpen,
                })
            })
        })
        .await
    }

    async fn delete_upload(&self, tenant: &str, id: UploadId) -> Result<(), StoreError> {
        let tenant = tenant.to_string();
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                match upload_state(conn, &tenant, id).await?.as_deref() {
                    None => return Err(StoreError::NotFound),
                    Some("open") => {}
                    Some(_) => return Err(StoreError::UploadNotOpen),
                }
                let offset: i64 =
                    sqlx::query_scalar("DELETE FROM uploads WHERE id = ? RETURNING \"offset\"")
                        .bind(id.to_string())
                        .fetch_one(&mut *conn)
                        .await
                        .map_err(sql_error)?;
                add_usage(conn, &tenant, -offset, 0, -1).await?;
                Ok(((), None))
            })
        })
        .await
    }

    async fn take_expired_uploads(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<(String, UploadId)>, StoreError> {
        self.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                let rows = sqlx::query(
                    "DELETE FROM uploads WHERE id IN (SELECT id FROM uploads \
                     WHERE state = 'open' AND expires_at < ? LIMIT ?) \
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
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change that adds the lease `name`, then fails with `fail` if given.
    fn add_lease<'s>(
        store: &'s SqliteStore,
        name: &'static str,
        fail: Option<StoreError>,
    ) -> impl Future<Output = Result<(), StoreError>> + 's {
        store.write(Undo::Writer, move |conn, _| {
            Box::pin(async move {
                sqlx::query("INSERT INTO leases (name, holder, expires_at) VALUES (?, 'test', 0)")
                    .bind(name)
                    .execute(&mut *conn)
                    .await
                    .map_err(sql_error)?;
                match fail {
                    Some(e) => Err(e),
                    None => Ok(((), None)),
                }
            })
        })
    }

    #[tokio::test]
    async fn a_job_failing_after_its_writes_leaves_no_trace_and_its_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("meta.db").display());
        let store = SqliteStore::open(&url, &OpenOptions::default())
            .await
            .unwrap();
        // On this current-thread runtime the writer task runs only once all four wait, so it
        // takes them as one group, in this order, into one transaction.
        let (a, refused, broken, c) = tokio::join!(
            add_lease(&store, "a", None),
            add_lease(&store, "b", Some(StoreError::Stale)),
            // A database error (the name is taken) after nothing written.
            add_lease(&store, "a", None),
            add_lease(&store, "c", None),
        );
        assert!(a.is_ok() && c.is_ok(), "{a:?} {c:?}");
        assert!(matches!(refused, Err(StoreError::Stale)), "{refused:?}");
        assert!(matches!(broken, Err(StoreError::Database(_))), "{broken:?}");
        let mut reader = SqliteConnection::connect(&url).await.unwrap();
        let names: Vec<String> = sqlx::query_scalar("SELECT name FROM leases ORDER BY name")
            .fetch_all(&mut reader)
            .await
            .unwrap();
        assert_eq!(
            names,
            ["a", "c"],
            "b was written, then refused: no trace of it"
        );
        store.close().await;
    }
}

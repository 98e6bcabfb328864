//! One atomic change per job, checked from outside: a trigger on every table counts the rows
//! each change writes and fails the n-th, for every n the change reaches; after each failure
//! the store's tables and its event log (as the registry serves it, from memory) must be
//! exactly as before. Runs on SQLite, and on PostgreSQL when the environment names a server.

mod common;

use std::future::Future;
use std::time::Duration;

use artifactstore_core::registry::{Chunk, CompleteUpload};
use artifactstore_core::retention::RetentionRule;
use artifactstore_core::*;
use common::*;
use sqlx::{Connection, PgConnection, SqliteConnection};

/// Tables left out of the comparison: the fault counter itself, the migrations, and the
/// writers' blob claims (a claim is a change of its own that a write makes before its record,
/// refreshed by every attempt on purpose: see ARCHITECTURE.md, "Garbage collection").
const UNCOMPARED: &[&str] = &["fault", "_sqlx_migrations", "blob_claims"];

/// A connection of the test's own to the store's database, with the fault triggers.
enum Faults {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Faults {
    /// Installs a trigger after every row written to every table: it counts down
    /// `fault.remaining` and raises an error when it reaches zero (disarmed: below zero).
    async fn install(database_url: &str) -> Self {
        let mut faults = if database_url.starts_with("postgres") {
            Self::Postgres(PgConnection::connect(database_url).await.unwrap())
        } else {
            Self::Sqlite(SqliteConnection::connect(database_url).await.unwrap())
        };
        faults
            .run("CREATE TABLE fault (remaining BIGINT NOT NULL)")
            .await;
        faults.run("INSERT INTO fault VALUES (-1)").await;
        if let Self::Postgres(_) = faults {
            faults
                .run(
                    "CREATE FUNCTION fault_step() RETURNS trigger LANGUAGE plpgsql AS $$ \
                     BEGIN UPDATE fault SET remaining = remaining - 1; \
                     IF (SELECT remaining FROM fault) = 0 THEN \
                     RAISE EXCEPTION 'injected fault'; END IF; RETURN NULL; END $$",
                )
                .await;
        }
        for table in faults.tables(&["fault"]).await {
            match faults {
                Self::Postgres(_) => {
                    faults
                        .run(&format!(
                            "CREATE TRIGGER fault_step AFTER INSERT OR UPDATE OR DELETE \
                             ON {table} FOR EACH ROW EXECUTE FUNCTION fault_step()"
                        ))
                        .await
                }
                Self::Sqlite(_) => {
                    for op in ["INSERT", "UPDATE", "DELETE"] {
                        faults
                            .run(&format!(
                                "CREATE TRIGGER fault_{table}_{op} AFTER {op} ON {table} BEGIN \
                                 UPDATE fault SET remaining = remaining - 1; \
                                 SELECT RAISE(ABORT, 'injected fault') \
                                 WHERE (SELECT remaining FROM fault) = 0; END"
                            ))
                            .await;
                    }
                }
            }
        }
        faults
    }

    async fn run(&mut self, sql: &str) {
        match self {
            Self::Sqlite(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Self::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn texts(&mut self, sql: &str) -> Vec<String> {
        match self {
            Self::Sqlite(c) => sqlx::query_scalar(sql).fetch_all(c).await,
            Self::Postgres(c) => sqlx::query_scalar(sql).fetch_all(c).await,
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The store's tables, but for `except`.
    async fn tables(&mut self, except: &[&str]) -> Vec<String> {
        let sql = match self {
            Self::Sqlite(_) => {
                "SELECT name FROM sqlite_master WHERE type = 'table' \
                 AND name NOT LIKE 'sqlite_%' ORDER BY name"
            }
            Self::Postgres(_) => {
                "SELECT CAST(table_name AS TEXT) FROM information_schema.tables \
                 WHERE table_schema = current_schema() ORDER BY 1"
            }
        };
        let mut tables = self.texts(sql).await;
        tables.retain(|t| !except.contains(&t.as_str()));
        tables
    }

    /// Every row of every compared table, as text.
    async fn snapshot(&mut self) -> Vec<String> {
        let mut rows = Vec::new();
        for table in self.tables(UNCOMPARED).await {
            let sql = match self {
                Self::Postgres(_) => format!("SELECT CAST(t AS TEXT) FROM {table} t ORDER BY 1"),
                Self::Sqlite(_) => {
                    let columns = self
                        .texts(&format!("SELECT name FROM pragma_table_info('{table}')"))
                        .await;
                    let quoted: Vec<String> =
                        columns.iter().map(|c| format!("quote(\"{c}\")")).collect();
                    format!(
                        "SELECT {} FROM {table} ORDER BY 1",
                        quoted.join(" || ','|| ")
                    )
                }
            };
            for row in self.texts(&sql).await {
                rows.push(format!("{table}: {row}"));
            }
        }
        rows
    }

    /// The next change fails at its `step`-th row written (0: none does).
    async fn arm(&mut self, step: u32) {
        let remaining = if step == 0 { -1 } else { i64::from(step) };
        self.run(&format!("UPDATE fault SET remaining = {remaining}"))
            .await;
    }
}

/// Runs `change` failing at its first, second, … row written until it goes through, and
/// checks after each failure that nothing of it is left; returns what the successful run
/// returned. `change` answers whether it took effect.
async fn at_every_step<T, F, Fut>(env: &Env, faults: &mut Faults, name: &str, change: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let tables = faults.snapshot().await;
    let events = all_events(env).await;
    for step in 1.. {
        faults.arm(step).await;
        let outcome = change().await;
        faults.arm(0).await;
        match outcome {
            None => {
                assert_eq!(
                    faults.snapshot().await,
                    tables,
                    "{name}: failed at row {step}, something of it stayed"
                );
                assert_eq!(
                    all_events(env).await,
                    events,
                    "{name}: failed at row {step}, an event of it was served"
                );
            }
            Some(done) => {
                assert!(step > 1, "{name}: went through without writing a row");
                assert_ne!(faults.snapshot().await, tables, "{name} changed nothing");
                return done;
            }
        }
    }
    unreachable!()
}

async fn all_events(env: &Env) -> Vec<Event> {
    env.registry
        .events(Scope::All, 0, Some(1000), Duration::ZERO)
        .await
        .unwrap()
}

fn named(path: &str) -> NewFile {
    NewFile {
        path: path.into(),
        ..Default::default()
    }
}

fn at(start: u64, len: u64) -> Chunk {
    Chunk {
        start: Some(start),
        len: Some(len),
        total: None,
    }
}

#[tokio::test]
async fn every_change_is_all_or_nothing_at_every_row() {
    let env = Env::new().await;
    let r = &env.registry;
    let mut faults = Faults::install(&env.database_url).await;
    let f = &mut faults;

    let pkg = at_every_step(&env, f, "create package", || async {
        r.create_package(TENANT, new_package()).await.ok()
    })
    .await;
    at_every_step(&env, f, "add a small file", || async {
        let body = body(b"small bytes", 4);
        r.add_file(TENANT, pkg.id, named("small"), body).await.ok()
    })
    .await;
    let large = bytes(200 * 1024, 1);
    at_every_step(&env, f, "add a blob file", || async {
        let body = body(&large, 64 * 1024);
        r.add_file(TENANT, pkg.id, named("large"), body).await.ok()
    })
    .await;

    let up = at_every_step(&env, f, "create an upload", || async {
        r.create_upload(TENANT, None).await.ok()
    })
    .await;
    at_every_step(&env, f, "append to an upload", || async {
        let chunk = body(&large[..1000], 100);
        r.append_upload(TENANT, up.id, at(0, 1000), chunk)
            .await
            .ok()
    })
    .await;
    let complete = || CompleteUpload {
        package_id: pkg.id.to_string(),
        file: named("uploaded"),
    };
    at_every_step(&env, f, "complete an upload", || async {
        r.complete_upload(TENANT, up.id, complete()).await.ok()
    })
    .await;
    let doomed = r.create_upload(TENANT, None).await.unwrap();
    at_every_step(&env, f, "cancel an upload", || async {
        r.cancel_upload(TENANT, doomed.id).await.ok()
    })
    .await;

    at_every_step(&env, f, "finalize", || async {
        r.finalize(TENANT, pkg.id).await.ok()
    })
    .await;
    at_every_step(&env, f, "hold", || async {
        r.set_hold(TENANT, pkg.id, true).await.ok()
    })
    .await;
    at_every_step(&env, f, "release", || async {
        r.set_hold(TENANT, pkg.id, false).await.ok()
    })
    .await;
    at_every_step(&env, f, "delete", || async {
        r.delete_package(TENANT, pkg.id).await.ok()
    })
    .await;
}

#[tokio::test]
async fn expiry_and_retention_are_all_or_nothing_at_every_row() {
    let rule = RetentionRule {
        open_max_age: Some(Duration::ZERO),
        ..Default::default()
    };
    let env = Env::with_config(RegistryConfig {
        upload_ttl: Duration::from_millis(1),
        retention: [("standard".to_string(), rule)].into_iter().collect(),
        ..Default::default()
    })
    .await;
    let r = &env.registry;
    let pkg = env.package().await;
    r.create_upload(TENANT, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut faults = Faults::install(&env.database_url).await;
    let f = &mut faults;
    at_every_step(&env, f, "expire an upload", || async {
        // Errors of a sweep are per batch: one that took nothing failed.
        (r.sweep_expired_uploads().await.ok() == Some(1)).then_some(())
    })
    .await;
    at_every_step(&env, f, "retention", || async {
        // A deletion the sweep could not make is logged and left to the next sweep.
        (env.retention().sweep().await.ok() == Some(1)).then_some(())
    })
    .await;
    assert!(matches!(
        r.package(TENANT, pkg.id).await,
        Err(RegistryError::NotFound(_))
    ));
}

#[tokio::test]
async fn finalize_gives_up_on_a_package_that_keeps_changing() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = env.package().await;
    r.add_file(TENANT, pkg.id, named("a"), body(b"a", 1))
        .await
        .unwrap();
    // The stored count disagrees with the files for good, as if a file landed before each
    // manifest was recorded: every attempt is outdated.
    let mut db = Faults::install(&env.database_url).await;
    db.run("UPDATE packages SET file_count = 99").await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), r.finalize(TENANT, pkg.id))
        .await
        .expect("finalize retries without end");
    assert!(
        matches!(
            outcome,
            Err(RegistryError::Storage(
                artifactstore_core::storage::StoreError::Unavailable(_)
            ))
        ),
        "{outcome:?}"
    );
    let events = all_events(&env).await;
    assert_eq!(events.len(), 2, "created, added; nothing finalized");
}

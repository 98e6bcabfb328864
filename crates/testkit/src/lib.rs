//! Helpers the test suites of every crate share (a dev-dependency only).

/// `len` deterministic pseudo-random bytes (xorshift64), different for each `seed`: data that
/// does not compress or dedupe by accident, and is the same on every run.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The value of the environment variable `var` naming a shared store for the suites, or
/// `None` when it is unset, saying so once per test binary on the terminal (past the test
/// harness's capture) with `what` for the runs skipped.
fn shared_store(var: &str, what: &str, said: &'static std::sync::Once) -> Option<String> {
    let value = std::env::var(var).ok().filter(|v| !v.is_empty());
    if value.is_none() {
        said.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: {var} is unset: the {what} runs of this suite are skipped \
                 (make test runs them)"
            );
        });
    }
    value
}

/// A name no other test of any run uses: process id, clock, and a counter.
fn unique_name(separator: char) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let next = NEXT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "t{separator}{pid}{separator}{}{separator}{next}",
        nanos % 1_000_000_000_000
    )
}

/// The environment variable naming a PostgreSQL server for the suites: an admin URL such as
/// `postgres://postgres@127.0.0.1:54329/postgres`. Unset, every suite runs on the embedded
/// stores alone.
pub const POSTGRES_ENV: &str = "ARTIFACTSTORE_TEST_POSTGRES";

/// The URL of a new, empty database of its own for one test on the PostgreSQL server of
/// [`POSTGRES_ENV`], or `None` when that is unset (the test then runs on SQLite).
pub async fn fresh_postgres() -> Option<String> {
    use sqlx::Connection;
    static SAID: std::sync::Once = std::sync::Once::new();
    let admin = shared_store(POSTGRES_ENV, "PostgreSQL", &SAID)?;
    let name = unique_name('_');
    let mut admin_conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("{POSTGRES_ENV}={admin}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin_conn)
        .await
        .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
    let _ = admin_conn.close().await;
    // postgres://USER@HOST:PORT/DB?PARAMS: the same server and parameters, another DB.
    let (url, params) = admin.split_once('?').unwrap_or((admin.as_str(), ""));
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    let params = if params.is_empty() {
        String::new()
    } else {
        format!("?{params}")
    };
    Some(format!("{base}/{name}{params}"))
}

/// [`fresh_postgres`] for synchronous tests (on a thread of its own, so that it works inside
/// an async runtime too).
pub fn fresh_postgres_blocking() -> Option<String> {
    std::thread::spawn(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the test set-up")
            .block_on(fresh_postgres())
    })
    .join()
    .expect("creating a test database")
}

/// The environment variable naming an S3 bucket for the suites (`s3://BUCKET`), reached
/// with the standard `AWS_*` variables. Unset, blobs stay in the test's directory.
pub const S3_ENV: &str = "ARTIFACTSTORE_TEST_S3";

/// An `s3://BUCKET/PREFIX` of its own for one test in the bucket of [`S3_ENV`], or `None`
/// when that is unset (the test then keeps blobs in its directory).
pub fn fresh_s3() -> Option<String> {
    static SAID: std::sync::Once = std::sync::Once::new();
    let base = shared_store(S3_ENV, "S3", &SAID)?;
    Some(format!(
        "{}/{}",
        base.trim_end_matches('/'),
        unique_name('-')
    ))
}

/// What an `#[ignore]` says of a test that needs both shared stores; `make test` runs such
/// tests with `--include-ignored` under `tools/with-backends.sh`, which starts them.
pub const NEEDS_BACKENDS: &str = "needs PostgreSQL and S3 (make test starts both)";

/// [`fresh_postgres`] for a test that cannot run without PostgreSQL: it fails, saying so,
/// where none is named (such a test is `#[ignore]`d, so only a run that asks for it gets here).
pub async fn require_postgres() -> String {
    fresh_postgres().await.unwrap_or_else(|| {
        panic!("this test needs {POSTGRES_ENV} (run it through tools/with-backends.sh)")
    })
}

/// [`fresh_s3`] for a test that cannot run without S3 (see [`require_postgres`]).
pub fn require_s3() -> String {
    fresh_s3().unwrap_or_else(|| {
        panic!("this test needs {S3_ENV} (run it through tools/with-backends.sh)")
    })
}

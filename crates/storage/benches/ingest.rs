//! Ingest benchmark: 1 GiB through the registry's add-file path from memory, beside the two
//! limits it sits on — raw SHA-256 and a plain sequential write with one fsync — measured by
//! this program on the same data in the same run. Prints MB/s and ratios; asserts nothing.
//!
//! `cargo bench -p artifactstore-storage --bench ingest` (env: `BENCH_MIB`, default 1024;
//! `BENCH_ROUNDS`, default 5; `BENCH_DIR`, default `target/`).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use artifactstore_core::*;
use artifactstore_storage::{FsBlobStore, SqliteStore, Stores};
use bytes::Bytes;
use futures::StreamExt;

const CHUNK: usize = 256 * 1024;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mbps(bytes: usize, took: Duration) -> f64 {
    bytes as f64 / took.as_secs_f64() / 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let mib = env_or("BENCH_MIB", 1024);
    let rounds = env_or("BENCH_ROUNDS", 5);
    let dir_root = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target".into());
    std::fs::create_dir_all(&dir_root).unwrap();
    let size = mib * 1024 * 1024;
    // Random bytes (a xorshift stream), so nothing below can take a shortcut on them.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<u8> = (0..size / 8)
        .flat_map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()
        })
        .collect();
    let data = Bytes::from(data);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let (mut sha, mut write, mut ingest, mut ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Raw SHA-256 on one core.
        let started = Instant::now();
        let mut hasher = Sha256Hasher::new();
        for chunk in data.chunks(CHUNK) {
            hasher.update(chunk);
        }
        std::hint::black_box(hasher.finish());
        sha.push(mbps(size, started.elapsed()));

        // The plain write and the ingest take turns going first, and each file is deleted
        // before the next write: this disk is far faster on just-freed blocks than on new
        // ones, so both must see the same mix.
        let dir = tempfile::tempdir_in(&dir_root).unwrap();
        let plain = || {
            let path = dir.path().join("plain");
            let started = Instant::now();
            let mut file = std::fs::File::create(&path).unwrap();
            for chunk in data.chunks(1024 * 1024) {
                file.write_all(chunk).unwrap();
            }
            file.sync_all().unwrap();
            let took = started.elapsed();
            std::fs::remove_file(&path).unwrap();
            mbps(size, took)
        };
        let through_registry = || {
            let blob_dir = dir.path().join("blobs");
            let took = runtime.block_on(ingest_once(&data, dir.path(), &blob_dir));
            std::fs::remove_dir_all(&blob_dir).unwrap();
            mbps(size, took)
        };
        // The first big write after a pause is often much slower here, whoever makes it: an
        // unmeasured one goes first.
        plain();
        let (w, i) = if round % 2 == 0 {
            let w = plain();
            (w, through_registry())
        } else {
            let i = through_registry();
            (plain(), i)
        };
        write.push(w);
        ingest.push(i);
        ratio.push(i / sha[round].min(w));
        eprintln!(
            "round {round}: sha256 {:.0} MB/s, write+fsync {w:.0} MB/s, ingest {i:.0} MB/s, ratio {:.2}",
            sha[round], ratio[round]
        );
    }
    println!("ingest benchmark: {mib} MiB from memory, {rounds} rounds, medians");
    println!("  raw sha256 (one core)          {:>8.0} MB/s", median(sha));
    println!(
        "  plain write + one fsync        {:>8.0} MB/s",
        median(write)
    );
    println!(
        "  registry add_file              {:>8.0} MB/s",
        median(ingest)
    );
    println!(
        "  ingest / slower limit          {:>8.2}  (median of per-round ratios; target >= 0.85)",
        median(ratio)
    );
}

/// One 1-file ingest through a fresh registry; returns the time `add_file` took.
async fn ingest_once(data: &Bytes, dir: &std::path::Path, blob_dir: &std::path::Path) -> Duration {
    let size = data.len();
    let db = dir.join(format!("m{}.db", ulid::Ulid::new()));
    let meta = Arc::new(
        SqliteStore::open(db.to_str().unwrap(), &Default::default())
            .await
            .unwrap(),
    );
    let blobs = Arc::new(FsBlobStore::open(blob_dir).await.unwrap());
    let registry = Registry::new(Stores { meta, blobs }, RegistryConfig::default());
    let new_package = NewPackage {
        producer: "bench".into(),
        subject: "ingest".into(),
        retention_class: "standard".into(),
        metadata: Default::default(),
    };
    let pkg = registry.create_package("bench", new_package).await.unwrap();
    let chunks: Vec<std::io::Result<Bytes>> = (0..size)
        .step_by(CHUNK)
        .map(|at| Ok(data.slice(at..(at + CHUNK).min(size))))
        .collect();
    let body = futures::stream::iter(chunks).boxed();
    let new = NewFile {
        path: "file".into(),
        ..Default::default()
    };
    let started = Instant::now();
    registry.add_file("bench", pkg.id, new, body).await.unwrap();
    started.elapsed()
}

//! Lifecycle benchmark, through the registry on real stores: garbage collection throughput
//! (unused blobs reclaimed per second), its cost to concurrent uploads and downloads (the
//! same load measured in the same run with and without collections running: a ratio), the
//! time from a deletion to its bytes reclaimed, and the retention sweep over many packages
//! (wall time, and the p99 of `list_packages` calls made meanwhile). Prints figures and
//! ratios; asserts nothing.
//!
//! `cargo bench -p artifactstore-storage --bench lifecycle` on SQLite + a blob directory;
//! with `ARTIFACTSTORE_TEST_POSTGRES` and `ARTIFACTSTORE_TEST_S3` set (as
//! `tools/with-backends.sh` sets them), on PostgreSQL + S3. Env: `BENCH_BLOBS` (10000),
//! `BENCH_PACKAGES` (100000), `BENCH_SECS` (5, per load phase), `BENCH_DIR` (`target/`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use artifactstore_core::gc::{Collector, GcOptions};
use artifactstore_core::retention::{Retention, RetentionRule};
use artifactstore_core::*;
use artifactstore_storage::{OpenOptions, Stores, open};
use bytes::Bytes;
use futures::StreamExt;

const TENANT: &str = "bench";

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(data: Bytes) -> storage::ByteStream {
    futures::stream::once(async move { Ok(data) }).boxed()
}

fn new_package(subject: String, class: &str) -> NewPackage {
    NewPackage {
        producer: "bench".into(),
        subject,
        retention_class: class.into(),
        metadata: Default::default(),
    }
}

fn file(path: String) -> NewFile {
    NewFile {
        path,
        ..Default::default()
    }
}

/// Distinct bytes for index `i`.
fn distinct(i: u64, len: usize) -> Bytes {
    let mut data = artifactstore_testkit::bytes(len, i);
    data[..8].copy_from_slice(&i.to_le_bytes());
    Bytes::from(data)
}

struct Bench {
    name: &'static str,
    _dir: tempfile::TempDir,
    stores: Stores,
}

async fn stores() -> Bench {
    let root = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target".into());
    std::fs::create_dir_all(&root).unwrap();
    let dir = tempfile::tempdir_in(root).unwrap();
    let shared = (
        artifactstore_testkit::fresh_postgres().await,
        artifactstore_testkit::fresh_s3(),
    );
    match shared {
        (Some(pg), Some(s3)) => Bench {
            name: "PostgreSQL + S3 (s3s-fs)",
            _dir: dir,
            stores: open(&pg, &s3, &OpenOptions::default()).await.unwrap(),
        },
        _ => {
            let url = format!("sqlite://{}", dir.path().join("meta.db").display());
            let blobs = format!("file://{}", dir.path().join("blobs").display());
            Bench {
                name: "SQLite + blob directory",
                stores: open(&url, &blobs, &OpenOptions::default()).await.unwrap(),
                _dir: dir,
            }
        }
    }
}

/// `n` files of distinct bytes (all in the blob store) in one new package, 32 at a time.
async fn fill(r: &Arc<Registry>, n: usize, len: usize, seed: u64) -> PackageId {
    let pkg = r
        .create_package(TENANT, new_package("fill".into(), "bench"))
        .await
        .unwrap()
        .id;
    futures::stream::iter(0..n as u64)
        .for_each_concurrent(32, |i| {
            let r = r.clone();
            async move {
                let data = distinct(seed + i, len);
                let f = r.add_file(TENANT, pkg, file(format!("f{i}")), body(data));
                f.await.unwrap();
            }
        })
        .await;
    pkg
}

/// Runs `op` on `tasks` tasks for `secs`; operations per second.
async fn load<F, Fut>(secs: u64, tasks: usize, op: F) -> f64
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..tasks)
        .map(|t| {
            let (op, done) = (op.clone(), done.clone());
            tokio::spawn(async move {
                let mut i = t as u64 * 1_000_000_000;
                while Instant::now() < until {
                    done.fetch_add(op(i).await, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / secs as f64
}

/// Collections back to back until `stop`; how many ran.
fn collecting(r: Arc<Collector>, stop: Arc<AtomicBool>, duty: f64) -> tokio::task::JoinHandle<u32> {
    tokio::spawn(async move {
        let mut runs = 0;
        while !stop.load(Ordering::Relaxed) {
            // Back to back, at the same duty between collections as within one.
            let started = Instant::now();
            r.collect(options(duty)).await.unwrap();
            runs += 1;
            let rest = started.elapsed().as_secs_f64() * (1.0 - duty) / duty;
            tokio::time::sleep(Duration::from_secs_f64(rest)).await;
        }
        runs
    })
}

/// No grace; working `duty` of the time.
fn options(duty: f64) -> GcOptions<'static> {
    GcOptions {
        grace: Duration::ZERO,
        holder: "bench",
        lease_ttl: Duration::from_secs(600),
        duty,
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() * 99 / 100).copied().unwrap_or_default()
}

fn main() {
    let blobs = env_or("BENCH_BLOBS", 10_000);
    let packages = env_or("BENCH_PACKAGES", 100_000);
    let secs = env_or("BENCH_SECS", 5) as u64;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let s = stores().await;
        println!("stores: {}", s.name);
        // Every file in the blob store (none inline): what collections reclaim.
        let config = RegistryConfig {
            inline_max_bytes: 0,
            ..Default::default()
        };
        let r = Arc::new(Registry::new(s.stores.clone(), config));
        let gc = Arc::new(Collector::new(s.stores.clone()));

        // 1. Throughput, and the time from a deletion to its bytes reclaimed.
        let pkg = fill(&r, blobs, 1024, 0).await;
        let deleted = Instant::now();
        r.delete_package(TENANT, pkg).await.unwrap();
        let report = gc.collect(options(1.0)).await.unwrap();
        let took = deleted.elapsed();
        println!(
            "gc: {} unused blobs (1 KiB) reclaimed in {:.2} s = {:.0} blobs/s (scanned {}); \
             delete to space reclaimed = gc interval + grace + this",
            report.blobs,
            took.as_secs_f64(),
            report.blobs as f64 / took.as_secs_f64(),
            report.scanned
        );

        // 2. Cost to concurrent traffic: the same loads without and with collections running
        //    over a fresh backlog of garbage (and, once it is gone, over every live blob).
        let big = Bytes::from(artifactstore_testkit::bytes(64 << 20, 9));
        let keep = r
            .create_package(TENANT, new_package("keep".into(), "bench"))
            .await
            .unwrap()
            .id;
        let big_file = r
            .add_file(TENANT, keep, file("big".into()), body(big.clone()))
            .await
            .unwrap();
        let next = Arc::new(AtomicU64::new(0));
        let upload = {
            let r = r.clone();
            move |_| {
                let r = r.clone();
                // A new path and new bytes for every upload, across phases.
                let i = next.fetch_add(1, Ordering::Relaxed);
                async move {
                    let data = distinct(1 << 40 | i, 4096);
                    let f = r.add_file(TENANT, keep, file(format!("u{i}")), body(data));
                    f.await.map(|_| 1).unwrap()
                }
            }
        };
        let download = {
            let r = r.clone();
            move |_| {
                let (r, f) = (r.clone(), big_file.clone());
                async move {
                    let mut stream = r.read_file(&f, 0..f.size).await.unwrap();
                    let mut n = 0;
                    while let Some(chunk) = stream.next().await {
                        n += chunk.unwrap().len() as u64;
                    }
                    n
                }
            }
        };
        let mut rows = Vec::new();
        let phases = [
            ("without gc", None),
            ("with gc at the server's duty (0.25)", Some(0.25)),
            ("with gc flat out", Some(1.0)),
        ];
        for (seed, (name, duty)) in phases.into_iter().enumerate() {
            let stop = Arc::new(AtomicBool::new(false));
            let collector = if let Some(duty) = duty {
                let pkg = fill(&r, blobs, 1024, (seed as u64 + 1) << 30).await;
                r.delete_package(TENANT, pkg).await.unwrap();
                Some(collecting(gc.clone(), stop.clone(), duty))
            } else {
                None
            };
            let uploads = load(secs, 16, upload.clone()).await;
            let reads = load(secs, 4, download.clone()).await / 1e6;
            stop.store(true, Ordering::Relaxed);
            let runs = match collector {
                Some(c) => c.await.unwrap(),
                None => 0,
            };
            println!(
                "{name}: uploads (4 KiB, 16 at once) {uploads:.0}/s, downloads (64 MiB, 4 at \
                 once) {reads:.0} MB/s, collections run {runs}"
            );
            rows.push((uploads, reads));
        }
        for (row, name) in rows[1..].iter().zip(["duty 0.25", "flat out"]) {
            println!(
                "ratio with gc ({name}) / without: uploads {:.2}, downloads {:.2}",
                row.0 / rows[0].0,
                row.1 / rows[0].1
            );
        }

        // 3. Retention over many packages: keep the last 5 of each of 100 subjects.
        let mut config = RegistryConfig::default();
        let rule = RetentionRule {
            keep_last: Some(5),
            ..Default::default()
        };
        config.retention.insert("ci".into(), rule);
        let retention = Retention::new(s.stores.meta.clone(), config.retention.clone());
        let r = Arc::new(Registry::new(s.stores.clone(), config));
        let made = Instant::now();
        futures::stream::iter(0..packages)
            .for_each_concurrent(64, |i| {
                let r = r.clone();
                async move {
                    let new = new_package(format!("branch-{}", i % 100), "ci");
                    let p = r.create_package(TENANT, new).await.unwrap();
                    r.finalize(TENANT, p.id).await.unwrap();
                }
            })
            .await;
        println!(
            "retention: {packages} finalized packages made in {:.1} s",
            made.elapsed().as_secs_f64()
        );
        let stop = Arc::new(AtomicBool::new(false));
        let lister = {
            let (r, stop) = (r.clone(), stop.clone());
            tokio::spawn(async move {
                let mut took = Vec::new();
                let query = PackageQuery::default();
                while !stop.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    r.list_packages(TENANT, &query, None, None).await.unwrap();
                    took.push(t.elapsed());
                }
                took
            })
        };
        let quiet = {
            let mut took = Vec::new();
            let query = PackageQuery::default();
            for _ in 0..200 {
                let t = Instant::now();
                r.list_packages(TENANT, &query, None, None).await.unwrap();
                took.push(t.elapsed());
            }
            took
        };
        let swept = Instant::now();
        let deleted = retention.sweep().await.unwrap();
        let wall = swept.elapsed();
        stop.store(true, Ordering::Relaxed);
        let during = lister.await.unwrap();
        println!(
            "retention sweep: {deleted} of {packages} packages deleted in {:.1} s ({:.0}/s); \
             GET /packages (list_packages, 50) p99 {:.2} ms during it ({} calls), {:.2} ms before",
            wall.as_secs_f64(),
            deleted as f64 / wall.as_secs_f64(),
            p99(during.clone()).as_secs_f64() * 1e3,
            during.len(),
            p99(quiet).as_secs_f64() * 1e3,
        );
        s.stores.meta.close().await;
    });
}

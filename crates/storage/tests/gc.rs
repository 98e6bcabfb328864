//! Garbage collection against the registry, on whatever stores the environment names (SQLite
//! and a blob directory, or PostgreSQL and S3 under `make test`): a property test interleaving
//! single-shot files, upload sessions, shared content across packages and tenants, deletions
//! and collections, checking after every step that every file downloads byte-identical and
//! after every collection that no unused bytes are left; and writers that dedup onto bytes
//! while collections run without pause, on two replicas when the stores are shared; and S3
//! multipart uploads a crash left.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use artifactstore_core::gc::{Collector, GcOptions};
use artifactstore_core::registry::{Chunk, CompleteUpload};
use artifactstore_core::storage::{BlobInfo, ByteStream, StoreError};
use artifactstore_core::*;
use artifactstore_storage::Stores;
use bytes::Bytes;
use common::*;
use futures::StreamExt;
use proptest::prelude::*;

const TENANTS: [&str; 2] = [TENANT, "beta"];

fn content(n: u8, large: bool) -> Vec<u8> {
    if large {
        artifactstore_testkit::bytes(70_000 + n as usize * 1000, n as u64)
    } else {
        artifactstore_testkit::bytes(100 + n as usize, 100 + n as u64)
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A single-shot file of content `content` into package slot `slot`.
    Single {
        slot: u8,
        content: u8,
        large: bool,
    },
    /// The same through an upload session (always in the blob store).
    Session {
        slot: u8,
        content: u8,
    },
    Delete {
        slot: u8,
    },
    Collect,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4u8, 0..3u8, any::<bool>())
            .prop_map(|(slot, content, large)| Op::Single { slot, content, large }),
        2 => (0..4u8, 0..3u8).prop_map(|(slot, content)| Op::Session { slot, content }),
        2 => (0..4u8).prop_map(|slot| Op::Delete { slot }),
        2 => Just(Op::Collect),
    ]
}

/// A package slot: its tenant (slots 2 and 3 belong to beta) and the files it holds.
struct Slot {
    id: PackageId,
    files: Vec<(FileId, Vec<u8>, bool)>,
}

struct Model {
    env: Env,
    slots: BTreeMap<u8, Slot>,
    paths: u64,
}

fn tenant(slot: u8) -> &'static str {
    TENANTS[(slot / 2) as usize]
}

impl Model {
    async fn slot(&mut self, slot: u8) -> PackageId {
        if let Some(s) = self.slots.get(&slot) {
            return s.id;
        }
        let p = self
            .env
            .registry
            .create_package(tenant(slot), new_package());
        let id = p.await.unwrap().id;
        let files = Vec::new();
        self.slots.insert(slot, Slot { id, files });
        id
    }

    fn path(&mut self) -> String {
        self.paths += 1;
        format!("f{}", self.paths)
    }

    async fn apply(&mut self, op: &Op) {
        let r = self.env.registry.clone();
        match *op {
            Op::Single {
                slot,
                content: n,
                large,
            } => {
                let pkg = self.slot(slot).await;
                let data = content(n, large);
                let new = file(&self.path());
                let f = r.add_file(tenant(slot), pkg, new, body(&data, 8192));
                let f = f.await.unwrap();
                let in_blobs = !f.inline;
                self.slots
                    .get_mut(&slot)
                    .unwrap()
                    .files
                    .push((f.id, data, in_blobs));
            }
            Op::Session { slot, content: n } => {
                let pkg = self.slot(slot).await;
                let data = content(n, true);
                let t = tenant(slot);
                let up = r.create_upload(t, None).await.unwrap();
                let (a, b) = data.split_at(data.len() / 3);
                for part in [a, b] {
                    let chunk = r.append_upload(t, up.id, Chunk::default(), body(part, 4096));
                    chunk.await.unwrap();
                }
                let complete = CompleteUpload {
                    package_id: pkg.to_string(),
                    file: file(&self.path()),
                };
                let f = r.complete_upload(t, up.id, complete).await.unwrap();
                self.slots
                    .get_mut(&slot)
                    .unwrap()
                    .files
                    .push((f.id, data, true));
            }
            Op::Delete { slot } => {
                if let Some(s) = self.slots.remove(&slot) {
                    r.delete_package(tenant(slot), s.id).await.unwrap();
                }
            }
            Op::Collect => {
                // Written before the collection's cutoff (S3 lists times in whole seconds).
                let pause = if self.env.blob_url.is_some() { 1100 } else { 5 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let report = self.env.collector().collect(flat_out("test")).await;
                assert!(!report.unwrap().interrupted);
                self.check_nothing_unused().await;
            }
        }
        self.check_every_file().await;
    }

    async fn check_every_file(&self) {
        for (slot, s) in &self.slots {
            for (id, data, _) in &s.files {
                let (_, stream) = self
                    .env
                    .registry
                    .open_file(tenant(*slot), *id, None)
                    .await
                    .unwrap();
                assert_eq!(&collect(stream).await, data, "file {id} of slot {slot}");
            }
        }
    }

    /// Exactly the blobs some file in the blob store uses are left, and no staged bytes or
    /// leftovers.
    async fn check_nothing_unused(&self) {
        let used: BTreeSet<String> = self
            .slots
            .values()
            .flat_map(|s| s.files.iter())
            .filter(|(_, _, in_blobs)| *in_blobs)
            .map(|(_, data, _)| Sha256Digest::of(data).hex())
            .collect();
        let stored: BTreeSet<String> = self
            .env
            .blob_files()
            .await
            .iter()
            .map(|name| name.rsplit('/').next().unwrap().to_string())
            .collect();
        assert_eq!(stored, used, "blobs left after a collection");
        assert_eq!(self.env.temp_files().await, Vec::<String>::new());
        assert_eq!(self.env.staged_files().await, Vec::<String>::new());
    }
}

/// No grace, no pause.
fn flat_out(holder: &str) -> GcOptions<'_> {
    GcOptions {
        grace: Duration::ZERO,
        holder,
        lease_ttl: Duration::from_secs(60),
        duty: 1.0,
    }
}

fn file(path: &str) -> NewFile {
    NewFile {
        path: path.into(),
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn collections_keep_every_used_byte_and_nothing_else(ops in prop::collection::vec(op(), 1..24)) {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let mut model = Model { env: Env::new().await, slots: BTreeMap::new(), paths: 0 };
            for op in &ops {
                model.apply(op).await;
            }
            // Everything deleted and collected: nothing is left.
            for slot in model.slots.keys().copied().collect::<Vec<_>>() {
                model.apply(&Op::Delete { slot }).await;
            }
            model.apply(&Op::Collect).await;
            model.env.meta.close().await;
        });
    }
}

/// Writers keep adding (and deleting) files of one content while collections with no grace
/// run back to back, on two replicas when the stores are shared: a write either records a
/// file whose bytes stay, or is refused as unavailable and sent again; never a file without
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_that_dedup_onto_bytes_being_collected_lose_nothing() {
    let env = Env::new().await;
    let second = match (env.database_url.starts_with("postgres"), &env.blob_url) {
        (true, Some(url)) => Stores {
            meta: open_meta(&env.database_url, 4096).await,
            blobs: open_blobs(env.dir.path(), Some(url)).await,
        },
        _ => env.stores.clone(),
    };
    let replicas = [
        env.registry.clone(),
        Arc::new(Registry::new(second.clone(), RegistryConfig::default())),
    ];
    let collectors = [env.collector(), Collector::new(second)].map(Arc::new);
    let data = Arc::new(content(7, true));
    let stop = Arc::new(AtomicBool::new(false));
    let collectors: Vec<_> = collectors
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (r, stop) = (r.clone(), stop.clone());
            tokio::spawn(async move {
                let holder = format!("collector-{i}");
                let mut runs = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let gc = r.collect(GcOptions {
                        lease_ttl: Duration::from_millis(200),
                        ..flat_out(&holder)
                    });
                    gc.await.unwrap();
                    runs += 1;
                }
                runs
            })
        })
        .collect();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (r, data) = (replicas[w % 2].clone(), data.clone());
        writers.push(tokio::spawn(async move {
            let mut kept = Vec::new();
            let mut refused = 0;
            for round in 0..12 {
                let pkg = r.create_package(TENANT, new_package()).await.unwrap();
                let added = loop {
                    let new = file(&format!("w{w}-{round}"));
                    match r.add_file(TENANT, pkg.id, new, body(&data, 16384)).await {
                        Ok(f) => break f,
                        Err(RegistryError::Storage(StoreError::Unavailable(_))) => refused += 1,
                        Err(e) => panic!("{e}"),
                    }
                };
                let (_, stream) = r.open_file(TENANT, added.id, None).await.unwrap();
                assert_eq!(&collect(stream).await, &*data);
                if round % 2 == 0 {
                    r.delete_package(TENANT, pkg.id).await.unwrap();
                } else {
                    kept.push(added.id);
                }
            }
            (kept, refused)
        }));
    }
    let mut kept = Vec::new();
    for w in writers {
        kept.extend(w.await.unwrap().0);
    }
    stop.store(true, Ordering::Relaxed);
    for c in collectors {
        assert!(c.await.unwrap() > 0);
    }
    for id in kept {
        let (_, stream) = env.registry.open_file(TENANT, id, None).await.unwrap();
        assert_eq!(&collect(stream).await, &*data, "file {id}");
    }
}

/// A write cut off in the middle of its multipart upload, as a crash cuts it (its future
/// dropped: nothing aborts the upload), leaves an upload under way in S3, its parts holding
/// bytes; the next collection past the grace aborts it. An append cut off the same way is
/// aborted by whatever ends its upload. S3 only: a crash leaves the blob directory nothing
/// but temp files, removed when it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs S3 (make test starts it)"]
async fn multipart_uploads_a_crash_left_are_aborted() {
    let env = Env::new().await;
    assert!(
        env.blob_url.is_some(),
        "this test needs {} (run it through tools/with-backends.sh)",
        artifactstore_testkit::S3_ENV
    );
    let pkg = env.package().await;
    let registry = env.registry.clone();
    let writer = tokio::spawn(async move {
        let stalled = stalled_body(11);
        registry
            .add_file(TENANT, pkg.id, file("big"), stalled)
            .await
    });
    let journals = cut_off(&env, writer).await;
    let (key, id) = &journals[0];
    assert!(
        env.multipart_upload_exists(key, id).await,
        "the upload under way"
    );

    let report = env
        .collector()
        .collect(flat_out("collector"))
        .await
        .unwrap();
    assert!(report.orphans >= 1, "{report:?}");
    assert_eq!(env.multipart_journals().await, Vec::new());
    assert!(!env.multipart_upload_exists(key, id).await, "aborted");
    assert_eq!(env.temp_files().await, Vec::<String>::new());

    // An append cut off the same way: whatever ends its upload aborts what it left.
    let blobs = open_blobs(env.dir.path(), env.blob_url.as_deref()).await;
    let upload = UploadId::generate(TENANT);
    let append = tokio::spawn(async move {
        let staging = Staging::default();
        blobs
            .stage_append(&upload, &staging, 0, stalled_body(12), u64::MAX)
            .await
            .map(drop)
    });
    let (key, id) = cut_off(&env, append).await.remove(0);
    assert!(key.contains(&format!("/uploads/{upload}/")), "{key}");
    assert!(
        env.multipart_upload_exists(&key, &id).await,
        "the append under way"
    );
    open_blobs(env.dir.path(), env.blob_url.as_deref())
        .await
        .stage_discard(&upload)
        .await
        .unwrap();
    assert!(!env.multipart_upload_exists(&key, &id).await, "aborted");
    assert_eq!(env.staged_files().await, Vec::<String>::new());
}

/// More than one part's bytes, then nothing, ever.
fn stalled_body(seed: u64) -> ByteStream {
    let head = Bytes::from(bytes(9 * 1024 * 1024, seed));
    futures::stream::iter([Ok(head)])
        .chain(futures::stream::pending())
        .boxed()
}

/// Waits until `write` has journaled a multipart upload, then cuts it off: the journals.
async fn cut_off<T: std::fmt::Debug>(
    env: &Env,
    write: tokio::task::JoinHandle<T>,
) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let journals = loop {
        let journals = env.multipart_journals().await;
        if !journals.is_empty() {
            break journals;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no multipart journal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    write.abort();
    assert!(write.await.unwrap_err().is_cancelled());
    journals
}

/// The object of `key` (`prefix/data/<ulid>`) in the S3 server's directory.
fn object_file(key: &str) -> std::path::PathBuf {
    let dir = std::env::var("ARTIFACTSTORE_TEST_S3_DIR")
        .expect("ARTIFACTSTORE_TEST_S3_DIR (run through tools/with-backends.sh)");
    let bucket = artifactstore_testkit::require_s3();
    let bucket = bucket
        .trim_start_matches("s3://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    std::path::Path::new(&dir).join(bucket).join(key)
}

/// S3 dates a multipart object from when its upload *began*: one that took longer than the
/// grace to arrive looks old the moment it is complete (reproduced by backdating the object
/// in the S3 server's directory). Its journal, kept and refreshed until its pointer exists,
/// keeps every sweep off it; published, it is read whole. And a pointer whose object is gone
/// is never trusted: it is not served, and the next write of those bytes replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs S3 (make test starts it)"]
async fn the_sweep_never_takes_an_object_a_write_will_publish() {
    let env = Env::new().await;
    let url = env.blob_url.clone().expect("an S3 store");
    let blobs = open_blobs(env.dir.path(), Some(&url)).await;
    let grace = Duration::from_secs(3600);
    let data = Bytes::from(bytes(9 * 1024 * 1024, 21));
    let blob = BlobInfo {
        size: data.len() as u64,
        digest: Sha256Digest::of(&data),
    };
    let staged = blobs
        .stage(futures::stream::iter([Ok(data.clone())]).boxed(), u64::MAX)
        .await
        .unwrap();
    let unnamed = env.temp_files().await;
    assert_eq!(unnamed.len(), 1, "{unnamed:?}");
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(object_file(&unnamed[0]))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    assert_eq!(blobs.collect_orphans(grace).await.unwrap(), 0);
    assert_eq!(env.temp_files().await, unnamed, "the sweep took it");
    blobs.publish(staged, blob).await.unwrap();
    let read = blobs.read(&blob.digest, 0..blob.size).await.unwrap();
    assert_eq!(&collect(read).await, &*data);
    assert_eq!(
        env.multipart_journals().await,
        Vec::new(),
        "journal gone once published"
    );
    assert_eq!(blobs.collect_orphans(grace).await.unwrap(), 0);

    // Its object deleted behind the store's back (as the old sweep could): not served...
    let pointer: serde_json::Value = {
        let files = env.blob_files().await;
        assert_eq!(files.len(), 1);
        let path = object_file(&files[0]);
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    };
    std::fs::remove_file(object_file(pointer["key"].as_str().unwrap())).unwrap();
    let fresh = open_blobs(env.dir.path(), Some(&url)).await;
    let dangling = fresh.read(&blob.digest, 0..blob.size).await.map(drop);
    assert!(
        matches!(dangling, Err(StoreError::Corrupt(_))),
        "{dangling:?}"
    );
    // ... and replaced by the next write of the same bytes.
    let again = fresh
        .stage(futures::stream::iter([Ok(data.clone())]).boxed(), u64::MAX)
        .await
        .unwrap();
    fresh.publish(again, blob).await.unwrap();
    let read = fresh.read(&blob.digest, 0..blob.size).await.unwrap();
    assert_eq!(&collect(read).await, &*data);
}

/// A collector that lost its lease (its process paused past it, or its clock ran ahead of
/// the others') can neither doom nor release anything: every doom carries the generation of
/// the `gc` lease that made it, checked in the doom's and the release's own transactions by
/// the database's clock. The next holder adopts the stale doom and finishes it.
#[tokio::test]
async fn a_collector_that_lost_its_lease_dooms_and_releases_nothing() {
    let env = Env::new().await;
    let meta = &env.meta;
    let (doomed, other) = (Sha256Digest::of(b"doomed"), Sha256Digest::of(b"other"));
    let old = meta
        .lease("gc", "old", Duration::from_millis(300))
        .await
        .unwrap();
    let old = old.expect("a free lease is taken");
    let first = meta
        .doom_blobs(&[doomed], Duration::ZERO, old)
        .await
        .unwrap();
    assert_eq!(first, vec![doomed]);
    // Taken by nobody else while it runs, whoever asks.
    assert_eq!(
        meta.lease("gc", "new", Duration::from_secs(60))
            .await
            .unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let new = meta
        .lease("gc", "new", Duration::from_secs(60))
        .await
        .unwrap();
    let new = new.expect("a lapsed lease is taken");
    assert_ne!(new, old, "a new holder, a new generation");

    // The old collector resumes: fenced.
    let late = meta
        .doom_blobs(&[other], Duration::ZERO, old)
        .await
        .unwrap();
    assert_eq!(late, Vec::new(), "doomed under a lost lease");
    meta.release_blobs(&[doomed], old).await.unwrap();
    assert_eq!(
        meta.claim_blob(&doomed, 7).await.unwrap(),
        None,
        "released by a collector that lost its lease"
    );
    assert_eq!(meta.claim_blob(&other, 7).await.unwrap(), Some(7));

    // The holder adopts the stale doom, finishes it, and only then may it be claimed.
    assert_eq!(meta.reads().doomed_blobs(new).await.unwrap(), vec![doomed]);
    let adopted = meta
        .doom_blobs(&[doomed], Duration::ZERO, new)
        .await
        .unwrap();
    assert_eq!(adopted, vec![doomed]);
    assert_eq!(meta.reads().doomed_blobs(new).await.unwrap(), Vec::new());
    meta.release_blobs(&[doomed], new).await.unwrap();
    assert_eq!(meta.claim_blob(&doomed, 8).await.unwrap(), Some(8));
}

/// The orphan sweep is paged by time: after a bucket's first sweep, each reads only the data
/// objects named since the last one and the pointers written since shortly before it, not
/// the whole bucket. Shown by an old pointer made unreadable: a sweep that read every pointer
/// would fail on it; this one deletes the new orphan and never looks at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs S3 (make test starts it)"]
async fn the_sweep_reads_only_what_was_written_since_the_last_one() {
    use object_store::ObjectStoreExt;
    let env = Env::new().await;
    let url = env.blob_url.clone().expect("an S3 store");
    let blobs = open_blobs(env.dir.path(), Some(&url)).await;
    let data = Bytes::from(bytes(1000, 5));
    let blob = BlobInfo {
        size: data.len() as u64,
        digest: Sha256Digest::of(&data),
    };
    blobs.store_small(blob, vec![data]).await.unwrap();
    assert_eq!(blobs.collect_orphans(Duration::ZERO).await.unwrap(), 0);

    let pointer = object_file(&env.blob_files().await[0]);
    std::fs::write(&pointer, b"not a pointer").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&pointer)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let (s3, prefix) = s3(&url);
    let orphan = format!("{prefix}/data/{}", ulid::Ulid::new());
    s3.put(&orphan.as_str().into(), b"left by a crash".to_vec().into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(blobs.collect_orphans(Duration::ZERO).await.unwrap(), 1);
    let gone = s3.head(&orphan.as_str().into()).await;
    assert!(
        matches!(gone, Err(object_store::Error::NotFound { .. })),
        "{gone:?}"
    );
}

/// A single-shot file refused at its record — after its bytes passed the last check and were
/// published, here because another writer took its path meanwhile — has those bytes deleted
/// at once, not left to a collection; its claim is released with them. The write is held
/// between its last check and its claim by a collection's doom of its digest, so the other
/// writer's record lands exactly there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_refused_at_its_record_deletes_the_bytes_it_published() {
    let env = Env::new().await;
    let (meta, blobs) = (&env.meta, &env.stores.blobs);
    let package = env.package().await;
    let data = artifactstore_testkit::bytes(300_000, 77);
    let digest = Sha256Digest::of(&data);
    let lease = meta.lease("gc", "test", Duration::from_secs(60)).await;
    let lease = lease.unwrap().expect("a free lease");
    let doomed = meta.doom_blobs(&[digest], Duration::ZERO, lease).await;
    assert_eq!(doomed.unwrap(), vec![digest]);

    let registry = env.registry.clone();
    let late = tokio::spawn(async move {
        registry
            .add_file(TENANT, package.id, file("app.tar"), body(&data, 16_384))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let other = b"another build of the same path".repeat(4_000);
    let first = env
        .registry
        .add_file(TENANT, package.id, file("app.tar"), body(&other, 16_384))
        .await
        .unwrap();
    assert!(
        !late.is_finished(),
        "the write was past its last check, waiting to claim, when the path was taken"
    );
    meta.release_blobs(&[digest], lease).await.unwrap();

    let refused = late.await.unwrap();
    assert!(
        matches!(refused, Err(RegistryError::PathTaken(_))),
        "{refused:?}"
    );
    assert_eq!(
        blobs.size(&digest).await.unwrap(),
        None,
        "bytes left behind"
    );
    assert_eq!(
        meta.claim_blob(&digest, 42).await.unwrap(),
        Some(42),
        "the claim is released, not left doomed"
    );
    let read = env.registry.file(TENANT, first.id).await.unwrap();
    assert_eq!(read.size, other.len() as u64);
    assert!(blobs.size(&read.sha256()).await.unwrap().is_some());
}

/// A refused writer deletes only bytes nobody else wants: not while another writer of the same
/// digest is under way (a claim not yet recorded), not while a file uses them; and its doom is
/// its own, which a collection leaves to it while it is fresh.
#[tokio::test]
async fn a_refused_writer_leaves_bytes_others_want() {
    let env = Env::new().await;
    let meta = &env.meta;
    let shared = Sha256Digest::of(b"two writers");
    let generation = meta.claim_blob(&shared, 5).await.unwrap().unwrap();
    assert_eq!(meta.claim_blob(&shared, 6).await.unwrap(), Some(generation));
    assert!(
        !meta.abandon_blob(&shared, generation, -1).await.unwrap(),
        "doomed while another writer is under way"
    );
    assert!(meta.abandon_blob(&shared, generation, -2).await.unwrap());
    assert_eq!(meta.claim_blob(&shared, 7).await.unwrap(), None, "doomed");
    let lease = meta.lease("gc", "test", Duration::from_secs(60)).await;
    let lease = lease.unwrap().expect("a free lease");
    assert_eq!(meta.reads().doomed_blobs(lease).await.unwrap(), Vec::new());
    let adopted = meta.doom_blobs(&[shared], Duration::ZERO, lease).await;
    assert_eq!(
        adopted.unwrap(),
        Vec::new(),
        "a fresh writer's doom adopted"
    );
    assert!(!meta.reads().abandoned_stands(&shared, -1).await.unwrap());
    assert!(meta.reads().abandoned_stands(&shared, -2).await.unwrap());
    meta.release_abandoned(&shared, -1).await.unwrap();
    assert_eq!(meta.claim_blob(&shared, 7).await.unwrap(), None, "not -1's");
    meta.release_abandoned(&shared, -2).await.unwrap();
    assert_eq!(meta.claim_blob(&shared, 7).await.unwrap(), Some(7));

    // A file uses the bytes: a writer refused later leaves them.
    let package = env.package().await;
    let data = artifactstore_testkit::bytes(200_000, 78);
    let used = env
        .registry
        .add_file(TENANT, package.id, file("used"), body(&data, 16_384))
        .await
        .unwrap();
    let generation = meta.claim_blob(&used.sha256(), 9).await.unwrap().unwrap();
    assert!(
        !meta
            .abandon_blob(&used.sha256(), generation, -3)
            .await
            .unwrap()
    );
    let bytes = env.stores.blobs.size(&used.sha256()).await.unwrap();
    assert_eq!(bytes, Some(data.len() as u64));
}

/// A blob pushed through `/v2/` and referenced by no manifest lives the grace period (its
/// claim's age), then is collected like any unused bytes; once a manifest references it, it
/// is a file's and stays.
#[tokio::test]
async fn pushed_blobs_live_the_grace_and_referenced_ones_stay() {
    use artifactstore_core::oci;
    let env = Env::new().await;
    let registry = &env.registry;
    let push = |data: Vec<u8>| async move {
        let upload = registry.create_upload(TENANT, None).await.unwrap();
        registry
            .append_upload(TENANT, upload.id, Chunk::default(), body(&data, 10_000))
            .await
            .unwrap();
        let digest = Sha256Digest::of(&data);
        registry
            .oci_complete_blob(TENANT, upload.id, digest)
            .await
            .unwrap()
    };
    let loose = push(artifactstore_testkit::bytes(150_000, 81)).await;
    let kept = push(artifactstore_testkit::bytes(150_000, 82)).await;
    let within_grace = GcOptions {
        grace: Duration::from_secs(3600),
        ..flat_out("test")
    };
    env.collector().collect(within_grace).await.unwrap();
    for blob in [loose, kept] {
        let found = registry.oci_blob(TENANT, blob.digest).await.unwrap();
        assert!(
            matches!(found, oci::Blob::Stored(b) if b == blob),
            "{found:?}"
        );
    }
    // A manifest references one of them: it becomes a file of the manifest's package.
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": oci::IMAGE_MANIFEST,
        "config": {"mediaType": "application/octet-stream",
                   "digest": kept.digest.content_address(), "size": kept.size},
        "layers": [],
    });
    let bytes = bytes::Bytes::from(serde_json::to_vec(&manifest).unwrap());
    let tag = oci::Reference::Tag("v1".into());
    registry
        .oci_put_manifest(TENANT, "app", &tag, oci::IMAGE_MANIFEST, bytes)
        .await
        .unwrap();
    env.collector().collect(flat_out("test")).await.unwrap();
    let gone = registry.oci_blob(TENANT, loose.digest).await;
    assert!(matches!(gone, Err(RegistryError::NotFound(_))), "{gone:?}");
    let stays = registry.oci_blob(TENANT, kept.digest).await.unwrap();
    assert!(matches!(stays, oci::Blob::File(f) if f.sha256() == kept.digest));
}

//! The registry on its embedded stores (SQLite + blob directory): packages, files, manifests,
//! listing, events, concurrency and faults.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use artifactstore_core::storage::StoreError;
use artifactstore_core::*;
use common::*;
use futures::StreamExt;

fn file(path: &str) -> NewFile {
    NewFile {
        path: path.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn package_lifecycle_and_manifest() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    assert_eq!(pkg.state, PackageState::Open);
    assert!(pkg.id.to_string().starts_with("pkg_"));

    let a = bytes(100_000, 1);
    let f = r
        .add_file(TENANT, pkg.id, file("bin/app"), body(&a, 7000))
        .await
        .unwrap();
    assert_eq!(f.size, 100_000);
    assert_eq!(f.sha256(), Sha256Digest::of(&a));
    assert_eq!(f.media_type, "application/octet-stream");
    let g = r
        .add_file(TENANT, pkg.id, file("README.md"), body(b"# hi", 1))
        .await
        .unwrap();
    assert_eq!(g.media_type, "text/markdown");
    let e = r
        .add_file(TENANT, pkg.id, file("empty"), body(b"", 1))
        .await
        .unwrap();
    assert_eq!(e.size, 0);

    let got = r.package(TENANT, pkg.id).await.unwrap();
    assert_eq!((got.file_count, got.total_size), (3, 100_004));
    assert!(matches!(
        r.manifest(TENANT, pkg.id).await,
        Err(RegistryError::NotFinalized)
    ));

    let done = r.finalize(TENANT, pkg.id).await.unwrap();
    assert_eq!(done.state, PackageState::Finalized);
    let again = r.finalize(TENANT, pkg.id).await.unwrap();
    assert_eq!(done, again, "finalize is idempotent");

    let m = r.manifest(TENANT, pkg.id).await.unwrap();
    assert_eq!(Some(ContentAddress(m.digest)), done.manifest_digest);
    assert_eq!(m.digest, Sha256Digest::of(&m.cbor));
    let decoded: manifest::Manifest = ciborium_free_decode(&m.json);
    let paths: Vec<_> = decoded.files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(paths, ["README.md", "bin/app", "empty"]);
    assert_eq!(decoded.finalized_at, done.finalized_at.unwrap());

    // Finalized packages take no more files, and the attempt stores nothing.
    let blobs_before = env.blob_files().await.len();
    // Past the inline limit: bytes the blob store would keep if the state were not checked
    // before the body is stored.
    let late = bytes(INLINE_FILE_BYTES as usize + 1000, 6);
    let err = r
        .add_file(TENANT, pkg.id, file("late"), body(&late, 4096))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::PackageFinalized), "{err:?}");
    assert_eq!(env.blob_files().await.len(), blobs_before);

    // Downloads, whole and by range.
    let (_, stream) = r.open_file(TENANT, f.id, None).await.unwrap();
    assert_eq!(collect(stream).await, a);
    let (_, stream) = r.open_file(TENANT, f.id, Some(10..20)).await.unwrap();
    assert_eq!(collect(stream).await, &a[10..20]);
    let (_, stream) = r.open_file(TENANT, e.id, None).await.unwrap();
    assert!(collect(stream).await.is_empty());
}

fn ciborium_free_decode(json: &str) -> manifest::Manifest {
    serde_json::from_str(json).unwrap()
}

#[tokio::test]
async fn duplicate_path_and_validation_change_nothing() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    r.add_file(TENANT, pkg.id, file("a"), body(b"one", 3))
        .await
        .unwrap();
    let err = r
        .add_file(TENANT, pkg.id, file("a"), body(b"two", 3))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::PathTaken(ref p) if p == "a"),
        "{err:?}"
    );

    let err = r
        .add_file(TENANT, pkg.id, file("../x"), body(b"x", 1))
        .await
        .unwrap_err();
    let RegistryError::Invalid(fields) = err else {
        panic!("{err:?}")
    };
    assert_eq!(fields[0].field, "path");

    let bad = NewFile {
        path: "ok".into(),
        media_type: Some("nope".into()),
        sha256: Some("xyz".into()),
    };
    let RegistryError::Invalid(fields) = r
        .add_file(TENANT, pkg.id, bad, body(b"x", 1))
        .await
        .unwrap_err()
    else {
        panic!()
    };
    let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(names, ["media_type", "sha256"]);

    let mut bad_pkg = new_package();
    bad_pkg.producer = String::new();
    bad_pkg.retention_class = "Standard".into();
    bad_pkg.metadata.insert("bad key".into(), "v".into());
    let RegistryError::Invalid(fields) = r.create_package(TENANT, bad_pkg).await.unwrap_err()
    else {
        panic!()
    };
    let names: Vec<_> = fields.iter().map(|f| f.field.as_str()).collect();
    assert_eq!(names, ["producer", "retention_class", "metadata"]);

    let got = r.package(TENANT, pkg.id).await.unwrap();
    assert_eq!(got.file_count, 1);
    // One package.created and one file.added: the failures made no events.
    assert_eq!(
        r.events(TENANT, 0, None, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        2
    );
}

#[tokio::test]
async fn retention_classes_can_be_restricted() {
    let config = RegistryConfig {
        retention_classes: Some(["standard".to_string()].into_iter().collect()),
        ..Default::default()
    };
    let env = Env::with_config(config).await;
    env.registry
        .create_package(TENANT, new_package())
        .await
        .unwrap();
    let mut other = new_package();
    other.retention_class = "forever".into();
    let err = env
        .registry
        .create_package(TENANT, other)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Invalid(ref f) if f[0].field == "retention_class"));
}

#[tokio::test]
async fn tenants_never_see_each_other() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package("acme", new_package()).await.unwrap();
    let f = r
        .add_file("acme", pkg.id, file("a"), body(b"secret", 2))
        .await
        .unwrap();
    assert!(matches!(
        r.package("beta", pkg.id).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        r.file("beta", f.id).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        r.open_file("beta", f.id, None).await,
        Err(RegistryError::NotFound(_))
    ));
    let err = r
        .add_file("beta", pkg.id, file("b"), body(b"x", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound(_)));
    assert!(matches!(
        r.finalize("beta", pkg.id).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        r.manifest("beta", pkg.id).await,
        Err(RegistryError::NotFound(_))
    ));
    let q = PackageQuery::default();
    assert!(
        r.list_packages("beta", &q, None, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        r.events("beta", 0, None, Duration::ZERO)
            .await
            .unwrap()
            .is_empty()
    );
    let contains = PackageQuery {
        contains: Some(f.sha256()),
        ..Default::default()
    };
    assert!(
        r.list_packages("beta", &contains, None, None)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(
        r.list_packages("acme", &contains, None, None)
            .await
            .unwrap()
            .items
            .len(),
        1
    );
}

#[tokio::test]
async fn listing_filters_and_paging() {
    let env = Env::new().await;
    let r = &env.registry;
    let mut ids = Vec::new();
    for i in 0..30 {
        let mut new = new_package();
        new.producer = format!("producer-{}", i % 3);
        new.subject = format!("app@{i}");
        new.retention_class = if i % 2 == 0 {
            "standard".into()
        } else {
            "short".into()
        };
        new.metadata = BTreeMap::new();
        new.metadata.insert(
            "team".into(),
            if i % 5 == 0 {
                "red".into()
            } else {
                "blue".into()
            },
        );
        if i % 7 == 0 {
            new.metadata.insert("release".into(), "yes".into());
        }
        let pkg = r.create_package(TENANT, new).await.unwrap();
        r.add_file(
            TENANT,
            pkg.id,
            file("f"),
            body(format!("content {}", i % 4).as_bytes(), 3),
        )
        .await
        .unwrap();
        if i % 10 == 0 {
            r.finalize(TENANT, pkg.id).await.unwrap();
        }
        ids.push(pkg.id);
    }
    let list = |q: PackageQuery| async move {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = r
                .list_packages(TENANT, &q, cursor.as_deref(), Some(4))
                .await
                .unwrap();
            assert!(page.items.len() <= 4);
            all.extend(page.items.iter().map(|p| p.id));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => return all,
            }
        }
    };
    let newest_first: Vec<_> = ids.iter().rev().copied().collect();
    assert_eq!(list(PackageQuery::default()).await, newest_first);
    let pick = |f: &dyn Fn(usize) -> bool| -> Vec<PackageId> {
        (0..30).rev().filter(|i| f(*i)).map(|i| ids[i]).collect()
    };
    let q = PackageQuery {
        producer: Some("producer-1".into()),
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i % 3 == 1));
    let q = PackageQuery {
        subject: Some("app@7".into()),
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i == 7));
    let q = PackageQuery {
        retention_class: Some("short".into()),
        state: Some(PackageState::Finalized),
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i % 2 == 1 && i % 10 == 0));
    let q = PackageQuery {
        state: Some(PackageState::Finalized),
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i % 10 == 0));
    let q = PackageQuery {
        metadata: vec![("team".into(), "red".into())],
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i % 5 == 0));
    let q = PackageQuery {
        metadata: vec![("team".into(), "blue".into())],
        has_metadata: vec!["release".into()],
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i % 5 != 0 && i % 7 == 0));
    let q = PackageQuery {
        contains: Some(Sha256Digest::of(b"content 2")),
        ..Default::default()
    };
    assert_eq!(list(q).await, pick(&|i| i % 4 == 2));
    let all = r
        .list_packages(TENANT, &PackageQuery::default(), None, Some(1000))
        .await
        .unwrap()
        .items;
    let t10 = all.iter().find(|p| p.id == ids[10]).unwrap().created_at;
    let t20 = all.iter().find(|p| p.id == ids[20]).unwrap().created_at;
    let q = PackageQuery {
        created_after: Some(t10),
        created_before: Some(t20),
        ..Default::default()
    };
    let got = list(q).await;
    assert!(!got.contains(&ids[0]) && !got.contains(&ids[29]));
    assert!(got.iter().all(|id| {
        all.iter()
            .any(|p| p.id == *id && p.created_at > t10 && p.created_at < t20)
    }));

    // A cursor stays valid while new packages arrive.
    let page = r
        .list_packages(TENANT, &PackageQuery::default(), None, Some(10))
        .await
        .unwrap();
    r.create_package(TENANT, new_package()).await.unwrap();
    let next = r
        .list_packages(
            TENANT,
            &PackageQuery::default(),
            page.next_cursor.as_deref(),
            Some(10),
        )
        .await
        .unwrap();
    assert_eq!(
        next.items.iter().map(|p| p.id).collect::<Vec<_>>(),
        newest_first[10..20]
    );
    let err = r
        .list_packages(TENANT, &PackageQuery::default(), Some("garbage"), None)
        .await;
    assert!(matches!(err, Err(RegistryError::Invalid(ref f)) if f[0].field == "cursor"));
    // Limits are clamped, not refused.
    let page = r
        .list_packages(TENANT, &PackageQuery::default(), None, Some(100_000))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 31);
    let page = r
        .list_packages(TENANT, &PackageQuery::default(), None, Some(0))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
}

#[tokio::test]
async fn files_list_in_byte_order_with_paging() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    let paths = ["b", "a/z", "a", "Z", "é", "e", "a/b/c", "ß", "中文", "~"];
    for p in paths {
        r.add_file(TENANT, pkg.id, file(p), body(p.as_bytes(), 2))
            .await
            .unwrap();
    }
    let mut expected: Vec<&str> = paths.to_vec();
    expected.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut got = Vec::new();
    let mut cursor = None;
    loop {
        let page = r
            .list_files(TENANT, pkg.id, cursor.as_deref(), Some(3))
            .await
            .unwrap();
        got.extend(page.items.into_iter().map(|f| f.path));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(got, expected);
}

#[tokio::test]
async fn expected_digest_mismatch_stores_nothing() {
    let env = Env::new().await;
    let r = &env.registry;
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();
    let wrong = NewFile {
        path: "a".into(),
        media_type: None,
        sha256: Some(Sha256Digest::of(b"other").hex()),
    };
    // Past the inline limit, so that the bytes reach the blob store (which must keep none).
    let actual = bytes(INLINE_FILE_BYTES as usize + 1000, 5);
    let err = r
        .add_file(TENANT, pkg.id, wrong, body(&actual, 4096))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    assert!(env.blob_files().await.is_empty());
    assert!(env.temp_files().await.is_empty());
    assert_eq!(r.package(TENANT, pkg.id).await.unwrap().file_count, 0);
    assert_eq!(
        r.events(TENANT, 0, None, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
    let right = NewFile {
        path: "a".into(),
        media_type: None,
        sha256: Some(Sha256Digest::of(b"actual").hex()),
    };
    r.add_file(TENANT, pkg.id, right, body(b"actual", 2))
        .await
        .unwrap();
}

#[tokio::test]
async fn failed_or_dropped_streams_leave_nothing() {
    let env = Env::new().await;
    let r = env.registry.clone();
    let pkg = r.create_package(TENANT, new_package()).await.unwrap();

    let err = r
        .add_file(
            TENANT,
            pkg.id,
            file("a"),
            failing_body(&bytes(3_000_000, 2)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Body(_)), "{err:?}");

    // A request dropped mid-body (client gone, server shutting down) is a cancelled future.
    let stalled = r.add_file(
        TENANT,
        pkg.id,
        file("b"),
        stalled_body(&bytes(2_000_000, 3)),
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stalled)
            .await
            .is_err()
    );

    // The size limit is enforced while streaming.
    let small = Env::with_config(RegistryConfig {
        max_file_bytes: 1000,
        ..Default::default()
    })
    .await;
    let p2 = small
        .registry
        .create_package(TENANT, new_package())
        .await
        .unwrap();
    let err = small
        .registry
        .add_file(TENANT, p2.id, file("big"), body(&bytes(1001, 4), 100))
        .await;
    assert!(
        matches!(err, Err(RegistryError::TooLarge { limit: 1000 })),
        "{err:?}"
    );
    small
        .registry
        .add_file(TENANT, p2.id, file("fits"), body(&bytes(1000, 4), 100))
        .await
        .unwrap();
    assert!(small.temp_files().await.is_empty());

    // Give the writer threads a moment to notice the cancelled write.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        env.blob_files().await.is_empty(),
        "{:?}",
        env.blob_files().await
    );
    assert!(
        env.temp_files().await.is_empty(),
        "{:?}",
        env.temp_files().await
    );
    assert_eq!(r.package(TENANT, pkg.id).await.unwrap().file_count, 0);
    assert_eq!(
        r.events(TENANT, 0, None, Duration::ZERO)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_keep_the_event_log_gap_free() {
    let env = Env::new().await;
    let base = env.package().await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let r = env.registry.clone();
        let tenant = if t % 4 == 0 { "beta" } else { TENANT };
        tasks.push(tokio::spawn(async move {
            let mut changes = 0;
            let own = r.create_package(tenant, new_package()).await.unwrap();
            changes += 1;
            for i in 0..10u64 {
                let data = bytes(1000 + i as usize * 997, t * 100 + i);
                let target = if tenant == TENANT && i % 2 == 0 {
                    base.id
                } else {
                    own.id
                };
                r.add_file(
                    tenant,
                    target,
                    file(&format!("t{t}/f{i}")),
                    body(&data, 512),
                )
                .await
                .unwrap();
                changes += 1;
            }
            r.finalize(tenant, own.id).await.unwrap();
            changes + 1
        }));
    }
    let mut changes = 1;
    for t in tasks {
        changes += t.await.unwrap();
    }
    let mut all = env
        .registry
        .events(TENANT, 0, Some(1000), Duration::ZERO)
        .await
        .unwrap();
    all.extend(
        env.registry
            .events("beta", 0, Some(1000), Duration::ZERO)
            .await
            .unwrap(),
    );
    all.sort_by_key(|e| e.sequence);
    let sequences: Vec<u64> = all.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=changes as u64).collect::<Vec<_>>(),
        "gap-free, one per change"
    );
    let file_events: HashSet<String> = all
        .iter()
        .filter(|e| e.kind == EventType::FileAdded)
        .map(|e| e.data["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(file_events.len(), 160, "every file has exactly one event");
    let finals = all
        .iter()
        .filter(|e| e.kind == EventType::PackageFinalized)
        .count();
    assert_eq!(finals, 16);
    let base_now = env.registry.package(TENANT, base.id).await.unwrap();
    assert_eq!(base_now.file_count, 12 * 5);
}

/// Small single-shot files are kept with their records (no blob file), survive a restart,
/// and read like any other, by range too; a byte more and they go to the blob store.
#[tokio::test]
async fn small_files_live_with_their_records() {
    let env = Env::new().await;
    let pkg = env.package().await;
    let small = bytes(INLINE_FILE_BYTES as usize, 21);
    let large = bytes(INLINE_FILE_BYTES as usize + 1, 22);
    let r = &env.registry;
    let s = r
        .add_file(TENANT, pkg.id, file("small"), body(&small, 1000))
        .await
        .unwrap();
    assert!(
        env.blob_files().await.is_empty(),
        "{:?}",
        env.blob_files().await
    );
    let l = r
        .add_file(TENANT, pkg.id, file("large"), body(&large, 1000))
        .await
        .unwrap();
    assert_eq!(env.blob_files().await.len(), 1);
    let env = env.reopen().await;
    let r = &env.registry;
    for (f, data) in [(&s, &small), (&l, &large)] {
        let (_, whole) = r.open_file(TENANT, f.id, None).await.unwrap();
        assert_eq!(&collect(whole).await, data);
        let (_, part) = r.open_file(TENANT, f.id, Some(10..4096)).await.unwrap();
        assert_eq!(collect(part).await, data[10..4096]);
    }
}

/// A database from before file locations were recorded (migration 4): its small single-shot
/// files are found inline after the upgrade, exactly as the size-based lookup found them.
#[tokio::test]
async fn an_old_database_learns_where_its_files_live() {
    use sqlx::Connection;
    let env = Env::sqlite().await;
    let pkg = env.package().await;
    let small = bytes(5000, 71);
    let f = env
        .registry
        .add_file(TENANT, pkg.id, file("small"), body(&small, 1000))
        .await
        .unwrap();
    let url = env.database_url.clone();
    let env = {
        env.meta.close().await;
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        // Back to before migration 4: the later ones undone first (5 indexes `inline`).
        for sql in [
            "DROP TABLE oci_manifests",
            "DROP TABLE oci_blobs",
            "DROP TABLE oci_references",
            "DROP INDEX packages_by_manifest",
            "DROP TABLE tags",
            "DROP TABLE tenant_usage",
            "DROP TABLE blob_claims",
            "DROP INDEX files_by_sha256",
            "DROP INDEX files_by_package",
            "DROP INDEX packages_by_class_subject",
            "DROP TABLE leases",
            "ALTER TABLE packages DROP COLUMN held",
            "ALTER TABLE files DROP COLUMN inline",
            "DELETE FROM _sqlx_migrations WHERE version >= 4",
        ] {
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        conn.close().await.unwrap();
        env.reopen().await
    };
    let (record, stream) = env.registry.open_file(TENANT, f.id, None).await.unwrap();
    assert!(record.inline);
    assert_eq!(collect(stream).await, small);
}

/// Small files are checked against their package in the same grouped write that adds them;
/// large ones before their bytes are taken. Neither kind of refusal leaves a trace, also when
/// it shares its commit with files that are added.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn files_for_closed_or_foreign_packages_leave_nothing() {
    let env = Env::new().await;
    let open = env.package().await;
    let done = env.package().await;
    env.registry.finalize(TENANT, done.id).await.unwrap();
    let before = env.registry.events(TENANT, 0, Some(1000), Duration::ZERO);
    let events_before = before.await.unwrap().len();
    let mut tasks = Vec::new();
    for t in 0..48u64 {
        let r = env.registry.clone();
        // Every third task writes a large file, the others small ones.
        let len = if t % 3 == 0 {
            INLINE_FILE_BYTES + 1
        } else {
            100
        };
        let data = bytes(len as usize, 1000 + t);
        let (tenant, pkg) = match t % 4 {
            0 | 1 => (TENANT, open.id),
            2 => (TENANT, done.id),
            _ => ("beta", open.id),
        };
        tasks.push(tokio::spawn(async move {
            let added = r
                .add_file(tenant, pkg, file(&format!("f{t}")), body(&data, 512))
                .await;
            (t, Sha256Digest::of(&data), added)
        }));
    }
    let mut added = 0;
    for task in tasks {
        let (t, digest, result) = task.await.unwrap();
        match (t % 4, result) {
            (0 | 1, Ok(_)) => added += 1,
            (2, Err(RegistryError::PackageFinalized)) | (3, Err(RegistryError::NotFound(_))) => {
                assert_eq!(env.meta.reads().inline_blob(&digest).await.unwrap(), None);
            }
            (_, other) => panic!("task {t}: unexpected {other:?}"),
        }
    }
    assert_eq!(added, 24);
    let now = env.registry.package(TENANT, open.id).await.unwrap();
    assert_eq!(now.file_count, 24);
    let finalized = env.registry.package(TENANT, done.id).await.unwrap();
    assert_eq!(finalized.file_count, 0);
    // Large files are the tasks 0, 3, 6, …; of them only those of the open package's own
    // tenant (t % 4 in 0..=1) are stored.
    let large_added = (0..48).filter(|t| t % 3 == 0 && t % 4 < 2).count();
    assert_eq!(env.blob_files().await.len(), large_added);
    let events = env.registry.events(TENANT, 0, Some(1000), Duration::ZERO);
    assert_eq!(events.await.unwrap().len(), events_before + 24);
}

/// Writes committed together share a transaction: one that is refused (a taken path) must
/// neither take the others down nor leave a trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn refusals_inside_a_commit_group_change_nothing() {
    let env = Env::new().await;
    let pkg = env.package().await;
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let r = env.registry.clone();
        tasks.push(tokio::spawn(async move {
            // Every path is wanted by two tasks with different bytes.
            let data = bytes(100 + t as usize, t);
            r.add_file(
                TENANT,
                pkg.id,
                file(&format!("p{}", t / 2)),
                body(&data, 64),
            )
            .await
        }));
    }
    let mut added = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => added += 1,
            Err(RegistryError::PathTaken(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(added, 32, "one winner per path");
    let now = env.registry.package(TENANT, pkg.id).await.unwrap();
    assert_eq!(now.file_count, 32);
    let events = env
        .registry
        .events(TENANT, 0, Some(1000), Duration::ZERO)
        .await
        .unwrap();
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=33).collect::<Vec<_>>(),
        "one event per change"
    );
    let files = env
        .registry
        .list_files(TENANT, pkg.id, None, Some(1000))
        .await
        .unwrap();
    assert_eq!(files.items.len(), 32);
    assert_eq!(
        files.items.iter().map(|f| f.size).sum::<u64>(),
        now.total_size,
        "counts match the rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_content_is_stored_once_under_races() {
    let env = Env::new().await;
    let pkg = env.package().await;
    let data = bytes(4_000_000, 9);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let r = env.registry.clone();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            r.add_file(
                TENANT,
                pkg.id,
                file(&format!("copy{i}")),
                body(&data, 65536),
            )
            .await
            .unwrap()
        }));
    }
    let mut files = Vec::new();
    for t in tasks {
        files.push(t.await.unwrap());
    }
    let digests: HashSet<_> = files.iter().map(|f| f.sha256()).collect();
    assert_eq!(digests.len(), 1);
    let blobs = env.blob_files().await;
    assert_eq!(blobs.len(), 1, "{blobs:?}");
    for f in &files {
        let (_, stream) = env.registry.open_file(TENANT, f.id, None).await.unwrap();
        assert!(collect(stream).await == data);
    }
    assert!(
        env.temp_files().await.is_empty(),
        "{:?}",
        env.temp_files().await
    );
}

#[tokio::test]
async fn finalize_races_with_adds_without_losing_files() {
    let env = Env::new().await;
    for round in 0..5 {
        let r = env.registry.clone();
        let pkg = r.create_package(TENANT, new_package()).await.unwrap();
        let adder = {
            let r = r.clone();
            tokio::spawn(async move {
                let mut added = 0u64;
                for i in 0..20 {
                    match r
                        .add_file(
                            TENANT,
                            pkg.id,
                            file(&format!("f{i}")),
                            body(&[round as u8, i], 1),
                        )
                        .await
                    {
                        Ok(_) => added += 1,
                        Err(RegistryError::PackageFinalized) => break,
                        Err(e) => panic!("{e:?}"),
                    }
                }
                added
            })
        };
        tokio::task::yield_now().await;
        let done = r.finalize(TENANT, pkg.id).await.unwrap();
        let added = adder.await.unwrap();
        let manifest: manifest::Manifest =
            serde_json::from_str(&r.manifest(TENANT, pkg.id).await.unwrap().json).unwrap();
        assert_eq!(done.file_count, added);
        assert_eq!(
            manifest.file_count, added,
            "the manifest holds exactly the files accepted"
        );
    }
}

#[tokio::test]
async fn long_poll_wakes_on_the_next_event() {
    let env = Env::new().await;
    let r = env.registry.clone();
    let first = r.create_package(TENANT, new_package()).await.unwrap();
    let events = r.events(TENANT, 0, None, Duration::ZERO).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventType::PackageCreated);
    assert_eq!(events[0].data["id"], first.id.to_string());
    let since = events[0].sequence;

    // Nothing new: an empty answer once the wait is over.
    let started = std::time::Instant::now();
    assert!(
        r.events(TENANT, since, None, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    let waiter = {
        let r = r.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let got = r
                .events(TENANT, since, None, Duration::from_secs(20))
                .await
                .unwrap();
            (got, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Another tenant's event does not end the wait.
    r.create_package("beta", new_package()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished());
    r.create_package(TENANT, new_package()).await.unwrap();
    let (got, waited) = waiter.await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sequence, since + 2);
    assert!(waited < Duration::from_secs(5));
}

#[tokio::test]
async fn data_survives_reopening_the_store() {
    let env = Env::new().await;
    let pkg = env.package().await;
    let data = bytes(300_000, 5);
    let f = env
        .registry
        .add_file(TENANT, pkg.id, file("x"), body(&data, 4096))
        .await
        .unwrap();
    env.registry.finalize(TENANT, pkg.id).await.unwrap();
    let manifest = env.registry.manifest(TENANT, pkg.id).await.unwrap();
    let env = env.reopen().await;
    let (_, stream) = env.registry.open_file(TENANT, f.id, None).await.unwrap();
    assert_eq!(collect(stream).await, data);
    assert_eq!(
        env.registry.manifest(TENANT, pkg.id).await.unwrap(),
        manifest
    );
    // Sequences continue after a restart.
    env.registry
        .create_package(TENANT, new_package())
        .await
        .unwrap();
    let events = env
        .registry
        .events(TENANT, 0, None, Duration::ZERO)
        .await
        .unwrap();
    let sequences: Vec<u64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(sequences, [1, 2, 3, 4]);
}

#[tokio::test]
async fn events_from_memory_match_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let url = &database_url(dir.path()).await;
    // A tail of 8 events: most reads below fall before it and go to the database.
    let meta = open_meta(url, 8).await;
    let blobs = open_blobs(dir.path(), None).await;
    let stores = artifactstore_storage::Stores {
        meta: meta.clone(),
        blobs,
    };
    let r = Registry::new(stores, RegistryConfig::default());
    for i in 0..30 {
        let tenant = if i % 3 == 0 { "beta" } else { TENANT };
        r.create_package(tenant, new_package()).await.unwrap();
    }
    let fresh = open_meta(url, 4096).await;
    for scope in [TENANT.into(), "beta".into(), Scope::All] {
        for since in 0..32 {
            for limit in [1, 3, 100] {
                let cached = meta
                    .reads()
                    .events_since(&scope, since, limit)
                    .await
                    .unwrap();
                let stored = fresh
                    .reads()
                    .events_since(&scope, since, limit)
                    .await
                    .unwrap();
                assert_eq!(cached, stored, "{scope:?} since {since} limit {limit}");
            }
        }
    }
}

/// Checkpoints run beside the writer, and the WAL starts over instead of growing with
/// everything written since the store opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_wal_is_checkpointed_and_stays_bounded() {
    const FILES: u64 = 2000;
    let env = Env::sqlite().await;
    let pkg = env.package().await;
    // 60 KiB each: kept inline, 120 MiB in all, some 30,000 WAL pages if nothing started over.
    let len = INLINE_FILE_BYTES as usize - 4096;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let r = env.registry.clone();
        tasks.push(tokio::spawn(async move {
            for t in (worker..FILES).step_by(8) {
                let data = bytes(len, 5000 + t);
                r.add_file(TENANT, pkg.id, file(&format!("f{t}")), body(&data, 8192))
                    .await
                    .unwrap();
            }
        }));
    }
    // Readers always busy inside the WAL: the WAL may restart only between their reads.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (r, done) = (env.registry.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                r.list_files(TENANT, pkg.id, None, Some(100)).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    for task in readers {
        task.await.unwrap();
    }
    let written = FILES * len as u64;
    let size = |name: &str| std::fs::metadata(env.dir.path().join(name)).map_or(0, |m| m.len());
    let wal = size("meta.db-wal");
    eprintln!("WAL {wal} bytes after {written} written");
    assert!(
        wal < written / 2,
        "WAL of {wal} bytes after {written} written"
    );
    // The database file receives the pages while the store stays open.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size("meta.db") < written && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        size("meta.db") >= written,
        "database file {}",
        size("meta.db")
    );
}

/// A listing whose filters make it scan past the query budget is stopped (`OverBudget`, a
/// `503`) on both engines, instead of holding a reader; the same listing within the budget
/// answers.
#[tokio::test]
async fn a_listing_past_its_time_budget_is_stopped() {
    let env = Env::new().await;
    let metadata: BTreeMap<String, String> = (0..16)
        .map(|i| (format!("k{i}"), "v".to_string()))
        .collect();
    let creates = (0..1500).map(|i| {
        let registry = env.registry.clone();
        let package = NewPackage {
            metadata: metadata.clone(),
            subject: format!("s{i}"),
            ..new_package()
        };
        async move { registry.create_package(TENANT, package).await.unwrap() }
    });
    futures::stream::iter(creates)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    // Every package holds every filtered key: each candidate costs all 16 lookups.
    let query = PackageQuery {
        metadata: metadata.clone().into_iter().take(8).collect(),
        has_metadata: metadata.keys().skip(8).cloned().collect(),
        ..PackageQuery::default()
    };
    let scope = Scope::from(TENANT);
    let found = env
        .meta
        .reads()
        .list_packages(&scope, &query, None, 1000)
        .await;
    assert_eq!(found.unwrap().len(), 1000);
    let options = artifactstore_storage::OpenOptions {
        query_budget: Duration::from_millis(1),
        ..options(16)
    };
    let hurried = artifactstore_storage::open_metadata(&env.database_url, &options)
        .await
        .unwrap();
    let stopped = hurried
        .reads()
        .list_packages(&scope, &query, None, 1000)
        .await;
    assert!(
        matches!(stopped, Err(StoreError::OverBudget)),
        "{:?}",
        stopped.map(|p| p.len())
    );
    hurried.close().await;
}

/// The file-record cache answers only its own tenant: another tenant's lookup of a cached id
/// goes to the database as a lookup of an unknown id does, so how fast a `404` comes tells
/// nobody which ids exist. Shown by order, not by time: with the database closed, the owner's
/// read is still answered from the cache and the stranger's fails as an unknown id's would.
#[tokio::test]
async fn another_tenants_cached_file_is_looked_up_like_an_unknown_id() {
    let env = Env::sqlite().await;
    let pkg = env.package().await;
    let added = env
        .registry
        .add_file(TENANT, pkg.id, file("a"), body(b"cached", 1))
        .await
        .unwrap();
    let (owner, stranger) = (Scope::from(TENANT), Scope::from("beta"));
    let reads = env.meta.reads();
    assert!(reads.file(&owner, added.id).await.unwrap().is_some());
    assert!(reads.file(&stranger, added.id).await.unwrap().is_none());
    env.meta.close().await;
    assert!(
        reads.file(&owner, added.id).await.unwrap().is_some(),
        "from the cache"
    );
    assert!(
        reads.file(&stranger, added.id).await.is_err(),
        "not from the cache"
    );
    assert!(
        reads
            .file(&stranger, FileId::generate("beta"))
            .await
            .is_err(),
        "as an unknown id"
    );
}

/// A single-shot file refused for its path is refused before its body is taken, and one whose
/// path was taken while its body was arriving is refused before its bytes are published: in
/// both cases no bytes stay behind for garbage collection to find (twenty refused 512 KiB
/// bodies left 10 MiB on disk before).
#[tokio::test]
async fn refused_single_shot_files_leave_no_bytes() {
    let env = Env::new().await;
    let r = env.registry.clone();
    let pkg = env.package().await;
    r.add_file(TENANT, pkg.id, file("taken"), body(b"first", 1))
        .await
        .unwrap();
    let blobs_before = env.blob_files().await;
    for seed in 0..20 {
        let refused = r
            .add_file(
                TENANT,
                pkg.id,
                file("taken"),
                body(&bytes(512 * 1024, seed), 7),
            )
            .await;
        assert!(
            matches!(refused, Err(RegistryError::PathTaken(_))),
            "{refused:?}"
        );
    }
    // Taken while the body arrives.
    let (feed, fed) = futures::channel::mpsc::unbounded::<std::io::Result<bytes::Bytes>>();
    feed.unbounded_send(Ok(bytes::Bytes::from(bytes(300 * 1024, 99))))
        .unwrap();
    let slow = {
        let r = r.clone();
        tokio::spawn(async move {
            r.add_file(TENANT, pkg.id, file("raced"), Box::pin(fed))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    r.add_file(TENANT, pkg.id, file("raced"), body(b"won", 1))
        .await
        .unwrap();
    drop(feed);
    let lost = slow.await.unwrap();
    assert!(matches!(lost, Err(RegistryError::PathTaken(_))), "{lost:?}");
    assert_eq!(
        env.blob_files().await,
        blobs_before,
        "no blob of a refused write"
    );
    assert_eq!(env.temp_files().await, Vec::<String>::new());
}

/// A package holds at most `max_files_per_package` files (checked where the file is added),
/// and finalize stores no manifest larger than `max_manifest_bytes`: both bound what one
/// package costs (finalize builds its manifest in memory).
#[tokio::test]
async fn files_per_package_and_manifest_size_are_capped() {
    let env = Env::with_config(RegistryConfig {
        max_files_per_package: 3,
        max_manifest_bytes: 2000,
        ..RegistryConfig::default()
    })
    .await;
    let r = &env.registry;
    let pkg = env.package().await;
    for name in ["a", "b", "c"] {
        r.add_file(TENANT, pkg.id, file(name), body(name.as_bytes(), 1))
            .await
            .unwrap();
    }
    let fourth = r.add_file(TENANT, pkg.id, file("d"), body(b"d", 1)).await;
    assert!(
        matches!(fourth, Err(RegistryError::TooManyFiles { limit: 3 })),
        "{fourth:?}"
    );
    assert_eq!(r.package(TENANT, pkg.id).await.unwrap().file_count, 3);
    assert!(
        r.finalize(TENANT, pkg.id).await.is_ok(),
        "3 short paths fit"
    );

    let long = env.package().await;
    for i in 0..3 {
        let path = format!("{i}/{}", "p".repeat(800));
        r.add_file(TENANT, long.id, file(&path), body(b"x", 1))
            .await
            .unwrap();
    }
    let refused = r.finalize(TENANT, long.id).await;
    assert!(
        matches!(
            refused,
            Err(RegistryError::ManifestTooLarge { limit: 2000, .. })
        ),
        "{refused:?}"
    );
    let still = r.package(TENANT, long.id).await.unwrap();
    assert_eq!(still.state, PackageState::Open);
}

/// Naming another tenant's stored digest with other bytes tells nothing: the bytes are always
/// taken and hashed first, and the refusal is the one an unknown digest gets (on S3 a
/// digest's pointer was once looked up before the body was read, answering faster and
/// differently for stored digests). Nothing of the refused bytes stays.
#[tokio::test]
async fn a_wrong_body_for_a_stored_digest_answers_as_for_an_unknown_one() {
    let env = Env::new().await;
    let r = &env.registry;
    let theirs = bytes(300 * 1024, 41);
    let pkg = env.package().await;
    r.add_file(TENANT, pkg.id, file("secret"), body(&theirs, 9))
        .await
        .unwrap();
    let blobs = env.blob_files().await;
    let mine = r.create_package("beta", new_package()).await.unwrap();
    let wrong = bytes(300 * 1024, 42);
    let mut answers = Vec::new();
    for (path, expected) in [
        ("stored", Sha256Digest::of(&theirs)),
        ("unknown", Sha256Digest::of(b"nobody stored this")),
    ] {
        let new = NewFile {
            sha256: Some(expected.hex()),
            ..file(path)
        };
        match r.add_file("beta", mine.id, new, body(&wrong, 5)).await {
            Err(RegistryError::DigestMismatch {
                expected: e,
                actual,
            }) => {
                assert_eq!(e, expected);
                answers.push(actual);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        answers[0], answers[1],
        "the same answer, the digest of what was sent"
    );
    assert_eq!(env.blob_files().await, blobs);
    assert_eq!(env.temp_files().await, Vec::<String>::new());
}

/// Readiness (asked anonymously, as often as anyone likes) probes the stores at most once a
/// second: a flood of probes right after the database went away is answered from the last
/// probe, and only the next second's probe sees the outage.
#[tokio::test]
async fn readiness_is_probed_at_most_once_a_second() {
    let env = Env::new().await;
    env.registry.ready().await.unwrap();
    env.meta.close().await;
    for _ in 0..100 {
        env.registry.ready().await.unwrap();
    }
    tokio::time::sleep(artifactstore_core::registry::READY_FRESH + Duration::from_millis(100))
        .await;
    assert!(env.registry.ready().await.is_err());
}

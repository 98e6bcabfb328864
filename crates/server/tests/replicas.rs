//! Two replicas (two servers) on one PostgreSQL database and one S3 prefix, as behind a load
//! balancer: an upload session whose PATCHes alternate between them, chunks from 1 byte to
//! past S3's 5 MiB part minimum; two PATCHes racing at one offset on different replicas; a
//! file and its events seen on the other replica. Runs only when the environment names both
//! servers (`make test` does; `#[ignore]`d otherwise).

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// Two servers on one new database and one new S3 prefix.
async fn two_replicas() -> (TestApp, TestApp) {
    let database = artifactstore_testkit::require_postgres().await;
    let blobs = artifactstore_testkit::require_s3();
    let start = |database: String, blobs: String| {
        TestApp::builder()
            .args(|a| {
                a.database_url = Some(database);
                a.blob_url = Some(blobs);
            })
            .start()
    };
    let a = start(database.clone(), blobs.clone()).await;
    let b = start(database, blobs).await;
    (a, b)
}

async fn patch(app: &TestApp, id: &str, start: u64, body: Vec<u8>) -> reqwest::Response {
    let end = start + body.len() as u64 - 1;
    app.req(Method::PATCH, &format!("/uploads/{id}"), Some(ACME))
        .header("content-range", format!("bytes {start}-{end}/*"))
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn download(app: &TestApp, file: &str) -> Vec<u8> {
    let r = app
        .get(&format!("/files/{file}/download"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and S3 (make test starts both)"]
async fn an_upload_moves_between_replicas_chunk_by_chunk() {
    let (a, b) = two_replicas().await;
    let pkg = a.package_id().await;
    let created: Value = json_of(a.post("/uploads").json(&json!({}))).await;
    let id = created["id"].as_str().unwrap().to_string();
    // 1 byte, then a chunk past the 5 MiB part minimum, small ones, and a multi-part one.
    let sizes = [1usize, 6 << 20, 3, 70_000, 9 << 20, 1];
    let data = bytes(sizes.iter().sum(), 77);
    let mut offset = 0;
    for (i, len) in sizes.into_iter().enumerate() {
        let replica = if i % 2 == 0 { &a } else { &b };
        let chunk = data[offset..offset + len].to_vec();
        let r = patch(replica, &id, offset as u64, chunk).await;
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "chunk {i}: {:?}",
            r.text().await
        );
        offset += len;
        // The other replica sees the new offset at once.
        let other = if i % 2 == 0 { &b } else { &a };
        let seen: Value = json_of(other.get(&format!("/uploads/{id}"))).await;
        assert_eq!(seen["offset"], offset as u64);
    }
    let done: Value = json_of(
        b.post(&format!("/uploads/{id}/complete"))
            .json(&json!({"package_id": pkg, "path": "big.bin", "sha256": sha256_hex(&data)})),
    )
    .await;
    let file = done["id"].as_str().unwrap().to_string();
    assert!(
        download(&a, &file).await == data,
        "bytes differ on replica a"
    );
    assert!(
        download(&b, &file).await == data,
        "bytes differ on replica b"
    );
    // A range crossing what were chunk boundaries, from the replica that completed nothing.
    let r = a
        .get(&format!("/files/{file}/download"))
        .header("range", "bytes=6291450-6291460")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), data[6_291_450..=6_291_460]);
    // The file's event is in both replicas' logs.
    for replica in [&a, &b] {
        let events = replica.events_json(0).await;
        let kinds: Vec<&str> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["package.created", "file.added"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and S3 (make test starts both)"]
async fn racing_patches_on_two_replicas_have_one_winner() {
    let (a, b) = two_replicas().await;
    let pkg = a.package_id().await;
    for round in 0..4u64 {
        let created: Value = json_of(a.post("/uploads").json(&json!({}))).await;
        let id = created["id"].as_str().unwrap().to_string();
        let head = bytes(1000, round);
        assert_eq!(
            patch(&a, &id, 0, head.clone()).await.status(),
            StatusCode::OK
        );
        // Both at offset 1000 at once, different bytes of different lengths.
        let (one, two) = (bytes(300_000, 100 + round), bytes(200_000, 200 + round));
        let (ra, rb) = tokio::join!(
            patch(&a, &id, 1000, one.clone()),
            patch(&b, &id, 1000, two.clone())
        );
        let statuses = [ra.status(), rb.status()];
        let winners = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        assert_eq!(winners, 1, "round {round}: {statuses:?}");
        for s in statuses.iter().filter(|s| **s != StatusCode::OK) {
            // Lost the compare-and-set, or came after the winner moved the offset.
            assert!(
                *s == StatusCode::CONFLICT || *s == StatusCode::RANGE_NOT_SATISFIABLE,
                "{s}"
            );
        }
        let won = if statuses[0] == StatusCode::OK {
            one
        } else {
            two
        };
        let expected = [head, won].concat();
        let done: Value = json_of(
            a.post(&format!("/uploads/{id}/complete"))
                .json(&json!({"package_id": pkg, "path": format!("race{round}.bin")})),
        )
        .await;
        assert_eq!(done["size"], expected.len() as u64);
        assert_eq!(done["digests"]["sha256"], sha256_hex(&expected));
        let file = done["id"].as_str().unwrap().to_string();
        assert!(download(&b, &file).await == expected);
    }
}

/// Two replicas running retention at once (each with the rule, each sweeping every second):
/// every package the rule selects is deleted exactly once, with one event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and S3 (make test starts both)"]
async fn two_replicas_running_retention_delete_each_package_once() {
    let database = artifactstore_testkit::require_postgres().await;
    let blobs = artifactstore_testkit::require_s3();
    let start = |database: String, blobs: String| {
        TestApp::builder()
            .args(|a| {
                a.database_url = Some(database);
                a.blob_url = Some(blobs);
                a.retention = Some("ci:keep_last=1".into());
                a.retention_interval_secs = Some(1);
            })
            .start()
    };
    let a = start(database.clone(), blobs.clone()).await;
    let b = start(database, blobs).await;
    let mut created = Vec::new();
    for i in 0..40 {
        let app = if i % 2 == 0 { &a } else { &b };
        let p = app
            .create_package_with(json!({"producer": "p", "subject": format!("s{}", i % 4),
                                        "retention_class": "ci"}))
            .await;
        let id = p["id"].as_str().unwrap().to_string();
        app.finalize(&id).await;
        created.push(id);
    }
    // The newest of each of the 4 subjects stays.
    let settled = eventually(std::time::Duration::from_secs(30), async || {
        json_of(a.get("/packages?limit=1000")).await["items"]
            .as_array()
            .unwrap()
            .len()
            == 4
    })
    .await;
    assert!(settled, "retention left the newest package of each subject");
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let events = a.events_json(0).await["events"].clone();
    let mut deleted: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "package.deleted")
        .map(|e| e["package_id"].as_str().unwrap())
        .collect();
    assert_eq!(deleted.len(), 36, "one event per deleted package");
    deleted.sort();
    deleted.dedup();
    assert_eq!(deleted.len(), 36, "no package deleted twice");
    for kept in &created[36..] {
        assert!(!deleted.contains(&kept.as_str()));
    }
}

/// An OCI blob push begun on one replica, cut off mid-chunk, goes on from the other: its
/// progress read there, the rest sent there, the manifest pushed there and pulled from the
/// first, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL and S3 (make test starts both)"]
async fn an_oci_push_resumes_on_the_other_replica() {
    let (a, b) = two_replicas().await;
    let data = bytes(7 << 20, 12);
    let digest = format!("sha256:{}", sha256_hex(&data));
    let start = a.post("/v2/acme/app/blobs/uploads/").send().await.unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let first = 6 << 20;
    let sent = a
        .req(Method::PATCH, &location, Some(ACME))
        .header("content-range", format!("0-{}", first - 1))
        .body(data[..first].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), StatusCode::ACCEPTED);
    // Each response names where the upload goes on (a session exists from its first bytes).
    let location = sent.headers()["location"].to_str().unwrap().to_string();
    // A chunk that never arrives whole: the connection drops after part of it.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let cut = a
        .req(Method::PATCH, &location, Some(ACME))
        .header("content-range", format!("{first}-{}", data.len() - 1))
        .body(reqwest::Body::wrap_stream(futures::stream::unfold(
            rx,
            |mut rx| async { rx.recv().await.map(|item| (item, rx)) },
        )));
    let cut = tokio::spawn(cut.send());
    tx.send(Ok(data[first..first + 1000].to_vec()))
        .await
        .unwrap();
    tx.send(Err(std::io::Error::other("cut"))).await.unwrap();
    let _ = cut.await;

    let progress = b.get(&location).send().await.unwrap();
    assert_eq!(progress.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        progress.headers()["range"],
        format!("0-{}", first - 1).as_str()
    );
    let rest = b
        .req(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            Some(ACME),
        )
        .header("content-range", format!("{first}-{}", data.len() - 1))
        .body(data[first..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), StatusCode::CREATED);
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/octet-stream", "digest": digest, "size": data.len()},
        "layers": []});
    let put = b
        .req(Method::PUT, "/v2/acme/app/manifests/v1", Some(ACME))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(serde_json::to_vec(&manifest).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    let pulled = a
        .get(&format!("/v2/acme/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.bytes().await.unwrap(), data);
    let served = a.get("/v2/acme/app/manifests/v1").send().await.unwrap();
    assert_eq!(
        served.bytes().await.unwrap(),
        serde_json::to_vec(&manifest).unwrap()
    );
}

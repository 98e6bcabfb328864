//! The event stream over HTTP: encodings, the seed's 50-file scenario, a tail that sees every
//! event exactly once while 8 writers commit, and long-poll wake-up latency.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;
use serde_json::Value;

#[tokio::test]
async fn cbor_by_default_json_on_request() {
    let app = TestApp::start().await;
    let pkg = app.create_package().await;
    let r = app.get("/events?wait=0").send().await.unwrap();
    assert_eq!(r.headers()["content-type"], "application/cbor");
    let cbor = r.bytes().await.unwrap();
    let decoded: Value = ciborium::from_reader(&cbor[..]).unwrap();
    let json = app.events_json(0).await;
    assert_eq!(decoded, json, "one value, two encodings");
    assert_eq!(json["next_since"], 1);
    let event = &json["events"][0];
    assert_eq!(event["sequence"], 1);
    assert_eq!(event["type"], "package.created");
    assert_eq!(event["tenant"], "acme");
    assert_eq!(event["package_id"], pkg["id"]);
    assert_eq!(
        event["data"], pkg,
        "package.created carries the package resource"
    );
    assert!(event["occurred_at"].as_str().unwrap().ends_with('Z'));
    // JCS text exactly.
    let text = app
        .get("/events?wait=0")
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(text, artifactstore_core::manifest::to_jcs(&json).unwrap());
    // Nothing past the end: empty, next_since = since.
    let empty = app.events_json(1).await;
    assert_eq!(empty["events"], serde_json::json!([]));
    assert_eq!(empty["next_since"], 1);
    problem(
        app.get("/events?wait=0")
            .header("accept", "text/html")
            .send()
            .await
            .unwrap(),
        406,
    )
    .await;
    problem(app.get("/events?since=-1").send().await.unwrap(), 422).await;
    // Another tenant sees none of it.
    let beta = app
        .req(reqwest::Method::GET, "/events?wait=0", Some(BETA))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(
        beta.json::<Value>().await.unwrap()["events"],
        serde_json::json!([])
    );
}

/// The seed's scripted scenario: 50 files from 0 bytes to several MiB at nested paths,
/// finalized, every file downloaded and checked against the manifest, events tailed.
#[tokio::test]
async fn fifty_file_package_end_to_end() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..50u64 {
        let size = match i {
            0 => 0,
            1 => 1,
            2 => 5 * 1024 * 1024 + 3,
            3 => 3 * 1024 * 1024,
            _ => (i as usize * 7919) % 200_000,
        };
        let path = format!("dir{}/sub{}/file-{i}.bin", i % 4, i % 3);
        let data = bytes(size, i);
        app.add_file(&pkg, &path, data.clone()).await;
        expected.insert(path, data);
    }
    let done = app.finalize(&pkg).await;
    assert_eq!(done["file_count"], 50);
    let manifest: Value = app
        .get(&format!("/packages/{pkg}/manifest.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(manifest["files"].as_array().unwrap().len(), 50);
    let files: Value = app
        .get(&format!("/packages/{pkg}/files?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (entry, file) in manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .zip(files["items"].as_array().unwrap())
    {
        assert_eq!(entry["path"], file["path"]);
        let body = app
            .get(&format!("/files/{}/download", file["id"].as_str().unwrap()))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(
            sha256_hex(&body),
            entry["digests"]["sha256"].as_str().unwrap()
        );
        assert_eq!(body.to_vec(), expected[entry["path"].as_str().unwrap()]);
    }
    let events = app.events_json(0).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 52);
    assert_eq!(kinds[0], "package.created");
    assert!(kinds[1..51].iter().all(|k| *k == "file.added"));
    assert_eq!(kinds[51], "package.finalized");
    let last = &events["events"][51]["data"];
    assert_eq!(last["manifest_digest"], done["manifest_digest"]);
    assert_eq!(last["file_count"], 50);
    assert_eq!(last["total_size"], done["total_size"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tail_sees_every_event_once_while_eight_writers_commit() {
    let app = std::sync::Arc::new(TestApp::start().await);
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let app = app.clone();
            tokio::spawn(async move {
                for p in 0..3 {
                    let pkg = app.package_id().await;
                    for f in 0..4 {
                        app.add_file(
                            &pkg,
                            &format!("w{w}/p{p}/f{f}"),
                            bytes(100 + f, w * 100 + p),
                        )
                        .await;
                    }
                    app.finalize(&pkg).await;
                }
            })
        })
        .collect();
    let total = 8 * 3 * (1 + 4 + 1);
    let tail = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut since = 0u64;
            let mut seen = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while seen.len() < total && Instant::now() < deadline {
                let r = app
                    .get(&format!("/events?since={since}&limit=7&wait=5"))
                    .header("accept", "application/json")
                    .send()
                    .await
                    .unwrap();
                let page: Value = r.json().await.unwrap();
                for e in page["events"].as_array().unwrap() {
                    seen.push(e["sequence"].as_u64().unwrap());
                }
                since = page["next_since"].as_u64().unwrap();
            }
            seen
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    let seen = tail.await.unwrap();
    assert_eq!(
        seen,
        (1..=total as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(seen.iter().collect::<HashSet<_>>().len(), total);
}

#[tokio::test]
async fn long_poll_answers_soon_after_the_event() {
    let app = std::sync::Arc::new(TestApp::start().await);
    app.create_package().await;
    let mut latencies = Vec::new();
    for round in 0..5u64 {
        let since = app.events_json(0).await["next_since"].as_u64().unwrap();
        let poll = {
            let app = app.clone();
            tokio::spawn(async move {
                let r = app
                    .get(&format!("/events?since={since}&wait=30"))
                    .header("accept", "application/json")
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                let page: Value = r.json().await.unwrap();
                (Instant::now(), page)
            })
        };
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !poll.is_finished(),
            "the poll waits while there is nothing (round {round})"
        );
        let committed = Instant::now();
        app.create_package().await;
        let (answered, page) = poll.await.unwrap();
        assert_eq!(page["events"][0]["sequence"].as_u64(), Some(since + 1));
        latencies.push(answered.duration_since(committed));
    }
    latencies.sort();
    // The request that commits is itself counted here, so this bounds commit + wake-up.
    assert!(
        latencies[2] < Duration::from_millis(100),
        "median wake-up {:?}",
        latencies
    );
}

#[tokio::test]
async fn shutdown_ends_long_polls_and_keeps_acknowledged_data() {
    let mut app = TestApp::start().await;
    let pkg = app.package_id().await;
    app.add_file(&pkg, "kept", b"acknowledged".to_vec()).await;
    let poll = {
        let request = app
            .get("/events?since=1000&wait=60")
            .header("accept", "application/json");
        tokio::spawn(async move { request.send().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    app.restart().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown waited for the long-poll"
    );
    let answered = poll.await.unwrap().unwrap();
    assert_eq!(answered.status(), StatusCode::OK);
    let files: Value = app
        .get(&format!("/packages/{pkg}/files"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(files["items"][0]["path"], "kept");
}

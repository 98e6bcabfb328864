//! Lifecycle through HTTP: deletion, holds, retention rules and their events, on whatever
//! stores the environment names (`make test` runs this on SQLite + a blob directory and again
//! on PostgreSQL + S3).

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::Value;

fn id_of(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

async fn status(app: &TestApp, method: Method, path: &str, token: &str) -> u16 {
    app.req(method, path, Some(token))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn delete_and_hold() {
    let app = TestApp::start().await;
    let (a, b) = (app.create_package().await, app.create_package().await);
    let (a, b) = (id_of(&a), id_of(&b));
    assert_eq!(
        json_of(app.get(&format!("/packages/{a}"))).await["held"],
        false
    );
    let shared = bytes(3_000_000, 5);
    let small = app.add_file(&a, "small.txt", b"tiny".to_vec()).await;
    let big = app.add_file(&a, "big.bin", shared.clone()).await;
    let other = app.add_file(&b, "same.bin", shared.clone()).await;
    let address = big["content_address"].as_str().unwrap().to_string();
    app.finalize(&a).await;
    let since = app.events_json(0).await["next_since"].as_u64().unwrap();

    // A download that has started before the deletion completes after it.
    let streaming = app
        .get(&format!("/files/{}/download", id_of(&big)))
        .send()
        .await
        .unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);

    let hold = format!("/packages/{a}/hold");
    let held = json_of(app.req(Method::PUT, &hold, Some(ACME))).await;
    assert_eq!(
        (held["held"].clone(), held["expires_at"].clone()),
        (Value::Bool(true), Value::Null)
    );
    assert_eq!(
        status(&app, Method::PUT, &hold, ACME).await,
        200,
        "idempotent"
    );
    let refused = app
        .req(Method::DELETE, &format!("/packages/{a}"), Some(ACME))
        .send()
        .await
        .unwrap();
    let refused = problem(refused, 409).await;
    assert!(refused["type"].as_str().unwrap().ends_with("package-held"));
    assert_eq!(
        status(&app, Method::DELETE, &format!("/packages/{a}"), ACME_RO).await,
        403
    );
    assert_eq!(
        status(&app, Method::DELETE, &format!("/packages/{a}"), BETA).await,
        404
    );
    assert_eq!(
        status(&app, Method::PUT, &hold, BETA).await,
        404,
        "another tenant's: 404"
    );
    let released = json_of(app.req(Method::DELETE, &hold, Some(ACME))).await;
    assert_eq!(released["held"], false);
    assert_eq!(
        status(&app, Method::DELETE, &hold, ACME).await,
        200,
        "idempotent"
    );

    assert_eq!(
        status(&app, Method::DELETE, &format!("/packages/{a}"), ACME).await,
        204
    );
    for path in [
        format!("/packages/{a}"),
        format!("/packages/{a}/files"),
        format!("/packages/{a}/manifest"),
        format!("/files/{}", id_of(&big)),
        format!("/files/{}/download", id_of(&big)),
        format!("/files/{}/download", id_of(&small)),
    ] {
        problem(app.get(&path).send().await.unwrap(), 404).await;
    }
    assert_eq!(
        status(&app, Method::DELETE, &format!("/packages/{a}"), ACME).await,
        404
    );
    assert_eq!(status(&app, Method::PUT, &hold, ACME).await, 404);
    let listed: Vec<String> = json_of(app.get("/packages")).await["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, vec![b.clone()]);
    let containing = json_of(app.get(&format!("/packages?contains={address}"))).await;
    assert_eq!(containing["items"].as_array().unwrap().len(), 1);
    assert_eq!(containing["items"][0]["id"], b.as_str());

    assert_eq!(
        streaming.bytes().await.unwrap().to_vec(),
        shared,
        "the stream completed"
    );
    let r = app
        .get(&format!("/files/{}/download", id_of(&other)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.bytes().await.unwrap().to_vec(),
        shared,
        "shared bytes stay for b"
    );

    let events = app.events_json(since).await["events"].clone();
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["package.held", "package.released", "package.deleted"]
    );
    assert_eq!(events[0]["data"]["held"], true);
    assert_eq!(events[0]["data"]["id"], a.as_str());
    assert_eq!(events[1]["data"]["held"], false);
    let deleted = &events[2];
    assert_eq!(deleted["package_id"], a.as_str());
    assert_eq!(deleted["data"]["reason"], "request");
    assert_eq!(deleted["data"]["file_count"], 2);
    assert_eq!(deleted["data"]["total_size"], 3_000_004);

    // An open package can be deleted too, and adding to it then finds nothing.
    let open = id_of(&app.create_package().await);
    assert_eq!(
        status(&app, Method::DELETE, &format!("/packages/{open}"), ACME).await,
        204
    );
    problem(app.upload_file(&open, "late.txt", b"x".to_vec()).await, 404).await;
    problem(
        app.upload_file(&open, "late.bin", bytes(100_000, 1)).await,
        404,
    )
    .await;
}

#[tokio::test]
async fn retention_rules_delete_by_age_and_count_once() {
    let app = TestApp::builder()
        .args(|a| {
            a.retention =
                Some("ci:keep_last=2; tmp:max_age=1s; nightly:open_max_age=1s; release:".into());
            a.retention_interval_secs = Some(1);
        })
        .start()
        .await;
    let rules = json_of(app.get("/retention")).await;
    assert_eq!(rules["rules"]["ci"]["keep_last"], 2);
    assert_eq!(rules["rules"]["tmp"]["max_age"], "1s");
    assert_eq!(rules["rules"]["nightly"]["open_max_age"], "1s");
    assert!(rules["rules"]["release"].as_object().unwrap().is_empty());

    let package = |class: &str, subject: &str| serde_json::json!({"producer": "ci", "subject": subject, "retention_class": class});
    let mut main = Vec::new();
    for _ in 0..4 {
        let p = id_of(&app.create_package_with(package("ci", "main")).await);
        app.finalize(&p).await;
        main.push(p);
    }
    // The oldest is held: it survives and still counts among the newest kept.
    let held = json_of(app.req(
        Method::PUT,
        &format!("/packages/{}/hold", main[0]),
        Some(ACME),
    ))
    .await;
    assert_eq!(held["held"], true);
    let feature = id_of(&app.create_package_with(package("ci", "feature")).await);
    app.finalize(&feature).await;
    let other_tenant = app
        .req(Method::POST, "/packages", Some(BETA))
        .json(&package("ci", "main"))
        .send()
        .await
        .unwrap();
    let other_tenant = id_of(&other_tenant.json().await.unwrap());
    let tmp = id_of(&app.create_package_with(package("tmp", "x")).await);
    let tmp = app.finalize(&tmp).await;
    assert_eq!(
        Timestamp::parse(&tmp["expires_at"]) - Timestamp::parse(&tmp["finalized_at"]),
        1000,
        "expires_at = finalized_at + max_age"
    );
    let nightly = app.create_package_with(package("nightly", "n")).await;
    assert_eq!(
        Timestamp::parse(&nightly["expires_at"]) - Timestamp::parse(&nightly["created_at"]),
        1000
    );
    let release = id_of(&app.create_package_with(package("release", "r")).await);
    let release = app.finalize(&release).await;
    assert_eq!(release["expires_at"], Value::Null, "no rule: kept forever");

    let gone = [main[1].clone(), id_of(&tmp), id_of(&nightly)];
    let all_gone = eventually(Duration::from_secs(20), async || {
        let mut left = 0;
        for id in &gone {
            if app
                .get(&format!("/packages/{id}"))
                .send()
                .await
                .unwrap()
                .status()
                == 200
            {
                left += 1;
            }
        }
        left == 0
    })
    .await;
    assert!(
        all_gone,
        "retention deleted the expired and the surplus packages"
    );
    for kept in [&main[0], &main[2], &main[3], &feature, &id_of(&release)] {
        assert_eq!(
            status(&app, Method::GET, &format!("/packages/{kept}"), ACME).await,
            200
        );
    }
    assert_eq!(
        status(
            &app,
            Method::GET,
            &format!("/packages/{other_tenant}"),
            BETA
        )
        .await,
        200
    );
    // A few more sweeps: nothing is deleted twice.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let events = app.events_json(0).await["events"].clone();
    let deletions: Vec<&Value> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "package.deleted")
        .collect();
    assert_eq!(deletions.len(), 3, "{deletions:?}");
    for event in deletions {
        assert_eq!(event["data"]["reason"], "retention");
        assert!(gone.contains(&event["package_id"].as_str().unwrap().to_string()));
    }
}

/// Milliseconds of an RFC 3339 timestamp in a JSON value.
struct Timestamp;

impl Timestamp {
    fn parse(v: &Value) -> i64 {
        artifactstore_core::Timestamp::parse_rfc3339(v.as_str().unwrap())
            .unwrap()
            .as_millis()
    }
}

async fn usage(app: &TestApp, token: &str) -> Value {
    json_of(app.req(Method::GET, "/usage", Some(token))).await
}

#[tokio::test]
async fn quotas_refuse_with_507_and_usage_counts() {
    let app = TestApp::builder()
        .args(|a| a.quotas = Some("acme:max_bytes=300000,max_open_uploads=2".into()))
        .start()
        .await;
    let fresh = usage(&app, ACME).await;
    assert_eq!(fresh["tenant"], "acme");
    assert_eq!(
        (fresh["bytes"].as_u64(), fresh["packages"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(fresh["limits"]["max_bytes"], 300000);
    assert_eq!(fresh["limits"]["max_open_uploads"], 2);
    assert_eq!(usage(&app, BETA).await["limits"]["max_bytes"], Value::Null);

    let pkg = id_of(&app.create_package().await);
    app.add_file(&pkg, "a.bin", bytes(100_000, 1)).await;
    app.add_file(&pkg, "small.txt", b"12345".to_vec()).await;
    assert_eq!(usage(&app, ACME).await["bytes"], 100_005);
    let refused = problem(app.upload_file(&pkg, "b.bin", bytes(250_000, 2)).await, 507).await;
    assert!(
        refused["type"]
            .as_str()
            .unwrap()
            .ends_with("quota-exceeded")
    );
    assert_eq!(refused["quota"], "max_bytes");
    assert_eq!(
        (refused["limit"].as_u64(), refused["used"].as_u64()),
        (Some(300_000), Some(100_005))
    );
    let files = json_of(app.get(&format!("/packages/{pkg}/files"))).await;
    assert_eq!(
        files["items"].as_array().unwrap().len(),
        2,
        "nothing stored"
    );
    assert_eq!(usage(&app, ACME).await["bytes"], 100_005);

    let upload = |app: &TestApp| {
        let r = app.post("/uploads").json(&serde_json::json!({}));
        async move { r.send().await.unwrap() }
    };
    let first: Value = upload(&app).await.json().await.unwrap();
    let second: Value = upload(&app).await.json().await.unwrap();
    let third = problem(upload(&app).await, 507).await;
    assert_eq!(
        (third["quota"].clone(), third["limit"].clone()),
        ("max_open_uploads".into(), 2.into())
    );
    let declared = app
        .post("/uploads")
        .json(&serde_json::json!({"size": 500_000}))
        .send()
        .await
        .unwrap();
    problem(declared, 507).await;
    let patch = |id: &Value, start: u64, body: Vec<u8>| {
        let end = start + body.len() as u64 - 1;
        app.req(
            Method::PATCH,
            &format!("/uploads/{}", id["id"].as_str().unwrap()),
            Some(ACME),
        )
        .header("content-range", format!("bytes {start}-{end}/*"))
        .body(body)
        .send()
    };
    assert_eq!(
        patch(&first, 0, bytes(150_000, 3)).await.unwrap().status(),
        200
    );
    assert_eq!(
        usage(&app, ACME).await["bytes"],
        250_005,
        "an upload's offset counts"
    );
    let past = problem(patch(&first, 150_000, bytes(60_000, 4)).await.unwrap(), 507).await;
    assert_eq!(past["used"], 250_005);
    let offset = json_of(app.get(&format!("/uploads/{}", first["id"].as_str().unwrap()))).await;
    assert_eq!(offset["offset"], 150_000, "nothing written");
    let cancel = app.req(
        Method::DELETE,
        &format!("/uploads/{}", second["id"].as_str().unwrap()),
        Some(ACME),
    );
    assert_eq!(cancel.send().await.unwrap().status(), 204);
    let complete = app
        .post(&format!(
            "/uploads/{}/complete",
            first["id"].as_str().unwrap()
        ))
        .json(&serde_json::json!({"package_id": pkg, "path": "c.bin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(complete.status(), 201);
    let after = usage(&app, ACME).await;
    assert_eq!(
        (after["bytes"].as_u64(), after["open_uploads"].as_u64()),
        (Some(250_005), Some(0))
    );
    assert_eq!(
        status(&app, Method::DELETE, &format!("/packages/{pkg}"), ACME).await,
        204
    );
    let empty = usage(&app, ACME).await;
    assert_eq!(
        (empty["bytes"].as_u64(), empty["packages"].as_u64()),
        (Some(0), Some(0))
    );
}

/// Many parallel uploads of one tenant: each file is checked against the quota in the
/// transaction that records it, so the quota holds exactly, however many race.
#[tokio::test]
async fn a_quota_holds_under_parallel_uploads() {
    const LIMIT: u64 = 350_000;
    const SIZE: usize = 100_000;
    let app = TestApp::builder()
        .args(|a| a.quotas = Some(format!("acme:max_bytes={LIMIT}")))
        .start()
        .await;
    let pkg = id_of(&app.create_package().await);
    let results = futures::future::join_all((0..8).map(|i| {
        let app = &app;
        let pkg = pkg.clone();
        async move {
            app.upload_file(&pkg, &format!("f{i}"), bytes(SIZE, i))
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    let stored = results.iter().filter(|s| **s == 201).count() as u64;
    assert!(
        results.iter().all(|s| *s == 201 || *s == 507),
        "{results:?}"
    );
    let used = usage(&app, ACME).await["bytes"].as_u64().unwrap();
    assert_eq!(used, stored * SIZE as u64);
    assert_eq!(stored, 3, "exactly the room the quota leaves: {results:?}");
    problem(app.upload_file(&pkg, "late", bytes(60_000, 9)).await, 507).await;
    // One after another, the room is filled exactly.
    let seq = TestApp::builder()
        .args(|a| a.quotas = Some(format!("acme:max_bytes={LIMIT}")))
        .start()
        .await;
    let pkg = id_of(&seq.create_package().await);
    let mut sequential = Vec::new();
    for i in 0..5 {
        sequential.push(
            seq.upload_file(&pkg, &format!("f{i}"), bytes(SIZE, i))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(sequential, [201, 201, 201, 507, 507]);
}

//! Upload sessions over HTTP: the contract's statuses and headers, resume after a server
//! restart, and a property test of random lifecycles against a model of the session.

mod common;

use common::*;
use proptest::prelude::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn create(app: &TestApp, size: Option<u64>) -> String {
    let body = match size {
        Some(s) => json!({"size": s}),
        None => json!({}),
    };
    let r = app.post("/uploads").json(&body).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let up: Value = r.json().await.unwrap();
    let id = up["id"].as_str().unwrap().to_string();
    assert!(id.starts_with("upl_"));
    assert_eq!(location, format!("/uploads/{id}"));
    assert_eq!(up["upload_url"], location);
    assert_eq!(up["offset"], 0);
    assert_eq!(up["size"], size.map_or(Value::Null, |s| json!(s)));
    assert_eq!(up["state"], "open");
    assert!(up["expires_at"].as_str().unwrap().ends_with('Z'));
    id
}

async fn patch(app: &TestApp, id: &str, range: Option<String>, body: Vec<u8>) -> reqwest::Response {
    let mut r = app
        .req(Method::PATCH, &format!("/uploads/{id}"), Some(ACME))
        .body(body);
    if let Some(range) = range {
        r = r.header("content-range", range);
    }
    r.send().await.unwrap()
}

async fn complete(app: &TestApp, id: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/uploads/{id}/complete"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn session_statuses_and_headers() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    let data = bytes(300_000, 3);
    let id = create(&app, Some(300_000)).await;
    // An empty POST body is fine too.
    let r = app.post("/uploads").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);

    let r = patch(
        &app,
        &id,
        Some("bytes 0-99999/300000".into()),
        data[..100_000].to_vec(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["upload-offset"], "100000");
    assert_eq!(r.json::<Value>().await.unwrap()["offset"], 100_000);

    // Wrong start: 416 with the offset in the header and the problem; nothing written.
    let r = patch(&app, &id, Some("bytes 0-9/300000".into()), vec![0; 10]).await;
    assert_eq!(r.headers()["upload-offset"], "100000");
    assert_eq!(problem(r, 416).await["offset"], 100_000);
    // Past the declared size.
    let r = patch(
        &app,
        &id,
        Some("bytes 100000-300000/*".into()),
        vec![0; 200_001],
    )
    .await;
    problem(r, 416).await;
    // Malformed, or disagreeing with the body.
    problem(
        patch(
            &app,
            &id,
            Some("bytes=100000-100009/300000".into()),
            vec![0; 10],
        )
        .await,
        400,
    )
    .await;
    problem(
        patch(
            &app,
            &id,
            Some("bytes 100000-100009/300000".into()),
            vec![0; 11],
        )
        .await,
        400,
    )
    .await;
    problem(
        patch(
            &app,
            &id,
            Some("bytes 100000-100009/400000".into()),
            vec![0; 10],
        )
        .await,
        400,
    )
    .await;

    let r = app.get(&format!("/uploads/{id}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["upload-offset"], "100000");
    assert_eq!(r.headers()["cache-control"], "no-store");
    let r = app
        .req(Method::HEAD, &format!("/uploads/{id}"), Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (r.status(), r.headers()["upload-offset"].to_str().unwrap()),
        (StatusCode::OK, "100000")
    );

    // Not there yet: complete is refused and changes nothing.
    let p = problem(
        complete(&app, &id, json!({"package_id": pkg, "path": "big.bin"})).await,
        409,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("100000"));
    // Without Content-Range the body is appended at the offset.
    let r = patch(&app, &id, None, data[100_000..].to_vec()).await;
    assert_eq!(r.headers()["upload-offset"], "300000");

    let wrong = json!({"package_id": pkg, "path": "big.bin", "sha256": sha256_hex(b"nope")});
    problem(complete(&app, &id, wrong).await, 422).await;
    let p = problem(
        complete(&app, &id, json!({"package_id": pkg, "path": "/abs"})).await,
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "path");
    let p = problem(complete(&app, &id, json!({"path": "x"})).await, 422).await;
    assert_eq!(p["errors"][0]["field"], "package_id");
    app.add_file(&pkg, "taken", b"t".to_vec()).await;
    problem(
        complete(&app, &id, json!({"package_id": pkg, "path": "taken"})).await,
        409,
    )
    .await;

    let right = json!({"package_id": pkg, "path": "big.bin", "sha256": sha256_hex(&data), "media_type": "application/x-tar"});
    let r = complete(&app, &id, right.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let file: Value = r.json().await.unwrap();
    assert_eq!(file["size"], 300_000);
    assert_eq!(file["media_type"], "application/x-tar");
    let got = app
        .get(&format!("/files/{}/download", file["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap().to_vec(), data);

    let status: Value = app
        .get(&format!("/uploads/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["state"], "completed");
    problem(complete(&app, &id, right).await, 409).await;
    problem(patch(&app, &id, None, vec![1]).await, 409).await;
    problem(
        app.req(Method::DELETE, &format!("/uploads/{id}"), Some(ACME))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;

    // Cancel: 204, then the upload is gone.
    let other = create(&app, None).await;
    patch(&app, &other, None, vec![1, 2, 3]).await;
    let r = app
        .req(Method::DELETE, &format!("/uploads/{other}"), Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    problem(
        app.get(&format!("/uploads/{other}")).send().await.unwrap(),
        404,
    )
    .await;
    problem(patch(&app, &other, None, vec![1]).await, 404).await;
    problem(
        app.get("/uploads/upl_01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    // Another tenant's upload does not exist for you.
    let beta = app
        .req(Method::GET, &format!("/uploads/{id}"), Some(BETA))
        .send()
        .await
        .unwrap();
    problem(beta, 404).await;
    problem(
        app.post("/uploads")
            .json(&json!({"size": "big"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
}

#[tokio::test]
async fn oversize_and_expiry() {
    let app = TestApp::builder()
        .max_file_bytes(1000)
        .upload_ttl_secs(1)
        .start()
        .await;
    problem(
        app.post("/uploads")
            .json(&json!({"size": 1001}))
            .send()
            .await
            .unwrap(),
        413,
    )
    .await;
    let id = create(&app, None).await;
    problem(patch(&app, &id, None, vec![0; 1001]).await, 413).await;
    let r = patch(&app, &id, None, vec![0; 1000]).await;
    assert_eq!(r.status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    problem(
        app.get(&format!("/uploads/{id}")).send().await.unwrap(),
        404,
    )
    .await;
    problem(patch(&app, &id, None, vec![0; 1]).await, 404).await;
}

#[tokio::test]
async fn an_upload_resumes_after_a_server_restart() {
    let mut app = TestApp::start().await;
    let pkg = app.package_id().await;
    let data = bytes(2_000_000, 9);
    let id = create(&app, Some(2_000_000)).await;
    let r = patch(
        &app,
        &id,
        Some("bytes 0-1199999/2000000".into()),
        data[..1_200_000].to_vec(),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    app.restart().await;
    let status: Value = app
        .get(&format!("/uploads/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let offset = status["offset"].as_u64().unwrap() as usize;
    assert_eq!(offset, 1_200_000);
    let range = format!("bytes {offset}-1999999/2000000");
    assert_eq!(
        patch(&app, &id, Some(range), data[offset..].to_vec())
            .await
            .status(),
        StatusCode::OK
    );
    let r = complete(
        &app,
        &id,
        json!({"package_id": pkg, "path": "f", "sha256": sha256_hex(&data)}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[derive(Clone, Debug)]
enum Op {
    Patch {
        len: usize,
        skew: i8,
        with_range: bool,
    },
    Get,
    Complete {
        digest: Option<bool>,
    },
    CompleteTwice,
    Cancel,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0usize..3000, prop_oneof![6 => Just(0i8), 1 => -2i8..3], any::<bool>())
            .prop_map(|(len, skew, with_range)| Op::Patch { len, skew, with_range }),
        2 => Just(Op::Get),
        2 => prop::option::of(any::<bool>()).prop_map(|digest| Op::Complete { digest }),
        1 => Just(Op::CompleteTwice),
        1 => Just(Op::Cancel),
    ]
}

#[derive(PartialEq, Debug)]
enum Model {
    Open,
    Completed,
    Gone,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random chunkings, out-of-order and repeated PATCHes, GET-resume, cancel, complete and
    /// complete-twice, with and without declared size and expected digest, against a model.
    #[test]
    fn lifecycle_over_http(declared in prop::option::of(0u64..12_000), ops in prop::collection::vec(op(), 1..20), seed in any::<u64>()) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let app = TestApp::start().await;
            let pkg = app.package_id().await;
            let id = create(&app, declared).await;
            let source = bytes(20_000, seed);
            let mut model: Vec<u8> = Vec::new();
            let mut state = Model::Open;
            let mut n = 0;
            for (step, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Patch { len, skew, with_range } => {
                        let offset = model.len() as i64;
                        let start = offset + skew as i64;
                        if start < 0 || (len == 0 && with_range) { continue; }
                        let piece = source[(step * 997) % 15_000..][..len].to_vec();
                        let range = with_range.then(|| format!("bytes {start}-{}/*", start + len as i64 - 1));
                        // Without Content-Range the chunk goes to the current offset.
                        let start = if with_range { start } else { offset };
                        let r = patch(&app, &id, range, piece.clone()).await;
                        let status = r.status().as_u16();
                        match state {
                            Model::Gone => prop_assert_eq!(status, 404),
                            Model::Completed => prop_assert_eq!(status, 409),
                            Model::Open if start != offset => {
                                prop_assert_eq!(status, 416);
                                prop_assert_eq!(r.headers()["upload-offset"].to_str().unwrap(), offset.to_string());
                            }
                            Model::Open if declared.is_some_and(|d| model.len() as u64 + len as u64 > d) => prop_assert_eq!(status, 416),
                            Model::Open => {
                                prop_assert_eq!(status, 200);
                                model.extend_from_slice(&piece);
                                prop_assert_eq!(r.headers()["upload-offset"].to_str().unwrap(), model.len().to_string());
                            }
                        }
                    }
                    Op::Get => {
                        let r = app.get(&format!("/uploads/{id}")).send().await.unwrap();
                        if state == Model::Gone {
                            prop_assert_eq!(r.status().as_u16(), 404);
                        } else {
                            let body: Value = r.json().await.unwrap();
                            prop_assert_eq!(body["offset"].as_u64(), Some(model.len() as u64));
                            prop_assert_eq!(body["state"].as_str(), Some(if state == Model::Open { "open" } else { "completed" }));
                        }
                    }
                    Op::Complete { .. } | Op::CompleteTwice => {
                        let digest = if let Op::Complete { digest } = op { digest } else { Some(true) };
                        let twice = matches!(op, Op::CompleteTwice);
                        let mut body = json!({"package_id": pkg, "path": format!("f{n}")});
                        if let Some(right) = digest {
                            body["sha256"] = json!(if right { sha256_hex(&model) } else { sha256_hex(b"wrong") });
                        }
                        let status = complete(&app, &id, body.clone()).await.status().as_u16();
                        let expected = match state {
                            Model::Gone => 404,
                            Model::Completed => 409,
                            Model::Open if declared.is_some_and(|d| (model.len() as u64) < d) => 409,
                            Model::Open if digest == Some(false) => 422,
                            Model::Open => 201,
                        };
                        prop_assert_eq!(status, expected);
                        if status == 201 {
                            state = Model::Completed;
                            n += 1;
                            let file: Value = app.get(&format!("/packages/{pkg}/files?limit=1000")).send().await.unwrap().json().await.unwrap();
                            let f = file["items"].as_array().unwrap().iter().find(|f| f["path"] == format!("f{}", n - 1)).unwrap().clone();
                            prop_assert_eq!(f["digests"]["sha256"].as_str().unwrap(), sha256_hex(&model));
                        }
                        if twice {
                            let again = complete(&app, &id, body).await.status().as_u16();
                            prop_assert_eq!(again, if state == Model::Gone { 404 } else { 409 });
                        }
                    }
                    Op::Cancel => {
                        let status = app.req(Method::DELETE, &format!("/uploads/{id}"), Some(ACME)).send().await.unwrap().status().as_u16();
                        match state {
                            Model::Gone => prop_assert_eq!(status, 404),
                            Model::Completed => prop_assert_eq!(status, 409),
                            Model::Open => { prop_assert_eq!(status, 204); state = Model::Gone; }
                        }
                    }
                }
            }
            Ok(())
        })?;
    }
}

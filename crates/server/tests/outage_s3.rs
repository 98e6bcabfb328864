//! The contract's store outages, for the blob store: while S3 cannot be reached, downloads
//! and uploads answer `503` with `Retry-After` within their timeouts, and the server recovers
//! by itself. S3 is reached through a loopback relay the test cuts and restores; a test binary
//! of its own, because it points this process's `AWS_ENDPOINT` at the relay. Runs only when
//! the environment names an S3 server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs S3 (make test starts it)"]
async fn an_unreachable_object_store_answers_503_and_the_server_recovers() {
    let blobs = artifactstore_testkit::require_s3();
    let endpoint = std::env::var("AWS_ENDPOINT").unwrap();
    let target = endpoint
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let mut relay = Relay::start("127.0.0.1:0".parse().unwrap(), target).await;
    // SAFETY: the only test of this binary, and it sets the variable before any thread of
    // its own reads the environment.
    unsafe { std::env::set_var("AWS_ENDPOINT", format!("http://{}", relay.addr)) };
    let app = TestApp::builder()
        .args(|a| a.blob_url = Some(blobs))
        .start()
        .await;
    let pkg = app.package_id().await;
    let big = bytes(200_000, 5);
    let file = app.add_file(&pkg, "big.bin", big.clone()).await["id"]
        .as_str()
        .unwrap()
        .to_string();

    relay.cut();
    let started = Instant::now();
    let r = app
        .get(&format!("/files/{file}/download"))
        .send()
        .await
        .unwrap();
    assert!(r.headers().contains_key("retry-after"));
    let p = problem(r, 503).await;
    assert!(
        p["type"].as_str().unwrap().ends_with("store-unavailable"),
        "{p}"
    );
    let r = app.upload_file(&pkg, "other.bin", bytes(200_000, 6)).await;
    problem(r, 503).await;
    let ready = app.get("/readyz").send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let took = started.elapsed();
    eprintln!("three requests during the S3 outage answered 503 in {took:?}");
    assert!(took < Duration::from_secs(30), "{took:?}");

    relay.restore().await;
    let back = eventually(Duration::from_secs(15), async || {
        let r = app.get(&format!("/files/{file}/download")).send().await;
        match r {
            Ok(r) if r.status() == StatusCode::OK => r.bytes().await.is_ok_and(|b| b == big),
            _ => false,
        }
    })
    .await;
    assert!(back, "the server did not recover");
    let again = app.upload_file(&pkg, "other.bin", bytes(200_000, 6)).await;
    assert_eq!(again.status(), StatusCode::CREATED);
}

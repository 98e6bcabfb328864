//! The contract's store outages: while PostgreSQL cannot be reached, requests that need it
//! answer `503` with `Retry-After` (never `500`, never a hang), and the server recovers by
//! itself when it is back. The database is reached through a loopback TCP relay that the
//! test cuts and restores. Runs only when the environment names a PostgreSQL server.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (make test starts it)"]
async fn an_unreachable_database_answers_503_and_the_server_recovers() {
    let url = artifactstore_testkit::require_postgres().await;
    let (head, rest) = url.rsplit_once('@').unwrap();
    let (host, db) = rest.split_once('/').unwrap();
    let target: SocketAddr = host.parse().unwrap();
    let mut relay = Relay::start("127.0.0.1:0".parse().unwrap(), target).await;
    let relayed = format!("{head}@{}/{db}", relay.addr);
    let app = TestApp::builder()
        .local_blobs()
        .args(|a| a.database_url = Some(relayed))
        .start()
        .await;
    let pkg = app.create_package().await;
    let id = pkg["id"].as_str().unwrap().to_string();

    relay.cut();
    for _ in 0..2 {
        let started = Instant::now();
        let response = app.get(&format!("/packages/{id}")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let problem = problem(response, 503).await;
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("store-unavailable")
        );
        let write = app
            .post("/packages")
            .json(&serde_json::json!({"producer": "p", "subject": "s", "retention_class": "standard"}))
            .send()
            .await
            .unwrap();
        assert_eq!(write.status(), StatusCode::SERVICE_UNAVAILABLE);
        let ready = app.get("/readyz").send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Each waited for a connection at most 2 s (sqlx retries the connect meanwhile).
        let took = started.elapsed();
        assert!(took < Duration::from_secs(10), "{took:?}");
        eprintln!("three requests during the outage answered 503 in {took:?}");
    }

    relay.restore().await;
    let back = eventually(Duration::from_secs(15), async || {
        let r = app.get(&format!("/packages/{id}")).send().await;
        r.is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    assert!(back, "the server did not recover");
    let created = app.create_package().await;
    assert!(created["id"].is_string());
    // Long-polls see events again: the follower came back too.
    let events = app.events_json(0).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 2, "{events}");
}

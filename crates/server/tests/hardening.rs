//! The HTTP edge against careless and hostile input, in process: anonymous reads across
//! tenants, bounded multipart heads, long-poll caps, number overflows, undecodable ids,
//! download sandboxing and the JSON manifest's validator. (The real binary under load:
//! `crates/cli/tests/hostile.rs`.)

mod common;

use std::time::Duration;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test]
async fn anonymous_reads_alone_see_every_tenant_and_write_nothing() {
    let app = TestApp::builder().anon_read_all().start().await;
    let acme = app.package_id().await;
    let r = app
        .req(Method::POST, "/packages", Some(BETA))
        .json(&json!({"producer": "p", "subject": "s", "retention_class": "standard"}))
        .send()
        .await
        .unwrap();
    let beta: Value = r.json().await.unwrap();
    let listed: Value = json_of(app.req(Method::GET, "/packages", None)).await;
    let ids: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&acme.as_str()) && ids.contains(&beta["id"].as_str().unwrap()));
    let r = app
        .req(
            Method::GET,
            &format!("/packages/{}", beta["id"].as_str().unwrap()),
            None,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let events: Value = json_of(
        app.req(Method::GET, "/events?wait=0", None)
            .header("accept", "application/json"),
    )
    .await;
    let tenants: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["tenant"].as_str().unwrap())
        .collect();
    assert!(
        tenants.contains(&"acme") && tenants.contains(&"beta"),
        "{tenants:?}"
    );
    // A token still sees only its own tenant.
    let mine: Value = json_of(app.get("/packages")).await;
    assert_eq!(mine["items"].as_array().unwrap().len(), 1);
    let r = app
        .req(Method::POST, "/packages", None)
        .json(&json!({"producer": "p", "subject": "s", "retention_class": "standard"}))
        .send()
        .await
        .unwrap();
    problem(r, 401).await;
}

/// A multipart body that never reaches a boundary, one with too many parts, and one whose
/// parts before `file` are too large: each a `413` problem, nothing stored.
#[tokio::test]
async fn multipart_heads_are_bounded() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    let url = format!("/packages/{pkg}/files");
    let flood = app
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=XYZ")
        .body(vec![0u8; 8 << 20])
        .send()
        .await
        .unwrap();
    let p = problem(flood, 413).await;
    assert!(
        p["type"]
            .as_str()
            .unwrap()
            .ends_with("multipart-head-too-large"),
        "{p}"
    );

    let mut form = reqwest::multipart::Form::new();
    for _ in 0..40 {
        form = form.text("media_type", "text/plain");
    }
    let form = form
        .text("path", "a.txt")
        .part("file", reqwest::multipart::Part::bytes(b"hi".to_vec()));
    problem(app.post(&url).multipart(form).send().await.unwrap(), 413).await;

    let mut form = reqwest::multipart::Form::new();
    for _ in 0..12 {
        form = form.text("media_type", "x".repeat(8000));
    }
    let form = form
        .text("path", "a.txt")
        .part("file", reqwest::multipart::Part::bytes(b"hi".to_vec()));
    problem(app.post(&url).multipart(form).send().await.unwrap(), 413).await;

    // Text parts within the limits are fine, and the refusals stored nothing.
    let files: Value = json_of(app.get(&url)).await;
    assert_eq!(files["items"].as_array().unwrap().len(), 0);
    let form = reqwest::multipart::Form::new()
        .text("path", "a.txt")
        .text("note", "v")
        .part("file", reqwest::multipart::Part::bytes(b"hi".to_vec()));
    let p = problem(app.post(&url).multipart(form).send().await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "note", "{p}");
    let form = reqwest::multipart::Form::new()
        .text("sha256", "0".repeat(8000 / 64 * 64))
        .text("path", "a.txt")
        .part("file", reqwest::multipart::Part::bytes(vec![7u8; 200_000]));
    let p = problem(app.post(&url).multipart(form).send().await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "sha256", "{p}");
    let form = reqwest::multipart::Form::new()
        .text("media_type", format!("text/plain; x={}", "a".repeat(200)))
        .text("path", "a.txt")
        .part("file", reqwest::multipart::Part::bytes(vec![7u8; 200_000]));
    let r = app.post(&url).multipart(form).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn waiting_long_polls_are_capped_per_tenant_and_in_all() {
    let app = TestApp::builder()
        .args(|a| {
            a.max_pollers = Some(3);
            a.max_pollers_per_tenant = Some(2);
        })
        .start()
        .await;
    let poll = |token: &'static str| {
        app.req(Method::GET, "/events?wait=20", Some(token))
            .header("accept", "application/json")
            .send()
    };
    let first = tokio::spawn(poll(ACME));
    let second = tokio::spawn(poll(ACME));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = poll(ACME).await.unwrap();
    assert_eq!(third.headers()["retry-after"], "1");
    let p = problem(third, 429).await;
    assert!(p["detail"].as_str().unwrap().contains("this tenant"), "{p}");
    let beta = tokio::spawn(poll(BETA));
    tokio::time::sleep(Duration::from_millis(300)).await;
    problem(poll(BETA).await.unwrap(), 429).await;
    // wait=0 never waits, so it is never refused.
    let r = app.get("/events?wait=0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A commit answers acme's pollers; beta's keeps waiting.
    app.create_package().await;
    for poller in [first, second] {
        let r = tokio::time::timeout(Duration::from_secs(5), poller)
            .await
            .expect("woken")
            .unwrap()
            .unwrap();
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["events"].as_array().unwrap().len(), 1);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !beta.is_finished(),
        "a commit of acme woke beta's poll with an answer"
    );
    beta.abort();
    // Slots are given back when polls end.
    let again = tokio::spawn(
        app.req(Method::GET, "/events?since=1&wait=20", Some(ACME))
            .send(),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!again.is_finished());
    again.abort();
}

#[tokio::test]
async fn numbers_past_any_integer_are_clamped_or_refused_never_500() {
    let app = TestApp::start().await;
    let huge = "9".repeat(40);
    let pkg = app.package_id().await;
    let file = app.add_file(&pkg, "a.txt", b"0123456789".to_vec()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    for path in [
        format!("/packages?limit={huge}"),
        format!("/packages/{pkg}/files?limit={huge}"),
        format!("/events?limit={huge}&wait={huge}"),
    ] {
        let r = app.get(&path).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    problem(
        app.get(&format!("/events?since={huge}"))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    let download = format!("/files/{file}/download");
    let r = app
        .get(&download)
        .header("range", format!("bytes={huge}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(problem(r, 416).await["status"], 416);
    let r = app
        .get(&download)
        .header("range", format!("bytes=2-{huge}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 2-9/10");
    let upload: Value = json_of(app.post("/uploads").json(&json!({}))).await;
    let url = upload["upload_url"].as_str().unwrap();
    for range in [
        format!("bytes 0-{}/*", u64::MAX),
        format!("bytes 0-{huge}/*"),
        format!("bytes 0-0/{huge}"),
    ] {
        let r = app
            .req(Method::PATCH, url, Some(ACME))
            .header("content-range", range.clone())
            .body("x")
            .send()
            .await
            .unwrap();
        problem(r, 400).await;
    }
}

#[tokio::test]
async fn undecodable_ids_answer_a_problem() {
    let app = TestApp::start().await;
    for path in [
        "/packages/%FF%FE",
        "/files/%C3%28/download",
        "/uploads/%E2%82",
    ] {
        let r = app.get(path).send().await.unwrap();
        problem(r, 404).await;
    }
}

#[tokio::test]
async fn downloads_are_sandboxed_and_manifest_json_is_validated() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    let html = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let form = reqwest::multipart::Form::new()
        .text("path", "evil.html")
        .text("media_type", "text/html")
        .part("file", reqwest::multipart::Part::bytes(html));
    let file: Value = json_of(app.post(&format!("/packages/{pkg}/files")).multipart(form)).await;
    let r = app
        .get(&format!("/files/{}/download", file["id"].as_str().unwrap()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("sandbox") && csp.contains("default-src 'none'"),
        "{csp}"
    );

    let finalized = app.finalize(&pkg).await;
    let digest = finalized["manifest_digest"].as_str().unwrap();
    let url = format!("/packages/{pkg}/manifest.json");
    let r = app.get(&url).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(
        etag.contains(digest) && etag != format!("\"{digest}\""),
        "{etag}"
    );
    let r = app
        .get(&url)
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"], etag.as_str());
}

/// `n` requests at once-after-another to `path` with `headers`; the statuses.
async fn burst(app: &TestApp, n: usize, token: Option<&str>, forwarded: Option<&str>) -> Vec<u16> {
    let mut statuses = Vec::new();
    for _ in 0..n {
        let mut request = app.req(Method::GET, "/packages", token);
        if let Some(client) = forwarded {
            request = request.header("x-forwarded-for", client);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            let wait = response.headers()["retry-after"]
                .to_str()
                .unwrap()
                .to_string();
            assert!(wait.parse::<u64>().unwrap() >= 1, "{wait}");
            let p: Value = response.json().await.unwrap();
            assert!(p["type"].as_str().unwrap().ends_with("rate-limited"), "{p}");
        }
        statuses.push(status);
    }
    statuses
}

fn limited(statuses: &[u16]) -> bool {
    statuses.contains(&429) && statuses.iter().all(|s| *s == 200 || *s == 429)
}

/// Requests per client address: beyond the rate, `429` with `Retry-After`. `X-Forwarded-For`
/// from a client that is not a trusted proxy changes nothing; behind a trusted proxy it names
/// the client, which is then counted on its own.
#[tokio::test]
async fn requests_are_limited_per_client_address_and_per_real_client_behind_a_proxy() {
    let direct = TestApp::builder()
        .args(|a| a.requests_per_sec_per_address = Some(5))
        .start()
        .await;
    assert!(limited(&burst(&direct, 40, Some(ACME), None).await));
    // A spoofed header does not buy a fresh bucket.
    let spoofed = burst(&direct, 3, Some(ACME), Some("203.0.113.77")).await;
    assert!(spoofed.contains(&429), "{spoofed:?}");

    let proxied = TestApp::builder()
        .args(|a| {
            a.requests_per_sec_per_address = Some(5);
            a.trusted_proxies = Some("127.0.0.1, ::1".into());
        })
        .start()
        .await;
    assert!(limited(
        &burst(&proxied, 40, Some(ACME), Some("203.0.113.1")).await
    ));
    let other = burst(&proxied, 3, Some(ACME), Some("203.0.113.2")).await;
    assert_eq!(
        other,
        [200, 200, 200],
        "another client behind the same proxy"
    );
    // What a client wrote itself, left of what the proxy appended, is not taken.
    let forged = burst(&proxied, 1, Some(ACME), Some("198.51.100.5, 203.0.113.1")).await;
    assert_eq!(forged, [429]);
}

/// Requests per tenant: one tenant's burst is limited, another tenant is not.
#[tokio::test]
async fn requests_are_limited_per_tenant() {
    let app = TestApp::builder()
        .args(|a| a.requests_per_sec_per_tenant = Some(5))
        .start()
        .await;
    assert!(limited(&burst(&app, 40, Some(ACME), None).await));
    assert_eq!(burst(&app, 3, Some(BETA), None).await, [200, 200, 200]);
}

/// Connections per client address: beyond the cap a new one is answered `429` and closed.
#[tokio::test]
async fn connections_are_limited_per_client_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = TestApp::builder()
        .args(|a| a.max_connections_per_address = Some(3))
        .start()
        .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fourth = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), fourth.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = app.req(Method::GET, "/healthz", None).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
}

//! The auth and tenancy matrix: no token, bad token, read-only token, another tenant, and
//! anonymous reads on and off — for every endpoint.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

struct Fixture {
    pkg: String,
    open_pkg: String,
    file: String,
    upload: String,
}

async fn fixture(app: &TestApp) -> Fixture {
    let pkg = app.package_id().await;
    let file = app.add_file(&pkg, "a.txt", b"hello".to_vec()).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    app.finalize(&pkg).await;
    let open_pkg = app.package_id().await;
    let r = app.post("/uploads").json(&json!({})).send().await.unwrap();
    let upload = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    Fixture {
        pkg,
        open_pkg,
        file,
        upload,
    }
}

/// (method, path, is a listing that a stranger sees empty)
fn reads(f: &Fixture) -> Vec<(Method, String, bool)> {
    vec![
        (Method::GET, "/packages".into(), true),
        (Method::GET, format!("/packages/{}", f.pkg), false),
        (Method::GET, format!("/packages/{}/files", f.pkg), false),
        (Method::GET, format!("/packages/{}/manifest", f.pkg), false),
        (
            Method::GET,
            format!("/packages/{}/manifest.json", f.pkg),
            false,
        ),
        (Method::GET, format!("/files/{}", f.file), false),
        (Method::GET, format!("/files/{}/download", f.file), false),
        (Method::HEAD, format!("/files/{}/download", f.file), false),
        (Method::GET, format!("/uploads/{}", f.upload), false),
        (Method::HEAD, format!("/uploads/{}", f.upload), false),
        (Method::GET, "/events?wait=0".into(), true),
    ]
}

/// (method, path, body, is scoped to an existing resource of acme)
fn writes(f: &Fixture) -> Vec<(Method, String, Option<Value>, bool)> {
    vec![
        (
            Method::POST,
            "/packages".into(),
            Some(json!({"producer": "p", "subject": "s", "retention_class": "c"})),
            false,
        ),
        (
            Method::POST,
            format!("/packages/{}/files", f.open_pkg),
            None,
            true,
        ),
        (
            Method::POST,
            format!("/packages/{}/finalize", f.open_pkg),
            None,
            true,
        ),
        (Method::POST, "/uploads".into(), Some(json!({})), false),
        (Method::PATCH, format!("/uploads/{}", f.upload), None, true),
        (Method::DELETE, format!("/uploads/{}", f.upload), None, true),
        (
            Method::POST,
            format!("/uploads/{}/complete", f.upload),
            Some(json!({"package_id": f.open_pkg, "path": "x"})),
            true,
        ),
    ]
}

async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<&Value>,
    token: Option<&str>,
) -> reqwest::Response {
    let mut r = app.req(method, path, token);
    if path.ends_with("/files") && body.is_none() {
        let form = reqwest::multipart::Form::new()
            .text("path", "new.txt")
            .part("file", reqwest::multipart::Part::bytes(b"x".to_vec()));
        r = r.multipart(form);
    } else if let Some(body) = body {
        r = r.json(body);
    } else {
        r = r.body(vec![1u8, 2, 3]);
    }
    r.send().await.unwrap()
}

async fn expect(r: reqwest::Response, status: u16, what: &str) {
    assert_eq!(r.status().as_u16(), status, "{what}");
    if status == 401 {
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"artifactstore\"",
            "{what}"
        );
    }
    if status >= 400 && r.headers().get("content-length").is_some_and(|v| v != "0") {
        assert_eq!(
            r.headers()["content-type"],
            "application/problem+json",
            "{what}"
        );
    }
}

#[tokio::test]
async fn matrix_without_anonymous_reads() {
    let app = TestApp::start().await;
    let f = fixture(&app).await;
    for (method, path, listing) in reads(&f) {
        let what = format!("{method} {path}");
        expect(
            send(&app, method.clone(), &path, None, None).await,
            401,
            &format!("{what} no token"),
        )
        .await;
        expect(
            send(&app, method.clone(), &path, None, Some("wrong")).await,
            401,
            &format!("{what} bad token"),
        )
        .await;
        let ro = send(&app, method.clone(), &path, None, Some(ACME_RO)).await;
        assert!(
            ro.status().is_success(),
            "{what} read-only token: {}",
            ro.status()
        );
        let stranger = send(&app, method.clone(), &path, None, Some(BETA)).await;
        if listing {
            assert_eq!(stranger.status(), StatusCode::OK, "{what} other tenant");
            let body = if path.starts_with("/events") {
                // CBOR by default; decode it.
                let bytes = stranger.bytes().await.unwrap();
                ciborium::from_reader::<Value, _>(&bytes[..]).unwrap()["events"].clone()
            } else {
                stranger.json::<Value>().await.unwrap()["items"].clone()
            };
            assert_eq!(body, json!([]), "{what}: another tenant's listing is empty");
        } else {
            expect(stranger, 404, &format!("{what} other tenant")).await;
        }
    }
    for (method, path, body, scoped) in writes(&f) {
        let what = format!("{method} {path}");
        expect(
            send(&app, method.clone(), &path, body.as_ref(), None).await,
            401,
            &format!("{what} no token"),
        )
        .await;
        expect(
            send(&app, method.clone(), &path, body.as_ref(), Some("wrong")).await,
            401,
            &format!("{what} bad token"),
        )
        .await;
        expect(
            send(&app, method.clone(), &path, body.as_ref(), Some(ACME_RO)).await,
            403,
            &format!("{what} read-only"),
        )
        .await;
        if scoped {
            expect(
                send(&app, method.clone(), &path, body.as_ref(), Some(BETA)).await,
                404,
                &format!("{what} other tenant"),
            )
            .await;
        }
    }
    // None of the refused writes changed anything.
    let pkg: Value = app
        .get(&format!("/packages/{}", f.open_pkg))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (pkg["state"].as_str(), pkg["file_count"].as_u64()),
        (Some("open"), Some(0))
    );
    let up: Value = app
        .get(&format!("/uploads/{}", f.upload))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (up["state"].as_str(), up["offset"].as_u64()),
        (Some("open"), Some(0))
    );
    // Anonymous service endpoints.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/docs/"] {
        assert_eq!(
            send(&app, Method::GET, path, None, None).await.status(),
            StatusCode::OK,
            "{path}"
        );
    }
    // Lower-case scheme is accepted; another scheme is not.
    let r = app
        .client
        .get(format!("{}/packages", app.base))
        .header("authorization", format!("bearer {ACME}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .get(format!("{}/packages", app.base))
        .header("authorization", format!("Basic {ACME}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn matrix_with_anonymous_reads() {
    let app = TestApp::builder().anon_read().start().await;
    let f = fixture(&app).await;
    for (method, path, _) in reads(&f) {
        let r = send(&app, method.clone(), &path, None, None).await;
        assert!(
            r.status().is_success(),
            "{method} {path} anonymous: {}",
            r.status()
        );
        // A wrong token is still wrong.
        expect(
            send(&app, method.clone(), &path, None, Some("wrong")).await,
            401,
            &path,
        )
        .await;
    }
    for (method, path, body, _) in writes(&f) {
        expect(
            send(&app, method.clone(), &path, body.as_ref(), None).await,
            401,
            &format!("{method} {path} anonymous"),
        )
        .await;
    }
}

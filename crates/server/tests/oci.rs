//! The OCI distribution face through HTTP, on whatever stores the environment names (`make
//! test` runs this on SQLite + a blob directory and again on PostgreSQL + S3): the challenge
//! and the token endpoint, pulls of packages as OCI artifacts by tag, package id and digest,
//! blobs with `Range` and `304`, tag listing with paging, deletions, and every refusal with
//! its status and OCI code.

mod common;

use base64::Engine;
use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A finalized package with a small and a large file, tagged `app:latest`; its id and its
/// record.
async fn tagged_package(app: &TestApp) -> (String, Value) {
    let id = app.package_id().await;
    app.add_file(&id, "a.txt", b"hello oci".to_vec()).await;
    app.add_file(&id, "dir/b.bin", bytes(300_000, 9)).await;
    let package = app.finalize(&id).await;
    let tag = app
        .req(Method::PUT, "/tags/app/latest", Some(ACME))
        .json(&json!({ "package_id": id }));
    assert_eq!(tag.send().await.unwrap().status(), StatusCode::CREATED);
    (id, package)
}

/// The OCI `errors[0].code` of a refusal with `status`.
async fn oci_code(response: reqwest::Response, status: u16) -> String {
    assert_eq!(response.status().as_u16(), status);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status, "{body}");
    body["errors"][0]["code"].as_str().unwrap().to_string()
}

fn basic(token: &str) -> String {
    let pair = format!("anyone:{token}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

#[tokio::test]
async fn clients_are_challenged_and_get_a_token() {
    let app = TestApp::start().await;
    let unauthenticated = app.req(Method::GET, "/v2/", None).send().await.unwrap();
    let challenge = unauthenticated.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let host = app.base.trim_start_matches("http://");
    assert_eq!(
        challenge,
        format!("Bearer realm=\"http://{host}/v2/token\",service=\"artifactstore\"")
    );
    assert_eq!(oci_code(unauthenticated, 401).await, "UNAUTHORIZED");

    let token = app
        .req(
            Method::GET,
            "/v2/token?service=artifactstore&scope=repository:acme/app:pull",
            None,
        )
        .header("authorization", basic(ACME));
    let token: Value = json_of(token).await;
    assert_eq!(token["token"], token["access_token"]);
    assert!(token["expires_in"].as_u64().unwrap() > 0);
    let bearer = token["token"].as_str().unwrap();
    let base = app
        .req(Method::GET, "/v2/", Some(bearer))
        .send()
        .await
        .unwrap();
    assert_eq!(base.status(), StatusCode::OK);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let direct = app
        .req(Method::GET, "/v2/", None)
        .header("authorization", basic(ACME));
    assert_eq!(direct.send().await.unwrap().status(), StatusCode::OK);

    let wrong = app
        .req(Method::GET, "/v2/token", None)
        .header("authorization", basic("nope"));
    assert_eq!(
        oci_code(wrong.send().await.unwrap(), 401).await,
        "UNAUTHORIZED"
    );
    let none = app
        .req(Method::GET, "/v2/token", None)
        .send()
        .await
        .unwrap();
    assert_eq!(oci_code(none, 401).await, "UNAUTHORIZED");
    // Basic is a /v2/ thing: the native API takes bearer tokens only.
    let native = app
        .req(Method::GET, "/packages", None)
        .header("authorization", basic(ACME));
    assert_eq!(
        native.send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn packages_are_pulled_as_artifacts_by_tag_id_and_digest() {
    let app = TestApp::start().await;
    let (id, package) = tagged_package(&app).await;
    let by_tag = app
        .get("/v2/acme/app/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(by_tag.status(), StatusCode::OK);
    let headers = by_tag.headers().clone();
    let body = by_tag.bytes().await.unwrap();
    let digest = format!("sha256:{}", sha256_hex(&body));
    assert_eq!(headers["content-type"], MANIFEST_TYPE);
    assert_eq!(headers["docker-content-digest"], digest.as_str());
    assert_eq!(headers["content-length"], body.len().to_string().as_str());

    let manifest: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], MANIFEST_TYPE);
    assert_eq!(
        manifest["artifactType"],
        "application/vnd.artifactstore.package.v1"
    );
    assert_eq!(manifest["config"]["digest"], package["manifest_digest"]);
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.artifactstore.manifest.v1+cbor"
    );
    let titles: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            l["annotations"]["org.opencontainers.image.title"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(titles, ["a.txt", "dir/b.bin"]);
    assert_eq!(
        manifest["annotations"]["dev.artifactstore.package_id"],
        id.as_str()
    );
    assert_eq!(
        manifest["annotations"]["dev.artifactstore.metadata.git.sha"],
        "abc123"
    );

    // The same bytes however it is named, in any repository of the tenant for an id.
    for path in [
        format!("/v2/acme/app/manifests/{id}"),
        format!("/v2/acme/other/thing/manifests/{id}"),
        format!("/v2/acme/app/manifests/{digest}"),
        "/v2/acme/app/manifests/latest".to_string(),
    ] {
        let again = app.get(&path).send().await.unwrap();
        assert_eq!(again.status(), StatusCode::OK, "{path}");
        assert_eq!(again.bytes().await.unwrap(), body, "{path}");
    }
    let head = app.req(Method::HEAD, "/v2/acme/app/manifests/latest", Some(ACME));
    let head = head.send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(head.headers()["docker-content-digest"], digest.as_str());
    let etag = head.headers()["etag"].clone();
    let cached = app
        .get("/v2/acme/app/manifests/latest")
        .header("if-none-match", etag);
    assert_eq!(
        cached.send().await.unwrap().status(),
        StatusCode::NOT_MODIFIED
    );

    // Blobs: the config is the CBOR manifest; layers are the files, with Range.
    let config = manifest["config"]["digest"].as_str().unwrap();
    let cbor = app
        .get(&format!("/packages/{id}/manifest"))
        .header("accept", "application/cbor")
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let served = app
        .get(&format!("/v2/acme/app/blobs/{config}"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["docker-content-digest"], config);
    assert_eq!(served.bytes().await.unwrap(), cbor);
    let large = manifest["layers"][1]["digest"].as_str().unwrap();
    let part = app
        .get(&format!("/v2/acme/any/repo/blobs/{large}"))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        part.bytes().await.unwrap().as_ref(),
        &bytes(300_000, 9)[10..20]
    );
    let head = app.req(
        Method::HEAD,
        &format!("/v2/acme/app/blobs/{large}"),
        Some(ACME),
    );
    let head = head.send().await.unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "300000");
    assert_eq!(head.headers()["docker-content-digest"], large);
    let small = manifest["layers"][0]["digest"].as_str().unwrap();
    let small = app
        .get(&format!("/v2/acme/app/blobs/{small}"))
        .send()
        .await
        .unwrap();
    assert_eq!(small.bytes().await.unwrap().as_ref(), b"hello oci");
}

#[tokio::test]
async fn tenancy_tokens_and_names_are_refused_with_oci_codes() {
    let app = TestApp::start().await;
    let (id, _) = tagged_package(&app).await;
    let manifest: Value = json_of(app.get("/v2/acme/app/manifests/latest")).await;
    let layer = manifest["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let as_beta = |path: &str| app.req(Method::GET, path, Some(BETA)).send();

    // Another tenant's repository is unknown, never a hint; its blobs are not the caller's.
    let other = as_beta("/v2/acme/app/manifests/latest").await.unwrap();
    assert_eq!(oci_code(other, 404).await, "NAME_UNKNOWN");
    let blob = as_beta(&format!("/v2/beta/app/blobs/{layer}"))
        .await
        .unwrap();
    assert_eq!(oci_code(blob, 404).await, "BLOB_UNKNOWN");
    let by_id = as_beta(&format!("/v2/beta/app/manifests/{id}"))
        .await
        .unwrap();
    assert_eq!(oci_code(by_id, 404).await, "MANIFEST_UNKNOWN");

    let cases = [
        ("/v2/acme/app/manifests/nope", 404, "MANIFEST_UNKNOWN"),
        ("/v2/acme/app/manifests/sha256:00", 404, "MANIFEST_UNKNOWN"),
        ("/v2/acme/app/blobs/sha256:zz", 400, "DIGEST_INVALID"),
        (
            "/v2/acme/app/blobs/sha256:0000000000000000000000000000000000000000000000000000000000000000",
            404,
            "BLOB_UNKNOWN",
        ),
        ("/v2/acme/App/manifests/latest", 400, "NAME_INVALID"),
        ("/v2/acme/manifests/latest", 404, "NAME_UNKNOWN"),
        ("/v2/nobody/app/manifests/latest", 404, "NAME_UNKNOWN"),
    ];
    for (path, status, code) in cases {
        let response = app.get(path).send().await.unwrap();
        assert_eq!(oci_code(response, status).await, code, "{path}");
    }
    let read_only = app.req(
        Method::DELETE,
        "/v2/acme/app/manifests/latest",
        Some(ACME_RO),
    );
    assert_eq!(
        oci_code(read_only.send().await.unwrap(), 403).await,
        "DENIED"
    );
    let blob_delete = app.req(
        Method::DELETE,
        &format!("/v2/acme/app/blobs/{layer}"),
        Some(ACME),
    );
    assert_eq!(
        oci_code(blob_delete.send().await.unwrap(), 405).await,
        "UNSUPPORTED"
    );
    let range = app
        .get(&format!("/v2/acme/app/blobs/{layer}"))
        .header("range", "bytes=400000-")
        .send()
        .await
        .unwrap();
    assert_eq!(range.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    // Nothing was deleted by any of it.
    let still = app
        .get("/v2/acme/app/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(still.status(), StatusCode::OK);
}

#[tokio::test]
async fn tags_are_listed_in_pages_and_deletions_map_onto_tags_and_packages() {
    let app = TestApp::start().await;
    let (id, _) = tagged_package(&app).await;
    for tag in ["v1", "v2", "V3", "_x"] {
        let put = app
            .req(Method::PUT, &format!("/tags/app/{tag}"), Some(ACME))
            .json(&json!({ "package_id": id }));
        assert_eq!(put.send().await.unwrap().status(), StatusCode::CREATED);
    }
    let all = json_of(app.get("/v2/acme/app/tags/list")).await;
    assert_eq!(
        all,
        json!({"name": "acme/app", "tags": ["V3", "_x", "latest", "v1", "v2"]})
    );
    let first = app.get("/v2/acme/app/tags/list?n=2").send().await.unwrap();
    let link = first.headers()["link"].to_str().unwrap().to_string();
    assert_eq!(link, "</v2/acme/app/tags/list?n=2&last=_x>; rel=\"next\"");
    assert_eq!(
        first.json::<Value>().await.unwrap()["tags"],
        json!(["V3", "_x"])
    );
    let last = app
        .get("/v2/acme/app/tags/list?n=2&last=v1")
        .send()
        .await
        .unwrap();
    assert!(last.headers().get("link").is_none());
    assert_eq!(last.json::<Value>().await.unwrap()["tags"], json!(["v2"]));
    let none = json_of(app.get("/v2/acme/app/tags/list?n=0")).await;
    assert_eq!(none["tags"], json!([]));
    let unknown = app.get("/v2/acme/nothing/tags/list").send().await.unwrap();
    assert_eq!(oci_code(unknown, 404).await, "NAME_UNKNOWN");

    // A tag deletes the tag only; a digest deletes the package (refused while held).
    let untag = app.req(Method::DELETE, "/v2/acme/app/manifests/v1", Some(ACME));
    assert_eq!(untag.send().await.unwrap().status(), StatusCode::ACCEPTED);
    let gone = app.get("/v2/acme/app/manifests/v1").send().await.unwrap();
    assert_eq!(oci_code(gone, 404).await, "MANIFEST_UNKNOWN");
    let digest = app
        .get("/v2/acme/app/manifests/latest")
        .send()
        .await
        .unwrap();
    let digest = digest.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let hold = app.req(Method::PUT, &format!("/packages/{id}/hold"), Some(ACME));
    assert_eq!(hold.send().await.unwrap().status(), StatusCode::OK);
    let path = format!("/v2/acme/app/manifests/{digest}");
    let held = app
        .req(Method::DELETE, &path, Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_code(held, 409).await, "DENIED");
    let release = app.req(Method::DELETE, &format!("/packages/{id}/hold"), Some(ACME));
    assert_eq!(release.send().await.unwrap().status(), StatusCode::OK);
    let deleted = app
        .req(Method::DELETE, &path, Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let package = app.get(&format!("/packages/{id}")).send().await.unwrap();
    assert_eq!(package.status(), StatusCode::NOT_FOUND);
    // Its tags went with it: nothing is left in the repository, which is unknown now.
    let tags = app.get("/v2/acme/app/tags/list").send().await.unwrap();
    assert_eq!(oci_code(tags, 404).await, "NAME_UNKNOWN");
    let by_digest = app.get(&path).send().await.unwrap();
    assert_eq!(oci_code(by_digest, 404).await, "MANIFEST_UNKNOWN");
}

/// With anonymous reads on, pulls need no credentials, and writes still do.
#[tokio::test]
async fn anonymous_readers_pull_without_credentials() {
    let app = TestApp::builder().anon_read().start().await;
    tagged_package(&app).await;
    let base = app.req(Method::GET, "/v2/", None).send().await.unwrap();
    assert_eq!(base.status(), StatusCode::OK);
    let pulled = app.req(Method::GET, "/v2/acme/app/manifests/latest", None);
    assert_eq!(pulled.send().await.unwrap().status(), StatusCode::OK);
    let delete = app.req(Method::DELETE, "/v2/acme/app/manifests/latest", None);
    assert_eq!(
        oci_code(delete.send().await.unwrap(), 401).await,
        "UNAUTHORIZED"
    );
    // The ping's 200 carries the challenge too, so a client that has credentials uses them
    // for its pushes; one without gets an anonymous token that reads as no credentials.
    let ping = app.req(Method::GET, "/v2/", None).send().await.unwrap();
    let challenge = ping.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"http://"),
        "{challenge}"
    );
    let anonymous = json_of(app.req(Method::GET, "/v2/token", None)).await;
    let token = anonymous["token"].as_str().unwrap();
    let pulled = app.req(Method::GET, "/v2/acme/app/manifests/latest", Some(token));
    assert_eq!(pulled.send().await.unwrap().status(), StatusCode::OK);
    let pushed = app.req(Method::POST, "/v2/acme/app/blobs/uploads/", Some(token));
    assert_eq!(
        oci_code(pushed.send().await.unwrap(), 401).await,
        "UNAUTHORIZED"
    );
    let with_token = app.req(Method::POST, "/v2/acme/app/blobs/uploads/", Some(ACME));
    assert_eq!(
        with_token.send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
}

/// Pushes `bytes` as a blob of `name` (`POST` then `PUT ?digest=`); its digest.
async fn push_blob(app: &TestApp, name: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let start = app
        .post(&format!("/v2/{name}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), StatusCode::ACCEPTED);
    let location = start.headers()["location"].to_str().unwrap().to_string();
    let put = app
        .req(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            Some(ACME),
        )
        .body(bytes.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);
    assert_eq!(put.headers()["docker-content-digest"], digest.as_str());
    digest
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

async fn put_manifest(
    app: &TestApp,
    path: &str,
    media_type: &str,
    body: &Value,
) -> reqwest::Response {
    app.req(Method::PUT, path, Some(ACME))
        .header("content-type", media_type)
        .body(serde_json::to_vec(body).unwrap())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn blobs_are_pushed_monolithically_in_chunks_resumed_and_mounted() {
    let app = TestApp::start().await;
    // Single POST with the digest.
    let one = bytes(70_000, 1);
    let digest = format!("sha256:{}", sha256_hex(&one));
    let single = app
        .post(&format!("/v2/acme/app/blobs/uploads/?digest={digest}"))
        .body(one.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(single.status(), StatusCode::CREATED);
    assert_eq!(
        single.headers()["location"],
        format!("/v2/acme/app/blobs/{digest}").as_str()
    );
    let read = app
        .get(&format!("/v2/acme/app/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.bytes().await.unwrap(), one);

    // Chunked: PATCH with Content-Range, one without, a progress GET, a PATCH out of order
    // refused, then PUT with the last chunk.
    let data = bytes(200_000, 2);
    let digest = format!("sha256:{}", sha256_hex(&data));
    let start = app
        .post("/v2/acme/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let mut location = start.headers()["location"].to_str().unwrap().to_string();
    assert!(start.headers().contains_key("docker-upload-uuid"));
    let patch = |range: Option<&str>, part: &[u8], at: &str| {
        let mut r = app.req(Method::PATCH, at, Some(ACME)).body(part.to_vec());
        if let Some(range) = range {
            r = r.header("content-range", range);
        }
        r.send()
    };
    let first = patch(Some("0-99999"), &data[..100_000], &location)
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert_eq!(first.headers()["range"], "0-99999");
    location = first.headers()["location"].to_str().unwrap().to_string();
    let second = patch(None, &data[100_000..150_000], &location)
        .await
        .unwrap();
    assert_eq!(second.headers()["range"], "0-149999");
    let stale = patch(Some("100000-149999"), &data[100_000..150_000], &location)
        .await
        .unwrap();
    assert_eq!(oci_code(stale, 416).await, "BLOB_UPLOAD_INVALID");
    let progress = app.get(&location).send().await.unwrap();
    assert_eq!(progress.status(), StatusCode::NO_CONTENT);
    assert_eq!(progress.headers()["range"], "0-149999");
    let wrong = app
        .req(
            Method::PUT,
            &format!("{location}?digest=sha256:{}", "0".repeat(64)),
            Some(ACME),
        )
        .body(data[150_000..].to_vec());
    let wrong = wrong.send().await.unwrap();
    assert_eq!(oci_code(wrong, 400).await, "DIGEST_INVALID");
    let progress = app.get(&location).send().await.unwrap();
    assert_eq!(
        progress.headers()["range"],
        "0-199999",
        "the last chunk was kept"
    );
    let done = app
        .req(
            Method::PUT,
            &format!("{location}?digest={digest}"),
            Some(ACME),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), StatusCode::CREATED);
    let head = app.req(
        Method::HEAD,
        &format!("/v2/acme/other/blobs/{digest}"),
        Some(ACME),
    );
    assert_eq!(
        head.send().await.unwrap().headers()["content-length"],
        "200000"
    );
    let closed = app.get(&location).send().await.unwrap();
    assert_eq!(oci_code(closed, 404).await, "BLOB_UPLOAD_UNKNOWN");

    // Zero bytes.
    let empty = push_blob(&app, "acme/app", b"").await;
    let read = app
        .get(&format!("/v2/acme/app/blobs/{empty}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (read.status(), read.bytes().await.unwrap().len()),
        (StatusCode::OK, 0)
    );

    // Mounts: within the tenant 201; another tenant's blob is not mountable (a new session).
    let mount = app
        .post(&format!(
            "/v2/acme/elsewhere/blobs/uploads/?mount={digest}&from=acme/app"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(mount.status(), StatusCode::CREATED);
    let foreign = app
        .req(
            Method::POST,
            &format!("/v2/beta/app/blobs/uploads/?mount={digest}&from=acme/app"),
            Some(BETA),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), StatusCode::ACCEPTED);
    let unseen = app.req(
        Method::GET,
        &format!("/v2/beta/app/blobs/{digest}"),
        Some(BETA),
    );
    assert_eq!(
        oci_code(unseen.send().await.unwrap(), 404).await,
        "BLOB_UNKNOWN"
    );
    // A read token pushes nothing; a cancelled upload is gone.
    let read_only = app.req(Method::POST, "/v2/acme/app/blobs/uploads/", Some(ACME_RO));
    assert_eq!(
        oci_code(read_only.send().await.unwrap(), 403).await,
        "DENIED"
    );
    let start = app
        .post("/v2/acme/app/blobs/uploads/")
        .send()
        .await
        .unwrap();
    let location = start.headers()["location"].to_str().unwrap().to_string();
    // Until its first bytes a session is nothing but its location; with bytes it is an
    // upload session, and cancelled, it is gone.
    let sent = app
        .req(Method::PATCH, &location, Some(ACME))
        .body(vec![1u8; 10]);
    let sent = sent.send().await.unwrap();
    let location = sent.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains("/upl_"), "{location}");
    let cancel = app
        .req(Method::DELETE, &location, Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        oci_code(app.get(&location).send().await.unwrap(), 404).await,
        "BLOB_UPLOAD_UNKNOWN"
    );
    let forged = app
        .get("/v2/acme/app/blobs/uploads/new_nonsense")
        .send()
        .await
        .unwrap();
    assert_eq!(oci_code(forged, 404).await, "BLOB_UPLOAD_UNKNOWN");
}

#[tokio::test]
async fn manifests_are_pushed_as_packages_and_served_byte_identical() {
    let app = TestApp::start().await;
    let since = app.events_json(0).await["next_since"].as_u64().unwrap();
    let config = push_blob(&app, "acme/app", br#"{"architecture":"amd64"}"#).await;
    let layer = push_blob(&app, "acme/app", &bytes(50_000, 3)).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config, 24),
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer,
                    "size": 50_000, "annotations": {"org.opencontainers.image.title": "root.tar"}}],
    });
    // Pretty-printed on purpose: the bytes are kept as sent.
    let body = serde_json::to_vec_pretty(&manifest).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&body));
    let pushed = app
        .req(Method::PUT, "/v2/acme/app/manifests/v1", Some(ACME))
        .header("content-type", MANIFEST_TYPE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(pushed.status(), StatusCode::CREATED);
    assert_eq!(pushed.headers()["docker-content-digest"], digest.as_str());
    assert_eq!(
        pushed.headers()["location"],
        format!("/v2/acme/app/manifests/{digest}").as_str()
    );
    for path in [
        "/v2/acme/app/manifests/v1".to_string(),
        format!("/v2/acme/app/manifests/{digest}"),
    ] {
        let served = app.get(&path).send().await.unwrap();
        assert_eq!(served.headers()["content-type"], MANIFEST_TYPE);
        assert_eq!(served.bytes().await.unwrap(), body, "{path}");
    }
    // Another repository does not have it by digest.
    let elsewhere = app
        .get(&format!("/v2/acme/other/manifests/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(oci_code(elsewhere, 404).await, "MANIFEST_UNKNOWN");

    // The package: producer oci, subject the repository, its blobs as files.
    let tag = json_of(app.get("/tags/app/v1")).await;
    let id = tag["package_id"].as_str().unwrap().to_string();
    let package = json_of(app.get(&format!("/packages/{id}"))).await;
    assert_eq!(
        (package["producer"].as_str(), package["subject"].as_str()),
        (Some("oci"), Some("app"))
    );
    assert_eq!(package["state"], "finalized");
    let files = json_of(app.get(&format!("/packages/{id}/files"))).await;
    let paths: Vec<&str> = files["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    let config_path = format!("blobs/sha256/{}", config.trim_start_matches("sha256:"));
    let mut expected = vec![config_path.as_str(), "root.tar"];
    expected.sort();
    assert_eq!(paths, expected);
    let events = app.events_json(since).await;
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "package.created",
            "file.added",
            "file.added",
            "package.finalized",
            "tag.set"
        ]
    );

    // The compact form is another manifest (another digest): another package.
    let compact = format!(
        "sha256:{}",
        sha256_hex(&serde_json::to_vec(&manifest).unwrap())
    );
    let path = format!("/v2/acme/app/manifests/{compact}");
    let again = put_manifest(&app, &path, MANIFEST_TYPE, &manifest).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    // The same bytes again: the same package, nothing new.
    let twice = app
        .req(Method::PUT, "/v2/acme/app/manifests/v1", Some(ACME))
        .header("content-type", MANIFEST_TYPE)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(twice.status(), StatusCode::CREATED);
    let listed = json_of(app.get("/packages?producer=oci")).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn pushes_with_missing_or_bad_parts_store_nothing() {
    let app = TestApp::start().await;
    let present = push_blob(&app, "acme/app", b"present").await;
    let absent = format!("sha256:{}", sha256_hex(b"never pushed"));
    let manifest = json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("application/vnd.oci.empty.v1+json",
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", 2),
        "layers": [descriptor("text/plain", &present, 7), descriptor("text/plain", &absent, 12)],
    });
    let refused = put_manifest(&app, "/v2/acme/app/manifests/v1", MANIFEST_TYPE, &manifest).await;
    assert_eq!(oci_code(refused, 400).await, "MANIFEST_BLOB_UNKNOWN");
    // Another tenant's blob is as missing as one never pushed.
    let theirs = app.req(
        Method::POST,
        &format!(
            "/v2/beta/x/blobs/uploads/?digest={}",
            format_args!("sha256:{}", sha256_hex(b"beta's"))
        ),
        Some(BETA),
    );
    assert_eq!(
        theirs
            .body(b"beta's".to_vec())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    let foreign = json!({
        "schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("text/plain", &format!("sha256:{}", sha256_hex(b"beta's")), 6),
        "layers": [],
    });
    let refused = put_manifest(&app, "/v2/acme/app/manifests/v2", MANIFEST_TYPE, &foreign).await;
    assert_eq!(oci_code(refused, 400).await, "MANIFEST_BLOB_UNKNOWN");
    // A wrong size is a missing blob too; a body whose digest is not the one named, a
    // mediaType other than the Content-Type, a type the store does not keep: refused.
    let wrong_size = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("text/plain", &present, 8), "layers": []});
    let refused = put_manifest(
        &app,
        "/v2/acme/app/manifests/v3",
        MANIFEST_TYPE,
        &wrong_size,
    )
    .await;
    assert_eq!(oci_code(refused, 400).await, "MANIFEST_BLOB_UNKNOWN");
    let good = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("text/plain", &present, 7), "layers": []});
    let misnamed = format!("/v2/acme/app/manifests/sha256:{}", "1".repeat(64));
    assert_eq!(
        oci_code(
            put_manifest(&app, &misnamed, MANIFEST_TYPE, &good).await,
            400
        )
        .await,
        "DIGEST_INVALID"
    );
    let index_type = "application/vnd.oci.image.index.v1+json";
    let mislabeled = put_manifest(&app, "/v2/acme/app/manifests/v4", index_type, &good).await;
    assert_eq!(oci_code(mislabeled, 400).await, "MANIFEST_INVALID");
    let text = put_manifest(&app, "/v2/acme/app/manifests/v4", "text/plain", &good).await;
    assert_eq!(oci_code(text, 400).await, "MANIFEST_INVALID");
    let huge = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("text/plain", &present, 7), "layers": [],
        "annotations": {"pad": "x".repeat(5 * 1024 * 1024)}});
    let huge = put_manifest(&app, "/v2/acme/app/manifests/v5", MANIFEST_TYPE, &huge).await;
    assert_eq!(oci_code(huge, 413).await, "MANIFEST_INVALID");
    let read_only = app
        .req(Method::PUT, "/v2/acme/app/manifests/v6", Some(ACME_RO))
        .header("content-type", MANIFEST_TYPE)
        .body(serde_json::to_vec(&good).unwrap());
    assert_eq!(
        oci_code(read_only.send().await.unwrap(), 403).await,
        "DENIED"
    );

    let packages = json_of(app.get("/packages")).await;
    assert_eq!(packages["items"], json!([]), "nothing was stored");
    assert_eq!(json_of(app.get("/tags")).await["items"], json!([]));
}

#[tokio::test]
async fn indexes_and_referrers_name_manifests_pushed_before() {
    let app = TestApp::start().await;
    let index_type = "application/vnd.oci.image.index.v1+json";
    let mut children = Vec::new();
    for arch in ["amd64", "arm64"] {
        let config_bytes = format!(r#"{{"architecture":"{arch}"}}"#);
        let config = push_blob(&app, "acme/multi", config_bytes.as_bytes()).await;
        let layer = push_blob(&app, "acme/multi", arch.as_bytes()).await;
        let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config, config_bytes.len()),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer, arch.len())]});
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = format!("sha256:{}", sha256_hex(&body));
        let pushed = put_manifest(
            &app,
            &format!("/v2/acme/multi/manifests/{digest}"),
            MANIFEST_TYPE,
            &manifest,
        )
        .await;
        assert_eq!(pushed.status(), StatusCode::CREATED);
        children.push(
            json!({"mediaType": MANIFEST_TYPE, "digest": digest, "size": body.len(),
            "platform": {"os": "linux", "architecture": arch}}),
        );
    }
    let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": children});
    let pushed = put_manifest(&app, "/v2/acme/multi/manifests/latest", index_type, &index).await;
    assert_eq!(pushed.status(), StatusCode::CREATED);
    let served = app
        .get("/v2/acme/multi/manifests/latest")
        .send()
        .await
        .unwrap();
    assert_eq!(served.headers()["content-type"], index_type);
    assert_eq!(
        served.bytes().await.unwrap(),
        serde_json::to_vec(&index).unwrap()
    );
    // An index naming a manifest this repository does not have.
    let stray = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": [
        {"mediaType": MANIFEST_TYPE, "digest": format!("sha256:{}", "2".repeat(64)), "size": 10}]});
    let refused = put_manifest(&app, "/v2/acme/multi/manifests/stray", index_type, &stray).await;
    assert_eq!(oci_code(refused, 400).await, "MANIFEST_BLOB_UNKNOWN");

    // A referrer: pushed with a subject, listed (filtered by artifactType or not).
    let subject = children[0].clone();
    let subject_digest = subject["digest"].as_str().unwrap().to_string();
    let empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    let empty_blob = push_blob(&app, "acme/multi", b"{}").await;
    assert_eq!(empty_blob, empty);
    let sbom = push_blob(&app, "acme/multi", b"sbom").await;
    let referrer = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "artifactType": "application/vnd.example.sbom",
        "config": descriptor("application/vnd.oci.empty.v1+json", empty, 2),
        "layers": [descriptor("application/json", &sbom, 4)],
        "subject": {"mediaType": MANIFEST_TYPE, "digest": subject_digest, "size": subject["size"]},
        "annotations": {"org.example.kind": "sbom"}});
    let body = serde_json::to_vec(&referrer).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&body));
    let pushed = put_manifest(
        &app,
        &format!("/v2/acme/multi/manifests/{digest}"),
        MANIFEST_TYPE,
        &referrer,
    )
    .await;
    assert_eq!(pushed.headers()["oci-subject"], subject_digest.as_str());
    let listed = app
        .get(&format!("/v2/acme/multi/referrers/{subject_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(listed.headers()["content-type"], index_type);
    let listed: Value = listed.json().await.unwrap();
    assert_eq!(listed["manifests"][0]["digest"], digest.as_str());
    assert_eq!(
        listed["manifests"][0]["artifactType"],
        "application/vnd.example.sbom"
    );
    assert_eq!(
        listed["manifests"][0]["annotations"]["org.example.kind"],
        "sbom"
    );
    let filtered = app
        .get(&format!(
            "/v2/acme/multi/referrers/{subject_digest}?artifactType=application/other"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(filtered.headers()["oci-filters-applied"], "artifactType");
    assert_eq!(
        filtered.json::<Value>().await.unwrap()["manifests"],
        json!([])
    );
    let none = json_of(app.get(&format!(
        "/v2/acme/multi/referrers/sha256:{}",
        "3".repeat(64)
    )))
    .await;
    assert_eq!(none["manifests"], json!([]));
}

/// Retention keeps the manifests a pushed index (or a referrer) names while it exists, and
/// deletes what its rule says of the rest of the repository's pushes.
#[tokio::test]
async fn retention_keeps_the_manifests_an_index_names() {
    let app = TestApp::builder()
        .args(|a| {
            a.retention = Some("standard:keep_last=1".into());
            a.retention_interval_secs = Some(1);
        })
        .start()
        .await;
    let index_type = "application/vnd.oci.image.index.v1+json";
    let image = |config: &str, size: usize| {
        json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
               "config": descriptor("application/vnd.oci.image.config.v1+json", config, size),
               "layers": []})
    };
    let mut pushed = Vec::new();
    for name in ["lone", "child-a", "child-b"] {
        let config = format!(r#"{{"name":"{name}"}}"#);
        let digest = push_blob(&app, "acme/multi", config.as_bytes()).await;
        let manifest = image(&digest, config.len());
        let body = serde_json::to_vec(&manifest).unwrap();
        let digest = format!("sha256:{}", sha256_hex(&body));
        let path = format!("/v2/acme/multi/manifests/{digest}");
        assert_eq!(
            put_manifest(&app, &path, MANIFEST_TYPE, &manifest)
                .await
                .status(),
            201
        );
        pushed.push((digest, body.len()));
    }
    let index = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": [
        descriptor(MANIFEST_TYPE, &pushed[1].0, pushed[1].1),
        descriptor(MANIFEST_TYPE, &pushed[2].0, pushed[2].1)]});
    let put = put_manifest(&app, "/v2/acme/multi/manifests/latest", index_type, &index).await;
    assert_eq!(put.status(), StatusCode::CREATED);

    let lone = format!("/v2/acme/multi/manifests/{}", pushed[0].0);
    let collected = eventually(std::time::Duration::from_secs(20), async || {
        app.get(&lone).send().await.unwrap().status() == StatusCode::NOT_FOUND
    })
    .await;
    assert!(collected, "retention deletes the manifest no index names");
    for (digest, _) in &pushed[1..] {
        let child = app
            .get(&format!("/v2/acme/multi/manifests/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(child.status(), StatusCode::OK, "an index names {digest}");
    }
    let listed = json_of(app.get("/packages?producer=oci")).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 3);
}

/// Docker schema 2 manifests and manifest lists, and image-spec 1.1-rc's artifact manifest,
/// are kept and served as pushed, with their own Content-Type.
#[tokio::test]
async fn docker_and_artifact_manifest_types_are_kept_as_pushed() {
    let app = TestApp::start().await;
    let docker = "application/vnd.docker.distribution.manifest.v2+json";
    let docker_list = "application/vnd.docker.distribution.manifest.list.v2+json";
    let artifact = "application/vnd.oci.artifact.manifest.v1+json";
    let config = push_blob(&app, "acme/d", br#"{"os":"linux"}"#).await;
    let layer = push_blob(&app, "acme/d", b"layer bytes").await;
    let image = json!({"schemaVersion": 2, "mediaType": docker,
        "config": descriptor("application/vnd.docker.container.image.v1+json", &config, 14),
        "layers": [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", &layer, 11)]});
    let body = serde_json::to_vec(&image).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&body));
    assert_eq!(
        put_manifest(&app, "/v2/acme/d/manifests/image", docker, &image)
            .await
            .status(),
        201
    );
    let list = json!({"schemaVersion": 2, "mediaType": docker_list, "manifests": [
        {"mediaType": docker, "digest": digest, "size": body.len(),
         "platform": {"architecture": "amd64", "os": "linux"}}]});
    assert_eq!(
        put_manifest(&app, "/v2/acme/d/manifests/list", docker_list, &list)
            .await
            .status(),
        201
    );
    let rc = json!({"mediaType": artifact, "artifactType": "application/x-notes",
        "blobs": [descriptor("text/plain", &layer, 11)]});
    assert_eq!(
        put_manifest(&app, "/v2/acme/d/manifests/notes", artifact, &rc)
            .await
            .status(),
        201
    );
    for (tag, media_type, sent) in [
        ("image", docker, &image),
        ("list", docker_list, &list),
        ("notes", artifact, &rc),
    ] {
        let served = app
            .get(&format!("/v2/acme/d/manifests/{tag}"))
            .send()
            .await
            .unwrap();
        assert_eq!(served.headers()["content-type"], media_type, "{tag}");
        assert_eq!(
            served.bytes().await.unwrap(),
            serde_json::to_vec(sent).unwrap(),
            "{tag}"
        );
    }
}

/// A tenant's byte quota holds for pushes: a blob past it is refused as it arrives, `507
/// DENIED`; so is a manifest whose files would pass it, and nothing is stored.
#[tokio::test]
async fn quotas_hold_for_pushes() {
    let app = TestApp::builder()
        .args(|a| a.quotas = Some("acme:max_bytes=300000".into()))
        .start()
        .await;
    let too_big = bytes(400_000, 5);
    let digest = format!("sha256:{}", sha256_hex(&too_big));
    let refused = app
        .post(&format!("/v2/acme/app/blobs/uploads/?digest={digest}"))
        .body(too_big)
        .send()
        .await
        .unwrap();
    assert_eq!(oci_code(refused, 507).await, "DENIED");
    // Two blobs that fit one by one (pushed blobs are not the tenant's files yet), in one
    // manifest that does not.
    let a = push_blob(&app, "acme/app", &bytes(200_000, 6)).await;
    let b = push_blob(&app, "acme/app", &bytes(200_000, 7)).await;
    let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("application/octet-stream", &a, 200_000),
        "layers": [descriptor("application/octet-stream", &b, 200_000)]});
    let refused = put_manifest(&app, "/v2/acme/app/manifests/v1", MANIFEST_TYPE, &manifest).await;
    assert_eq!(oci_code(refused, 507).await, "DENIED");
    let usage = json_of(app.get("/usage")).await;
    assert_eq!(usage["bytes"], 0);
    assert_eq!(json_of(app.get("/packages")).await["items"], json!([]));
}

/// A manifest with more references than a push may carry is refused before anything else.
#[tokio::test]
async fn a_manifest_with_too_many_references_is_refused() {
    let app = TestApp::start().await;
    let layers: Vec<Value> = (0..10_001)
        .map(|i| descriptor("text/plain", &format!("sha256:{i:064x}"), 1))
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("text/plain", &format!("sha256:{}", "a".repeat(64)), 1),
        "layers": layers});
    let refused = put_manifest(&app, "/v2/acme/app/manifests/v1", MANIFEST_TYPE, &manifest).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_INVALID");
    assert!(body["detail"].as_str().unwrap().contains("10000"), "{body}");
}

/// Clients without the referrers API keep an index under the tag `sha256-<subject hex>`
/// (the referrers tag schema): an ordinary index push, read back by that tag.
#[tokio::test]
async fn the_referrers_tag_schema_works_as_an_ordinary_tag() {
    let app = TestApp::start().await;
    let index_type = "application/vnd.oci.image.index.v1+json";
    let config = push_blob(&app, "acme/app", b"{}").await;
    let subject = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "config": descriptor("application/vnd.oci.empty.v1+json", &config, 2), "layers": []});
    let subject_body = serde_json::to_vec(&subject).unwrap();
    let subject_hex = sha256_hex(&subject_body);
    put_manifest(&app, "/v2/acme/app/manifests/v1", MANIFEST_TYPE, &subject).await;
    let signature = json!({"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
        "artifactType": "application/vnd.example.sig",
        "config": descriptor("application/vnd.oci.empty.v1+json", &config, 2), "layers": [],
        "subject": descriptor(MANIFEST_TYPE, &format!("sha256:{subject_hex}"), subject_body.len())});
    let signature_body = serde_json::to_vec(&signature).unwrap();
    let signature_digest = format!("sha256:{}", sha256_hex(&signature_body));
    let path = format!("/v2/acme/app/manifests/{signature_digest}");
    assert_eq!(
        put_manifest(&app, &path, MANIFEST_TYPE, &signature)
            .await
            .status(),
        201
    );
    let fallback = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": [{
        "mediaType": MANIFEST_TYPE, "digest": signature_digest, "size": signature_body.len(),
        "artifactType": "application/vnd.example.sig"}]});
    let tag = format!("/v2/acme/app/manifests/sha256-{subject_hex}");
    assert_eq!(
        put_manifest(&app, &tag, index_type, &fallback)
            .await
            .status(),
        201
    );
    let read = app.get(&tag).send().await.unwrap();
    assert_eq!(read.headers()["content-type"], index_type);
    assert_eq!(
        read.bytes().await.unwrap(),
        serde_json::to_vec(&fallback).unwrap()
    );
}

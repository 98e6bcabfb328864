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
    let empty = json_of(app.get("/v2/acme/nothing/tags/list")).await;
    assert_eq!(empty["tags"], json!([]));

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
    let tags = json_of(app.get("/v2/acme/app/tags/list")).await;
    assert_eq!(tags["tags"], json!([]), "its tags went with it");
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
}

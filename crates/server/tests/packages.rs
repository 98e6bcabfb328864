//! Packages, files, finalize and manifests over HTTP: statuses, headers and bodies, and every
//! error the contract names for them.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn create_get_and_validate_packages() {
    let app = TestApp::start().await;
    let r = app
        .post("/packages")
        .json(&json!({"producer": "ci/build-42", "subject": "app@1.2.3", "retention_class": "standard",
                      "metadata": {"git.sha": "abc123"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let pkg: Value = r.json().await.unwrap();
    assert_eq!(
        location,
        format!("/packages/{}", pkg["id"].as_str().unwrap())
    );
    assert!(pkg["id"].as_str().unwrap().starts_with("pkg_"));
    assert_eq!(pkg["tenant"], "acme");
    assert_eq!(pkg["state"], "open");
    assert_eq!(pkg["finalized_at"], Value::Null);
    assert_eq!(pkg["manifest_digest"], Value::Null);
    assert_eq!(
        (pkg["file_count"].as_u64(), pkg["total_size"].as_u64()),
        (Some(0), Some(0))
    );
    assert!(pkg["created_at"].as_str().unwrap().ends_with('Z'));

    let got: Value = app
        .get(&location)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, pkg);
    problem(
        app.get("/packages/pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(app.get("/packages/not-an-id").send().await.unwrap(), 404).await;

    // Field errors name the field as sent.
    let bad = json!({"producer": "", "subject": "s", "retention_class": "Not-Valid", "metadata": {"a b": "c"}});
    let p = problem(app.post("/packages").json(&bad).send().await.unwrap(), 422).await;
    let fields: Vec<&str> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["producer", "retention_class", "metadata"]);
    let p = problem(
        app.post("/packages")
            .json(&json!({"subject": "s"}))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "producer");
    let p = problem(
        app.post("/packages").json(&json!({"producer": "p", "subject": "s", "retention_class": "x", "metadata": {"k": 1}})).send().await.unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "metadata.k");
    // Malformed JSON, wrong content type, oversize body.
    let r = app
        .post("/packages")
        .header("content-type", "application/json")
        .body("{\"producer\":")
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    let r = app
        .post("/packages")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 415).await;
    let huge = json!({"producer": "p", "subject": "s", "retention_class": "x", "metadata": {"k": "v".repeat(1024 * 1024)}});
    problem(app.post("/packages").json(&huge).send().await.unwrap(), 413).await;
    // Nothing was created by the failures.
    let list: Value = app
        .get("/packages")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn list_filters_and_cursor() {
    let app = TestApp::start().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        let p = app
            .create_package_with(json!({
                "producer": format!("p{}", i % 2), "subject": format!("s{i}"),
                "retention_class": if i % 3 == 0 { "long" } else { "standard" },
                "metadata": if i % 4 == 0 { json!({"team": "red", "rel": "1"}) } else { json!({"team": "blue"}) }
            }))
            .await;
        let id = p["id"].as_str().unwrap().to_string();
        app.add_file(&id, "f", format!("content-{}", i % 5).into_bytes())
            .await;
        if i % 6 == 0 {
            app.finalize(&id).await;
        }
        ids.push(id);
    }
    let list = |query: String| {
        let app = &app;
        async move {
            let mut out = Vec::new();
            let mut cursor: Option<String> = None;
            loop {
                let url = match &cursor {
                    Some(c) => format!("/packages?{query}&limit=5&cursor={c}"),
                    None => format!("/packages?{query}&limit=5"),
                };
                let page: Value = app.get(&url).send().await.unwrap().json().await.unwrap();
                out.extend(
                    page["items"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| p["id"].as_str().unwrap().to_string()),
                );
                match page["next_cursor"].as_str() {
                    Some(c) => cursor = Some(c.to_string()),
                    None => return out,
                }
            }
        }
    };
    let want = |f: &dyn Fn(usize) -> bool| -> Vec<String> {
        (0..12)
            .rev()
            .filter(|i| f(*i))
            .map(|i| ids[i].clone())
            .collect()
    };
    assert_eq!(list(String::new()).await, want(&|_| true));
    assert_eq!(list("producer=p1".into()).await, want(&|i| i % 2 == 1));
    assert_eq!(list("subject=s3".into()).await, want(&|i| i == 3));
    assert_eq!(
        list("retention_class=long&state=finalized".into()).await,
        want(&|i| i % 3 == 0 && i % 6 == 0)
    );
    assert_eq!(list("state=open".into()).await, want(&|i| i % 6 != 0));
    assert_eq!(
        list("metadata.team=red".into()).await,
        want(&|i| i % 4 == 0)
    );
    assert_eq!(
        list("metadata.team=blue&has_metadata=rel".into()).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list("has_metadata=rel&producer=p0".into()).await,
        want(&|i| i % 4 == 0)
    );
    let digest = sha256_hex(b"content-2");
    assert_eq!(
        list(format!("contains=sha256:{digest}")).await,
        want(&|i| i % 5 == 2)
    );
    let far_past = "created_after=2000-01-01T00:00:00Z&created_before=2000-01-02T00:00:00Z";
    assert!(list(far_past.into()).await.is_empty());
    assert_eq!(
        list("created_after=2000-01-01T00:00:00.000Z".into())
            .await
            .len(),
        12
    );
    // Bad filter values are 422s naming the parameter; limit is clamped.
    for (query, field) in [
        ("state=closed", "state"),
        ("contains=abc", "contains"),
        ("created_after=yesterday", "created_after"),
        ("limit=-1", "limit"),
        ("cursor=zzz", "cursor"),
    ] {
        let p = problem(
            app.get(&format!("/packages?{query}")).send().await.unwrap(),
            422,
        )
        .await;
        assert_eq!(p["errors"][0]["field"], field, "{query}");
    }
    let page: Value = app
        .get("/packages?limit=5000")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 12);
    // At most 16 metadata filters together (each costs a lookup per candidate package).
    let filters = |n: usize| {
        (0..n)
            .map(|i| {
                if i % 2 == 0 {
                    format!("metadata.k{i}=v")
                } else {
                    format!("has_metadata=k{i}")
                }
            })
            .collect::<Vec<_>>()
            .join("&")
    };
    assert!(list(filters(16)).await.is_empty());
    let p = problem(
        app.get(&format!("/packages?{}", filters(17)))
            .send()
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "metadata", "{p}");
    assert!(
        p["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 16"),
        "{p}"
    );
    // A NUL can be in no stored value: a 422, on PostgreSQL too (it was a 500 there).
    for query in [
        "metadata.team=r%00d",
        "producer=p%001",
        "has_metadata=te%00am",
    ] {
        let p = problem(
            app.get(&format!("/packages?{query}")).send().await.unwrap(),
            422,
        )
        .await;
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains("NUL") || detail.contains("must match"),
            "{query}: {p}"
        );
    }
    let nul =
        json!({"producer": "p", "subject": "s", "retention_class": "x", "metadata": {"k": "a\0b"}});
    let p = problem(app.post("/packages").json(&nul).send().await.unwrap(), 422).await;
    assert!(
        p["errors"][0]["message"].as_str().unwrap().contains("NUL"),
        "{p}"
    );
    // Other tenants see nothing.
    let r = app
        .req(reqwest::Method::GET, "/packages", Some(BETA))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["items"], json!([]));
}

#[tokio::test]
async fn multipart_ingest_rules() {
    let app = TestApp::builder().max_file_bytes(1000).start().await;
    let pkg = app.package_id().await;
    let url = format!("/packages/{pkg}/files");
    let r = app.upload_file(&pkg, "bin/app", b"binary".to_vec()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let file: Value = r.json().await.unwrap();
    assert_eq!(location, format!("/files/{}", file["id"].as_str().unwrap()));
    assert_eq!(file["package_id"], pkg.as_str());
    assert_eq!(file["size"], 6);
    assert_eq!(file["media_type"], "application/octet-stream");
    assert_eq!(file["digests"]["sha256"], sha256_hex(b"binary"));
    assert_eq!(
        file["content_address"],
        format!("sha256:{}", sha256_hex(b"binary"))
    );

    // media_type: explicit part, else the file part's type unless octet-stream, else guessed.
    let form = |parts: Vec<(&str, &str)>, file: reqwest::multipart::Part| {
        let mut form = reqwest::multipart::Form::new();
        for (k, v) in parts {
            form = form.text(k.to_string(), v.to_string());
        }
        form.part("file", file)
    };
    let send = |f: reqwest::multipart::Form| app.post(&url).multipart(f).send();
    let part = || reqwest::multipart::Part::bytes(b"x".to_vec());
    let f: Value = send(form(
        vec![("path", "a.json"), ("media_type", "application/vnd.x+json")],
        part(),
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(f["media_type"], "application/vnd.x+json");
    let f: Value = send(form(
        vec![("path", "b.bin")],
        part().mime_str("image/png").unwrap(),
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(f["media_type"], "image/png");
    let f: Value = send(form(
        vec![("path", "c.txt")],
        part().mime_str("application/octet-stream").unwrap(),
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(f["media_type"], "text/plain");
    // Expected digest: checked.
    let p = problem(
        send(form(
            vec![("path", "d"), ("sha256", &sha256_hex(b"other"))],
            part(),
        ))
        .await
        .unwrap(),
        422,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("sha256"));
    let ok = send(form(
        vec![("path", "d"), ("sha256", &sha256_hex(b"x"))],
        part(),
    ))
    .await
    .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    // Duplicate path, invalid path, missing parts, limits.
    problem(send(form(vec![("path", "d")], part())).await.unwrap(), 409).await;
    let p = problem(
        send(form(vec![("path", "../etc/passwd")], part()))
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "path");
    let p = problem(send(form(vec![], part())).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "path");
    let p = problem(
        send(reqwest::multipart::Form::new().text("path", "e"))
            .await
            .unwrap(),
        422,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "file");
    let invalid_utf8 = reqwest::multipart::Form::new()
        .part(
            "path",
            reqwest::multipart::Part::bytes(vec![0x66, 0xff, 0xfe]),
        )
        .part("file", part());
    let p = problem(send(invalid_utf8).await.unwrap(), 422).await;
    assert_eq!(p["errors"][0]["field"], "path");
    problem(
        send(form(
            vec![("path", "big")],
            reqwest::multipart::Part::bytes(vec![0; 1001]),
        ))
        .await
        .unwrap(),
        413,
    )
    .await;
    let r = app
        .post(&url)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(r, 415).await;
    let r = app
        .post(&url)
        .header("content-type", "multipart/form-data; boundary=XX")
        .body("garbage")
        .send()
        .await
        .unwrap();
    problem(r, 400).await;
    problem(
        app.upload_file("pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV", "x", vec![1])
            .await,
        404,
    )
    .await;

    // Listing files: byte order of paths, paged.
    let mut paths = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = cursor
            .as_ref()
            .map(|c| format!("&cursor={c}"))
            .unwrap_or_default();
        let page: Value = app
            .get(&format!("{url}?limit=2{q}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        paths.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(paths, ["a.json", "b.bin", "bin/app", "c.txt", "d"]);
    let pkg_now: Value = app
        .get(&format!("/packages/{pkg}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pkg_now["file_count"], 5);
}

#[tokio::test]
async fn finalize_and_manifest() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    app.add_file(&pkg, "z.txt", b"zed".to_vec()).await;
    app.add_file(&pkg, "a/b.bin", bytes(5000, 1)).await;
    let manifest_url = format!("/packages/{pkg}/manifest");
    problem(app.get(&manifest_url).send().await.unwrap(), 409).await;
    problem(
        app.get(&format!("{manifest_url}.json"))
            .send()
            .await
            .unwrap(),
        409,
    )
    .await;

    let done = app.finalize(&pkg).await;
    assert_eq!(done["state"], "finalized");
    assert!(done["finalized_at"].as_str().unwrap().ends_with('Z'));
    let digest = done["manifest_digest"].as_str().unwrap().to_string();
    assert_eq!(
        app.finalize(&pkg).await,
        done,
        "finalizing again returns the same"
    );
    problem(app.upload_file(&pkg, "late", b"x".to_vec()).await, 409).await;

    let r = app.get(&manifest_url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "application/cbor");
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert_eq!(etag, format!("\"{digest}\""));
    let cbor = r.bytes().await.unwrap();
    assert_eq!(format!("sha256:{}", sha256_hex(&cbor)), digest);
    let decoded: Value = ciborium::from_reader(&cbor[..]).unwrap();
    assert_eq!(decoded["schema"], "artifactstore.manifest/v1");
    assert_eq!(decoded["files"][0]["path"], "a/b.bin");
    assert_eq!(decoded["files"][1]["path"], "z.txt");
    assert_eq!(decoded["file_count"], 2);

    let json_text = app
        .get(&format!("{manifest_url}.json"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let json: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(json, decoded, "the JSON projection is the same value");
    assert_eq!(
        json_text,
        artifactstore_core::manifest::to_jcs(&json).unwrap(),
        "and it is JCS"
    );
    // The same package always yields the same bytes.
    let again = app
        .get(&manifest_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(again, cbor);

    for (accept, status) in [
        ("application/cbor", 200),
        ("*/*", 200),
        ("application/*", 200),
        ("application/json", 406),
        ("text/html", 406),
    ] {
        let r = app
            .get(&manifest_url)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{accept}");
        if status == 406 {
            problem(r, 406).await;
        }
    }
    let r = app
        .get(&manifest_url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    let r = app
        .get(&manifest_url)
        .header("if-none-match", "\"sha256:other\", W/\"x\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    problem(
        app.post("/packages/pkg_01ARZ3NDEKTSV4RRFFQ69G5FAV/finalize")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
}

#[tokio::test]
async fn downloads_ranges_and_conditionals() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    let data = bytes(1_000_000, 7);
    let file = app.add_file(&pkg, "data.bin", data.clone()).await;
    let id = file["id"].as_str().unwrap();
    let empty = app.add_file(&pkg, "empty.txt", Vec::new()).await;
    let url = format!("/files/{id}/download");

    let got: Value = app
        .get(&format!("/files/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, file);
    problem(
        app.get("/files/file_01ARZ3NDEKTSV4RRFFQ69G5FAV")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        app.get("/files/file_01ARZ3NDEKTSV4RRFFQ69G5FAV/download")
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;

    let r = app.get(&url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let etag = format!("\"sha256:{}\"", sha256_hex(&data));
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.headers()["accept-ranges"], "bytes");
    assert_eq!(r.headers()["content-length"], "1000000");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.bytes().await.unwrap().to_vec(), data);

    let head = app
        .req(reqwest::Method::HEAD, &url, Some(ACME))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(head.headers()["content-length"], "1000000");
    assert_eq!(head.headers()["etag"].to_str().unwrap(), etag);

    let range = |spec: &'static str| app.get(&url).header("range", spec).send();
    let r = range("bytes=10-19").await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 10-19/1000000");
    assert_eq!(r.headers()["content-length"], "10");
    assert_eq!(r.bytes().await.unwrap().to_vec(), &data[10..20]);
    let r = range("bytes=999990-").await.unwrap();
    assert_eq!(r.headers()["content-range"], "bytes 999990-999999/1000000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), &data[999_990..]);
    let r = range("bytes=-5").await.unwrap();
    assert_eq!(r.bytes().await.unwrap().to_vec(), &data[999_995..]);
    let r = range("bytes=999999-2000000").await.unwrap();
    assert_eq!(r.headers()["content-range"], "bytes 999999-999999/1000000");
    let r = range("bytes=-2000000").await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()["content-range"], "bytes 0-999999/1000000");
    let r = range("bytes=1000000-").await.unwrap();
    assert_eq!(r.headers()["content-range"], "bytes */1000000");
    problem(r, 416).await;
    let r = range("bytes=0-1,5-6").await.unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "multi-range gets the whole body"
    );
    assert_eq!(r.bytes().await.unwrap().len(), 1_000_000);
    // Conditionals come before Range.
    let r = app
        .get(&url)
        .header("range", "bytes=0-1")
        .header("if-none-match", format!("W/{etag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = app
        .get(&url)
        .header("if-none-match", "*")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    let r = app
        .get(&url)
        .header("range", "bytes=0-1")
        .header("if-range", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let r = app
        .get(&url)
        .header("range", "bytes=0-1")
        .header("if-range", "\"sha256:old\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let empty_url = format!("/files/{}/download", empty["id"].as_str().unwrap());
    let r = app.get(&empty_url).send().await.unwrap();
    assert_eq!(
        (r.status(), r.headers()["content-length"].to_str().unwrap()),
        (StatusCode::OK, "0")
    );
    assert_eq!(r.headers()["content-type"], "text/plain");
    problem(
        app.get(&empty_url)
            .header("range", "bytes=0-")
            .send()
            .await
            .unwrap(),
        416,
    )
    .await;
}

/// A request: method, token, headers.
type Case<'a> = (reqwest::Method, Option<&'a str>, Vec<(&'a str, String)>);

/// Downloads are answered ahead of the router when their path is plain (`shortcut`); a path
/// the router must percent-decode goes through it. Both answer every kind of request alike,
/// and the metrics label both with the route's template.
#[tokio::test]
async fn downloads_answer_alike_with_and_without_the_router() {
    let app = TestApp::start().await;
    let pkg = app.package_id().await;
    let data = bytes(100_000, 3);
    let file = app.add_file(&pkg, "data.bin", data).await;
    let id = file["id"].as_str().unwrap();
    let etag = file["content_address"].as_str().unwrap();
    let plain = format!("/files/{id}/download");
    let encoded = format!("/files/{}/download", id.replace('_', "%5F"));
    let missing = "/files/file_01ARZ3NDEKTSV4RRFFQ69G5FAV/download";
    let cases: Vec<Case> = vec![
        (reqwest::Method::GET, Some(ACME), vec![]),
        (reqwest::Method::HEAD, Some(ACME), vec![]),
        (
            reqwest::Method::GET,
            Some(ACME),
            vec![("range", "bytes=10-4105".into())],
        ),
        (
            reqwest::Method::GET,
            Some(ACME),
            vec![("range", "bytes=100000-".into())],
        ),
        (
            reqwest::Method::GET,
            Some(ACME),
            vec![("if-none-match", format!("\"{etag}\""))],
        ),
        (reqwest::Method::GET, Some("garbage"), vec![]),
        (reqwest::Method::GET, None, vec![]),
        (reqwest::Method::GET, Some(BETA), vec![]),
    ];
    let answer = |path: String, (method, token, headers): &Case| {
        let mut request = app.req(method.clone(), &path, *token);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        async move {
            let r = request.send().await.unwrap();
            let mut headers: Vec<_> = r
                .headers()
                .iter()
                .filter(|(name, _)| *name != "date")
                .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap()))
                .collect();
            headers.sort();
            (r.status(), headers, r.bytes().await.unwrap())
        }
    };
    for case in &cases {
        let shortcut = answer(plain.clone(), case).await;
        assert_eq!(shortcut, answer(encoded.clone(), case).await, "{case:?}");
        let unknown = answer(missing.to_string(), case).await;
        assert_eq!(
            unknown,
            answer(missing.replace('_', "%5F"), case).await,
            "{case:?}"
        );
    }
    let metrics = app.text("/metrics").await;
    let series = "artifactstore_http_requests_total{method=\"GET\",route=\"/files/{id}/download\",status=\"206\"} 2";
    assert!(metrics.contains(series), "{metrics}");
}

#[tokio::test]
async fn service_endpoints_and_unknown_routes() {
    let app = TestApp::start().await;
    for token in [None, Some("garbage"), Some(ACME)] {
        let r = app
            .req(reqwest::Method::GET, "/healthz", token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.json::<Value>().await.unwrap(), json!({"status": "ok"}));
        let r = app
            .req(reqwest::Method::GET, "/readyz", token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    app.create_package().await;
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("artifactstore_http_requests_total{method=\"POST\",route=\"/packages\",status=\"201\"} 1"), "{metrics}");
    assert!(!metrics.contains("acme"), "no tenant names in metrics");
    let p = problem(app.get("/no/such/route").send().await.unwrap(), 404).await;
    assert!(p["detail"].as_str().unwrap().contains("/no/such/route"));
    problem(
        app.req(reqwest::Method::DELETE, "/packages", Some(ACME))
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
    problem(
        app.req(reqwest::Method::PUT, "/healthz", None)
            .send()
            .await
            .unwrap(),
        405,
    )
    .await;
}

#[tokio::test]
async fn readyz_reports_a_broken_store() {
    let app = TestApp::builder().local_blobs().start().await;
    std::fs::remove_dir_all(app.data_dir().join("blobs")).unwrap();
    let r = app
        .client
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
}

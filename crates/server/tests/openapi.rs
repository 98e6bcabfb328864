//! The OpenAPI document lists exactly the routes of the contract, and the router serves
//! every route the document lists.

mod common;

use std::collections::BTreeSet;

use common::*;
use reqwest::Method;
use serde_json::Value;

/// Every route of HTTP API v1 (`/openapi.json` and `/docs` themselves aside).
const CONTRACT: &[(&str, &str)] = &[
    ("get", "/events"),
    ("get", "/files/{id}"),
    ("get", "/files/{id}/download"),
    ("head", "/files/{id}/download"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/packages"),
    ("post", "/packages"),
    ("get", "/packages/{id}"),
    ("delete", "/packages/{id}"),
    ("put", "/packages/{id}/hold"),
    ("delete", "/packages/{id}/hold"),
    ("get", "/packages/{id}/files"),
    ("post", "/packages/{id}/files"),
    ("post", "/packages/{id}/finalize"),
    ("get", "/packages/{id}/manifest"),
    ("get", "/packages/{id}/manifest.json"),
    ("get", "/readyz"),
    ("get", "/retention"),
    ("get", "/usage"),
    ("get", "/tags"),
    ("put", "/tags/{repository}/{tag}"),
    ("get", "/tags/{repository}/{tag}"),
    ("delete", "/tags/{repository}/{tag}"),
    ("post", "/uploads"),
    ("delete", "/uploads/{id}"),
    ("get", "/uploads/{id}"),
    ("head", "/uploads/{id}"),
    ("patch", "/uploads/{id}"),
    ("post", "/uploads/{id}/complete"),
];

async fn document(app: &TestApp) -> Value {
    json_of(app.client.get(format!("{}/openapi.json", app.base))).await
}

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let app = TestApp::start().await;
    let doc = document(&app).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if ["get", "head", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let contract: BTreeSet<(String, String)> = CONTRACT
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, contract);

    // Every documented route is served: the router answers it with something other than its
    // no-route / method-not-allowed problems.
    for (method, path) in &documented {
        let mut concrete = path
            .replace("{id}", "x")
            .replace("{repository}", "app")
            .replace("{tag}", "x");
        if concrete == "/events" {
            concrete.push_str("?wait=0");
        }
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = app
            .req(method.clone(), &concrete, Some(ACME))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let kind = if method == Method::HEAD {
            String::new()
        } else {
            r.text().await.unwrap()
        };
        assert!(
            !kind.contains("problem/no-route")
                && !kind.contains("problem/method-not-allowed")
                && status != 405,
            "{method} {path} is documented but not served ({status} {kind})"
        );
    }
    // And the schemas the responses refer to are in the document.
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for name in [
        "Package",
        "FileRecord",
        "UploadResource",
        "Problem",
        "NewPackage",
        "EventPage",
        "Tag",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn docs_page_and_its_assets_are_served_locally() {
    let app = TestApp::start().await;
    let page = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "the docs page names no remote origin"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let r = app
            .client
            .get(format!("{}/docs/{asset}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), reqwest::StatusCode::OK, "{asset}");
    }
    let init = app
        .client
        .get(format!("{}/docs/swagger-initializer.js", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
}

/// The whole document, as served with the default settings, against the committed snapshot
/// (`UPDATE_SNAPSHOTS=1 cargo test -p artifactstore-server --test openapi` rewrites it): any
/// change to the API's description shows up in review as a diff of this file.
#[tokio::test]
async fn the_document_matches_its_snapshot() {
    let app = TestApp::start().await;
    let doc = document(&app).await;
    let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/openapi.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
        return;
    }
    let snapshot = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        snapshot == text,
        "/openapi.json differs from {}; if the change is meant, rerun with UPDATE_SNAPSHOTS=1 \
         and commit the file",
        path.display()
    );
}

/// The document passes an OpenAPI 3.1 validator (openapi-spec-validator, which `make test`
/// installs into .venv-tools before it runs the ignored tests).
#[tokio::test]
#[ignore = "needs openapi-spec-validator (make test installs it into .venv-tools)"]
async fn the_document_is_valid_openapi() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let validator = root.join(".venv-tools/bin/openapi-spec-validator");
    assert!(
        validator.exists(),
        "{} is not installed (make tools installs it)",
        validator.display()
    );
    let app = TestApp::start().await;
    let text = serde_json::to_string(&document(&app).await).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("openapi.json");
    std::fs::write(&file, text).unwrap();
    let out = std::process::Command::new(&validator)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every problem status of every operation is an `application/problem+json` `Problem`,
/// secured operations list 401, writers 403, and ids carry their pattern.
#[tokio::test]
async fn every_operation_documents_its_problems() {
    let app = TestApp::start().await;
    let doc = document(&app).await;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().unwrap();
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/problem+json"]["schema"]["$ref"],
                        "#/components/schemas/Problem",
                        "{method} {path} {status}"
                    );
                }
            }
            for status in ["500", "503"] {
                assert!(
                    responses.contains_key(status),
                    "{method} {path} lacks {status}"
                );
            }
            if op.get("security").is_some() {
                assert!(responses.contains_key("401"), "{method} {path} lacks 401");
                if ["post", "patch", "delete", "put"].contains(&method.as_str()) {
                    assert!(responses.contains_key("403"), "{method} {path} lacks 403");
                }
            }
            if path.contains("{id}") {
                assert!(responses.contains_key("404"), "{method} {path} lacks 404");
                let id = op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == "id")
                    .unwrap();
                assert!(id["schema"]["pattern"].as_str().unwrap().starts_with("^"));
            }
        }
    }
    let problem = &doc["components"]["schemas"]["Problem"]["properties"];
    assert!(problem["errors"].is_object() && problem["offset"].is_object());
}

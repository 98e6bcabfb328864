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
    ("get", "/packages/{id}/files"),
    ("post", "/packages/{id}/files"),
    ("post", "/packages/{id}/finalize"),
    ("get", "/packages/{id}/manifest"),
    ("get", "/packages/{id}/manifest.json"),
    ("get", "/readyz"),
    ("post", "/uploads"),
    ("delete", "/uploads/{id}"),
    ("get", "/uploads/{id}"),
    ("head", "/uploads/{id}"),
    ("patch", "/uploads/{id}"),
    ("post", "/uploads/{id}/complete"),
];

#[tokio::test]
async fn the_document_lists_exactly_the_served_routes() {
    let app = TestApp::start().await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
        let mut concrete = path.replace("{id}", "x");
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
